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
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from elmbench.backends import Backend, ModelSpec, create_backend, decode_steps
from elmbench.backends.isolate import Job, report_progress
from elmbench.errors import ConfigError, ElmbenchError
from elmbench.measure import cpuwait
from elmbench.measure.finite import check_finite_logits
from elmbench.measure.protocol import INTERLEAVED, SEQUENTIAL, Protocol, Session, Timer

_loaded: tuple[str, Backend] | None = None  # the worker keeps the last model for the next case
CASE_PROBE_MIB = 256  # the bandwidth probes beside each case: far larger than any CPU cache
PAIR_SECONDS = 2.0  # measured seconds between two probes inside a case (~0.3 s a probe)
DEFAULT_MAX_SECONDS = 60.0  # the time cap per case when a precision is asked without one
SLOWDOWN_ENV = "ELMBENCH_TEST_SLOWDOWN_DECODE"  # tests only: a known slowdown for compare's A/B


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


class ThroughputCase:
    """One throughput case in a worker: its backend, prompt, probes and protocol session."""

    def __init__(self, job: Job, backend: Backend, load_s: float | None, order: str) -> None:
        p = self.params = job.params
        self.job, self.backend, self.load_s = job, backend, load_s
        batch, self.prompt_len, self.new = p["batch_size"], p["prompt_tokens"], p["gen_tokens"]
        rng = np.random.default_rng(p["seed"])
        self.prompt = rng.integers(0, backend.config.vocab_size, size=(batch, self.prompt_len))
        backend.setup(batch, self.prompt_len + self.new)
        self.protocol = protocol_of(p)
        self.on_call, self.on_repetition = _progress(job, self.protocol)
        self.slowdown = slowdown_fraction()
        self.tokens: list[Any] = []
        self.waits: list[float | None] = []  # per call (warm-ups first): decode's thread time lost
        self.own_waits: dict[str, list[float | None]] = {"prefill": [], "decode": []}
        self.one_thread = backend.describe().get("threads") == 1
        self.probes: list[dict[str, Any]] = []
        self.probed_at = 0.0  # measured seconds when the last probe ran
        self.peaks: list[int] = []  # the peak memory of each window between probes
        self.session = Session(self._once, self.protocol, sync=backend.synchronize,
                               on_repetition=self._between, order=order)  # fmt: skip

    def _once(self, timer: Timer) -> None:
        backend, new, prompt_len = self.backend, self.new, self.prompt_len
        self.on_call()
        with timer.section("prefill"):
            own = self._own()
            tok = backend.prefill(self.prompt)
            backend.synchronize(tok)
            self._own_wait("prefill", own)
        self.tokens[:] = [tok]
        before = cpuwait.snapshot()
        with timer.section("decode"):
            own, cpu = self._own(), time.thread_time()
            self.tokens.extend(decode_steps(backend.decode, tok, prompt_len, new - 1))
            backend.synchronize(self.tokens[-1])
            if self.slowdown:  # test-only: a known regression for compare's A/B check
                spin(self.slowdown * (time.thread_time() - cpu))
            self._own_wait("decode", own)
        self.waits.append(cpuwait.waited_s(before))

    def _own(self) -> int | None:
        """The measuring thread's run-queue wait so far, read inside a timed section (a few
        microseconds) so that the wait of a section never exceeds it; one-thread runs only."""
        return cpuwait.own_wait_ns() if self.one_thread else None

    def _own_wait(self, section: str, before: int | None) -> None:
        """The measuring thread's run-queue wait in a section (for the on-CPU rates)."""
        after = self._own()
        waited = None if before is None or after is None else (after - before) / 1e9
        self.own_waits[section].append(waited)

    def probe(self, after_repetition: int) -> None:
        """A read-bandwidth probe beside the case (outside its timed region)."""
        if self.params.get("probe_bandwidth"):
            from elmbench.measure.membw import measure_roofline

            if after_repetition:  # the window since the previous probe (none before the first)
                self.peaks.append(self.backend.peak_memory_bytes()[0])
            report_progress({"case_id": self.job.case_id, "phase": "bandwidth probe"})
            found = measure_roofline(size_mib=CASE_PROBE_MIB, repeats=3)
            self.probes.append({"after_repetition": after_repetition, **found})
            self.backend.reset_peak_memory()  # the probe's buffers are not the case's memory

    def _between(self, done: int, measured_s: float) -> None:
        self.on_repetition(done, measured_s)
        if measured_s - self.probed_at >= PAIR_SECONDS:
            self.probe(done)
            self.probed_at = measured_s

    def start(self) -> None:
        """The first probe, then the warm-up calls."""
        self.probe(0)
        self.backend.reset_peak_memory()
        self.session.warm_up()

    def step(self) -> bool:
        """One repetition; True when the case's protocol is met."""
        return self.session.step()

    def result(self, shared_process: int = 1) -> dict[str, Any]:
        """The worker's raw record; with `shared_process` > 1 cases in this process, the
        process's peak memory is theirs together, so none is given for the case."""
        backend, timing = self.backend, self.session.timing()
        if not self.probes or self.probes[-1]["after_repetition"] != timing.repetitions:
            self.probe(timing.repetitions)
        peak, peak_kind = backend.peak_memory_bytes()
        peak_memory: int | None = max([peak, *self.peaks])
        if shared_process > 1:
            peak_memory = None
            peak_kind = (
                f"not measured: the case ran interleaved with {shared_process - 1} other(s) in "
                "one process, whose memory they share"
            )
        generated = np.concatenate([backend.to_numpy(t) for t in self.tokens], axis=1)
        # Untimed: the logits that chose each generated token of the first row must be finite.
        whole = np.concatenate([self.prompt[:1], generated[:1, :-1]], axis=1)  # (1, P + N - 1)
        check_finite_logits(backend, whole, self.new)
        warnings = []
        if self.slowdown:
            warnings.append(
                f"test-only slowdown: decode spun {self.slowdown:.1%} more CPU time "
                f"({SLOWDOWN_ENV})"
            )
        return {
            "status": "ok",
            "timing": timing.to_record(),
            "load_s": self.load_s,
            "peak_memory_bytes": peak_memory,
            "peak_memory_kind": peak_kind,
            "generated_head": generated[0, :16].tolist(),  # greedy tokens: a cross-run check
            "describe": backend.describe(),
            "case_membw": self.probes,  # before, between and after the repetitions
            "decode_cpu_wait_raw_s": self.waits[self.protocol.warmup :],  # None: not reported
            **{
                f"{name}_thread_wait_raw_s": waits[self.protocol.warmup :]
                for name, waits in self.own_waits.items()
            },
            "extra_warnings": warnings,
        }


def spin(cpu_seconds: float) -> None:
    """Busy-wait until this thread has used `cpu_seconds` more CPU time (preemption excluded)."""
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        pass


def slowdown_fraction() -> float:
    """The share of decode's CPU time to add as busy work ($ELMBENCH_TEST_SLOWDOWN_DECODE; tests
    and compare's A/B check only)."""
    text = os.environ.get(SLOWDOWN_ENV, "").strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"${SLOWDOWN_ENV} must be a fraction such as 0.05; found {text!r}"
        ) from None
    if not 0 <= value < 10:
        raise ConfigError(f"${SLOWDOWN_ENV} must be between 0 and 10; found {value}")
    return value


def throughput(job: Job) -> Iterator[dict[str, Any]]:
    """Time prefill and decode for one (batch, prompt, new tokens) shape; greedy, EOS ignored."""
    report_progress({"case_id": job.case_id, "phase": "load"})
    backend, load_s = load(job.backend, job.spec)
    case = ThroughputCase(job, backend, load_s, SEQUENTIAL)
    case.start()
    while not case.step():
        pass
    yield case.result()


def throughput_interleaved(jobs: list[Job]) -> Iterator[dict[str, Any]]:
    """Time several cases in turn: every case loaded and warmed up, then repetition r of each
    before repetition r + 1 of any, so that a drift of the machine's speed hits them alike.

    Each case keeps its own model and KV cache in this process; a case's record is sent as soon
    as its own protocol is met, while the others go on.
    """
    global _loaded
    _loaded = None  # the sequential cache would hold one model more than the group needs
    gc.collect()
    cases: list[ThroughputCase] = []
    for job in jobs:
        report_progress({"case_id": job.case_id, "phase": "load"})
        start = time.perf_counter()
        backend = create_backend(job.backend, ModelSpec(**job.spec))
        cases.append(ThroughputCase(job, backend, time.perf_counter() - start, INTERLEAVED))
    for case in cases:
        case.start()
    active = list(cases)
    while active:
        for case in list(active):
            if case.step():
                active.remove(case)
                try:
                    result = case.result(shared_process=len(cases))
                except ElmbenchError as exc:  # this case fails (non-finite logits); others go on
                    result = {"status": "failed", "reason": str(exc)}
                yield {"case_id": case.job.case_id, **result}
    cases.clear()
    gc.collect()
