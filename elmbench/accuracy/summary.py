"""The per-suite summary of accuracy records: tasks as columns, measured vs paper, average.

Where the paper's acc/acc_norm choice is unknown, both are shown, each with its own average; the
closer one is never picked silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Record = dict[str, Any]
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
    records: Sequence[Record], norm: str
) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, notes) for one norm variant's ok records of one suite, in task order."""
    recs = [r for r in records if r.get("status") == "ok" and r.get("norm") == norm]
    labels: list[str] = []
    for r in recs:
        if r["label"] not in labels:
            labels.append(r["label"])
    by = {(r["label"], r["metric"]): r for r in recs}
    unknown = {r["label"] for r in recs if not r.get("metric_known", True)}

    def pick(label: str, preferred: str) -> Record:
        if (label, preferred) in by:
            return by[(label, preferred)]
        return next(r for r in recs if r["label"] == label)

    header = ["", *[f"{lb}*" if lb in unknown else lb for lb in labels], "Average"]
    paper = [pick(lb, "acc").get("published_pct") for lb in labels]
    rows = [["paper", *map(_fmt, paper), _fmt(_mean(paper))]]
    for metric in ("acc", "acc_norm") if unknown else ("acc",):
        measured = [pick(lb, metric)["value_pct"] for lb in labels]
        name = f"measured ({metric}*)" if unknown else "measured"
        rows.append([name, *map(_fmt, measured), _fmt(_mean(measured))])
        deltas = [None if p is None else m - p for m, p in zip(measured, paper, strict=True)]
        rows.append(
            [f"delta ({metric}*)" if unknown else "delta", *map(_fmt, deltas), _fmt(_mean(deltas))]
        )
    notes = [UNKNOWN_NOTE] if unknown else []
    if any(r["metric"] == "pct_stereotype" for r in recs):
        notes.append(
            "CrowS-Pairs is compared as pct_stereotype x 100 (an inference from the "
            "published values, not a stated fact); lower is less biased"
        )
    if any(r.get("random_weights") for r in recs):
        notes.append("RANDOM WEIGHTS: these numbers test the pipeline only")
    return header, rows, notes


def norms_agree(records: Sequence[Record]) -> tuple[bool, float, list[str]]:
    """Whether every norm variant gives the same value per task and metric (max gap in points).

    Variants agree when each gap is within the larger task standard error, i.e. a faster norm
    did not change results beyond the sampling noise of the benchmark.
    """
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        if r.get("status") == "ok":
            groups.setdefault((r["label"], r["metric"]), []).append(r)
    worst, agree, norms = 0.0, True, sorted({r["norm"] for r in records if "norm" in r})
    for rs in groups.values():
        values = [r["value_pct"] for r in rs]
        gap = max(values) - min(values)
        worst = max(worst, gap)
        tolerance = max((r.get("stderr_pct") or 0.0) for r in rs)
        agree = agree and gap <= tolerance + 1e-9
    return agree, worst, norms
