"""Turn a worker's raw timings into metric records: one per case and metric, units in the names.

Rates use the median repetition (raw values are kept per repetition in the metric's own unit).
Definitions follow the released MLX script: prefill tokens/s = prompt tokens / time to the first
token; decode tokens/s = tokens from cached steps / their time; total = all tokens / total time.
A figure that needs a peak this device does not publish is recorded as skipped, with the reason.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from elmbench.devices import ResolvedDevice
from elmbench.measure.figures import ModelFacts, decode_bytes, forward_flops, share
from elmbench.records import Record, case_id, case_record
from elmbench.throughput.plan import Case

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FAILED_METRIC = "case"  # the metric name of a whole case's failure record

THROUGHPUT_METRICS = (
    "prefill_tokens_per_s",
    "prefill_ms",
    "decode_tokens_per_s",
    "decode_ms_per_token",
    "total_tokens_per_s",
    "peak_memory_bytes",
    "decode_bandwidth_gb_per_s",
    "decode_roofline_pct",
    "prefill_flop_per_s",
    "prefill_mfu_pct",
    "decode_cpu_wait_ms",
)
NORM_METRICS = ("norm_call_us", "norm_bandwidth_gb_per_s", "norm_roofline_pct")


def metrics_of(case: Case) -> tuple[str, ...]:
    """The metric names a case produces."""
    return NORM_METRICS if case.where else THROUGHPUT_METRICS


def metric_id(case: Case, metric: str) -> str:
    """The record id of one metric of a case."""
    return case_id({**case.params(), "metric": metric})


def model_facts(model: str) -> ModelFacts:
    """Facts of an OpenELM preset or a comparison model."""
    from elmbench.models.comparison import COMPARISON_MODELS, get_comparison

    if model in COMPARISON_MODELS:
        return ModelFacts.of(get_comparison(model))
    from elmbench.config import get_config

    return ModelFacts.of(get_config(model))


def _stats(raw: Sequence[float]) -> dict[str, Any]:
    return {
        "raw": list(raw),
        "median": statistics.median(raw),
        "mean": statistics.fmean(raw),
        "stdev": statistics.stdev(raw) if len(raw) > 1 else None,
        "min": min(raw),
        "max": max(raw),
    }


def _rate(amount: float, seconds: Sequence[float]) -> dict[str, Any]:
    """amount / seconds per repetition; value from the median time (the median rate too)."""
    out = _stats([amount / s if s > 0 else float("inf") for s in seconds])
    out["value"] = amount / statistics.median(seconds)
    return out


def _scaled(factor: float, seconds: Sequence[float]) -> dict[str, Any]:
    out = _stats([s * factor for s in seconds])
    out["value"] = out["median"]
    return out


def _cpu_wait(
    waits: Sequence[float | None] | None, decode: Sequence[float]
) -> dict[str, Any] | str:
    """Decode's thread time lost to other tasks per repetition (ms), and its share of decode."""
    if not waits or None in waits:
        return "not measured: this system reports no per-thread run-queue times (Linux's schedstat)"
    out = _scaled(1e3, [w for w in waits if w is not None])
    return {
        **out,
        "unit": "ms",
        "share_of_decode_raw_pct": [0.1 * w / s for w, s in zip(out["raw"], decode, strict=True)],
        "meaning": "thread time the process's threads spent ready to run while other tasks of "
        "this system had their CPU, summed over threads, per repetition's decode; a hypervisor's "
        "preemption is not in it",
    }


def failed_record(case: Case, reason: str, context: dict[str, Any]) -> Record:
    """The one record of a case that could not be measured."""
    return case_record({**case.params(), "metric": FAILED_METRIC}, "failed", reason, **context)


def _bracketing(probes: list[dict[str, Any]], repetition: int) -> float:
    """The better of the probes just before and just after a (1-based) measured repetition."""
    before = max(
        (pr for pr in probes if pr["after_repetition"] < repetition),
        key=lambda pr: pr["after_repetition"],
    )
    after = min(
        (pr for pr in probes if pr["after_repetition"] >= repetition),
        key=lambda pr: pr["after_repetition"],
    )
    return max(before["membw_gb_per_s"], after["membw_gb_per_s"])


def _roofline_share(
    device: ResolvedDevice, probes: list[dict[str, Any]], bandwidth: dict[str, Any]
) -> dict[str, Any] | None:
    """The decode bandwidth as a share of the roofline, or None where the peak is unknown.

    Where read probes ran in the case (a measured roofline), each repetition is a share of the
    better of the probes that bracket it in time, and the value is the median of those paired
    shares; the record also keeps every probe, the share of the best probe of the case and the
    share of the start-of-run figure. Otherwise the share of the device's peak.
    """
    peak, source = device.profile.bandwidth_gb_per_s, device.profile.source
    if not probes:
        pct = share(bandwidth["value"], peak)
        if pct is None:
            return None
        return {"value": 100 * pct, "unit": "%", "peak_gb_per_s": peak, "peak_source": source}
    roofs = [_bracketing(probes, i + 1) for i in range(len(bandwidth["raw"]))]
    paired = [100 * gb / roof for gb, roof in zip(bandwidth["raw"], roofs, strict=True)]
    best = max(pr["membw_gb_per_s"] for pr in probes)
    run_pct = share(bandwidth["value"], peak)
    return {
        "value": statistics.median(paired),
        "unit": "%",
        "raw": paired,
        "peak_gb_per_s": statistics.median(roofs),
        "peak_source": f"measured beside each repetition: the better of the {len(probes)} read "
        "probes that bracket it in time; the value is the median of the paired shares",
        "paired_peak_raw_gb_per_s": roofs,
        "best_probe_gb_per_s": best,
        "best_probe_roofline_pct": 100 * bandwidth["value"] / best,
        "run_peak_gb_per_s": peak,
        "run_peak_source": source,
        "run_roofline_pct": None if run_pct is None else 100 * run_pct,  # as older runs had it
        "case_probes": probes,
    }


def throughput_records(
    case: Case, result: dict[str, Any], device: ResolvedDevice, context: dict[str, Any]
) -> list[Record]:
    """Metric records of one measured throughput case."""
    timing, desc = result["timing"], result.get("describe", {})
    b, p, n = case.batch_size, case.prompt_tokens, case.gen_tokens
    facts = model_facts(case.model)
    bpe = BYTES[case.dtype]
    num_params = desc.get("num_params", facts.num_params)
    weight_bytes = desc.get("weight_bytes", num_params * bpe)
    steps = n - 1
    prefill, decode, total = timing["prefill_raw_s"], timing["decode_raw_s"], timing["total_raw_s"]
    common = {
        **context,
        **{k: v for k, v in timing.items() if not k.startswith(("prefill_", "decode_", "total_"))},
        "load_s": result.get("load_s"),
        "describe": desc,
        "num_params": num_params,
        "num_norms": facts.num_norms,
        "weight_bytes": weight_bytes,
        "generated_head": result.get("generated_head"),
    }
    section_notes = {name: _section_warnings(timing, name) for name in ("prefill", "decode")}
    peak_flops = device.profile.peak_flop_per_s(case.dtype)
    flops = forward_flops(facts, b, p, 0, logits_rows=1)
    moved = decode_bytes(weight_bytes, facts, b, p, steps, bpe) if steps > 0 else 0
    out: dict[str, dict[str, Any] | str] = {
        "prefill_tokens_per_s": {**_rate(b * p, prefill), "unit": "tokens/s"},
        "prefill_ms": {**_scaled(1e3, prefill), "unit": "ms"},
        "total_tokens_per_s": {**_rate(b * (p + n), total), "unit": "tokens/s"},
        "peak_memory_bytes": {"value": result["peak_memory_bytes"], "unit": "bytes",
                              "peak_memory_kind": result["peak_memory_kind"]},
        "prefill_flop_per_s": {**_rate(flops, prefill), "unit": "FLOP/s", "flops": flops},
    }  # fmt: skip
    if steps > 0:
        out["decode_tokens_per_s"] = {**_rate(b * steps, decode), "unit": "tokens/s"}
        out["decode_ms_per_token"] = {**_scaled(1e3 / steps, decode), "unit": "ms/token"}
        bandwidth = _rate(moved / 1e9, decode)
        roofline = _roofline_share(device, result.get("case_membw") or [], bandwidth)
        out["decode_bandwidth_gb_per_s"] = {
            **bandwidth, "unit": "GB/s", "bytes_read": moved, "decode_steps": steps,
            "peak_gb_per_s": None if roofline is None else roofline["peak_gb_per_s"],
            "peak_source": device.profile.source if roofline is None else roofline["peak_source"],
        }  # fmt: skip
        out["decode_roofline_pct"] = (
            roofline
            if roofline is not None
            else f"peak memory bandwidth of '{device.profile.name}' is unknown"
        )
        out["decode_cpu_wait_ms"] = _cpu_wait(result.get("decode_cpu_wait_raw_s"), decode)
    else:
        reason = "gen_tokens is 1: the first token comes from prefill, no decode step is timed"
        for name in ("decode_tokens_per_s", "decode_ms_per_token", "decode_bandwidth_gb_per_s"):
            out[name] = reason
        out["decode_roofline_pct"] = reason
        out["decode_cpu_wait_ms"] = reason
    mfu = share(flops / statistics.median(prefill), peak_flops)
    out["prefill_mfu_pct"] = (
        {"value": 100 * mfu, "unit": "%", "peak_flop_per_s": peak_flops}
        if mfu is not None
        else f"'{device.profile.name}' publishes no dense {case.dtype} peak FLOP/s"
    )
    records = []
    for metric in THROUGHPUT_METRICS:
        body = out[metric]
        params = {**case.params(), "metric": metric}
        if isinstance(body, str):
            records.append(case_record(params, "skipped", body, **common))
            continue
        section = metric.split("_")[0]
        warnings = section_notes.get(section, [])
        records.append(case_record(params, **common, **body, section_warnings=warnings))
    return records


def norm_records(
    case: Case, result: dict[str, Any], device: ResolvedDevice, context: dict[str, Any]
) -> list[Record]:
    """Metric records of one norm micro-benchmark case."""
    timing = result["timing"]
    calls = timing["call_raw_s"]
    common = {
        **context,
        **{k: v for k, v in timing.items() if not k.startswith(("call_", "total_"))},
        "rows": result["rows"],
        "dim": result["dim"],
        "calls_per_repetition": result["calls_per_repetition"],
        "bytes_per_call": result["bytes_per_call"],
    }
    peak = device.profile.bandwidth_gb_per_s
    bandwidth = _rate(result["bytes_per_call"] / 1e9, calls)
    pct = share(bandwidth["value"], peak)
    base = {**case.params()}
    records = [
        case_record({**base, "metric": "norm_call_us"}, **common, **_scaled(1e6, calls), unit="us"),
        case_record(
            {**base, "metric": "norm_bandwidth_gb_per_s"}, **common, **bandwidth, unit="GB/s",
            peak_gb_per_s=peak, peak_source=device.profile.source,
        ),
    ]  # fmt: skip
    roofline = {**base, "metric": "norm_roofline_pct"}
    if pct is None:
        reason = f"peak memory bandwidth of '{device.profile.name}' is unknown"
        records.append(case_record(roofline, "skipped", reason, **common))
    else:
        records.append(
            case_record(roofline, **common, value=100 * pct, unit="%", peak_gb_per_s=peak)
        )
    return records


def _section_warnings(timing: dict[str, Any], section: str) -> list[str]:
    return [w for w in timing.get("timing_warnings", []) if f"'{section}'" in w]
