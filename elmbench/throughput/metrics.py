"""Turn a worker's raw timings into one typed record per case, every figure with its raw values.

Definitions follow the released MLX script: prefill tokens/s = prompt tokens / time to the first
token; decode tokens/s = tokens from cached steps / their time; total = all tokens / total time.
The on-CPU rates take out the time the (one) thread waited while other tasks held the CPU.
Each figure is the median over repetitions with its interval (`Estimate`); a figure that needs a
peak this device does not publish is left out with the reason (`skipped`), never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from elmbench.devices import ResolvedDevice
from elmbench.dtypes import BYTES
from elmbench.measure.figures import ModelFacts, decode_bytes, forward_flops, share
from elmbench.measure.stats import Summary
from elmbench.records.types import (
    Context,
    Estimate,
    FailureRecord,
    NormBenchRecord,
    ProtocolInfo,
    Roofline,
    ThroughputRecord,
)
from elmbench.throughput.plan import Case

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
    "prefill_on_cpu_tokens_per_s",
    "decode_on_cpu_tokens_per_s",
)
NORM_METRICS = ("norm_call_us", "norm_bandwidth_gb_per_s", "norm_roofline_pct")


def model_facts(model: str) -> ModelFacts:
    """Facts of an OpenELM preset or a comparison model."""
    from elmbench.models.comparison import COMPARISON_MODELS, get_comparison

    if model in COMPARISON_MODELS:
        return ModelFacts.of(get_comparison(model))
    from elmbench.config import get_config

    return ModelFacts.of(get_config(model))


def _rate(amount: float, seconds: Sequence[float], unit: str) -> Estimate:
    """amount / seconds per repetition, as an estimate of the median rate."""
    return Estimate.of([amount / s for s in seconds], unit)


def _scaled(factor: float, seconds: Sequence[float], unit: str) -> Estimate:
    return Estimate.of([s * factor for s in seconds], unit)


def failed_record(case: Case, reason: str, context: Context | None) -> FailureRecord:
    """The record of a case that could not be measured."""
    return FailureRecord(case.record_kind.KIND, case.params(), reason, "failed", context)


def _bracketing(probes: Sequence[dict[str, Any]], repetition: int) -> float:
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


def _roofline(
    device: ResolvedDevice, probes: Sequence[dict[str, Any]], bandwidth: Estimate
) -> tuple[Estimate | str, Roofline | None]:
    """The decode bandwidth as a share of the roofline (or why there is none), and the roofline.

    Where read probes ran in the case (a measured roofline), each repetition is a share of the
    better of the probes that bracket it in time and the figure is the median of those paired
    shares; the roofline keeps every probe, the share of the case's best probe and of the
    start-of-run probe. Otherwise the share of the device's published peak.
    """
    peak, source = device.profile.bandwidth_gb_per_s, device.profile.source
    if not probes:
        pct = share(bandwidth.value, peak)
        if pct is None or peak is None:
            return f"peak memory bandwidth of '{device.profile.name}' is unknown", None
        return Estimate.single(100 * pct, "%"), Roofline(peak, source)
    roofs = [_bracketing(probes, i + 1) for i in range(len(bandwidth.raw))]
    paired = [100 * gb / roof for gb, roof in zip(bandwidth.raw, roofs, strict=True)]
    best = max(pr["membw_gb_per_s"] for pr in probes)
    run_pct = share(bandwidth.value, peak)
    roofline = Roofline(
        peak_gb_per_s=Summary.of(roofs).median,
        method=f"measured beside each repetition: the better of the {len(probes)} read probes "
        "that bracket it in time; the share is the median of the paired shares",
        paired_peak_raw_gb_per_s=tuple(roofs),
        best_probe_gb_per_s=best,
        best_probe_pct=100 * bandwidth.value / best,
        run_peak_gb_per_s=peak,
        run_pct=None if run_pct is None else 100 * run_pct,
        probes=tuple(probes),
    )
    return Estimate.of(paired, "%"), roofline


def _cpu_wait(waits: Sequence[float | None] | None) -> Estimate | str:
    """Decode's thread time lost to other tasks per repetition (ms), or why it is unknown."""
    if not waits or None in waits:
        return "not measured: this system reports no per-thread run-queue times (Linux's schedstat)"
    return _scaled(1e3, [w for w in waits if w is not None], "ms")


def _on_cpu(
    amount: float,
    seconds: Sequence[float],
    waits: Sequence[float | None] | None,
    threads: object,
) -> Estimate | str:
    """amount / (section seconds - the measuring thread's run-queue wait) per repetition: the
    rate with the time other tasks held the CPU taken out, or why there is none. Exact for one
    compute thread only: with several, the others' waits also stall the step."""
    if threads != 1:
        return (
            f"needs one CPU thread (threads: {threads}): with several, the others' waits "
            "stall a step too (a suite's threads: 1 measures it)"
        )
    if not waits or None in waits or len(waits) != len(seconds):
        return "not measured: this system reports no per-thread run-queue times (Linux's schedstat)"
    on_cpu = [s - (w or 0.0) for s, w in zip(seconds, waits, strict=True)]
    if min(on_cpu) <= 0:
        return "not measured: a repetition's wait was as long as the repetition"
    return Estimate.of([amount / s for s in on_cpu], "tokens/s")


def throughput_record(
    case: Case, result: dict[str, Any], device: ResolvedDevice, context: Context
) -> ThroughputRecord:
    """The record of one measured throughput case."""
    timing, desc = result["timing"], result.get("describe", {})
    sections = {k: tuple(v) for k, v in timing["sections_raw_s"].items()}
    b, p, n = case.batch_size, case.prompt_tokens, case.gen_tokens
    facts = model_facts(case.model)
    bpe = BYTES[case.dtype]
    num_params = desc.get("num_params", facts.num_params)
    weight_bytes = desc.get("weight_bytes", num_params * bpe)
    steps = n - 1
    prefill, decode, total = sections["prefill"], sections["decode"], sections["total"]
    flops = forward_flops(facts, b, p, 0, logits_rows=1)
    moved = decode_bytes(weight_bytes, facts, b, p, steps, bpe) if steps > 0 else 0
    metrics: dict[str, Estimate] = {
        "prefill_tokens_per_s": _rate(b * p, prefill, "tokens/s"),
        "prefill_ms": _scaled(1e3, prefill, "ms"),
        "total_tokens_per_s": _rate(b * (p + n), total, "tokens/s"),
        "prefill_flop_per_s": _rate(flops, prefill, "FLOP/s"),
    }
    skipped: dict[str, str] = {}
    peak_kind = result["peak_memory_kind"]
    if result["peak_memory_bytes"] is None:  # interleaved cases share one process's memory
        skipped["peak_memory_bytes"], peak_kind = peak_kind, ""
    else:
        metrics["peak_memory_bytes"] = Estimate.single(result["peak_memory_bytes"], "bytes")
    roofline = None
    if steps > 0:
        metrics["decode_tokens_per_s"] = _rate(b * steps, decode, "tokens/s")
        metrics["decode_ms_per_token"] = _scaled(1e3 / steps, decode, "ms/token")
        bandwidth = _rate(moved / 1e9, decode, "GB/s")
        metrics["decode_bandwidth_gb_per_s"] = bandwidth
        pct, roofline = _roofline(device, result.get("case_membw") or [], bandwidth)
        wait = _cpu_wait(result.get("decode_cpu_wait_raw_s"))
        on_cpu = _on_cpu(b * steps, decode, result.get("decode_thread_wait_raw_s"),
                         desc.get("threads"))  # fmt: skip
        for name, value in (("decode_roofline_pct", pct), ("decode_cpu_wait_ms", wait),
                            ("decode_on_cpu_tokens_per_s", on_cpu)):  # fmt: skip
            if isinstance(value, str):
                skipped[name] = value
            else:
                metrics[name] = value
    else:
        reason = "gen_tokens is 1: the first token comes from prefill, no decode step is timed"
        for name in THROUGHPUT_METRICS:
            if name.startswith("decode_"):
                skipped[name] = reason
    prefill_on_cpu = _on_cpu(b * p, prefill, result.get("prefill_thread_wait_raw_s"),
                             desc.get("threads"))  # fmt: skip
    if isinstance(prefill_on_cpu, str):
        skipped["prefill_on_cpu_tokens_per_s"] = prefill_on_cpu
    else:
        metrics["prefill_on_cpu_tokens_per_s"] = prefill_on_cpu
    peak_flops = device.profile.peak_flop_per_s(case.dtype)
    if peak_flops:
        mfu = [100 * flops / s / peak_flops for s in prefill]
        metrics["prefill_mfu_pct"] = Estimate.of(mfu, "%")
    else:
        skipped["prefill_mfu_pct"] = (
            f"'{device.profile.name}' publishes no dense {case.dtype} peak FLOP/s"
        )
    return ThroughputRecord(
        **case.params(),
        context=context,
        protocol=ProtocolInfo(**timing["protocol"]),
        metrics=metrics,
        skipped=skipped,
        sections_raw_s=sections,
        warnings=(*timing["warnings"], *result.get("extra_warnings", ())),
        num_params=num_params,
        num_norms=facts.num_norms,
        weight_bytes=weight_bytes,
        prefill_flops=flops,
        decode_bytes=moved,
        roofline=roofline,
        peak_memory_kind=peak_kind,
        load_s=result.get("load_s"),
        generated_head=tuple(result.get("generated_head") or ()),
        describe=desc,
    )


def norm_record(
    case: Case, result: dict[str, Any], device: ResolvedDevice, context: Context
) -> NormBenchRecord:
    """The record of one norm micro-benchmark case."""
    timing = result["timing"]
    calls = tuple(timing["sections_raw_s"]["call"])
    peak = device.profile.bandwidth_gb_per_s
    bandwidth = _rate(result["bytes_per_call"] / 1e9, calls, "GB/s")
    metrics = {"norm_call_us": _scaled(1e6, calls, "us"), "norm_bandwidth_gb_per_s": bandwidth}
    skipped = {}
    if peak:
        metrics["norm_roofline_pct"] = Estimate.of([100 * gb / peak for gb in bandwidth.raw], "%")
    else:
        skipped["norm_roofline_pct"] = (
            f"peak memory bandwidth of '{device.profile.name}' is unknown"
        )
    return NormBenchRecord(
        **case.params(),
        context=context,
        protocol=ProtocolInfo(**timing["protocol"]),
        metrics=metrics,
        rows=result["rows"],
        dim=result["dim"],
        calls_per_repetition=result["calls_per_repetition"],
        bytes_per_call=result["bytes_per_call"],
        peak_gb_per_s=peak,
        peak_source=device.profile.source,
        skipped=skipped,
        warnings=tuple(timing["warnings"]),
    )
