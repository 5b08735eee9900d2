"""The per-suite summary of accuracy records: tasks as columns, measured vs paper, average.

Where the paper's acc/acc_norm choice is unknown, both are shown, each with its own average; the
closer one is never picked silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from elmbench.accuracy.papermodel import NO_MATCH
from elmbench.accuracy.taskdata import EVAL_SPLIT_SOURCE
from elmbench.records.types import AccuracyRecord

if TYPE_CHECKING:
    from elmbench.accuracy.suites import AccuracySuite

CROWS_NOTE = (
    "CrowS-Pairs is compared as pct_stereotype x 100 (an inference from the published values, "
    "not a stated fact); lower is less biased"
)
UNKNOWN_NOTE = (
    "* the paper's choice between acc and acc_norm is not published in a readable "
    "form: measured rows show acc and acc_norm for these tasks, each with its average"
)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mean(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None) / len(values)


def summary_table(
    records: Sequence[AccuracyRecord], norm: str, suite: AccuracySuite | None = None
) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, notes) for one norm variant's records of one suite, in task order.

    With the suite, the paper row's average is the paper's own figure where every task is shown.
    """
    recs = [r for r in records if r.norm == norm]
    labels: list[str] = []
    for r in recs:
        if r.label not in labels:
            labels.append(r.label)
    by = {(r.label, r.metric): r for r in recs}
    unknown = {r.label for r in recs if not r.metric_known}

    def pick(label: str, preferred: str) -> AccuracyRecord:
        if (label, preferred) in by:
            return by[(label, preferred)]
        return next(r for r in recs if r.label == label)

    header = ["", *[_column(pick(lb, "acc"), lb in unknown) for lb in labels], "Average"]
    paper = [pick(lb, "acc").published_pct for lb in labels]
    paper_average = _paper_average(recs, labels, paper, suite)
    rows = [["paper", *map(_fmt, paper), _fmt(paper_average)]]
    for metric in ("acc", "acc_norm") if unknown else ("acc",):
        measured = [pick(lb, metric).value_pct for lb in labels]
        name = f"measured ({metric}*)" if unknown else "measured"
        average = _mean(measured)
        rows.append([name, *map(_fmt, measured), _fmt(average)])
        deltas = [None if p is None else m - p for m, p in zip(measured, paper, strict=True)]
        delta = None if average is None or paper_average is None else average - paper_average
        rows.append([f"delta ({metric}*)" if unknown else "delta", *map(_fmt, deltas), _fmt(delta)])
    return header, rows, _notes(recs, labels, paper, unknown)


def _column(record: AccuracyRecord, unknown: bool) -> str:
    """A task's column heading: its label, `*` where the metric is unknown, MMLU's subject count."""
    label = f"{record.label}*" if unknown else record.label
    done, total = record.subjects, record.subjects_total
    return label if done is None or done == total else f"{label} ({done}/{total} subjects)"


def _paper_average(
    recs: Sequence[AccuracyRecord],
    labels: list[str],
    paper: list[float | None],
    suite: AccuracySuite | None,
) -> float | None:
    """The paper's published average where every suite task is shown, else the mean of the row."""
    model = recs[0].paper_model if recs else ""
    if suite is None or model not in suite.published_average:
        return _mean(paper)
    shown_all = set(labels) == {t.label for t in suite.tasks}
    return suite.published_average[model] if shown_all else _mean(paper)


def _notes(
    recs: Sequence[AccuracyRecord], labels: list[str], paper: list[float | None], unknown: set[str]
) -> list[str]:
    """What a reader must know to read the table: each note one line."""
    notes = [UNKNOWN_NOTE] if unknown else []
    if any(r.metric == "pct_stereotype" for r in recs):
        notes.append(CROWS_NOTE)
    notes += _paper_notes(recs, paper)
    partial = {
        r.label: (r.subjects, r.subjects_total)
        for r in recs
        if r.subjects is not None and r.subjects != r.subjects_total
    }
    for label, (done, total) in partial.items():
        notes.append(
            f"{label}: {done} of the {total} subjects evaluated (those in the data folder); "
            f"the published value covers all {total}, so its delta is not comparable"
        )
    from_eval = {r.label for r in recs if r.few_shot_source == EVAL_SPLIT_SOURCE}
    if from_eval:
        notes.append(
            f"few-shot examples of {', '.join(lb for lb in labels if lb in from_eval)} came from "
            "the evaluation split (the local data has no training split; lm-eval leaves the "
            "current document out); the paper drew them from the training split"
        )
    if any(r.random_weights for r in recs):
        notes.append("RANDOM WEIGHTS: these numbers test the pipeline only")
    return notes


def _paper_notes(recs: Sequence[AccuracyRecord], paper: list[float | None]) -> list[str]:
    """Which published model the paper row is, or why it has no values."""
    if not recs:
        return []
    model, source = recs[0].paper_model, recs[0].paper_model_from
    if source == NO_MATCH:
        return [
            "no published values: the checkpoint's architecture matches no OpenELM model "
            "(a custom architecture)"
        ]
    if all(p is None for p in paper):
        return [f"no published values: this suite has none for {model or 'this model'}"]
    return [f"paper row: {model}" + (f" (chosen by {source})" if source else "")]


def norms_agree(records: Sequence[AccuracyRecord]) -> tuple[bool, float, list[str]]:
    """Whether every norm variant gives the same value per task and metric (max gap in points).

    Variants agree when each gap is within the larger task standard error, i.e. a faster norm
    did not change results beyond the sampling noise of the benchmark.
    """
    groups: dict[tuple[str, str], list[AccuracyRecord]] = {}
    for r in records:
        groups.setdefault((r.label, r.metric), []).append(r)
    worst, agree, norms = 0.0, True, sorted({r.norm for r in records})
    for rs in groups.values():
        values = [r.value_pct for r in rs]
        gap = max(values) - min(values)
        worst = max(worst, gap)
        tolerance = max((r.stderr_pct or 0.0) for r in rs)
        agree = agree and gap <= tolerance + 1e-9
    return agree, worst, norms
