"""The record kinds: one frozen dataclass each, written and read by the same definition.

A record is one finished case (a throughput case, a norm micro-benchmark case, one phase of a
profile, one metric of an accuracy task) or the failure of one. Its `CASE` fields identify it: they
make its `case_id`, and `compare` matches runs on them. Figures measured over repetitions are
`Estimate`s: the median, every raw value in the figure's unit and the interval of the median.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from elmbench.measure.stats import Summary

SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (2,)


def case_id(params: Mapping[str, Any]) -> str:
    """A stable id from a case's parameters: `batch_size=1;model=270m;norm=naive` (sorted keys)."""
    parts = []
    for key in sorted(params):
        value = params[key]
        plain = (
            isinstance(value, str) and value and all(c.isalnum() or c in "_.:/+-" for c in value)
        )
        text = value if plain else json.dumps(value, sort_keys=True, separators=(",", ":"))
        parts.append(f"{key}={text}")
    return ";".join(parts)


@dataclass(frozen=True)
class Estimate:
    """A figure measured over repetitions: the median, the raw values (same unit), its interval."""

    value: float
    unit: str
    raw: tuple[float, ...] = ()
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None  # coverage of [ci_low, ci_high] (order statistics)

    @classmethod
    def of(cls, raw: Sequence[float], unit: str) -> Estimate:
        """The median of `raw` with its order-statistic interval."""
        s = Summary.of(raw)
        return cls(s.median, unit, tuple(raw), s.ci_low, s.ci_high, s.ci_level)

    @classmethod
    def single(cls, value: float, unit: str) -> Estimate:
        """A figure measured once (peak memory, a share of a peak): no raw values, no interval."""
        return cls(float(value), unit)

    def summary(self) -> Summary | None:
        """Statistics of the raw values (None for a single value)."""
        return Summary.of(self.raw) if self.raw else None


class Record:
    """What every record kind offers: its kind, the fields of its case, and the case id."""

    KIND: ClassVar[str]
    CASE: ClassVar[tuple[str, ...]]
    status: str

    def case(self) -> dict[str, Any]:
        """The case's fields (what identifies it within a run and across runs)."""
        return {name: getattr(self, name) for name in self.CASE}

    @property
    def case_id(self) -> str:
        """The stable id of the case."""
        return case_id(self.case())

    @classmethod
    def case_id_of(cls, params: Mapping[str, Any]) -> str:
        """The id a record of this kind has for these case fields (extra keys are ignored)."""
        return case_id({name: params[name] for name in cls.CASE})


@dataclass(frozen=True)
class Context:
    """Where and on what a case ran: the device profile and hardware, the weights and seed."""

    device_profile: str
    device_hardware: str
    device_mismatch: str | None
    weights: str  # a path, or random(seed=N)
    random_weights: bool
    seed: int
    quantize: int | None = None  # MLX weights quantized on load to 4 or 8 bits


@dataclass(frozen=True)
class ProtocolInfo:
    """How a case was measured: the protocol asked for and what it took to meet it."""

    warmup: int
    min_repetitions: int
    min_seconds: float
    max_repetitions: int
    max_cv: float
    repetitions: int
    measured_s: float
    stopped_by: str  # minimums | precision | max_repetitions | max_seconds
    warmup_raw_s: tuple[float, ...] = ()
    precision_pct: float | None = None  # asked: the median's 95% interval within +-this %
    max_seconds: float | None = None  # the time cap that goes with precision_pct
    order: str = "sequential"  # sequential | interleaved (repetition r of every case, then r+1)


@dataclass(frozen=True)
class Roofline:
    """What decode bandwidth is a share of: the device's peak, or read probes beside the case."""

    peak_gb_per_s: float  # the median probe paired with a repetition, or the device's peak
    method: str
    paired_peak_raw_gb_per_s: tuple[float, ...] = ()  # per repetition: the better bracketing probe
    best_probe_gb_per_s: float | None = None
    best_probe_pct: float | None = None  # decode bandwidth over the case's best probe
    run_peak_gb_per_s: float | None = None  # the start-of-run probe
    run_pct: float | None = None
    probes: tuple[dict[str, Any], ...] = ()  # every probe of the case (after_repetition, GB/s)


@dataclass(frozen=True)
class ThroughputRecord(Record):
    """One throughput case: prefill and decode figures, the roofline, memory, what ran."""

    KIND: ClassVar[str] = "throughput"
    CASE: ClassVar[tuple[str, ...]] = (
        "model", "kernels", "backend", "device", "norm", "dtype", "compile",
        "batch_size", "prompt_tokens", "gen_tokens",
    )  # fmt: skip

    model: str
    kernels: str  # stock | elmbench
    backend: str
    device: str
    norm: str
    dtype: str
    compile: str
    batch_size: int
    prompt_tokens: int
    gen_tokens: int
    context: Context
    protocol: ProtocolInfo
    metrics: dict[str, Estimate]  # prefill_tokens_per_s, decode_tokens_per_s, ... (units in names)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value
    sections_raw_s: dict[str, tuple[float, ...]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # unstable sections, a repetition cap reached
    num_params: int = 0
    num_norms: int = 0
    weight_bytes: int = 0
    prefill_flops: int = 0
    decode_bytes: int = 0  # weights and KV cache read by all decode steps
    roofline: Roofline | None = None
    peak_memory_kind: str = ""
    load_s: float | None = None
    generated_head: tuple[int, ...] = ()  # greedy tokens of the first row: a sanity check
    describe: dict[str, Any] = field(default_factory=dict)  # the backend's own description
    status: str = "ok"

    @property
    def stable(self) -> bool:
        """No section was flagged unstable."""
        return not any(w.startswith("unstable") for w in self.warnings)


@dataclass(frozen=True)
class NormBenchRecord(Record):
    """One RMSNorm micro-benchmark case: time per call and bandwidth of one variant and shape."""

    KIND: ClassVar[str] = "norm_bench"
    CASE: ClassVar[tuple[str, ...]] = (
        "model", "backend", "device", "norm", "dtype", "where", "tokens",
    )  # fmt: skip

    model: str
    backend: str
    device: str
    norm: str
    dtype: str
    where: str  # hidden: (tokens, model_dim); head: (tokens x heads, head_dim)
    tokens: int
    context: Context
    protocol: ProtocolInfo
    metrics: dict[str, Estimate]  # norm_call_us, norm_bandwidth_gb_per_s, norm_roofline_pct
    rows: int
    dim: int
    calls_per_repetition: int
    bytes_per_call: int
    peak_gb_per_s: float | None = None
    peak_source: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    status: str = "ok"


@dataclass(frozen=True)
class CategoryTime:
    """Exclusive time of one operator category in a profiled phase."""

    category: str
    time_ms: float
    share_pct: float
    ms_per_step: float
    events: int = 0


@dataclass(frozen=True)
class PartTime:
    """Exclusive time and operator counts of one model part in a profiled phase (per step)."""

    part: str
    category: str | None  # None for the mixed buckets
    time_ms: float
    share_pct: float
    ms_per_step: float
    calls_per_step: float = 0.0
    framework_ms: float | None = None
    ops_per_step: float | None = None
    leaf_ops_per_step: float | None = None
    kernels_per_step: float | None = None
    ops_per_call: float | None = None
    median_call_us: float | None = None
    median_framework_us: float | None = None


@dataclass(frozen=True)
class OpTime:
    """One of the operators with the most exclusive time (torch only)."""

    rank: int
    op: str
    count: int
    self_ms: float
    share_pct: float


@dataclass(frozen=True)
class NormShare:
    """The norms of a profiled phase together: the headline."""

    share_pct: float
    time_ms: float
    calls_per_step: float
    share_pct_median_step: float | None = None
    ops_per_step: float | None = None
    leaf_ops_per_step: float | None = None
    ops_per_call: float | None = None
    kernels_per_step: float | None = None
    median_call_us: float | None = None
    median_framework_us: float | None = None


@dataclass(frozen=True)
class ProfileRecord(Record):
    """One phase (prefill or decode) of one profiled case: where the time goes."""

    KIND: ClassVar[str] = "profile"
    CASE: ClassVar[tuple[str, ...]] = (*ThroughputRecord.CASE, "phase")

    model: str
    kernels: str
    backend: str
    device: str
    norm: str
    dtype: str
    compile: str
    batch_size: int
    prompt_tokens: int
    gen_tokens: int
    phase: str
    context: Context
    steps: int  # profiled steps: one prefill, or one pass of the n - 1 decode tokens
    forwards_per_step: int
    tokens_per_step: int
    time_basis: str  # what the shares are of: cpu_self_time, device_kernel_time, ...
    norm_share: NormShare
    categories: tuple[CategoryTime, ...]
    parts: tuple[PartTime, ...]
    wall_ms_per_step: tuple[float, ...]  # the same loop without the profiler
    instrumented_ms_per_step: float
    ms_per_token_without_norm: float | None = None  # the what-if: norms taking no time
    max_speedup_from_norm: float | None = None
    top_ops: tuple[OpTime, ...] = ()
    categories_cpu: tuple[CategoryTime, ...] = ()  # CPU time beside a device-time headline
    traces: dict[str, str] = field(default_factory=dict)  # kind -> path inside the run folder
    ops_csv: str | None = None
    framework_device: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    status: str = "ok"

    @property
    def wall_ms_per_token(self) -> float | None:
        """Median uninstrumented step time per processed token."""
        if not self.wall_ms_per_step:
            return None
        return Summary.of(self.wall_ms_per_step).median / self.tokens_per_step

    @property
    def overhead_pct(self) -> float | None:
        """How much slower the profiled step ran than the plain one."""
        per_token = self.wall_ms_per_token
        if not per_token:
            return None
        plain = per_token * self.tokens_per_step
        return 100.0 * (self.instrumented_ms_per_step - plain) / plain

    def category_share(self, category: str) -> float | None:
        """The share of one category (None when it was not profiled)."""
        return next((c.share_pct for c in self.categories if c.category == category), None)


@dataclass(frozen=True)
class AccuracyRecord(Record):
    """One metric of one task under one norm variant, beside the published value."""

    KIND: ClassVar[str] = "accuracy"
    CASE: ClassVar[tuple[str, ...]] = (
        "model", "backend", "kernels", "dtype", "norm", "task", "metric",
    )  # fmt: skip

    model: str
    backend: str
    kernels: str
    dtype: str
    norm: str
    task: str
    metric: str
    label: str
    suite: str
    value: float  # a fraction
    value_pct: float
    stderr_pct: float | None
    samples: int
    shots: int
    device: str
    weights: str
    random_weights: bool
    tokenizer: str
    lm_eval_version: str
    task_version: Any = None  # a number, or per subject for groups
    metric_known: bool = True  # False where the paper's acc/acc_norm choice is unknown
    metric_note: str | None = None
    published_pct: float | None = None
    delta_pct: float | None = None
    paper_model: str = ""
    paper_model_from: str | None = None
    few_shot_source: str = ""
    subjects: int | None = None  # MMLU: subjects evaluated
    subjects_total: int | None = None
    weights_sha256: str | None = None
    blas: str | None = None  # MLX on Linux: the BLAS its CPU products ran on
    limit: int | None = None
    batch_size: int | str = 1  # rows per forward, or "auto"
    requests: int = 0  # answered by the model in this process (cached ones excluded)
    forwards: int = 0
    input_tokens: int = 0  # tokens scored, without padding
    padded_tokens: int = 0  # with the batches' padding
    computed_tokens: int | None = None  # tokens the model actually computed (shared prefixes once)
    share_prefix: bool = True  # a document's choices scored in one packed row
    eval_s: float = 0.0  # seconds in the model adapter
    requests_per_s: float | None = None
    input_tokens_per_s: float | None = None
    wall_s: float = 0.0  # also loading the model and the task
    status: str = "ok"


@dataclass(frozen=True)
class FailureRecord(Record):
    """A case that could not be measured (failed) or was left out of a matrix (skipped): why."""

    KIND: ClassVar[str] = "failure"
    CASE: ClassVar[tuple[str, ...]] = ()

    measurement: str  # the kind of record the case would have had
    params: dict[str, Any]  # the case's fields
    reason: str
    status: str = "failed"  # failed | skipped
    context: Context | None = None

    def case(self) -> dict[str, Any]:
        """The failed case's fields."""
        return dict(self.params)


KINDS: dict[str, type[Record]] = {
    cls.KIND: cls
    for cls in (ThroughputRecord, NormBenchRecord, ProfileRecord, AccuracyRecord, FailureRecord)
}
MEASURED = {k: v for k, v in KINDS.items() if k != FailureRecord.KIND}


def field_names(cls: type) -> list[str]:
    """The fields of a record kind, in order (for tables and CSV)."""
    return [f.name for f in fields(cls)]
