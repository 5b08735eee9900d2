"""The report's tables: pandas DataFrames built from typed records, one per kind of content.

Each table keeps numbers as numbers (`frame`, for CSV and JSON) and has a formatted view for
people (`shown`, for markdown and HTML). Every row is one record of one run: runs from different
machines or protocols are labelled, never averaged together.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from elmbench.measure.stats import Summary, ratio_test
from elmbench.records import (
    AccuracyRecord,
    Estimate,
    FailureRecord,
    NormBenchRecord,
    ProfileRecord,
    Record,
    Run,
    ThroughputRecord,
)

if TYPE_CHECKING:
    import pandas as pd

OLMO = "olmo-1b"  # the paper's speed reference for OpenELM
NATIVE = "native"


@dataclass(frozen=True)
class LabelledRun:
    """A run with the short label its rows and figure series carry (R1, R2, ...)."""

    label: str
    run: Run

    @property
    def hardware(self) -> str:
        """The CPU or device the run's records name (the host's CPU otherwise)."""
        for record in self.run.records:
            context = getattr(record, "context", None)
            if context is not None:
                return str(context.device_hardware)
        return str(self.run.meta.host.get("cpu", "unknown"))


@dataclass(frozen=True)
class Table:
    """One table: a file name, a title, numbers (`frame`), their formatted view and notes."""

    name: str
    title: str
    frame: pd.DataFrame
    shown: pd.DataFrame
    notes: tuple[str, ...] = ()
    common: dict[str, str] = field(default_factory=dict)  # columns equal on every shown row


def label_runs(runs: Sequence[Run]) -> list[LabelledRun]:
    """R1, R2, ... in the order given."""
    return [LabelledRun(f"R{i}", run) for i, run in enumerate(runs, 1)]


def num(value: float | None, digits: int | None = None) -> str:
    """A number as people read it: thousands separators, about three significant digits."""
    if value is None or value != value:  # None or NaN
        return "-"
    if digits is None:
        digits = 0 if abs(value) >= 1000 else 1 if abs(value) >= 100 else 2
    return f"{value:,.{digits}f}"


def interval(est: Estimate | None) -> str:
    """`[low, high]` of an estimate's interval of the median, or '-'."""
    if est is None or est.ci_low is None or est.ci_high is None:
        return "-"
    return f"[{num(est.ci_low)}, {num(est.ci_high)}]"


def _metric(record: Any, name: str) -> Estimate | None:
    metrics: dict[str, Estimate] = getattr(record, "metrics", {})
    return metrics.get(name)


def _value(record: Any, name: str) -> float | None:
    est = _metric(record, name)
    return None if est is None else est.value


def _records(runs: Sequence[LabelledRun], kind: type[Record]) -> list[tuple[LabelledRun, Any]]:
    return [(lr, r) for lr in runs for r in lr.run.of(kind)]


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows)


def _finish(
    name: str,
    title: str,
    rows: list[dict[str, Any]],
    shown: list[dict[str, str]],
    runs: Sequence[LabelledRun],
    notes: Sequence[str] = (),
    keep: Sequence[str] = (),
) -> Table:
    """The table with constant columns of the shown view moved to `common` (`keep` stays)."""
    frame, view = _frame(rows), _frame(shown)
    if len(runs) == 1:
        view = view.drop(columns=["run"], errors="ignore")
    common: dict[str, str] = {}
    if len(view) > 1:
        for column in list(view.columns):
            values = set(view[column].astype(str))
            if len(values) == 1 and column not in keep:
                common[column] = values.pop()
                view = view.drop(columns=[column])
    return Table(name, title, frame, view, tuple(notes), common)


def _case_columns(record: Any) -> dict[str, Any]:
    return {
        "model": record.model,
        "backend/device": f"{record.backend}/{record.device}",
        "kernels": record.kernels,
        "norm": record.norm,
        "dtype": record.dtype,
        "compile": record.compile,
    }


def _shape(record: Any) -> str:
    return f"{record.batch_size}×{record.prompt_tokens}+{record.gen_tokens}"


def _note(record: ThroughputRecord | NormBenchRecord) -> str:
    return "" if not any(w.startswith("unstable") for w in record.warnings) else "unstable timing"


def throughput_table(runs: Sequence[LabelledRun]) -> Table | None:
    """Prefill and decode tokens/s with intervals, roofline share, MFU and peak memory per case."""
    pairs = _records(runs, ThroughputRecord)
    if not pairs:
        return None
    rows, shown = [], []
    on_cpu = any("decode_on_cpu_tokens_per_s" in r.metrics for _, r in pairs)
    refs = _references(pairs)
    referenced = {id(ref) for (_, r) in pairs if (ref := refs[id(r)]) is not r}
    for lr, r in sorted(pairs, key=lambda p: (_sort_key(p[1]), p[0].label)):
        prefill, decode = _metric(r, "prefill_tokens_per_s"), _metric(r, "decode_tokens_per_s")
        peak = _value(r, "peak_memory_bytes")
        ref = refs[id(r)]
        versus = {f: _versus(ref, r, f) for f in ("prefill_tokens_per_s", "decode_tokens_per_s")}
        rows.append({
            "run": lr.label, "run_id": lr.run.meta.run_id, **r.case(),
            "hardware": r.context.device_hardware,
            "prefill_tokens_per_s": _est(prefill, "value"),
            "prefill_ci_low": _est(prefill, "ci_low"),
            "prefill_ci_high": _est(prefill, "ci_high"),
            "decode_tokens_per_s": _est(decode, "value"),
            "decode_ci_low": _est(decode, "ci_low"),
            "decode_ci_high": _est(decode, "ci_high"),
            "prefill_on_cpu_tokens_per_s": _value(r, "prefill_on_cpu_tokens_per_s"),
            "decode_on_cpu_tokens_per_s": _value(r, "decode_on_cpu_tokens_per_s"),
            "decode_bandwidth_gb_per_s": _value(r, "decode_bandwidth_gb_per_s"),
            "roofline_gb_per_s": r.roofline.peak_gb_per_s if r.roofline else None,
            "decode_roofline_pct": _value(r, "decode_roofline_pct"),
            "prefill_mfu_pct": _value(r, "prefill_mfu_pct"),
            "peak_memory_mib": None if peak is None else peak / 2**20,
            "repetitions": r.protocol.repetitions,
            "order": r.protocol.order,
            "stable": r.stable,
            "reference_norm": ref.norm,
            **{f"{f.split('_')[0]}_vs_reference{k}": v[i] if v else None
               for f, v in versus.items()
               for i, k in enumerate(("", "_ci_low", "_ci_high"))},
        })  # fmt: skip
        shown.append({
            "run": lr.label, **_case_columns(r), "B×P+N": _shape(r),
            "prefill tok/s": num(_est(prefill, "value")), "prefill 95% CI": interval(prefill),
            "decode tok/s": num(_est(decode, "value")), "decode 95% CI": interval(decode),
            **({"prefill on-CPU": num(_value(r, "prefill_on_cpu_tokens_per_s")),
                "decode on-CPU": num(_value(r, "decode_on_cpu_tokens_per_s"))}
               if on_cpu else {}),
            **({"prefill vs": _ratio_text(r, referenced, versus["prefill_tokens_per_s"]),
                "decode vs": _ratio_text(r, referenced, versus["decode_tokens_per_s"])}
               if referenced else {}),
            "% roofline": num(_value(r, "decode_roofline_pct"), 1),
            "MFU %": num(_value(r, "prefill_mfu_pct"), 1),
            "peak MiB": num(None if peak is None else peak / 2**20, 0),
            "reps": str(r.protocol.repetitions), "order": r.protocol.order,
            "note": _note(r),
        })  # fmt: skip
    notes = _throughput_notes([r for _, r in pairs])
    if on_cpu:
        notes.append(
            "on-CPU: tokens/s with the time the (one) worker thread waited for a CPU taken out "
            "(one-thread runs)"
        )
    if referenced:
        notes.append(
            "prefill vs / decode vs: the case over its reference, the same case in the same run "
            "with the naive norm (else its first variant), with a 95% interval; in an "
            "interleaved run repetition by repetition (both ran in the same round, so a drift "
            "of the machine cancels), "
            "otherwise the ratio of medians (bootstrap interval)"
        )
    keep = ("prefill tok/s", "decode tok/s", "prefill 95% CI", "decode 95% CI", "norm")
    return _finish("throughput", "Throughput", rows, shown, runs, notes, keep)


def _references(
    pairs: Sequence[tuple[LabelledRun, ThroughputRecord]],
) -> dict[int, ThroughputRecord]:
    """Each record's reference in its own run: the same case with the naive norm (the paper's),
    else the case's first norm variant; a record is its own reference when it has none other."""
    groups: dict[tuple[Any, ...], list[ThroughputRecord]] = {}
    for lr, r in pairs:
        key = (lr.label, *(v for k, v in r.case().items() if k != "norm"))
        groups.setdefault(key, []).append(r)
    refs: dict[int, ThroughputRecord] = {}
    for members in groups.values():
        ref = next((r for r in members if r.norm == "naive"), members[0])
        refs |= {id(r): ref for r in members}
    return {id(r): refs[id(r)] for _, r in pairs}


def _versus(
    ref: ThroughputRecord, record: ThroughputRecord, figure: str
) -> tuple[float, float | None, float | None] | None:
    """A figure of a record over its reference's, with a 95% interval (None for the reference).

    In an interleaved run repetition r of both ran in the same round, so the ratio is taken
    repetition by repetition (a drift of the machine's speed cancels) and its interval is the
    order-statistic interval of their median; otherwise the ratio of medians with its bootstrap
    interval (`ratio_test`).
    """
    a, b = _metric(ref, figure), _metric(record, figure)
    if ref is record or a is None or b is None or not a.raw or not b.raw:
        return None
    if ref.protocol.order == record.protocol.order == "interleaved":
        paired = Summary.of([y / x for x, y in zip(a.raw, b.raw, strict=False)])
        return paired.median, paired.ci_low, paired.ci_high
    test = ratio_test(a.raw, b.raw)
    return test.ratio, test.ci_low, test.ci_high


def _ratio_text(
    record: ThroughputRecord,
    referenced: set[int],
    value: tuple[float, float | None, float | None] | None,
) -> str:
    if value is None:
        return "reference" if id(record) in referenced else "-"
    ratio, low, high = value
    if low is None or high is None:
        return f"{ratio:.2f}x"
    return f"{ratio:.2f}x [{low:.2f}, {high:.2f}]"


def _est(est: Estimate | None, attr: str) -> float | None:
    return None if est is None else getattr(est, attr)


def _sort_key(r: Any) -> tuple[Any, ...]:
    return (r.model, r.backend, r.device, r.kernels, r.dtype, r.compile, r.batch_size,
            r.prompt_tokens, r.gen_tokens)  # fmt: skip


def _throughput_notes(records: Sequence[ThroughputRecord]) -> list[str]:
    notes = [
        "tokens/s are medians over repetitions; 95% CI: the distribution-free interval of the "
        "median (order statistics)"
    ]
    if any(r.roofline is not None and r.roofline.probes for r in records):
        notes.append(
            "% roofline: decode bandwidth as a share of the read-bandwidth probes beside each "
            "repetition (the median of the paired shares)"
        )
    skipped = sorted({why for r in records for k, why in r.skipped.items() if "mfu" in k})
    notes += [f"MFU not given: {why}" for why in skipped]
    if any(not r.stable for r in records):
        notes.append(
            "unstable timing: a section varied by more than the protocol's limit (coefficient "
            "of variation); read its interval, not only its median"
        )
    if any(r.protocol.order != "interleaved" for r in records) and len(records) > 1:
        notes.append(
            "order sequential: each case's repetitions ran together, so a drift of the "
            "machine's speed between cases is part of their difference"
        )
    return notes


def norm_bench_table(runs: Sequence[LabelledRun]) -> Table | None:
    """Time per call and bandwidth of each norm variant and shape."""
    pairs = _records(runs, NormBenchRecord)
    if not pairs:
        return None
    rows, shown = [], []
    key: Callable[[tuple[LabelledRun, NormBenchRecord]], tuple[Any, ...]] = lambda p: (  # noqa: E731
        p[1].model,
        p[1].backend,
        p[1].dtype,
        p[1].where,
        p[1].tokens,
        p[1].norm,
        p[0].label,
    )
    for lr, r in sorted(pairs, key=key):
        call, gbs = _metric(r, "norm_call_us"), _metric(r, "norm_bandwidth_gb_per_s")
        rows.append({
            "run": lr.label, "run_id": lr.run.meta.run_id, **r.case(), "rows": r.rows,
            "dim": r.dim, "norm_call_us": _est(call, "value"),
            "norm_call_ci_low_us": _est(call, "ci_low"),
            "norm_call_ci_high_us": _est(call, "ci_high"),
            "norm_bandwidth_gb_per_s": _est(gbs, "value"),
            "norm_roofline_pct": _value(r, "norm_roofline_pct"),
            "repetitions": r.protocol.repetitions,
        })  # fmt: skip
        shown.append({
            "run": lr.label, "model": r.model, "backend/device": f"{r.backend}/{r.device}",
            "dtype": r.dtype, "shape": f"{r.where} {r.tokens} tok ({r.rows}×{r.dim})",
            "norm": r.norm, "µs/call": num(_est(call, "value")), "95% CI": interval(call),
            "GB/s": num(_est(gbs, "value")), "% roofline": num(_value(r, "norm_roofline_pct"), 1),
            "reps": str(r.protocol.repetitions), "note": _note(r),
        })  # fmt: skip
    notes = ["µs/call: the median over repetitions of many calls each; bytes: read x, write y"]
    return _finish("norm_bench", "RMSNorm micro-benchmark", rows, shown, runs, notes,
                   keep=("norm", "µs/call"))  # fmt: skip


def profile_table(runs: Sequence[LabelledRun]) -> Table | None:
    """Share of each operator category per profiled phase, the norm first, and the what-if."""
    from elmbench.profile.categories import CATEGORIES

    pairs = _records(runs, ProfileRecord)
    if not pairs:
        return None
    rows, shown = [], []
    for lr, r in sorted(pairs, key=lambda p: (_sort_key(p[1]), p[1].phase, p[1].norm)):
        shares = {c: r.category_share(c) for c in CATEGORIES}
        per_token = r.wall_ms_per_token
        rows.append({
            "run": lr.label, "run_id": lr.run.meta.run_id, **r.case(),
            "time_basis": r.time_basis, "norm_share_pct": r.norm_share.share_pct,
            **{f"{c}_pct": v for c, v in shares.items()},
            "ms_per_token": per_token,
            "ms_per_token_without_norm": r.ms_per_token_without_norm,
            "max_speedup_from_norm": r.max_speedup_from_norm,
        })  # fmt: skip
        shown.append({
            "run": lr.label, **_case_columns(r), "B×P+N": _shape(r), "phase": r.phase,
            **{f"{c} %": num(v, 1) for c, v in shares.items()},
            "ms/token": num(per_token), "without norm": num(r.ms_per_token_without_norm),
            "max speedup": "-" if r.max_speedup_from_norm is None
            else f"{r.max_speedup_from_norm:.2f}x",
        })  # fmt: skip
    bases = sorted({r.time_basis for _, r in pairs})
    notes = [
        f"shares are of {', '.join(bases)} inside each phase; ms/token is the same loop without "
        "the profiler; 'without norm': the what-if bound if the norms took no time"
    ]
    return _finish("profile", "Profile: where the time goes", rows, shown, runs, notes,
                   keep=("norm", "phase", "norm %"))  # fmt: skip


def accuracy_tables(runs: Sequence[LabelledRun]) -> list[Table]:
    """One table per suite: measured vs the paper with standard errors, and the averages."""
    pairs = _records(runs, AccuracyRecord)
    suites = sorted({r.suite for _, r in pairs})
    return [_accuracy_table(runs, [(lr, r) for lr, r in pairs if r.suite == s], s) for s in suites]


def _accuracy_table(
    runs: Sequence[LabelledRun], pairs: list[tuple[LabelledRun, AccuracyRecord]], suite: str
) -> Table:
    rows: list[dict[str, Any]] = []
    shown: list[dict[str, str]] = []
    groups: dict[tuple[str, str, str, str, str, str], list[AccuracyRecord]] = {}
    for lr, r in pairs:
        groups.setdefault((lr.label, r.model, r.backend, r.kernels, r.dtype, r.norm), []).append(r)
    labels = {lr.label: lr for lr in runs}
    for (label, *_), recs in sorted(groups.items()):
        lr = labels[label]
        for r in recs:
            rows.append(_accuracy_row(lr, r, r.label, r.value_pct, r.stderr_pct, r.published_pct))
            shown.append(_accuracy_shown(lr, r, r.label, r.value_pct, r.stderr_pct,
                                         r.published_pct))  # fmt: skip
        for metric, chosen in _average_sets(recs):
            if len(chosen) < 2:
                continue
            measured = statistics.fmean(r.value_pct for r in chosen)
            paper, stderr = _paper_average(chosen, suite), _mean_stderr(chosen)
            first = replace(chosen[0], metric=metric)
            rows.append(_accuracy_row(lr, first, "Average", measured, stderr, paper))
            shown.append(_accuracy_shown(lr, first, "Average", measured, stderr, paper))
    notes = ["s.e.: lm-eval's standard error of the task score; the average's s.e. assumes "
             "independent tasks (root of the summed squares over the count)"]  # fmt: skip
    if any(r.random_weights for _, r in pairs):
        notes.append("RANDOM WEIGHTS in some rows: their numbers test the pipeline only")
    if any(not r.metric_known for _, r in pairs):
        notes.append(
            "where the paper's acc/acc_norm choice is unknown both metrics are shown, each with "
            "its own average"
        )
    title = f"Accuracy: {suite}"
    return _finish(f"accuracy_{suite}", title, rows, shown, runs, notes,
                   keep=("task", "measured %", "paper %"))  # fmt: skip


def _average_sets(recs: Sequence[AccuracyRecord]) -> list[tuple[str, list[AccuracyRecord]]]:
    """The records an average is over: one per task, the task's own metric; where the paper's
    choice is unknown, one average with acc and one with acc_norm for those tasks."""
    tasks: dict[str, list[AccuracyRecord]] = {}
    for r in recs:
        tasks.setdefault(r.label, []).append(r)
    unknown = any(not r.metric_known for r in recs)
    out = []
    for choice in ("acc", "acc_norm") if unknown else ("",):
        chosen = []
        for task_recs in tasks.values():
            pick = [r for r in task_recs if r.metric == choice] if choice else []
            chosen.append(pick[0] if pick and not pick[0].metric_known else task_recs[0])
        out.append((f"{choice}*" if choice else "task metric", chosen))
    return out


def _paper_average(recs: Sequence[AccuracyRecord], suite: str) -> float | None:
    """The paper's own average where the run covers the suite's every task, else the mean."""
    published = [r.published_pct for r in recs]
    if any(p is None for p in published):
        return None
    try:
        from elmbench.accuracy.suites import AccuracySuite
        from elmbench.suites import load_suite, suite_path

        spec = load_suite(suite_path(suite))
    except Exception:  # a suite file that is gone or renamed: fall back to the mean
        spec = None
    model = recs[0].paper_model
    covered = isinstance(spec, AccuracySuite) and {r.label for r in recs} == {
        t.label for t in spec.tasks
    }
    if isinstance(spec, AccuracySuite) and covered and model in spec.published_average:
        return spec.published_average[model]
    return statistics.fmean(p for p in published if p is not None)


def _mean_stderr(recs: Sequence[AccuracyRecord]) -> float | None:
    errors = [r.stderr_pct for r in recs]
    if any(e is None for e in errors):
        return None
    return sum(e * e for e in errors if e is not None) ** 0.5 / len(errors)


def _accuracy_row(
    lr: LabelledRun, r: AccuracyRecord, task: str, value: float, se: float | None,
    paper: float | None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "run": lr.label, "run_id": lr.run.meta.run_id, "model": r.model, "backend": r.backend,
        "kernels": r.kernels, "dtype": r.dtype, "norm": r.norm, "suite": r.suite, "task": task,
        "metric": r.metric, "shots": r.shots, "samples": r.samples if task != "Average" else None,
        "measured_pct": value, "stderr_pct": se, "paper_pct": paper,
        "delta_pct": None if paper is None else value - paper,
        "random_weights": r.random_weights,
    }  # fmt: skip


def _accuracy_shown(
    lr: LabelledRun, r: AccuracyRecord, task: str, value: float, se: float | None,
    paper: float | None,
) -> dict[str, str]:  # fmt: skip
    delta = None if paper is None else value - paper
    return {
        "run": lr.label, "model": r.model, "backend": r.backend, "dtype": r.dtype,
        "norm": r.norm, "task": task, "metric": r.metric, "shots": str(r.shots),
        "measured %": num(value), "± s.e.": num(se), "paper %": num(paper),
        "delta": "-" if delta is None else f"{delta:+.2f}",
        "delta / s.e.": "-" if delta is None or not se else f"{delta / se:+.1f}",
    }  # fmt: skip


def olmo_table(runs: Sequence[LabelledRun]) -> Table | None:
    """OpenELM beside OLMo-1B measured in the same run, setting and shape: the paper's gap."""
    rows, shown = [], []
    for lr in runs:
        recs = lr.run.of(ThroughputRecord)
        olmo = {_setting(r): r for r in recs if r.model == OLMO and r.norm in (NATIVE, "naive")}
        olmo |= {_setting(r): r for r in recs if r.model == OLMO and r.norm == NATIVE}
        for r in sorted(recs, key=lambda r: (_setting(r), r.model != OLMO, r.model, r.norm)):
            ref = olmo.get(_setting(r))
            if ref is None:
                continue
            decode, ref_decode = (_value(x, "decode_tokens_per_s") for x in (r, ref))
            prefill, ref_pre = (_value(x, "prefill_tokens_per_s") for x in (r, ref))
            d_ratio = None if decode is None or not ref_decode else decode / ref_decode
            p_ratio = None if prefill is None or not ref_pre else prefill / ref_pre
            rows.append({
                "run": lr.label, "run_id": lr.run.meta.run_id, **r.case(),
                "params": r.num_params, "norms_per_forward": r.num_norms,
                "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode,
                "prefill_vs_olmo": p_ratio, "decode_vs_olmo": d_ratio,
            })  # fmt: skip
            shown.append({
                "run": lr.label, "backend/device": f"{r.backend}/{r.device}", "dtype": r.dtype,
                "kernels": r.kernels, "compile": r.compile, "B×P+N": _shape(r),
                "model": r.model, "norm": r.norm, "params (M)": num(r.num_params / 1e6, 0),
                "norms/forward": str(r.num_norms),
                "prefill tok/s": num(prefill), "decode tok/s": num(decode),
                "prefill vs OLMo": "-" if p_ratio is None else f"{p_ratio:.2f}x",
                "decode vs OLMo": "-" if d_ratio is None else f"{d_ratio:.2f}x",
            })  # fmt: skip
    if not any(r["model"] != OLMO for r in rows):
        return None
    notes = [
        "each row against OLMo-1B with its own LayerNorm, measured in the same run, setting and "
        "shape (random weights: speed does not depend on their values)"
    ]
    return _finish("openelm_vs_olmo", "OpenELM vs OLMo", rows, shown, runs, notes,
                   keep=("model", "norm"))  # fmt: skip


def _setting(r: ThroughputRecord) -> tuple[Any, ...]:
    return (r.backend, r.device, r.kernels, r.dtype, r.compile, r.batch_size, r.prompt_tokens,
            r.gen_tokens)  # fmt: skip


def failures_table(runs: Sequence[LabelledRun]) -> Table | None:
    """Cases that failed or were left out, with the reason."""
    pairs = _records(runs, FailureRecord)
    if not pairs:
        return None
    rows, shown = [], []
    for lr, r in pairs:
        case = ", ".join(f"{k}={v}" for k, v in r.params.items())
        rows.append({"run": lr.label, "run_id": lr.run.meta.run_id,
                     "measurement": r.measurement, "status": r.status, "case": case,
                     "reason": r.reason})  # fmt: skip
        shown.append({"run": lr.label, "measurement": r.measurement, "status": r.status,
                      "case": case, "reason": r.reason})  # fmt: skip
    return _finish("failures", "Failed and skipped cases", rows, shown, runs,
                   keep=("case", "reason"))  # fmt: skip


def runs_table(runs: Sequence[LabelledRun]) -> Table:
    """Which run is which: id, kind, machine, device, when, code, protocol order."""
    rows, shown = [], []
    for lr in runs:
        meta = lr.run.meta
        orders = sorted({r.protocol.order for r in lr.run.of(ThroughputRecord)})
        membw = (meta.extra.get("membw") or {}).get("membw_gb_per_s")
        host = meta.host
        row = {
            "run": lr.label, "run_id": meta.run_id, "kind": meta.kind,
            "hostname": host.get("hostname"), "hardware": lr.hardware,
            "cores": host.get("usable_cores"), "created_utc": meta.created_utc,
            "git_sha": meta.git_sha, "git_dirty": meta.git_dirty,
            "records": len(lr.run.records), "order": ", ".join(orders),
            "start_bandwidth_gb_per_s": membw, "finished": meta.finished_utc is not None,
        }  # fmt: skip
        rows.append(row)
        git = "-" if not meta.git_sha else meta.git_sha[:7] + ("+dirty" if meta.git_dirty else "")
        shown.append({
            "run": lr.label, "run id": meta.run_id, "kind": meta.kind,
            "machine": f"{host.get('hostname')} ({lr.hardware}, {host.get('usable_cores')} cores)",
            "git": git, "records": str(len(lr.run.records)), "order": ", ".join(orders) or "-",
            "start GB/s": num(membw, 1),
            "finished": "yes" if meta.finished_utc else "no (interrupted)",
        })  # fmt: skip
    import pandas as pd

    return Table("runs", "Runs", pd.DataFrame(rows), pd.DataFrame(shown))


def build_tables(runs: Sequence[LabelledRun]) -> list[Table]:
    """Every table the runs have content for, the runs first."""
    built: list[Table | None] = [
        runs_table(runs),
        throughput_table(runs),
        olmo_table(runs),
        norm_bench_table(runs),
        profile_table(runs),
        *accuracy_tables(runs),
        failures_table(runs),
    ]
    return [t for t in built if t is not None]
