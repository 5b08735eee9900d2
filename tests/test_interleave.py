"""Interleaved throughput runs: repetition r of every case before r + 1 of any, each case still
stopping by its own protocol; records say their order; a dying group fails its unreported cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from elmbench.backends.isolate import Group, Job, run_isolated
from elmbench.errors import ConfigError
from elmbench.measure.protocol import Protocol, Session, Timer
from elmbench.records import ThroughputRecord, read_run
from elmbench.suites import SuiteError, SuiteSpec, check_spec, parse_value
from elmbench.throughput.measure import SLOWDOWN_ENV
from elmbench.throughput.plan import Case
from elmbench.throughput.run import case_memory_bytes, interleave, run_spec

TINY = SuiteSpec(
    name="t",
    models=("tiny",),
    device="cpu",
    backend="torch",
    norms=("naive", "fused"),
    prompt_tokens=(8,),
    gen_tokens=(4,),
    warmup=1,
    repetitions=3,
    min_seconds=0.0,
    order="interleaved",
)


class Clock:
    """A clock that moves only when a measured function says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sessions_driven_in_turn_interleave_and_stop_on_their_own() -> None:
    clock, log = Clock(), []

    def case(name: str, seconds: float) -> Any:
        def fn(timer: Timer) -> None:
            log.append(name)
            clock.now += seconds

        return fn

    short = Session(case("a", 0.1), Protocol(warmup=1, min_repetitions=2, min_seconds=0.0),
                    clock=clock, order="interleaved")  # fmt: skip
    long = Session(case("b", 0.1), Protocol(warmup=1, min_repetitions=4, min_seconds=0.0),
                   clock=clock, order="interleaved")  # fmt: skip
    for session in (short, long):
        session.warm_up()
    active = [short, long]
    while active:
        active = [s for s in active if not s.step()]
    assert log == ["a", "b", "a", "b", "a", "b", "b", "b"]  # warm-ups, then rounds
    assert short.timing().repetitions == 2 and long.timing().repetitions == 4
    assert short.timing().info().order == "interleaved"
    assert short.step() is True and short.timing().repetitions == 2  # done stays done
    with pytest.raises(ConfigError, match="order 'shuffled'"):
        Session(case("c", 0.1), order="shuffled")


def test_an_interleaved_run_alternates_its_cases_and_says_so(tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []

    def on_event(kind: str, event: dict[str, Any]) -> None:
        if kind == "progress" and event["phase"] == "measure":
            events.append((event["case"].norm, event["step"]))

    result = run_spec(TINY, out=tmp_path, on_event=on_event)
    assert events == [("naive", 1), ("fused", 1), ("naive", 2), ("fused", 2),
                      ("naive", 3), ("fused", 3)]  # fmt: skip
    records = read_run(result.path).of(ThroughputRecord)
    assert {r.norm for r in records} == {"naive", "fused"}
    for record in records:
        assert record.protocol.order == "interleaved" and record.protocol.repetitions == 3
        assert "peak_memory_bytes" not in record.metrics
        assert "interleaved with 1 other" in record.skipped["peak_memory_bytes"]
        assert record.metrics["decode_tokens_per_s"].value > 0
    heads = {r.norm: r.generated_head for r in records}
    assert heads["naive"] == heads["fused"]  # each case kept its own model and cache


def test_a_single_case_and_the_default_run_sequentially(tmp_path: Path) -> None:
    alone = run_spec(TINY.with_overrides(norms=("naive",)), out=tmp_path / "a")
    (record,) = alone.records
    assert isinstance(record, ThroughputRecord) and record.protocol.order == "sequential"
    assert "peak_memory_bytes" in record.metrics


def _case(norm: str, model: str = "tiny") -> Case:
    return Case(model, "torch", "cpu", norm, "float32", "none", 1, 8, 4)


def test_groups_keep_their_models_within_the_memory_budget() -> None:
    cases = [_case(n) for n in ("naive", "fused", "compiled")]
    pairs = [(c, Job("m:t", "torch", {}, {}, c.case_id)) for c in cases]
    notes: list[str] = []
    (group,) = interleave(pairs, None, notes)
    assert isinstance(group, Group) and len(group.jobs) == 3 and not notes
    two = interleave(pairs, 2 * case_memory_bytes(cases[0]), notes)
    assert [len(u.jobs) if isinstance(u, Group) else 1 for u in two] == [2, 1]
    assert "2 groups" in notes[0]


def test_a_group_whose_worker_dies_fails_its_unreported_cases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "group_task.py").write_text(
        "import os\n"
        "def run(jobs):\n"
        "    yield {'case_id': jobs[0].case_id, 'status': 'ok'}\n"
        "    if jobs[1].params.get('die'):\n"
        "        os._exit(9)\n"
        "    raise ValueError('boom')\n"
        "def one(job):\n"
        "    yield {'status': 'ok'}\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    jobs = [Job("group_task:one", "torch", {}, {}, k) for k in "abc"]
    dying = Group("group_task:run", (jobs[0], Job("x", "torch", {}, {"die": True}, "b"), jobs[2]))
    records = run_isolated([dying, Job("group_task:one", "torch", {}, {}, "d")])
    status = {r["case_id"]: (r["status"], r.get("reason", "")) for r in records}
    assert status["a"] == ("ok", "")
    for key in "bc":
        assert status[key][0] == "failed"
        assert "code 9 while it ran 3 cases interleaved" in status[key][1]
    assert status["d"] == ("ok", "")  # a new worker went on
    raising = Group("group_task:run", (jobs[0], jobs[1], jobs[2]))
    records = run_isolated([raising])
    assert [r["status"] for r in records] == ["ok", "failed", "failed"]
    assert "ValueError: boom" in records[1]["reason"]


def test_the_norm_microbenchmark_is_never_interleaved() -> None:
    spec = SuiteSpec(name="n", kind="norms", models=("tiny",), order="interleaved")
    with pytest.raises(SuiteError, match="key 'order'"):
        check_spec(spec)


def test_the_test_slowdown_is_recorded_and_a_bad_value_fails_the_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLOWDOWN_ENV, "1.0")  # decode spins as long as it ran: 2x its CPU time
    spec = TINY.with_overrides(norms=("naive",), order="sequential")
    (record,) = run_spec(spec, out=tmp_path).records
    assert isinstance(record, ThroughputRecord)
    assert any("test-only slowdown: decode spun 100.0% more CPU time" in w for w in record.warnings)
    monkeypatch.setenv(SLOWDOWN_ENV, "fast")
    (failed,) = run_spec(spec, out=tmp_path).records
    assert failed.status == "failed" and SLOWDOWN_ENV in failed.reason


def test_a_suite_can_pin_the_workers_threads(tmp_path: Path) -> None:
    spec = TINY.with_overrides(norms=("naive",), threads=1)
    (record,) = run_spec(spec, out=tmp_path).records
    assert isinstance(record, ThroughputRecord) and record.describe["threads"] == 1
    # one thread: the rates without the time other tasks held the CPU (Linux reports it here)
    decode, on_cpu = (record.metrics[f] for f in ("decode_tokens_per_s",
                                                  "decode_on_cpu_tokens_per_s"))  # fmt: skip
    assert all(c >= w for c, w in zip(on_cpu.raw, decode.raw, strict=True))
    assert "prefill_on_cpu_tokens_per_s" in record.metrics
    (two,) = run_spec(spec.with_overrides(threads=2), out=tmp_path).records
    assert "needs one CPU thread (threads: 2)" in two.skipped["decode_on_cpu_tokens_per_s"]
    with pytest.raises(SuiteError, match="key 'threads' must be an integer >= 1"):
        parse_value("threads", 0, "suite x")
