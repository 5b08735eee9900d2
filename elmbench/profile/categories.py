"""Attribute profiled time to categories (norm, attention, matmul, ...) and to model parts.

Pure Python over `OpEvent`s, so it serves any profiler: the innermost part label decides the
category; without one, the outermost operator whose name is known does.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

NORM = "norm"
CATEGORIES = (
    NORM,
    "attention",
    "matmul",
    "rope",
    "activation",
    "embedding/head",
    "memory/copy",
    "other",
)

# Every part the models are labelled with, in forward order, and its category.
PART_CATEGORY: dict[str, str] = {
    "embedding": "embedding/head",
    "attn_norm": NORM,
    "qkv_proj": "matmul",
    "q_norm": NORM,
    "k_norm": NORM,
    "rope": "rope",
    "kv_cache": "memory/copy",
    "sdpa": "attention",
    "out_proj": "matmul",
    "residual": "other",
    "ffn_norm": NORM,
    "proj_1": "matmul",
    "activation": "activation",
    "proj_2": "matmul",
    "final_norm": NORM,
    "head": "embedding/head",
}
PARTS = tuple(PART_CATEGORY)
NORM_PARTS = tuple(p for p, c in PART_CATEGORY.items() if c == NORM)
UNLABELLED = "(unlabelled)"  # operators outside every part: residual adds, views, argmax, ...
BETWEEN = "(between parts)"  # a phase range's own time: Python, module calls, hooks

# Operator name fragments (after the `aten::` namespace) per category; first match wins.
_OP_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (NORM, ("rms_norm", "layer_norm", "group_norm", "batch_norm")),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "attention")),
    ("matmul", ("addmm", "linear", "matmul", "bmm", "baddbmm", "mm", "gemm", "gemv", "dot")),
    ("activation", ("silu", "gelu", "relu", "sigmoid", "tanh", "swiglu")),
    ("embedding/head", ("embedding", "index_select")),
    (
        "memory/copy",
        (
            "copy",
            "to",
            "contiguous",
            "clone",
            "cat",
            "stack",
            "index",
            "empty",
            "zeros",
            "ones",
            "fill",
            "zero_",
            "memcpy",
            "memset",
            "view",
            "reshape",
            "transpose",
            "permute",
            "split",
            "chunk",
            "slice",
            "select",
            "expand",
            "unsqueeze",
            "squeeze",
            "narrow",
            "as_strided",
            "t",
            "resolve_conj",
            "resolve_neg",
        ),
    ),
)


def op_category(name: str) -> str:
    """The category an operator's name alone implies ('other' when it implies none)."""
    base = name.rpartition("::")[2].lower().lstrip("_")
    stem = base.rstrip("_")
    for category, fragments in _OP_RULES:
        for frag in fragments:
            # Short names (to, t, mm, ...) must match whole; longer ones may be fragments.
            if stem == frag.rstrip("_") or (len(frag) > 3 and frag in base):
                return category
    return "other"


@dataclass(frozen=True)
class OpEvent:
    """One profiled event with its exclusive (self) time and where it ran in the model."""

    name: str
    self_cpu_us: float
    self_device_us: float = 0.0
    kernels: int = 0  # device kernels this event launched itself
    part: str | None = None  # innermost part label around it (or the label it is)
    chain: tuple[str, ...] = ()  # operators from the outermost one inside `part` down to this one
    is_label: bool = False  # a range itself (its self time is Python/framework time there)
    is_leaf: bool = True  # no child operators
    total_us: float = 0.0  # inclusive time of a part range (one call of the part)
    step: int = 0  # which measured step (phase range) it ran in

    @property
    def category(self) -> str:
        """Part label first; else the outermost operator with a known category; else 'other'."""
        if self.part is not None:
            return PART_CATEGORY.get(self.part, "other")
        for op in self.chain or (self.name,):
            category = op_category(op)
            if category != "other":
                return category
        return "other"

    @property
    def part_key(self) -> str:
        """The part this event's time is booked to in `by_part`."""
        if self.part is not None:
            return self.part
        return BETWEEN if self.is_label else UNLABELLED

    @property
    def top_level(self) -> bool:
        """An operator the model's code called itself (a dispatch from Python, not a callee)."""
        return not self.is_label and len(self.chain) == 1


def _time_us(event: OpEvent, device: bool) -> float:
    return event.self_device_us if device else event.self_cpu_us


def _pct(value: float, total: float) -> float:
    return 100.0 * value / total if total > 0 else 0.0


def by_category(events: Sequence[OpEvent], device: bool = False) -> list[dict[str, Any]]:
    """Exclusive time per category (every category listed, in order); shares sum to 100%."""
    times = dict.fromkeys(CATEGORIES, 0.0)
    ops = dict.fromkeys(CATEGORIES, 0)
    for e in events:
        times[e.category] += _time_us(e, device)
        ops[e.category] += 0 if e.is_label else 1
    total = sum(times.values())
    return [
        {
            "category": c,
            "time_ms": times[c] / 1e3,
            "share_pct": _pct(times[c], total),
            "events": ops[c],
        }
        for c in CATEGORIES
    ]


def by_part(
    events: Sequence[OpEvent], steps: int, device: bool = False, calls: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """Exclusive time and operator counts per model part, per profiled step.

    `ops_per_step` counts the operators the part's code dispatched itself (what a fused kernel
    collapses into one); `leaf_ops_per_step` the innermost operators that did the work;
    `kernels_per_step` the device kernels launched (0 without a device trace); `framework_ms`
    the part's time outside any operator (Python and dispatch); `median_call_us` the median
    inclusive CPU time of one call and `median_framework_us` the median of its time outside
    operators, which a stray preemption does not move.
    """
    time_us: dict[str, float] = defaultdict(float)
    framework_us: dict[str, float] = defaultdict(float)
    top: dict[str, int] = defaultdict(int)
    leaf: dict[str, int] = defaultdict(int)
    kernels: dict[str, int] = defaultdict(int)
    call_us: dict[str, list[float]] = defaultdict(list)
    call_framework_us: dict[str, list[float]] = defaultdict(list)
    for e in events:
        key = e.part_key
        time_us[key] += _time_us(e, device)
        framework_us[key] += e.self_cpu_us if e.is_label else 0.0
        top[key] += int(e.top_level)
        leaf[key] += int(e.is_leaf and not e.is_label)
        kernels[key] += e.kernels
        if e.is_label and e.part is not None:
            call_us[key].append(e.total_us)
            call_framework_us[key].append(e.self_cpu_us)
    total = sum(time_us.values())
    order = [p for p in PARTS if p in time_us] + sorted(k for k in time_us if k not in PARTS)
    rows = []
    for key in order:
        n_calls = (calls or {}).get(key, 0)
        rows.append(
            {
                "part": key,
                "category": PART_CATEGORY.get(key),  # None: the mixed buckets
                "time_ms": time_us[key] / 1e3,
                "share_pct": _pct(time_us[key], total),
                "framework_ms": framework_us[key] / 1e3,
                "calls_per_step": n_calls / steps if steps else 0.0,
                "ops_per_step": top[key] / steps if steps else 0.0,
                "leaf_ops_per_step": leaf[key] / steps if steps else 0.0,
                "kernels_per_step": kernels[key] / steps if steps else 0.0,
                "ops_per_call": top[key] / n_calls if n_calls else None,
                "median_call_us": statistics.median(call_us[key]) if call_us[key] else None,
                "median_framework_us": (
                    statistics.median(call_framework_us[key]) if call_framework_us[key] else None
                ),
            }
        )
    return rows


def norm_summary(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The norm parts together: share, time, calls and operator/kernel launches per step."""
    rows = [r for r in parts if r["category"] == NORM]

    def total(key: str) -> float | None:
        # None where the profiler could not count it (MLX has no operator events).
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) if values else None

    calls, ops = total("calls_per_step") or 0.0, total("ops_per_step")
    return {
        "share_pct": total("share_pct") or 0.0,
        "time_ms": total("time_ms") or 0.0,
        "calls_per_step": calls,
        "ops_per_step": ops,
        "leaf_ops_per_step": total("leaf_ops_per_step"),
        "kernels_per_step": total("kernels_per_step"),
        "ops_per_call": ops / calls if ops is not None and calls else None,
        "median_call_us": _median_of_medians(rows, "median_call_us"),
        "median_framework_us": _median_of_medians(rows, "median_framework_us"),
    }


def norm_share_by_step(events: Sequence[OpEvent], device: bool = False) -> list[float]:
    """The norm share of each measured step on its own (their median shrugs off a preemption)."""
    steps: dict[int, list[OpEvent]] = defaultdict(list)
    for e in events:
        steps[e.step].append(e)
    return [
        next(r["share_pct"] for r in by_category(steps[i], device) if r["category"] == NORM)
        for i in sorted(steps)
    ]


def _median_of_medians(rows: list[dict[str, Any]], key: str) -> float | None:
    # Weighted by calls, so the per-layer norms count as often as they run.
    values: list[float] = []
    for r in rows:
        if r.get(key) is not None:
            values += [r[key]] * max(1, round(r["calls_per_step"]))
    return statistics.median(values) if values else None


def op_table(events: Sequence[OpEvent], steps: int) -> list[dict[str, Any]]:
    """Rows (part, operator) with calls and exclusive CPU/device time, for a CSV."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0])
    for e in events:
        row = acc[(e.part_key, e.name)]
        row[0] += 1
        row[1] += e.self_cpu_us
        row[2] += e.self_device_us
        row[3] += e.kernels
    cats = {(e.part_key, e.name): e.category for e in events}
    return [
        {
            "part": part_name,
            "op": op,
            "category": cats[(part_name, op)],
            "calls": int(v[0]),
            "calls_per_step": v[0] / steps if steps else 0.0,
            "self_cpu_ms": v[1] / 1e3,
            "self_device_ms": v[2] / 1e3,
            "kernels": int(v[3]),
        }
        for (part_name, op), v in sorted(acc.items(), key=lambda kv: -max(kv[1][1], kv[1][2]))
    ]


def top_ops(events: Sequence[OpEvent], n: int = 15, device: bool = False) -> list[dict[str, Any]]:
    """The `n` operators with the most exclusive time, over all parts; shares are of all time.

    Part and phase ranges are left out: their self time is Python, not an operator (`by_part`
    reports it as `framework_ms`).
    """
    acc: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    total = 0.0
    for e in events:
        t = _time_us(e, device)
        total += t
        if e.is_label:
            continue
        acc[e.name][0] += 1
        acc[e.name][1] += t
    ranked = sorted(acc.items(), key=lambda kv: -kv[1][1])[:n]
    return [
        {"op": name, "count": int(v[0]), "self_ms": v[1] / 1e3, "share_pct": _pct(v[1], total)}
        for name, v in ranked
    ]


def what_if_without_norm(ms_per_token: float | None, norm_share_pct: float) -> dict[str, Any]:
    """Time per token with the norm's measured share removed: the bound on any norm speed-up."""
    keep = max(0.0, 1.0 - norm_share_pct / 100.0)
    return {
        "ms_per_token": ms_per_token,
        "norm_share_pct": norm_share_pct,
        "ms_per_token_without_norm": None if ms_per_token is None else ms_per_token * keep,
        "max_speedup_from_norm": 1.0 / keep if keep > 0 else None,
        "meaning": "upper bound: time per token if the norms took no time at all; no norm "
        "optimisation (fused, compiled or apex kernel) can gain more than this",
    }
