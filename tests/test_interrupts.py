"""Interrupted runs: SIGTERM and Ctrl-C print the command that resumes, SIGKILL loses no finished
case, a resume measures every case exactly once, and workers end quietly with their parent.

The commands run as a user runs them, in their own process, killed once their first (or next)
case is in the run folder.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from elmbench.cli.interrupts import RunRef, Terminated, resumable

DATA = Path(__file__).parent / "data" / "evaldata"
ROOT = Path(__file__).resolve().parent.parent
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "COLUMNS": "100",
}
ENV.pop("ELMBENCH_DATA", None)
ENV.pop("ELMBENCH_REPORTS", None)
posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def elmbench(*args: str) -> subprocess.Popen[str]:
    """`elmbench ARGS` in its own process, as the console script runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "elmbench", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
        start_new_session=True,  # its own process group, as a command started in a terminal
    )


def groups(out: Path) -> list[str]:
    """The record groups (one per finished case or task) in the run folder under `out`."""
    found = list(out.glob("*/records.jsonl"))
    if not found:
        return []
    lines = found[0].read_text().splitlines()
    whole = [json.loads(line) for line in lines if line.endswith("}")]
    return list(dict.fromkeys(r["group"] for r in whole))


def kill_after(
    proc: subprocess.Popen[str], out: Path, cases: int, signum: int, group: bool = False
) -> str:
    """Send `signum` once `cases` cases are in the run folder (to the whole process group, as
    a terminal's Ctrl-C does, with `group`); the process's stderr."""
    deadline = time.monotonic() + 300
    while len(groups(out)) < cases:
        assert proc.poll() is None, f"ended before {cases} case(s): {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "no case finished in 300 s"
        time.sleep(0.02)
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)  # waits for the worker too: it shares stderr
    return err


def resumed_by(err: str, signum: int) -> list[str]:
    """The resume command an interrupted command printed, as arguments of `elmbench`."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"interrupted ({name}): the finished cases are kept in "), last
    command = shlex.split(last.partition("resume with: ")[2])
    assert command[0] == "elmbench"
    return command[1:]


def assert_exactly_once(out: Path, expected: int) -> list[dict[str, object]]:
    """Every case of the run is in records.jsonl exactly once, and nothing else is."""
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    lines = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    counts = Counter(r["case_id"] for r in lines)
    assert len(counts) == expected and set(counts.values()) == {1}, counts
    assert {r["status"] for r in lines} == {"ok"}
    meta = json.loads((run / "run.json").read_text())
    assert meta["finished_utc"] is not None
    return lines


@posix_signals
def test_throughput_interrupted_then_killed_resumes_with_every_case_once(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = [
        "throughput", "-m", "tiny", "--device", "cpu", "--backend", "torch", "--norm", "naive",
        "-p", "8,12,16,20,24", "-n", "4", "--warmup", "0", "--repetitions", "1",
        "--min-seconds", "0.3", "-q", "--format", "csv", "--out", str(out),
    ]  # fmt: skip
    first = elmbench(*args)
    err = kill_after(first, out, 1, signal.SIGINT, group=True)  # Ctrl-C: the worker gets it too
    assert first.returncode == 128 + signal.SIGINT
    again = resumed_by(err, signal.SIGINT)
    (run,) = list(out.iterdir())
    assert again == ["throughput", "--resume", str(run.resolve())]
    # The printed command is what resumes; a SIGKILL then loses nothing that was finished, and
    # its orphaned worker ends quietly (stderr, which it shares, closes when it has ended too).
    second = elmbench(*again)
    err = kill_after(second, out, len(groups(out)) + 1, signal.SIGKILL)
    assert second.returncode == -signal.SIGKILL and "Traceback" not in err, err
    third = elmbench(*again)
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert_exactly_once(out, 5)
    meta = json.loads((run / "run.json").read_text())
    assert len(meta["resumed"]) == 2


@posix_signals
def test_accuracy_terminated_then_killed_resumes_with_every_task_once(
    tmp_path: Path, sp_model: Path
) -> None:
    from elmbench.accuracy.inputs import load_accuracy_suite

    out = tmp_path / "runs"
    labels = ("ARC-c", "BoolQ", "PIQA", "WinoGrande")
    args = [
        "accuracy", "-m", "tiny", "--allow-random", "--tokenizer", str(sp_model),
        "--data-dir", str(DATA), "--tasks", ",".join(labels), "--limit", "4", "--format", "csv",
        "--out", str(out),
    ]  # fmt: skip
    first = elmbench(*args)
    err = kill_after(first, out, 1, signal.SIGTERM)
    assert first.returncode == 128 + signal.SIGTERM
    again = resumed_by(err, signal.SIGTERM)
    (run,) = list(out.iterdir())
    assert again == ["accuracy", "--resume", str(run.resolve())]
    second = elmbench(*again)
    err = kill_after(second, out, len(groups(out)) + 1, signal.SIGKILL)
    assert second.returncode == -signal.SIGKILL and "Traceback" not in err, err
    third = elmbench(*again)
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    suite = load_accuracy_suite("zero_shot")
    want = {(t.task, m) for t in map(suite.task, labels) for m in t.metrics}
    lines = assert_exactly_once(out, len(want))
    assert {(r["task"], r["metric"]) for r in lines} == want


# Workers end with their parent --------------------------------------------------------------

SLOW_TASK = """
import time
from elmbench.backends.isolate import report_progress

def run(job):
    for step in range(1200):  # a progress line every 50 ms, or one and then silence
        if step == 0 or not job.params.get("silent"):
            report_progress({"case_id": job.case_id, "phase": "measure", "step": step})
        time.sleep(0.05)
    yield {"status": "ok"}
"""
JOB = {"task": "slow_task:run", "backend": "torch", "spec": {}, "params": {}, "case_id": "c"}
SILENT_JOB = {**JOB, "params": {"silent": True}}  # writes nothing that could fail on its own


def _worker_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "slow_task.py").write_text(SLOW_TASK)
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), ENV["PYTHONPATH"]])}


def _gone(pid: int) -> bool:
    """Whether a process has ended (a zombie no one reaps has ended too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


@posix_signals
def test_a_worker_whose_parent_is_killed_ends_quietly(tmp_path: Path) -> None:
    errors = tmp_path / "worker.err"
    parent_code = (
        "import json, subprocess, sys, time\n"
        "worker = subprocess.Popen([sys.executable, '-m', 'elmbench.backends.isolate'],\n"
        f"    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open({str(errors)!r}, 'w'),\n"
        "    text=True)\n"
        f"worker.stdin.write(json.dumps({SILENT_JOB!r}) + '\\n'); worker.stdin.close()\n"
        "worker.stdout.readline()  # the worker runs its case\n"
        "print(worker.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True,
        env=_worker_env(tmp_path),
    )  # fmt: skip
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    parent.kill()  # SIGKILL: the parent cannot end its worker itself
    parent.wait()
    deadline = time.monotonic() + 30
    while not _gone(worker):
        assert time.monotonic() < deadline, "the orphaned worker still runs"
        time.sleep(0.1)
    assert errors.read_text() == ""  # no BrokenPipeError traceback


@posix_signals
def test_a_worker_no_one_reads_ends_quietly(tmp_path: Path) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "elmbench.backends.isolate"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_worker_env(tmp_path),
    )  # fmt: skip
    assert worker.stdin is not None and worker.stdout is not None and worker.stderr is not None
    worker.stdin.write(json.dumps(JOB) + "\n")
    worker.stdin.close()
    worker.stdout.readline()
    worker.stdout.close()  # the reader goes away: the next record cannot be written
    assert worker.wait(timeout=30) == 0
    assert worker.stderr.read() == ""


@posix_signals
def test_a_worker_leaves_ctrl_c_to_its_parent(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the worker too; the parent ends it, without a traceback."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "elmbench.backends.isolate"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_worker_env(tmp_path),
    )  # fmt: skip
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write(json.dumps(SILENT_JOB) + "\n")
    worker.stdin.close()
    worker.stdout.readline()
    worker.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert worker.poll() is None  # still running its case
    worker.kill()
    worker.wait(timeout=30)
    assert worker.stderr is not None and worker.stderr.read() == ""


# The interrupt handler itself ---------------------------------------------------------------


@posix_signals
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_says_how_to_resume_and_exits_128_plus_the_signal(
    signum: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info, resumable("profile") as ref:
        ref.path = tmp_path / "run one"
        os.kill(os.getpid(), signum)  # delivered here, in the main thread
        time.sleep(5)
    assert exit_info.value.code == 128 + signum
    name = signal.Signals(signum).name
    assert capsys.readouterr().err == (
        f"interrupted ({name}): the finished cases are kept in {tmp_path / 'run one'}; resume "
        f"with: elmbench profile --resume '{tmp_path / 'run one'}'\n"
    )
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the run's only


def test_an_interrupt_before_the_run_folder_says_nothing_was_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info, resumable("throughput"):
        raise Terminated(signal.SIGTERM)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == (
        "interrupted (SIGTERM) before the run started; nothing was written\n"
    )


def test_the_resume_command_quotes_the_folder() -> None:
    ref = RunRef("accuracy", Path("/runs/a b"))
    assert ref.resume_command() == "elmbench accuracy --resume '/runs/a b'"
