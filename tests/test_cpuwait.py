"""The run-queue wait of a process's threads, read from (fake and real) schedstat files."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from elmbench.measure import cpuwait
from elmbench.throughput.metrics import _cpu_wait


def _tasks(root: Path, waits: dict[str, int]) -> Path:
    """A /proc/<pid>/task folder: one schedstat per thread (run ns, wait ns, slices)."""
    for tid, ns in waits.items():
        (root / tid).mkdir(exist_ok=True)
        (root / tid / "schedstat").write_text(f"123456 {ns} 7\n")
    return root


def test_wait_is_summed_over_threads_since_the_snapshot(tmp_path: Path) -> None:
    tasks = _tasks(tmp_path, {"100": 1_000_000, "101": 5_000_000})
    before = cpuwait.snapshot(tasks)
    assert before == {"100": 1_000_000, "101": 5_000_000}
    _tasks(tmp_path, {"100": 4_000_000, "101": 5_500_000, "102": 250_000})  # 102 started since
    assert cpuwait.waited_s(before, tasks) == pytest.approx((3e6 + 0.5e6 + 0.25e6) / 1e9)


def test_ended_and_reused_threads_never_count_below_zero(tmp_path: Path) -> None:
    tasks = _tasks(tmp_path, {"100": 9_000_000, "101": 2_000_000})
    before = cpuwait.snapshot(tasks)
    (tasks / "101" / "schedstat").unlink()  # 101 ended: its schedstat is gone
    (tasks / "101").rmdir()
    _tasks(tmp_path, {"100": 1_000})  # a new thread took the id 100: its count starts over
    assert cpuwait.waited_s(before, tasks) == 0.0


def test_no_proc_means_not_measured(tmp_path: Path) -> None:
    assert cpuwait.snapshot(tmp_path / "absent") is None
    assert cpuwait.snapshot(tmp_path) is None  # a folder without threads
    assert cpuwait.waited_s(None, tmp_path) is None
    reason = _cpu_wait([None, None])
    assert isinstance(reason, str) and "not measured" in reason


def test_the_record_is_ms_per_repetition() -> None:
    from elmbench.records import Estimate

    body = _cpu_wait([0.002, 0.010, 0.0])
    assert isinstance(body, Estimate)
    assert body.raw == pytest.approx([2.0, 10.0, 0.0]) and body.value == pytest.approx(2.0)
    assert body.unit == "ms"


@pytest.mark.skipif(not cpuwait.TASKS.exists(), reason="needs Linux's /proc")
def test_this_process_reports_a_wait_for_each_live_thread() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        seen = cpuwait.snapshot()
        assert seen is not None and str(worker.native_id) in seen
        assert all(ns >= 0 for ns in seen.values())
        waited = cpuwait.waited_s(seen)
        assert waited is not None and waited >= 0
    finally:
        stop.set()
        worker.join()


def test_the_measuring_threads_own_wait_and_the_on_cpu_rate(tmp_path: Path) -> None:
    from elmbench.records import Estimate
    from elmbench.throughput.metrics import _on_cpu

    own = tmp_path / "schedstat"
    own.write_text("123 4500000 9\n")
    assert cpuwait.own_wait_ns(own) == 4_500_000
    assert cpuwait.own_wait_ns(tmp_path / "absent") is None
    # 100 tokens in 0.5 s of which the thread waited 0.1 s for a CPU: 250 tokens/s on the CPU
    rate = _on_cpu(100, [0.5, 0.4], [0.1, 0.0], threads=1)
    assert isinstance(rate, Estimate) and rate.raw == pytest.approx((250.0, 250.0))
    several = _on_cpu(100, [0.5], [0.1], threads=2)
    assert isinstance(several, str) and "needs one CPU thread (threads: 2)" in several
    unknown = _on_cpu(100, [0.5], [None], threads=1)
    assert isinstance(unknown, str) and "not measured" in unknown
    if cpuwait.THREAD_SELF.exists():
        assert (cpuwait.own_wait_ns() or 0) >= 0
