"""Run folders: run.json, append-only records.jsonl, resume, crash repair, schema checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from elmbench import __version__, records
from elmbench.errors import ConfigError, ElmbenchError, UnknownNameError
from elmbench.records import (
    RECORDS_FILE,
    RUN_FILE,
    TRUNCATED_FILE,
    case_id,
    case_record,
    final_records,
    git_state,
    open_run,
    read_run,
)

SPEC = {"models": ["270m"], "norms": ["naive", "fused"], "batch_sizes": [1]}


def case(norm: str, batch: int = 1) -> dict[str, object]:
    return {"model": "270m", "norm": norm, "batch": batch}


def new_run(root: Path, **kw: object) -> records.RunWriter:
    return open_run("throughput", spec=SPEC, seed=0, root=root, **kw)  # type: ignore[arg-type]


def test_run_json_is_written_at_start(tmp_path: Path) -> None:
    writer = new_run(tmp_path, device={"profile": {"name": "cpu"}})
    assert writer.path.parent == tmp_path
    assert re.fullmatch(r"\d{8}-\d{6}-throughput-[0-9a-f]{7}", writer.run_id)
    meta = json.loads((writer.path / RUN_FILE).read_text())
    assert meta["schema_version"] == 1 and meta["run_id"] == writer.run_id
    assert meta["kind"] == "throughput" and meta["elmbench_version"] == __version__
    assert datetime.fromisoformat(meta["created_utc"]).utcoffset() is not None
    assert meta["spec"] == SPEC and meta["seed"] == 0
    assert meta["device"] == {"profile": {"name": "cpu"}}
    assert meta["versions"]["python"] and "torch" in meta["versions"]
    assert meta["host"]["cores"] == os.cpu_count() and meta["host"]["hostname"]
    assert meta["finished_utc"] is None
    assert (writer.path / RECORDS_FILE).read_text() == ""
    writer.finish()
    assert json.loads((writer.path / RUN_FILE).read_text())["finished_utc"]


def test_git_state_of_this_checkout_and_of_a_non_checkout(tmp_path: Path) -> None:
    package = Path(records.__file__).parent
    state = git_state()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True
    ).stdout.strip()
    if head:  # elmbench runs from its git checkout here
        assert state["git_sha"] == head and isinstance(state["git_dirty"], bool)
    (tmp_path / "elmbench").mkdir()
    assert git_state(tmp_path / "elmbench") == {"git_sha": None, "git_dirty": None}


def test_append_and_read_round_trip(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    written = [
        writer.append(
            case_record(case("naive"), decode_tokens_per_s=41.5, decode_raw_s=[0.1, 0.2])
        ),
        writer.append(case_record(case("apex"), "skipped", "apex needs CUDA")),
        writer.append(case_record(case("fused"), "failed", "out of memory", prefill_ms=None)),
    ]
    meta, got = read_run(writer.path)
    assert got == written and meta["run_id"] == writer.run_id and meta["read_notes"] == []
    first = got[0]
    assert list(first)[:4] == ["schema_version", "run_id", "case_id", "status"]
    assert first["case_id"] == "batch=1;model=270m;norm=naive"
    assert first["case_keys"] == ["batch", "model", "norm"] and first["norm"] == "naive"
    assert got[1]["reason"] == "apex needs CUDA"
    assert len((writer.path / RECORDS_FILE).read_text().splitlines()) == 3


def test_append_fsyncs_each_line_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = new_run(tmp_path)
    seen: list[int] = []

    def spy(fd: int) -> None:
        seen.append(fd)
        # the line was flushed before the fsync: it is in the file already
        lines = (writer.path / RECORDS_FILE).read_text().splitlines()
        assert len(lines) == len(seen)

    monkeypatch.setattr(os, "fsync", spy)
    writer.append(case_record(case("naive")))
    writer.append(case_record(case("fused")))
    assert len(seen) == 2


def test_values_are_made_json_safe(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    line = writer.append(
        case_record(
            case("naive"),
            tokens_per_s=np.float32(2.5),
            raw_s=np.array([0.5, 1.0]),
            mfu=float("nan"),
            nested={"peak_gib": float("inf")},
            weights=Path("/w"),
        )
    )
    assert line["tokens_per_s"] == 2.5 and line["raw_s"] == [0.5, 1.0]
    assert line["mfu"] is None and line["nested"] == {"peak_gib": None}
    assert line["non_finite"] == ["mfu", "nested.peak_gib"] and line["weights"] == "/w"
    with pytest.raises(ConfigError, match="'thing' of type object is not JSON-safe"):
        writer.append(case_record(case("fused"), thing=object()))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"case_id": "a", "status": "failed"}, "needs a reason"),
        ({"case_id": "a", "status": "done"}, "allowed: ok, failed, skipped"),
        ({"status": "ok"}, "non-empty string 'case_id'"),
        ({"case_id": "a", "status": "ok", "run_id": "other"}, "not this run's"),
    ],
)
def test_bad_records_are_refused(tmp_path: Path, record: dict[str, str], message: str) -> None:
    writer = new_run(tmp_path)
    with pytest.raises(ConfigError, match=message):
        writer.append(record)
    assert (writer.path / RECORDS_FILE).read_text() == ""


def test_case_ids_are_stable() -> None:
    assert case_id({"b": 1, "a": "x"}) == case_id({"a": "x", "b": 1}) == "a=x;b=1"
    assert case_id({"a": "x"}) != case_id({"a": "y"})
    assert case_id({"n": "a;b", "t": None, "f": True, "s": [1, 2]}) == (
        'f=true;n="a;b";s=[1,2];t=null'
    )
    with pytest.raises(ConfigError, match="clash"):
        case_record({"model": "270m"}, model="3b")
    with pytest.raises(ConfigError, match="clash"):
        case_record({"status": "x"})


def test_resume_skips_finished_cases(tmp_path: Path) -> None:
    first = new_run(tmp_path)
    ok = first.append(case_record(case("naive")))["case_id"]
    failed = first.append(case_record(case("fused"), "failed", "boom"))["case_id"]
    todo = case_id(case("compiled"))

    writer = open_run("throughput", spec=SPEC, seed=0, resume=first.path)
    assert writer.run_id == first.run_id
    assert writer.done(ok) and writer.done(failed) and not writer.done(todo)
    writer.append(case_record(case("compiled")))
    assert writer.done(todo)

    retry = open_run(resume=first.run_id, root=tmp_path, retry_failed=True)  # by run id
    assert retry.done(ok) and not retry.done(failed)
    retry.append(case_record(case("fused")))
    meta, got = read_run(first.path)
    assert [r["norm"] for r in got] == ["naive", "fused", "compiled", "fused"]
    assert [r["status"] for r in final_records(got)] == ["ok", "ok", "ok"]
    assert len(meta["resumed"]) == 2


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    with pytest.raises(ElmbenchError, match=r"other settings \(differing: norms\)"):
        open_run(spec={**SPEC, "norms": ["naive"]}, resume=writer.path)
    with pytest.raises(ElmbenchError, match="cannot resume a 'throughput' run as 'profile'"):
        open_run("profile", resume=writer.path)
    with pytest.raises(ElmbenchError, match="seed 0, not 1"):
        open_run(seed=1, resume=writer.path)


def test_truncated_last_line_is_ignored_then_repaired(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    for norm in ("naive", "fused"):
        writer.append(case_record(case(norm)))
    partial = b'{"schema_version": 1, "case_id": "batch=1;model=270m;norm=comp'
    with (writer.path / RECORDS_FILE).open("ab") as f:
        f.write(partial)  # the process died mid-write

    meta, got = read_run(writer.path)
    assert [r["norm"] for r in got] == ["naive", "fused"]
    assert "truncated last line" in meta["read_notes"][0]

    resumed = open_run(resume=writer.path)
    assert "truncated last line" in resumed.notes[0]
    assert (writer.path / TRUNCATED_FILE).read_bytes() == partial + b"\n"  # nothing is lost
    resumed.append(case_record(case("compiled")))
    meta, got = read_run(writer.path)
    assert [r["norm"] for r in got] == ["naive", "fused", "compiled"]
    assert meta["read_notes"] == [] and "truncated" in meta["resumed"][0]["notes"][0]


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    writer.append(case_record(case("naive")))
    path = writer.path / RECORDS_FILE
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert len(read_run(writer.path)[1]) == 1
    open_run(resume=writer.path).append(case_record(case("fused")))
    assert [r["norm"] for r in read_run(writer.path)[1]] == ["naive", "fused"]


def test_corrupt_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    writer.append(case_record(case("naive")))
    with (writer.path / RECORDS_FILE).open("a") as f:
        f.write("{not json\n")
    writer.append(case_record(case("fused")))
    with pytest.raises(ElmbenchError, match=r"records\.jsonl:2: not a JSON record"):
        read_run(writer.path)


def test_unknown_schema_versions_are_refused(tmp_path: Path) -> None:
    writer = new_run(tmp_path)
    writer.append(case_record(case("naive")))
    with (writer.path / RECORDS_FILE).open("a") as f:
        f.write(json.dumps({"schema_version": 2, "case_id": "x", "status": "ok"}) + "\n")
    with pytest.raises(ElmbenchError, match=r"records\.jsonl:2: schema_version 2 .*supported: 1"):
        read_run(writer.path)

    run_json = writer.path / RUN_FILE
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "schema_version": 99}))
    with pytest.raises(ElmbenchError, match=r"run\.json: schema_version 99 is not supported"):
        read_run(writer.path)
    with pytest.raises(ElmbenchError, match="schema_version 99"):
        open_run(resume=writer.path)


def test_folders_that_are_not_runs(tmp_path: Path) -> None:
    with pytest.raises(ElmbenchError, match="no such run folder"):
        read_run(tmp_path / "missing")
    with pytest.raises(ElmbenchError, match="is not an elmbench run folder"):
        read_run(tmp_path)
    new_run(tmp_path / "reports")
    with pytest.raises(ElmbenchError, match="holds 1 run folder"):
        read_run(tmp_path / "reports")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / RUN_FILE).write_text("{oops")
    with pytest.raises(ElmbenchError, match=r"bad/run\.json: not valid JSON"):
        read_run(tmp_path / "bad")


def test_runs_are_never_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "new_run_id", lambda kind, suffix=None: "20260101-000000-x")
    a, b = new_run(tmp_path), new_run(tmp_path)  # the same second, the same checkout
    assert (a.run_id, b.run_id) == ("20260101-000000-x", "20260101-000000-x-2")
    a.append(case_record(case("naive")))
    with pytest.raises(ElmbenchError, match="never overwritten"):
        new_run(tmp_path, run_dir=a.path)
    assert len(read_run(a.path)[1]) == 1
    explicit = new_run(tmp_path, run_dir=tmp_path / "baselines" / "ci")
    assert explicit.run_id == "ci" and (explicit.path / RUN_FILE).is_file()


def test_reports_root_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELMBENCH_REPORTS", str(tmp_path / "env"))
    assert open_run("profile").path.parent == tmp_path / "env"
    assert new_run(tmp_path / "explicit").path.parent == tmp_path / "explicit"
    monkeypatch.delenv("ELMBENCH_REPORTS")
    monkeypatch.chdir(tmp_path)
    assert open_run("accuracy").path.parent == Path("reports")


def test_kind_is_checked(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'throughput'"):
        open_run("throughput2", root=tmp_path)
    with pytest.raises(ConfigError, match="needs a kind"):
        open_run(root=tmp_path)
