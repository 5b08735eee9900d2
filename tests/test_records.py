"""Run folders and typed records: round trips, groups, resume, crash repair, locks, schemas."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from elmbench import __version__
from elmbench.errors import ConfigError, ElmbenchError, UnknownNameError
from elmbench.records import (
    LOCK_FILE,
    RECORDS_FILE,
    RUN_FILE,
    TRUNCATED_FILE,
    AccuracyRecord,
    CategoryTime,
    Context,
    Estimate,
    FailureRecord,
    NormBenchRecord,
    NormShare,
    OpTime,
    PartTime,
    ProfileRecord,
    ProtocolInfo,
    Record,
    Roofline,
    ThroughputRecord,
    case_id,
    git_state,
    open_run,
    parse_record,
    read_run,
    resume_run,
    store,
)
from elmbench.records.codec import to_json

SPEC = {"models": ["270m"], "norms": ["naive", "fused"], "batch_sizes": [1]}
CONTEXT = Context("cpu", "AMD EPYC", None, "random(seed=0)", True, 0)
PROTOCOL = ProtocolInfo(1, 3, 1.0, 1000, 0.1, 3, 1.5, "minimums", (0.9,))


def throughput(norm: str = "naive", **kw: object) -> ThroughputRecord:
    """A throughput record of OpenELM-270M with three repetitions."""
    values = dict(
        model="270m", kernels="stock", backend="torch", device="cpu", norm=norm, dtype="float32",
        compile="none", batch_size=1, prompt_tokens=128, gen_tokens=32, context=CONTEXT,
        protocol=PROTOCOL,
        metrics={"decode_tokens_per_s": Estimate.of([40.0, 41.5, 39.0], "tokens/s")},
        skipped={"prefill_mfu_pct": "'cpu' publishes no dense float32 peak FLOP/s"},
        sections_raw_s={"decode": (0.77, 0.75, 0.79)},
        roofline=Roofline(33.5, "measured", (33.0, 34.0, 33.5), probes=({"gb_per_s": 33.5},)),
        describe={"torch_version": "2.13.0", "engine": None},
    )  # fmt: skip
    values.update(kw)
    return ThroughputRecord(**values)  # type: ignore[arg-type]


def one_of_each() -> list[Record]:
    """A record of every kind, with every nested type filled in."""
    norm = NormBenchRecord(
        model="270m", backend="mlx", device="mlx-cpu", norm="fused", dtype="bfloat16",
        where="head", tokens=128, context=CONTEXT, protocol=PROTOCOL,
        metrics={"norm_call_us": Estimate.of([3.0, 3.5], "us")}, rows=2048, dim=64,
        calls_per_repetition=100, bytes_per_call=524416, peak_gb_per_s=None,
        skipped={"norm_roofline_pct": "peak unknown"},
    )  # fmt: skip
    profile = ProfileRecord(
        **{k: v for k, v in throughput().case().items()}, phase="decode", context=CONTEXT,
        steps=2, forwards_per_step=31, tokens_per_step=31, time_basis="cpu_self_time",
        norm_share=NormShare(12.5, 3.0, 113.0, ops_per_call=7.0),
        categories=(CategoryTime("norm", 3.0, 12.5, 1.5, 900),),
        parts=(PartTime("attn_norm", "norm", 1.0, 4.0, 0.5, 16.0),),
        wall_ms_per_step=(20.0, 22.0), instrumented_ms_per_step=30.0,
        ms_per_token_without_norm=0.6, max_speedup_from_norm=1.14,
        top_ops=(OpTime(1, "aten::mm", 100, 5.0, 40.0),), traces={"chrome": "traces/x.json"},
    )  # fmt: skip
    accuracy = AccuracyRecord(
        model="270m", backend="torch", kernels="stock", dtype="float32", norm="naive",
        task="arc_challenge", metric="acc_norm", label="ARC-c", suite="zero_shot", value=0.25,
        value_pct=25.0, stderr_pct=1.2, samples=1172, shots=0, device="cpu",
        weights="random(seed=0)", random_weights=True, tokenizer="sentencepiece:abc",
        lm_eval_version="0.4.13", task_version=1.0, published_pct=26.8, delta_pct=-1.8,
        requests=4687, computed_tokens=123, requests_per_s=5.0,
    )  # fmt: skip
    failure = FailureRecord("throughput", throughput("apex").case(), "apex needs CUDA", "failed")
    return [throughput(), norm, profile, accuracy, failure]


def new_run(root: Path, **kw: object) -> store.RunWriter:
    return open_run("throughput", spec=SPEC, seed=0, root=root, **kw)  # type: ignore[arg-type]


def test_run_json_is_written_at_start(tmp_path: Path) -> None:
    writer = new_run(tmp_path, device={"profile": {"name": "cpu"}}, extra={"membw": None})
    assert writer.path.parent == tmp_path
    assert re.fullmatch(r"\d{8}-\d{6}-throughput-[0-9a-f]{7}", writer.run_id)
    meta = json.loads((writer.path / RUN_FILE).read_text())
    assert meta["schema_version"] == 2 and meta["run_id"] == writer.run_id
    assert meta["kind"] == "throughput" and meta["elmbench_version"] == __version__
    assert datetime.fromisoformat(meta["created_utc"]).utcoffset() is not None
    assert meta["spec"] == SPEC and meta["seed"] == 0 and meta["extra"] == {"membw": None}
    assert meta["device"] == {"profile": {"name": "cpu"}}
    assert meta["versions"]["python"] and "torch" in meta["versions"]
    assert meta["host"]["cores"] == os.cpu_count() and meta["host"]["hostname"]
    assert meta["finished_utc"] is None
    assert (writer.path / RECORDS_FILE).read_text() == ""
    writer.finish()
    assert read_run(writer.path).meta.finished_utc is not None


def test_git_state_of_this_checkout_and_of_a_non_checkout(tmp_path: Path) -> None:
    package = Path(store.__file__).parent.parent
    state = git_state()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True
    ).stdout.strip()
    if head:  # elmbench runs from its git checkout here
        assert state["git_sha"] == head and isinstance(state["git_dirty"], bool)
    (tmp_path / "elmbench").mkdir()
    assert git_state(tmp_path / "elmbench") == {"git_sha": None, "git_dirty": None}


def test_every_kind_round_trips_through_its_type(tmp_path: Path) -> None:
    records = one_of_each()
    with new_run(tmp_path) as writer:
        lines = [line for r in records for line in writer.append(r)]
    run = read_run(writer.path)
    assert run.records == records and run.notes == []
    assert [type(r) for r in run.records] == [type(r) for r in records]
    first = lines[0]
    assert list(first)[:6] == ["schema_version", "kind", "run_id", "case_id", "group", "group_size"]
    assert first["case_id"] == records[0].case_id == case_id(records[0].case())
    assert "kernels=stock" in first["case_id"] and first["kind"] == "throughput"
    assert run.of(FailureRecord)[0].case_id == throughput("apex").case_id  # the same case key
    estimate = run.records[0].metrics["decode_tokens_per_s"]  # type: ignore[attr-defined]
    assert estimate.value == 40.0 and estimate.raw == (40.0, 41.5, 39.0)
    assert estimate.ci_low == 39.0 and estimate.ci_high == 41.5 and estimate.ci_level == 0.75


def test_append_fsyncs_each_case_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = new_run(tmp_path)
    seen: list[int] = []

    def spy(fd: int) -> None:
        seen.append(fd)
        # the group was flushed before the fsync: it is in the file already
        lines = (writer.path / RECORDS_FILE).read_text().splitlines()
        assert len(lines) == 2 * len(seen)

    monkeypatch.setattr(os, "fsync", spy)
    for norm in ("naive", "fused"):
        profile = one_of_each()[2]
        writer.append(
            replace(profile, norm=norm, phase="prefill"),  # type: ignore[type-var]
            replace(profile, norm=norm, phase="decode"),  # type: ignore[type-var]
        )
    assert len(seen) == 2


def test_values_are_made_json_safe() -> None:
    bad: list[str] = []
    out = to_json(
        {"a": np.float32(2.5), "b": np.array([0.5, 1.0]), "c": float("nan"), "p": Path("/w")},
        "",
        bad,
    )
    assert out == {"a": 2.5, "b": [0.5, 1.0], "c": None, "p": "/w"} and bad == ["c"]
    with pytest.raises(ConfigError, match="'x' of type object is not JSON-safe"):
        to_json({"x": object()}, "", [])


def test_readers_refuse_what_no_record_kind_defines(tmp_path: Path) -> None:
    line = {"schema_version": 2, "kind": "throughput", "run_id": "r", "case_id": "c"}
    body = to_json(throughput(), "", [])
    with pytest.raises(ElmbenchError, match="unknown record kind 'speed'"):
        parse_record({**line, "kind": "speed", **body}, "x:1")
    with pytest.raises(ElmbenchError, match=r"x:1: unknown field\(s\) tokens_per_s"):
        parse_record({**line, **body, "tokens_per_s": 3}, "x:1")
    with pytest.raises(
        ElmbenchError, match=r"x:1\.batch_size: expected an integer, found a string"
    ):
        parse_record({**line, **body, "batch_size": "1"}, "x:1")
    with pytest.raises(ElmbenchError, match="missing field 'model'"):
        parse_record({**line, **{k: v for k, v in body.items() if k != "model"}}, "x:1")
    with pytest.raises(ConfigError, match="needs a reason"), new_run(tmp_path) as writer:
        writer.append(FailureRecord("throughput", {"model": "x"}, ""))


def test_case_ids_are_stable() -> None:
    assert case_id({"b": 1, "a": "x"}) == case_id({"a": "x", "b": 1}) == "a=x;b=1"
    assert case_id({"a": "x"}) != case_id({"a": "y"})
    assert case_id({"n": "a;b", "t": None, "f": True, "s": [1, 2]}) == (
        'f=true;n="a;b";s=[1,2];t=null'
    )
    assert ThroughputRecord.case_id_of({**throughput().case(), "extra": 1}) == throughput().case_id


def test_resume_skips_finished_cases_and_a_retry_replaces_the_failure(tmp_path: Path) -> None:
    with new_run(tmp_path) as first:
        first.append(throughput("naive"))
        first.append(FailureRecord("throughput", throughput("fused").case(), "boom"))
    ok, failed, todo = (throughput(n).case_id for n in ("naive", "fused", "compiled"))

    with resume_run(first.path, kind="throughput", spec=SPEC) as writer:
        assert writer.run_id == first.run_id
        assert writer.done(ok) and writer.done(failed) and not writer.done(todo)
        writer.append(throughput("compiled"))
        assert writer.done(todo)

    with resume_run(first.run_id, kind="throughput", root=tmp_path, retry_failed=True) as retry:
        assert retry.done(ok) and not retry.done(failed)
        retry.append(throughput("fused"))
    run = read_run(first.path)
    assert [r.norm for r in run.records] == ["naive", "compiled", "fused"]  # type: ignore[attr-defined]
    assert not run.of(FailureRecord)  # replaced in the file, not only hidden
    assert len((first.path / RECORDS_FILE).read_text().splitlines()) == 3
    assert len(run.meta.resumed) == 2


def test_resume_refuses_other_settings_and_kinds(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    writer.close()
    with pytest.raises(ElmbenchError, match=r"other settings \(differing: norms\)"):
        resume_run(writer.path, kind="throughput", spec={**SPEC, "norms": ["naive"]})
    with pytest.raises(ElmbenchError, match="cannot resume a 'throughput' run as 'profile'"):
        resume_run(writer.path, kind="profile")


def test_a_second_writer_of_a_run_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    with pytest.raises(ElmbenchError, match=r"is being written by elmbench pid \d+"):
        resume_run(writer.path, kind="throughput")
    # another process too (flock is per open file, so this is what two commands see)
    code = (
        "import sys; from elmbench.records import resume_run\n"
        "from elmbench.errors import ElmbenchError\n"
        f"try: resume_run({str(writer.path)!r}, kind='throughput')\n"
        "except ElmbenchError as e: print(e); sys.exit(2)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2 and f"pid {os.getpid()}" in done.stdout
    writer.close()
    with resume_run(writer.path, kind="throughput") as again:
        assert (again.path / LOCK_FILE).read_text().startswith("elmbench pid")


def test_truncated_last_line_is_set_aside_on_resume(tmp_path: Path) -> None:
    with new_run(tmp_path) as writer:
        for norm in ("naive", "fused"):
            writer.append(throughput(norm))
    partial = b'{"schema_version": 2, "kind": "throughput", "case_id": "batch_size=1;comp'
    with (writer.path / RECORDS_FILE).open("ab") as f:
        f.write(partial)  # the process died mid-write

    run = read_run(writer.path)
    assert [r.norm for r in run.records] == ["naive", "fused"]  # type: ignore[attr-defined]
    assert "truncated last line" in run.notes[0]

    with resume_run(writer.path, kind="throughput") as resumed:
        assert "truncated last line" in resumed.notes[0]
        resumed.append(throughput("compiled"))
    assert (writer.path / TRUNCATED_FILE).read_bytes() == partial + b"\n"  # nothing is lost
    run = read_run(writer.path)
    assert [r.norm for r in run.records] == ["naive", "fused", "compiled"]  # type: ignore[attr-defined]
    assert run.notes == [] and "set aside" in run.meta.resumed[0]["notes"][-1]


def test_a_case_cut_short_between_its_records_is_dropped_whole(tmp_path: Path) -> None:
    profile = one_of_each()[2]
    with new_run(tmp_path) as writer:
        writer.append(throughput())
        writer.append(
            replace(profile, phase="prefill"),  # type: ignore[type-var]
            replace(profile, phase="decode"),  # type: ignore[type-var]
        )
    path = writer.path / RECORDS_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))  # the crash came after the first phase's line
    run = read_run(writer.path)
    assert len(run.records) == 1 and "1 of its 2 records" in run.notes[0]
    resume_run(writer.path, kind="throughput").close()
    assert len(read_run(writer.path).records) == 1
    assert (writer.path / TRUNCATED_FILE).read_bytes() == lines[1]


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    with new_run(tmp_path) as writer:
        writer.append(throughput("naive"))
    path = writer.path / RECORDS_FILE
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert len(read_run(writer.path).records) == 1
    with resume_run(writer.path, kind="throughput") as resumed:
        resumed.append(throughput("fused"))
    assert len(read_run(writer.path).records) == 2


def test_corrupt_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    with new_run(tmp_path) as writer:
        writer.append(throughput("naive"))
        with (writer.path / RECORDS_FILE).open("a") as f:
            f.write("{not json\n")
        writer.append(throughput("fused"))
    with pytest.raises(ElmbenchError, match=r"records\.jsonl:2: not a JSON record"):
        read_run(writer.path)


def test_unknown_schema_versions_are_refused(tmp_path: Path) -> None:
    with new_run(tmp_path) as writer:
        writer.append(throughput())
    with (writer.path / RECORDS_FILE).open("a") as f:
        f.write(json.dumps({"schema_version": 1, "case_id": "x", "status": "ok"}) + "\n")
    with pytest.raises(ElmbenchError, match=r"records\.jsonl:2: schema_version 1 .*supported: 2"):
        read_run(writer.path)

    run_json = writer.path / RUN_FILE
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "schema_version": 99}))
    with pytest.raises(ElmbenchError, match=r"run\.json: schema_version 99 is not supported"):
        read_run(writer.path)
    with pytest.raises(ElmbenchError, match="schema_version 99"):
        resume_run(writer.path, kind="throughput")


def test_folders_that_are_not_runs(tmp_path: Path) -> None:
    with pytest.raises(ElmbenchError, match="no such run folder"):
        read_run(tmp_path / "missing")
    with pytest.raises(ElmbenchError, match="is not an elmbench run folder"):
        read_run(tmp_path)
    new_run(tmp_path / "runs").close()
    with pytest.raises(ElmbenchError, match="holds 1 run folder"):
        read_run(tmp_path / "runs")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / RUN_FILE).write_text("{oops")
    with pytest.raises(ElmbenchError, match=r"bad/run\.json: not valid JSON"):
        read_run(tmp_path / "bad")


def test_runs_are_never_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "new_run_id", lambda kind, suffix=None: "20260101-000000-x")
    a, b = new_run(tmp_path), new_run(tmp_path)  # the same second, the same checkout
    assert (a.run_id, b.run_id) == ("20260101-000000-x", "20260101-000000-x-2")
    a.append(throughput())
    with pytest.raises(ElmbenchError, match="never overwritten"):
        new_run(tmp_path, run_dir=a.path)


def test_output_folders_that_cannot_hold_runs_are_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ElmbenchError, match="is a file, not a folder"):
        new_run(tmp_path / "file")
    with pytest.raises(ElmbenchError, match="is not a folder"):
        new_run(tmp_path / "file" / "below")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: nothing to check here
        return
    with pytest.raises(ElmbenchError, match="not writable"):
        new_run(locked / "runs")


def test_run_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELMBENCH_REPORTS", raising=False)
    assert store.reports_root() == Path("runs")
    monkeypatch.setenv("ELMBENCH_REPORTS", str(tmp_path))
    assert store.reports_root() == tmp_path
    assert store.reports_root("x") == Path("x")


def test_kind_is_checked(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="run kind"):
        open_run("speed", spec={}, root=tmp_path)
