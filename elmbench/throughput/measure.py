"""The timed work, run inside a backend's worker process: one case in, one raw-timing record out.

Prefill (time to the first token over the whole prompt) and decode (the remaining new tokens, one
cached step each) are timed as separate sections of every repetition; each section is bracketed
by the device synchronisation. The KV cache is allocated once per shape, outside the timed region.
Where the roofline is a measured read bandwidth (the CPU), the probe also runs in the worker just
before the case, between repetitions (after each one that ends `PAIR_SECONDS` of measured time
since the last probe) and after the last one, so that each repetition's decode is compared with
the memory of its own moment: on a shared machine the bandwidth drifts by 10-40% within minutes.
The probes run outside the timed repetitions, and where the peak memory can be restarted (device
allocators; process RSS on Linux) the case's peak is the largest of the windows between probes,
so that the probes' buffers do not count as the case's memory.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from elmbench.backends import Backend, ModelSpec, create_backend, decode_steps
from elmbench.backends.isolate import Job, report_progress
from elmbench.measure import cpuwait
from elmbench.measure.finite import check_finite_logits
from elmbench.measure.protocol import Protocol, Timer, run_protocol

_loaded: tuple[str, Backend] | None = None  # the worker keeps the last model for the next case
CASE_PROBE_MIB = 256  # the bandwidth probes beside each case: far larger than any CPU cache
PAIR_SECONDS = 2.0  # measured seconds between two probes inside a case (~0.3 s a probe)
DEFAULT_MAX_SECONDS = 60.0  # the time cap per case when a precision is asked without one


def load(backend_name: str, spec: dict[str, Any]) -> tuple[Backend, float | None]:
    """The backend for a spec, reusing the loaded one when the spec is unchanged; load seconds."""
    global _loaded
    key = backend_name + json.dumps(spec, sort_keys=True)
    if _loaded is not None and _loaded[0] == key:
        return _loaded[1], None
    _loaded = None  # free the previous model before loading the next (and its peak memory)
    gc.collect()  # models hold reference cycles (bound-method attributes): free them now
    start = time.perf_counter()
    backend = create_backend(backend_name, ModelSpec(**spec))
    _loaded = (key, backend)
    return backend, time.perf_counter() - start


def protocol_of(params: dict[str, Any]) -> Protocol:
    """The protocol a job asks for."""
    precision = params.get("precision_pct")
    cap = params.get("max_seconds")
    return Protocol(
        warmup=params["warmup"],
        min_repetitions=params["repetitions"],
        min_seconds=params["min_seconds"],
        precision_pct=precision,
        max_seconds=cap if cap is not None or precision is None else DEFAULT_MAX_SECONDS,
    )


def _progress(job: Job, protocol: Protocol) -> tuple[Any, Any]:
    calls = [0]

    def on_call() -> None:
        calls[0] += 1
        if calls[0] <= protocol.warmup:
            report_progress({"case_id": job.case_id, "phase": "warm-up", "step": calls[0]})

    def on_repetition(done: int, measured_s: float) -> None:
        report_progress(
            {"case_id": job.case_id, "phase": "measure", "step": done, "measured_s": measured_s}
        )

    return on_call, on_repetition


def throughput(job: Job) -> Iterator[dict[str, Any]]:
    """Time prefill and decode for one (batch, prompt, new tokens) shape; greedy, EOS ignored."""
    p = job.params
    report_progress({"case_id": job.case_id, "phase": "load"})
    backend, load_s = load(job.backend, job.spec)
    batch, prompt_len, new = p["batch_size"], p["prompt_tokens"], p["gen_tokens"]
    rng = np.random.default_rng(p["seed"])
    prompt = rng.integers(0, backend.config.vocab_size, size=(batch, prompt_len))
    backend.setup(batch, prompt_len + new)
    protocol = protocol_of(p)
    on_call, on_repetition = _progress(job, protocol)
    tokens: list[Any] = []
    waits: list[float | None] = []  # per call (warm-ups first): decode's thread time lost to others

    def once(timer: Timer) -> None:
        on_call()
        with timer.section("prefill"):
            tok = backend.prefill(prompt)
            backend.synchronize(tok)
        tokens[:] = [tok]
        before = cpuwait.snapshot()
        with timer.section("decode"):
            tokens.extend(decode_steps(backend.decode, tok, prompt_len, new - 1))
            backend.synchronize(tokens[-1])
        waits.append(cpuwait.waited_s(before))

    probes: list[dict[str, Any]] = []
    probed_at = [0.0]  # measured seconds when the last probe ran
    peaks: list[int] = []  # the peak memory of each window between probes

    def probe(after_repetition: int) -> None:
        if p.get("probe_bandwidth"):
            from elmbench.measure.membw import measure_roofline

            if after_repetition:  # the window since the previous probe (none before the first)
                peaks.append(backend.peak_memory_bytes()[0])
            report_progress({"case_id": job.case_id, "phase": "bandwidth probe"})
            found = measure_roofline(size_mib=CASE_PROBE_MIB, repeats=3)
            probes.append({"after_repetition": after_repetition, **found})
            backend.reset_peak_memory()  # the probe's buffers are not the case's memory

    def between(done: int, measured_s: float) -> None:
        on_repetition(done, measured_s)
        if measured_s - probed_at[0] >= PAIR_SECONDS:
            probe(done)
            probed_at[0] = measured_s

    probe(0)
    backend.reset_peak_memory()
    timing = run_protocol(once, protocol, sync=backend.synchronize, on_repetition=between)
    if not probes or probes[-1]["after_repetition"] != timing.repetitions:
        probe(timing.repetitions)
    peak, peak_kind = backend.peak_memory_bytes()
    peak = max([peak, *peaks])
    generated = np.concatenate([backend.to_numpy(t) for t in tokens], axis=1)
    # Untimed: the logits that chose each generated token of the first row must be finite.
    whole = np.concatenate([prompt[:1], generated[:1, :-1]], axis=1)  # (1, P + N - 1)
    check_finite_logits(backend, whole, new)
    yield {
        "status": "ok",
        "timing": timing.to_record(),
        "load_s": load_s,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "generated_head": generated[0, :16].tolist(),  # greedy tokens: a cross-run sanity check
        "describe": backend.describe(),
        "case_membw": probes,  # before, between and after the repetitions (measured rooflines)
        "decode_cpu_wait_raw_s": waits[protocol.warmup :],  # None where not reported
    }
