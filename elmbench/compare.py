"""`compare`: a baseline run against a new one, case by case. Timed figures get the ratio of
medians, its bootstrap interval, a Mann-Whitney test (Holm over the comparison) and a minimum-
change floor; accuracy gets the delta against the combined standard error. Reads records only.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elmbench.errors import ElmbenchError
from elmbench.measure.stats import holm, ratio_test
from elmbench.records import (
    RECORDS_FILE,
    RUN_FILE,
    AccuracyRecord,
    FailureRecord,
    NormBenchRecord,
    ProfileRecord,
    Record,
    Run,
    ThroughputRecord,
    read_run,
)

FASTER, SLOWER, SAME = "faster", "slower", "no significant change"
BETTER, WORSE = "better", "worse"  # accuracy
NOT_COMPARABLE, FAILED = "not comparable", "failed"
ONLY_BASE, ONLY_NEW = "only in baseline", "only in new"
REGRESSIONS = (SLOWER, WORSE, FAILED)
TESTED = (FASTER, SLOWER, SAME, BETTER, WORSE)

ALPHA = 0.05
DEFAULT_THRESHOLD_PCT = 5.0
BASELINES_DIR = Path("reports") / "baselines"

# The timed figures compared, per record kind; higher is better for each.
TIMED: dict[type[Record], tuple[str, ...]] = {
    ThroughputRecord: (
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "prefill_on_cpu_tokens_per_s",
        "decode_on_cpu_tokens_per_s",
    ),
    NormBenchRecord: ("norm_bandwidth_gb_per_s",),
}
FIGURE_NAMES = {
    "prefill_tokens_per_s": "prefill tok/s",
    "decode_tokens_per_s": "decode tok/s",
    "prefill_on_cpu_tokens_per_s": "prefill on-CPU tok/s",
    "decode_on_cpu_tokens_per_s": "decode on-CPU tok/s",
    "norm_bandwidth_gb_per_s": "norm GB/s",
}
# Figures a record may lack by design (one-thread runs only): compared where both runs have them.
OPTIONAL = ("prefill_on_cpu_tokens_per_s", "decode_on_cpu_tokens_per_s")
# Case fields that say where and how a case ran rather than what it is: a case that differs from
# its counterpart only in these is shown as not comparable, with the differing fields.
SETTING_FIELDS = ("backend", "device", "kernels")
PROTOCOL_FIELDS = ("warmup", "min_repetitions", "min_seconds", "precision_pct", "max_seconds")
LOWER_IS_BETTER = ("pct_stereotype",)  # CrowS-Pairs: a lower share of stereotyped choices


@dataclass(frozen=True)
class Row:
    """One figure of one case, baseline against new, with its verdict."""

    kind: str
    case: dict[str, Any]
    figure: str
    verdict: str
    unit: str = ""
    base: float | None = None
    new: float | None = None
    ratio: float | None = None  # new / base (timed figures)
    ci_low: float | None = None
    ci_high: float | None = None
    delta: float | None = None  # new - base in points (accuracy)
    stderr: float | None = None  # combined standard error of the delta (accuracy)
    p_value: float | None = None
    p_adjusted: float | None = None
    min_p_value: float | None = None  # the smallest p-value these repetition counts allow
    detectable_pct: float | None = None  # the smallest change this pair could have called
    detail: str = ""

    @property
    def change_pct(self) -> float | None:
        """The change of a timed figure in % (positive: the new run is faster)."""
        return None if self.ratio is None else 100.0 * (self.ratio - 1.0)


@dataclass
class Comparison:
    """Every row of a comparison, the notes a reader needs, and the exit code it implies."""

    base: Run
    new: Run
    threshold_pct: float
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """How many rows got each verdict."""
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.verdict] = out.get(row.verdict, 0) + 1
        return out

    @property
    def exit_code(self) -> int:
        """1 on a significant regression (or a case that failed anew), 2 when nothing was
        comparable, else 0."""
        if any(r.verdict in REGRESSIONS for r in self.rows):
            return 1
        if not any(r.verdict in TESTED for r in self.rows):
            return 2
        return 0

    def geometric_means(self) -> dict[str, tuple[float, int, float, float]]:
        """Per timed figure: (geometric mean of the ratios, cases, lowest, highest)."""
        ratios: dict[str, list[float]] = {}
        for row in self.rows:
            if row.ratio is not None and row.verdict in TESTED and row.ratio > 0:
                ratios.setdefault(row.figure, []).append(row.ratio)
        return {
            figure: (statistics.geometric_mean(values), len(values), min(values), max(values))
            for figure, values in ratios.items()
        }


def resolve_run(ref: str | Path, baselines: Path = BASELINES_DIR) -> Run:
    """A run by folder or id, or a saved baseline by name (`ci` is reports/baselines/ci)."""
    path = Path(ref)
    named = baselines / str(ref)
    if not path.exists() and (named / RUN_FILE).is_file():
        return read_run(named)
    return read_run(ref)


def compare_runs(
    base: Run,
    new: Run,
    threshold_pct: float = DEFAULT_THRESHOLD_PCT,
    alpha: float = ALPHA,
    figures: Sequence[str] | None = None,
) -> Comparison:
    """Match two runs case by case and give every figure its verdict (`figures`: only these of
    the timed figures; accuracy is always compared)."""
    if not threshold_pct >= 0:
        raise ElmbenchError(f"--threshold must be a percentage >= 0 (found {threshold_pct})")
    known = [f for names in TIMED.values() for f in names]
    unknown = [f for f in figures or () if f not in known]
    if unknown:
        raise ElmbenchError(
            f"--figures: unknown figure '{unknown[0]}'; figures: {', '.join(known)}"
        )
    base_cases, new_cases = _by_case(base.records), _by_case(new.records)
    rows: list[Row] = []
    pending: list[tuple[Record, Record]] = []
    for key, old in base_cases.items():
        if key in new_cases:
            pending.append((old, new_cases[key]))
    only_base = [r for k, r in base_cases.items() if k not in new_cases]
    only_new = [r for k, r in new_cases.items() if k not in base_cases]
    paired, only_base, only_new = _pair_by_what(only_base, only_new)
    for old, now in paired:
        differing = _differing_case(old, now)
        rows += [
            Row(_kind(old), old.case(), figure, NOT_COMPARABLE, detail=differing)
            for figure in _figures(old)
        ]
    for old, now in pending:
        rows += _compare_pair(base, new, old, now)
    if figures:
        rows = [r for r in rows if r.kind == AccuracyRecord.KIND or r.figure in figures
                or r.verdict in (ONLY_BASE, ONLY_NEW)]  # fmt: skip
    rows += [_only(r, ONLY_BASE) for r in only_base] + [_only(r, ONLY_NEW) for r in only_new]
    rows = _judge(rows, threshold_pct, alpha)
    comparison = Comparison(base, new, threshold_pct, rows)
    comparison.notes = _notes(comparison, alpha)
    return comparison


def _kind(record: Record) -> str:
    if isinstance(record, FailureRecord):
        return record.measurement
    return record.KIND


def _by_case(records: Iterable[Record]) -> dict[tuple[str, str], Record]:
    """Records by (kind, case id); a failure counts as the case it failed to measure."""
    out: dict[tuple[str, str], Record] = {}
    for record in records:
        kind = _kind(record)
        if kind in (ThroughputRecord.KIND, NormBenchRecord.KIND, AccuracyRecord.KIND):
            out[(kind, record.case_id)] = record
    return out


def _figures(record: Record) -> tuple[str, ...]:
    """The figures a record is compared on (the optional ones where it has them)."""
    metrics = getattr(record, "metrics", {})
    for cls, figures in TIMED.items():
        if _kind(record) == cls.KIND:
            return tuple(f for f in figures if f not in OPTIONAL or f in metrics)
    if isinstance(record, AccuracyRecord):
        return (record.metric,)
    if isinstance(record, FailureRecord):
        return (str(record.params.get("metric", "")),)
    return ()


def _what(record: Record) -> tuple[Any, ...]:
    """The case without the fields that say where and how it ran."""
    case = record.case()
    return (_kind(record), *sorted((k, str(v)) for k, v in case.items() if k not in SETTING_FIELDS))


def _pair_by_what(
    base: list[Record], new: list[Record]
) -> tuple[list[tuple[Record, Record]], list[Record], list[Record]]:
    """Unmatched cases that are the same case on another device, backend or kernels, one to one."""
    base_what: dict[tuple[Any, ...], list[Record]] = {}
    new_what: dict[tuple[Any, ...], list[Record]] = {}
    for r in base:
        base_what.setdefault(_what(r), []).append(r)
    for r in new:
        new_what.setdefault(_what(r), []).append(r)
    pairs = [
        (base_what[w][0], new_what[w][0])
        for w in base_what
        if len(base_what[w]) == 1 and len(new_what.get(w, [])) == 1
    ]
    paired = {id(r) for pair in pairs for r in pair}
    return (
        pairs,
        [r for r in base if id(r) not in paired],
        [r for r in new if id(r) not in paired],
    )


def _differing_case(old: Record, now: Record) -> str:
    a, b = old.case(), now.case()
    return "; ".join(f"{k}: {a[k]} vs {b[k]}" for k in SETTING_FIELDS if k in a and a[k] != b[k])


def _only(record: Record, verdict: str) -> Row:
    detail = ""
    if isinstance(record, FailureRecord):
        detail = f"{record.status} there: {record.reason}"
    return Row(_kind(record), record.case(), ", ".join(_figures(record)), verdict, detail=detail)


def _compare_pair(base: Run, new: Run, old: Record, now: Record) -> list[Row]:
    kind, case = _kind(old), old.case()
    figures = _figures(old)
    if isinstance(now, FailureRecord) and not isinstance(old, FailureRecord):
        return [Row(kind, case, f, FAILED, detail=f"new run: {now.reason}") for f in figures]
    if isinstance(old, FailureRecord) or isinstance(now, FailureRecord):
        which = "both runs" if isinstance(now, FailureRecord) else "the baseline"
        reason = old.reason if isinstance(old, FailureRecord) else ""
        return [Row(kind, case, f, NOT_COMPARABLE, detail=f"failed in {which}: {reason}".strip())
                for f in figures]  # fmt: skip
    differing = _differing_settings(base, new, old, now)
    if differing:
        return [Row(kind, case, f, NOT_COMPARABLE, detail=differing) for f in figures]
    if isinstance(old, AccuracyRecord) and isinstance(now, AccuracyRecord):
        return [_accuracy_row(old, now)]
    return [row for f in figures if (row := _timed_row(kind, case, f, old, now)) is not None]


def _differing_settings(base: Run, new: Run, old: Record, now: Record) -> str:
    """What makes two records of the same case measure different things ('' when nothing)."""
    pairs: list[tuple[str, Any, Any]] = []
    if isinstance(old, (ThroughputRecord, NormBenchRecord)) and isinstance(
        now, (ThroughputRecord, NormBenchRecord)
    ):
        for name in ("device_profile", "device_hardware", "weights", "seed", "quantize"):
            pairs.append((name, getattr(old.context, name), getattr(now.context, name)))
        for name in PROTOCOL_FIELDS:
            pairs.append((f"protocol {name}", getattr(old.protocol, name),
                          getattr(now.protocol, name)))  # fmt: skip
        if old.device == "cpu":
            pairs.append(("usable cores", base.meta.host.get("usable_cores"),
                          new.meta.host.get("usable_cores")))  # fmt: skip
    if isinstance(old, ThroughputRecord) and isinstance(now, ThroughputRecord):
        pairs.append(("threads", old.describe.get("threads"), now.describe.get("threads")))
    if isinstance(old, AccuracyRecord) and isinstance(now, AccuracyRecord):
        for name in ("weights", "tokenizer", "samples", "shots", "limit", "few_shot_source"):
            pairs.append((name, getattr(old, name), getattr(now, name)))
    return "; ".join(f"{name}: {a} vs {b}" for name, a, b in pairs if a != b)


def _timed_row(
    kind: str, case: dict[str, Any], figure: str, old: Record, now: Record
) -> Row | None:
    old_est = getattr(old, "metrics", {}).get(figure)
    new_est = getattr(now, "metrics", {}).get(figure)
    if figure in OPTIONAL and old_est is None and new_est is None:
        return None
    if old_est is None or new_est is None or not old_est.raw or not new_est.raw:
        why = getattr(now if new_est is None else old, "skipped", {}).get(figure, "no raw values")
        return Row(kind, case, figure, NOT_COMPARABLE, detail=f"not measured: {why}")
    test = ratio_test(old_est.raw, new_est.raw)
    if test.p_value is None:
        return Row(kind, case, figure, NOT_COMPARABLE, new_est.unit, old_est.value,
                   new_est.value, ratio=test.ratio,
                   detail="one repetition on a side: nothing to test")  # fmt: skip
    return Row(
        kind,
        case,
        figure,
        SAME,  # judged with the whole family's p-values
        unit=new_est.unit,
        base=old_est.value,
        new=new_est.value,
        ratio=test.ratio,
        ci_low=test.ci_low,
        ci_high=test.ci_high,
        p_value=test.p_value,
        min_p_value=test.min_p_value,
        detectable_pct=test.ci_half_width_pct,
    )


def _accuracy_row(old: AccuracyRecord, now: AccuracyRecord) -> Row:
    from scipy.stats import norm

    delta = now.value_pct - old.value_pct
    if old.stderr_pct is None or now.stderr_pct is None:
        verdict = SAME if abs(delta) < 1e-9 else NOT_COMPARABLE
        detail = "" if verdict == SAME else "no standard error to judge the change by"
        return Row(AccuracyRecord.KIND, old.case(), old.metric, verdict, "%", old.value_pct,
                   now.value_pct, delta=delta, detail=detail)  # fmt: skip
    stderr = math.hypot(old.stderr_pct, now.stderr_pct)
    if stderr == 0:  # both at 0% or 100%: any change is beyond sampling noise
        p_value = 1.0 if delta == 0 else 0.0
    else:
        p_value = 2 * float(norm.sf(abs(delta) / stderr))
    return Row(
        AccuracyRecord.KIND,
        old.case(),
        old.metric,
        SAME,
        unit="%",
        base=old.value_pct,
        new=now.value_pct,
        delta=delta,
        stderr=stderr,
        p_value=p_value,
    )


def _judge(rows: list[Row], threshold_pct: float, alpha: float) -> list[Row]:
    """Verdicts for the tested rows: Holm over the family, then the floor for timed figures."""
    from dataclasses import replace

    from scipy.stats import norm

    adjusted = holm([r.p_value if r.verdict == SAME else None for r in rows])
    tests = sum(p is not None for p in adjusted)
    out = []
    for row, p_adj in zip(rows, adjusted, strict=True):
        if p_adj is None:
            out.append(row)
            continue
        significant = p_adj < alpha
        if row.ratio is not None:
            min_p = row.min_p_value or 0.0
            change = abs(row.ratio - 1.0) * 100.0
            verdict = SAME
            if significant and change >= threshold_pct:
                verdict = FASTER if row.ratio > 1 else SLOWER
            detail = ""
            if significant and change < threshold_pct:
                detail = f"significant, below the {threshold_pct:g}% floor"
            # Bonferroni's bound on Holm: the strictest level this figure could be tested at.
            detectable: float | None = max(threshold_pct, row.detectable_pct or 0.0)
            if min_p * tests >= alpha:
                detectable = None
                detail = "too few repetitions for any change to be significant"
            out.append(replace(row, verdict=verdict, p_adjusted=p_adj,
                               detectable_pct=detectable, detail=detail))  # fmt: skip
        else:
            lower_better = row.figure in LOWER_IS_BETTER
            delta = row.delta or 0.0
            verdict = SAME
            if significant:
                verdict = BETTER if (delta < 0) == lower_better else WORSE
            z = float(norm.isf(alpha / (2 * max(tests, 1))))
            out.append(replace(row, verdict=verdict, p_adjusted=p_adj,
                               detectable_pct=z * (row.stderr or 0.0)))  # fmt: skip
    return out


def _notes(comparison: Comparison, alpha: float) -> list[str]:
    """What a reader must know beside the table: order, versions, machines, bandwidth."""
    notes = []
    for name, run in (("baseline", comparison.base), ("new run", comparison.new)):
        timed = [r for r in run.records if isinstance(r, ThroughputRecord)]
        if len(timed) > 1 and all(r.protocol.order != "interleaved" for r in timed):
            notes.append(
                f"the {name} was not interleaved (its cases ran one after another): a drift of "
                "the machine's speed during it hits its cases unevenly"
            )
    if any(isinstance(r, ProfileRecord) for run in (comparison.base, comparison.new)
           for r in run.records):  # fmt: skip
        notes.append(
            "profile records are not compared: a profile's shares come from one profiled loop, "
            "with no repetitions to test; compare throughput runs of the same cases instead"
        )
    base, new = comparison.base.meta, comparison.new.meta
    changed = [
        f"{k} {base.versions.get(k)} -> {new.versions.get(k)}"
        for k in sorted(set(base.versions) | set(new.versions))
        if base.versions.get(k) != new.versions.get(k)
    ]
    if base.git_sha != new.git_sha:
        changed.insert(0, f"git {_short(base.git_sha)} -> {_short(new.git_sha)}")
    if changed:
        notes.append("the runs differ in: " + ", ".join(changed))
    for name, meta in (("baseline", base), ("new run", new)):
        if meta.git_dirty:
            notes.append(f"the {name} ran from a checkout with uncommitted changes")
    hosts = [m.host.get("hostname") for m in (base, new)]
    if hosts[0] != hosts[1]:
        notes.append(f"the runs come from different hosts: {hosts[0]} and {hosts[1]}")
    bandwidth = [(m.extra.get("membw") or {}).get("membw_gb_per_s") for m in (base, new)]
    if all(isinstance(b, (int, float)) for b in bandwidth):
        notes.append(
            f"start-of-run read bandwidth: {bandwidth[0]:.1f} GB/s (baseline), "
            f"{bandwidth[1]:.1f} GB/s (new run)"
        )
    tests = sum(r.p_adjusted is not None for r in comparison.rows)
    if tests:
        notes.append(
            f"a timed figure is called faster or slower when the Mann-Whitney test is "
            f"significant at {alpha:g} after Holm's correction over the {tests} tested figures "
            f"and the change is at least {comparison.threshold_pct:g}%; accuracy: the delta "
            "against the combined standard error, same correction"
        )
    return notes


def _short(sha: str | None) -> str:
    return sha[:7] if sha else "unknown"


# ---- markdown ----------------------------------------------------------------------------------

CASE_ORDER = (
    "model", "backend", "device", "kernels", "norm", "dtype", "compile", "batch_size",
    "prompt_tokens", "gen_tokens", "where", "tokens", "task", "metric",
)  # fmt: skip


MAX_LISTED = 20  # cases in one run only, listed by name


def _fmt_value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"


def _pct(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}%" if signed else f"{value:.1f}%"


def _case_parts(case: Mapping[str, Any], shown: Sequence[str]) -> str:
    return " ".join(f"{k}={case[k]}" for k in shown if k in case) or "(every case alike)"


def markdown(comparison: Comparison) -> str:
    """The comparison as markdown fit for a pull request comment or a GitHub step summary."""
    rows = comparison.rows
    fields_seen = [k for k in CASE_ORDER if any(k in r.case for r in rows)]
    varying = [k for k in fields_seen if len({str(r.case.get(k)) for r in rows}) > 1]
    common = [k for k in fields_seen if k not in varying]
    base_id, new_id = comparison.base.meta.run_id, comparison.new.meta.run_id
    counts = comparison.counts
    order = (SLOWER, WORSE, FAILED, FASTER, BETTER, SAME, NOT_COMPARABLE, ONLY_BASE, ONLY_NEW)
    tally = ", ".join(f"{counts[v]} {v}" for v in order if counts.get(v))
    verdict = {0: "no significant regression", 1: "REGRESSION", 2: "nothing comparable"}[
        comparison.exit_code
    ]
    lines = [
        f"### elmbench compare: {verdict}",
        "",
        f"baseline `{base_id}` -> new `{new_id}`: {tally or 'no cases'} "
        f"(floor {comparison.threshold_pct:g}%)",
        "",
    ]
    if common and rows:
        lines += ["every case: " + _case_parts(rows[0].case, common), ""]
    one_sided = [r for r in rows if r.verdict in (ONLY_BASE, ONLY_NEW)]
    rows = [r for r in rows if r.verdict not in (ONLY_BASE, ONLY_NEW)]
    timed = [r for r in rows if r.kind != AccuracyRecord.KIND]
    accuracy = [r for r in rows if r.kind == AccuracyRecord.KIND]
    if timed:
        lines += [
            "| case | figure | baseline | new | change | 95% interval | p (Holm) "
            "| smallest detectable | verdict |",
            "|---|---|---:|---:|---:|---|---:|---:|---|",
        ]
        for r in timed:
            interval = (
                "-"
                if r.ci_low is None or r.ci_high is None
                else f"{100 * (r.ci_low - 1):+.1f}% .. {100 * (r.ci_high - 1):+.1f}%"
            )
            lines.append(
                f"| {_case_parts(r.case, varying)} | {FIGURE_NAMES.get(r.figure, r.figure)} "
                f"| {_fmt_value(r.base)} | {_fmt_value(r.new)} | {_pct(r.change_pct)} "
                f"| {interval} | {_p(r.p_adjusted)} | {_detectable(r)} | {_verdict(r)} |"
            )
        lines.append("")
    if accuracy:
        lines += [
            "| case | metric | baseline % | new % | delta (points) | combined s.e. | p (Holm) "
            "| verdict |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in accuracy:
            delta = "-" if r.delta is None else f"{r.delta:+.2f}"
            stderr = "-" if r.stderr is None else f"{r.stderr:.2f}"
            lines.append(
                f"| {_case_parts(r.case, [k for k in varying if k != 'metric'])} | {r.figure} "
                f"| {_fmt_value(r.base)} | {_fmt_value(r.new)} | {delta} | {stderr} "
                f"| {_p(r.p_adjusted)} | {_verdict(r)} |"
            )
        lines.append("")
    if one_sided:
        lines += [f"cases in one run only ({len(one_sided)}):", ""]
        for r in one_sided[:MAX_LISTED]:
            detail = f" ({r.detail})" if r.detail else ""
            lines.append(f"- {r.verdict}: {r.kind} {_case_parts(r.case, varying)}{detail}")
        if len(one_sided) > MAX_LISTED:
            lines.append(f"- and {len(one_sided) - MAX_LISTED} more")
        lines.append("")
    means = comparison.geometric_means()
    if means:
        parts = [
            f"{FIGURE_NAMES.get(f, f)} {gm:.3f}x over {n} case(s) ({lo:.3f}x to {hi:.3f}x)"
            for f, (gm, n, lo, hi) in means.items()
        ]
        lines += ["geometric mean of new / baseline: " + "; ".join(parts), ""]
    lines += [f"- {note}" for note in comparison.notes]
    return "\n".join(lines).rstrip() + "\n"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


def _detectable(row: Row) -> str:
    if row.detectable_pct is None:
        return "none"
    return f"{row.detectable_pct:.1f}%"


def _verdict(row: Row) -> str:
    text = f"**{row.verdict}**" if row.verdict in REGRESSIONS else row.verdict
    return f"{text} ({row.detail})" if row.detail else text


def as_dict(comparison: Comparison) -> dict[str, Any]:
    """The comparison as JSON-safe data."""
    from dataclasses import asdict

    return {
        "baseline": comparison.base.meta.run_id,
        "new": comparison.new.meta.run_id,
        "threshold_pct": comparison.threshold_pct,
        "exit_code": comparison.exit_code,
        "counts": comparison.counts,
        "rows": [asdict(r) for r in comparison.rows],
        "geometric_means": {
            f: {"ratio": gm, "cases": n, "lowest": lo, "highest": hi}
            for f, (gm, n, lo, hi) in comparison.geometric_means().items()
        },
        "notes": comparison.notes,
    }


def write_step_summary(text: str) -> Path | None:
    """Append to $GITHUB_STEP_SUMMARY when it is set (GitHub Actions); the file, or None."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as f:
        f.write(text + "\n")
    return path


# ---- baselines ---------------------------------------------------------------------------------

_BASELINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def save_baseline(ref: str | Path, name: str, baselines: Path = BASELINES_DIR) -> Path:
    """Copy a run's run.json and records.jsonl to baselines/NAME (replacing an older one)."""
    if not _BASELINE_NAME.fullmatch(name):
        raise ElmbenchError(
            f"baseline name '{name}': use letters, digits, '_', '.' and '-' (e.g. ci)"
        )
    run = read_run(ref)  # checked: a readable run of a known schema
    target = baselines / name
    tmp = baselines / f".{name}.tmp"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for file in (RUN_FILE, RECORDS_FILE):
            shutil.copy2(run.path / file, tmp / file)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except OSError as exc:
        raise ElmbenchError(f"cannot write the baseline {target}: {exc.strerror or exc}") from None
    return target
