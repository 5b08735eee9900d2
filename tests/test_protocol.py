"""The measurement protocol with a fake clock, the CPU bandwidth probe and the CPU peak memory."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from elmbench.errors import ConfigError, UnknownNameError
from elmbench.measure.membw import measure_read_bandwidth, measure_roofline
from elmbench.measure.protocol import TOTAL, Protocol, Timer, run_protocol
from elmbench.measure.rss import reset_rss_peak, rss_peak_bytes
from elmbench.measure.stats import Summary, median_interval


class FakeClock:
    """A clock that only moves when the measured function says so."""

    def __init__(self, log: list[str] | None = None) -> None:
        self.now = 0.0
        self.log = log

    def __call__(self) -> float:
        if self.log is not None:
            self.log.append("clock")
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def steps(clock: FakeClock, durations: Iterable[float]) -> Callable[[Timer], None]:
    """A measured function whose calls take the given durations in turn (the last one repeats)."""
    values: Iterator[float] = iter(durations)
    last = [0.0]

    def fn(timer: Timer) -> None:
        last[0] = next(values, last[0])
        clock.advance(last[0])

    return fn


def quick(**kw: Any) -> Protocol:
    """No warm-up, at least 5 repetitions and 1 s, unless overridden."""
    return Protocol(**{"warmup": 0, "min_repetitions": 5, "min_seconds": 1.0, **kw})


@pytest.mark.parametrize(("seconds", "expected"), [(0.1, 10), (0.5, 5), (0.3, 5), (0.125, 8)])
def test_stops_when_both_minimums_are_met(seconds: float, expected: int) -> None:
    clock = FakeClock()
    timing = run_protocol(steps(clock, [seconds]), quick(), clock=clock)
    assert timing.repetitions == expected
    assert timing.stopped_by == "minimums"
    assert timing.raw_s() == pytest.approx([seconds] * expected)


def test_warmup_calls_are_excluded() -> None:
    clock = FakeClock()
    fn = steps(clock, [7.0, 9.0, 0.5])
    timing = run_protocol(fn, quick(warmup=2), clock=clock)
    assert timing.warmup_s == (7.0, 9.0)
    assert timing.raw_s() == pytest.approx([0.5] * 5)
    assert timing.to_record()["protocol"]["warmup_raw_s"] == [7.0, 9.0]


def test_repetition_cap() -> None:
    clock = FakeClock()
    protocol = quick(min_seconds=100.0, max_repetitions=7)
    timing = run_protocol(steps(clock, [0.1]), protocol, clock=clock)
    assert timing.repetitions == 7
    assert timing.stopped_by == "max_repetitions"
    assert any("7-repetition cap" in w for w in timing.warnings)


def test_sync_brackets_every_timed_region_in_order() -> None:
    log: list[str] = []
    clock = FakeClock(log)

    def fn(timer: Timer) -> None:
        log.append("fn")
        with timer.section("prefill"):
            log.append("body")
            clock.advance(1.0)

    protocol = Protocol(warmup=1, min_repetitions=1, min_seconds=0.0)
    run_protocol(fn, protocol, clock=clock, sync=lambda: log.append("sync"))
    inner = ["sync", "clock", "body", "sync", "clock"]
    one_call = ["sync", "clock", "fn", *inner, "sync", "clock"]
    assert log == one_call + one_call  # the warm-up call, then the one repetition


def test_sections_are_recorded_separately() -> None:
    clock = FakeClock()

    def generation(timer: Timer) -> dict[str, float]:
        with timer.section("prefill"):
            clock.advance(0.25)
        for _ in range(4):  # a repeated section name adds up within the repetition
            with timer.section("decode"):
                clock.advance(0.125)
        clock.advance(0.0625)  # untimed host work still counts in the total
        return {"kernel": 0.01}  # sub-timings the function measured itself

    timing = run_protocol(generation, quick(), clock=clock)
    assert list(timing.sections) == [TOTAL, "prefill", "decode", "kernel"]
    assert timing.raw_s("prefill") == (0.25,) * 5
    assert timing.raw_s("decode") == (0.5,) * 5
    assert timing.raw_s("kernel") == (0.01,) * 5
    assert timing.raw_s() == (0.8125,) * 5
    record = json.loads(json.dumps(timing.to_record()))
    assert record["sections_raw_s"]["decode"] == [0.5] * 5
    assert timing.stats("prefill").median == 0.25
    protocol = record["protocol"]
    assert protocol["min_seconds"] == 1.0 and protocol["warmup"] == 0
    assert protocol["repetitions"] == 5 and protocol["measured_s"] == pytest.approx(4.0625)


def test_sections_must_appear_in_every_repetition() -> None:
    clock = FakeClock()
    calls = [0]

    def flaky(timer: Timer) -> None:
        calls[0] += 1
        if calls[0] != 2:
            with timer.section("decode"):
                clock.advance(0.1)

    with pytest.raises(ConfigError, match="'decode' was timed in 1 of 2 repetitions"):
        run_protocol(flaky, quick(), clock=clock)


@pytest.mark.parametrize("bad", ["total", "Prefill", "pre fill"])
def test_section_names_must_be_record_keys(bad: str) -> None:
    def fn(timer: Timer) -> None:
        with timer.section(bad):
            pass

    with pytest.raises(ConfigError, match="lower_snake_case"):
        run_protocol(fn, quick(min_seconds=0.0))


def test_returned_section_may_not_shadow_a_timed_one() -> None:
    def fn(timer: Timer) -> dict[str, float]:
        with timer.section("decode"):
            pass
        return {"decode": 1.0}

    with pytest.raises(ConfigError, match="both timed and returned"):
        run_protocol(fn, quick(min_seconds=0.0))


def test_statistics_match_the_statistics_module() -> None:
    durations = [1.0, 2.0, 3.0, 4.0, 10.0]
    clock = FakeClock()
    timing = run_protocol(steps(clock, durations), quick(min_seconds=0.0), clock=clock)
    st = timing.stats()
    assert st.n == 5
    assert st.mean == pytest.approx(statistics.mean(durations))
    assert st.median == pytest.approx(statistics.median(durations))
    assert st.stdev == pytest.approx(statistics.stdev(durations))
    assert (st.min, st.max) == (1.0, 10.0)
    assert st.cv == pytest.approx(statistics.stdev(durations) / statistics.mean(durations))
    # Five values: no pair of order statistics reaches 95%; [min, max] covers 1 - 2/32.
    assert (st.ci_low, st.ci_high, st.ci_level) == (1.0, 10.0, pytest.approx(0.9375))


def test_unstable_timing_is_flagged_with_a_warning() -> None:
    clock = FakeClock()
    noisy = run_protocol(steps(clock, [1, 1, 1, 1, 1.5]), quick(), clock=clock)
    assert not noisy.stable()
    assert noisy.to_record()["warnings"] == noisy.warnings
    (warning,) = noisy.warnings
    assert "unstable timing: 'total' varies by" in warning and "10% limit" in warning

    steady = run_protocol(steps(clock, [1, 1, 1, 1, 1.05]), quick(), clock=clock)
    assert steady.stable() and steady.warnings == []
    loose = run_protocol(steps(clock, [1, 1, 1, 1, 1.5]), quick(max_cv=0.5), clock=clock)
    assert loose.stable()


def test_one_repetition_has_unknown_variation() -> None:
    clock = FakeClock()
    protocol = Protocol(warmup=0, min_repetitions=1, min_seconds=0.5)
    timing = run_protocol(steps(clock, [1.0]), protocol, clock=clock)
    assert timing.repetitions == 1
    assert timing.stats().stdev is None and timing.stats().cv is None
    assert not timing.stable() and "variation is unknown" in timing.warnings[0]


def test_the_interval_of_the_median_comes_from_order_statistics() -> None:
    from scipy.stats import binom

    values = [float(v) for v in range(1, 21)]  # 20 values
    low, high, level = median_interval(values)
    # The narrowest [x_(k), x_(21-k)] that covers the median with >= 95%: k = 6 (P = 0.9586).
    assert (low, high) == (6.0, 15.0)
    assert level == pytest.approx(1 - 2 * binom.cdf(5, 20, 0.5)) and level >= 0.95
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, pytest.approx(0.75))
    assert median_interval([4.0]) == (4.0, 4.0, 0.0)
    summary = Summary.of(values)
    assert summary.ci_half_width_pct == pytest.approx(50 * (15 - 6) / 10.5)
    with pytest.raises(ValueError, match="at least one value"):
        median_interval([])


def test_precision_on_demand_goes_on_until_the_interval_is_narrow_enough() -> None:
    clock = FakeClock()
    noisy = [1.0, 1.2, 0.8, 1.1, 0.9]  # repeated: the interval narrows as values accumulate
    protocol = quick(min_seconds=0.0, precision_pct=10.0, max_seconds=100.0)
    timing = run_protocol(steps(clock, noisy), protocol, clock=clock)
    assert timing.stopped_by == "precision" and timing.repetitions > 5
    reached = timing.precision_reached()["total"]
    assert reached is not None and reached <= 10.0
    assert timing.info().precision_pct == 10.0
    assert timing.stats().cv is not None and timing.stats().cv > 0.1
    assert timing.warnings == []  # the median is known to +-10%: its spread is no warning

    capped = quick(min_seconds=0.0, precision_pct=0.1, max_seconds=8.0)
    clock = FakeClock()
    timing = run_protocol(steps(clock, noisy), capped, clock=clock)
    assert timing.stopped_by == "max_seconds" and timing.measured_s >= 8.0
    assert any("precision +-0.1% not reached within the 8 s cap" in w for w in timing.warnings)
    assert any(w.startswith("unstable timing: 'total'") for w in timing.warnings)
    with pytest.raises(ConfigError, match="precision must be > 0%"):
        Protocol(precision_pct=0.0)


def test_on_repetition_reports_progress() -> None:
    clock = FakeClock()
    seen: list[tuple[int, float]] = []
    run_protocol(
        steps(clock, [0.25]),
        quick(),
        clock=clock,
        on_repetition=lambda i, elapsed: seen.append((i, elapsed)),
    )
    assert seen == [(i, 0.25 * i) for i in range(1, 6)]


def test_time_spent_between_repetitions_is_not_measured() -> None:
    # throughput runs its bandwidth probes in on_repetition: they must not count
    clock = FakeClock()
    timing = run_protocol(
        steps(clock, [0.25]), quick(), clock=clock, on_repetition=lambda i, e: clock.advance(9.0)
    )
    assert timing.raw_s() == (0.25,) * 5 and timing.measured_s == pytest.approx(1.25)


@pytest.mark.parametrize(
    "kw",
    [{"warmup": -1}, {"min_repetitions": 0}, {"min_seconds": -1.0}, {"max_repetitions": 2},
     {"max_cv": 0.0}, {"min_seconds": float("nan")}],
)  # fmt: skip
def test_protocol_validates_its_parameters(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="measurement protocol"):
        Protocol(**kw)


def test_real_clock_smoke() -> None:
    timing = run_protocol(lambda timer: sum(range(100)), Protocol(warmup=1, min_seconds=0.0))
    assert timing.repetitions == 5 and all(v >= 0 for v in timing.raw_s())


# --- the CPU read-bandwidth probe -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch", "stream"])
def test_bandwidth_probe_reports_the_best_pass(
    backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "stream":
        request.getfixturevalue("gemv_kernel")
    result = measure_read_bandwidth(size_mib=8, repeats=3, backend=backend, threads=2)
    assert result.bytes_per_repetition == 8 * 2**20
    assert len(result.raw_s) == 3 and all(s > 0 for s in result.raw_s)
    assert result.gb_per_s == pytest.approx(max(result.raw_gb_per_s))
    assert result.gb_per_s == pytest.approx(8 * 2**20 / min(result.raw_s) / 1e9)
    starts = {"numpy": "numpy.sum", "torch": "torch.sum", "stream": "streaming GEMV"}
    assert result.method.startswith(starts[backend])
    record = json.loads(json.dumps(result.to_record()))
    assert record["membw_gb_per_s"] == result.gb_per_s and record["membw_threads"] == 2


def test_bandwidth_with_a_fake_clock_is_exact() -> None:
    ticks = iter([0.0, 0.004, 1.0, 1.002, 2.0, 2.003])
    result = measure_read_bandwidth(
        size_mib=4, repeats=3, backend="numpy", threads=1, warmup=0, clock=lambda: next(ticks)
    )
    assert result.raw_s == pytest.approx((0.004, 0.002, 0.003))
    assert result.gb_per_s == pytest.approx(4 * 2**20 / 0.002 / 1e9)


def test_bandwidth_probe_prefers_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert measure_read_bandwidth(size_mib=4, repeats=1).backend == "torch"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # torch not installed
    assert measure_read_bandwidth(size_mib=4, repeats=1).backend == "numpy"


def test_bandwidth_probe_restores_torch_threads() -> None:
    import torch

    before = torch.get_num_threads()
    measure_read_bandwidth(size_mib=4, repeats=1, backend="torch", threads=1)
    assert torch.get_num_threads() == before


def test_bandwidth_probe_rejects_bad_arguments() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'numpy'"):
        measure_read_bandwidth(size_mib=4, backend="nmpy")
    with pytest.raises(ConfigError, match="size_mib"):
        measure_read_bandwidth(size_mib=0)
    with pytest.raises(ConfigError, match="threads"):
        measure_read_bandwidth(size_mib=4, threads=0)


@pytest.mark.usefixtures("gemv_kernel")
def test_roofline_is_the_fastest_probe_and_keeps_them_all(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from elmbench.engine import cpu_kernels

    record = measure_roofline(size_mib=8, repeats=2)
    probes = record["membw_probes"]
    assert [p["method"].split(" over")[0] for p in probes] == ["torch.sum", "streaming GEMV kernel"]
    assert record["membw_gb_per_s"] == max(p["gb_per_s"] for p in probes)
    assert record["membw_method"].startswith("best of 2 read probe(s)")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("ELMBENCH_CACHE", str(tmp_path))
    cpu_kernels.load_kernels.cache_clear()
    try:
        alone = measure_roofline(size_mib=8, repeats=1)
    finally:
        cpu_kernels.load_kernels.cache_clear()
    assert len(alone["membw_probes"]) == 1 and "did not build" in alone["membw_probes_skipped"][0]


# --- the CPU peak memory ------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="restarting the peak is Linux's")
def test_the_rss_peak_restarts_below_memory_freed_before() -> None:
    held = np.ones(96 * 2**18, dtype=np.float32)  # 96 MiB, touched
    with_buffer = rss_peak_bytes()
    del held
    assert reset_rss_peak()
    assert rss_peak_bytes() < with_buffer - 64 * 2**20


def test_the_rss_peak_says_when_it_cannot_restart(tmp_path: Path) -> None:
    assert not reset_rss_peak(tmp_path / "missing" / "clear_refs")
