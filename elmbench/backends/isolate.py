"""Run backend jobs in separate processes (MLX's Linux CPU wheel and torch interfere through BLAS
in one process) and stream their records back to the one run that asked for them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from elmbench.errors import ElmbenchError

MARK = "@@elmbench-record@@ "
PROGRESS_MARK = "@@elmbench-progress@@ "
PARENT_POLL_S = 0.5  # how often a worker checks that the run that started it is still there

# Where a task's progress events go: the parent's callback in-process, a marked line in a worker.
_progress_sink: Callable[[dict[str, Any]], None] | None = None


def report_progress(event: dict[str, Any]) -> None:
    """Send a progress event (case, phase, repetition...) to whoever runs this task."""
    if _progress_sink is not None:
        _progress_sink(event)


@dataclass(frozen=True)
class Job:
    """One case: a task function ("module:attr"), the backend, the model spec and parameters."""

    task: str
    backend: str
    spec: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    case_id: str = ""


@dataclass(frozen=True)
class Group:
    """Jobs a worker runs interleaved: `task` ("module:attr") takes them all and yields a record
    per job (each with its `case_id`) as each finishes."""

    task: str
    jobs: tuple[Job, ...]

    @property
    def backend(self) -> str:
        """The backend of its jobs (one per group)."""
        return self.jobs[0].backend


Unit = Job | Group  # what a worker runs at once: one job, or a group of jobs interleaved


def _jobs(unit: Unit) -> tuple[Job, ...]:
    return unit.jobs if isinstance(unit, Group) else (unit,)


def run_isolated(
    jobs: list[Unit],
    on_record: Callable[[dict[str, Any]], None] | None = None,
    python: str = sys.executable,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run jobs (and interleaved groups of jobs) in one child process per backend, in order;
    return (and stream) their records. `env` is added to every worker's environment."""
    groups: dict[str, list[Unit]] = {}
    for job in jobs:
        groups.setdefault(job.backend, []).append(job)
    envs = {backend: worker_env(backend) | dict(env or {}) for backend in groups}
    records = []
    for backend, group in groups.items():
        for record in _run_group(backend, group, python, on_progress, envs[backend]):
            records.append(record)
            if on_record is not None:
                on_record(record)
    return records


def worker_env(backend: str) -> dict[str, str]:
    """A worker's environment: unbuffered output and, for MLX, the BLAS it should preload."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if backend == "mlx":
        from elmbench.backends import mlx_blas

        blas = mlx_blas.plan()
        mlx_blas.warn_if_bundled(blas, loaded=blas.preload is not None)
        env.update(blas.env())
    return env


def _run_group(
    backend: str,
    units: list[Unit],
    python: str,
    on_progress: Callable[[dict[str, Any]], None] | None,
    env: dict[str, str],
) -> Iterator[dict[str, Any]]:
    """Run units in a worker; when it dies, the running unit's unreported cases fail and a new
    worker goes on with the next unit."""
    pending = list(units)
    while pending:
        seen: set[str] = set()
        exit_code: list[int] = []
        for record in _run_worker(pending, python, on_progress, exit_code, env):
            seen.add(record.get("case_id", ""))
            yield record
        rest = [u for u in pending if any(j.case_id not in seen for j in _jobs(u))]
        if rest:  # the worker died in the first unit with an unreported case
            reason = f"{backend} worker process exited with {_exit_text(exit_code[0])}"
            if isinstance(rest[0], Group):
                reason += f" while it ran {len(rest[0].jobs)} cases interleaved"
            for job in _jobs(rest[0]):
                if job.case_id not in seen:
                    yield _failed(job, reason)
        pending = rest[1:]


def _run_worker(
    jobs: list[Unit],
    python: str,
    on_progress: Callable[[dict[str, Any]], None] | None,
    exit_code: list[int],
    env: dict[str, str],
) -> Iterator[dict[str, Any]]:
    """Stream one worker's records; its exit status is appended to `exit_code`."""
    payload = "\n".join(json.dumps(asdict(j)) for j in jobs) + "\n"  # a Group has "jobs"
    proc = subprocess.Popen(
        [python, "-m", "elmbench.backends.isolate"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None  # set by PIPE above
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
        for line in proc.stdout:
            if line.startswith(PROGRESS_MARK):
                if on_progress is not None:
                    on_progress(json.loads(line[len(PROGRESS_MARK) :]))
            elif line.startswith(MARK):
                yield json.loads(line[len(MARK) :])
        exit_code.append(proc.wait())
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C) or the consumer stopped: end the worker
            proc.kill()
            proc.wait()


def _exit_text(code: int) -> str:
    """'code 1', or the signal's name, e.g. 'signal SIGKILL' from the out-of-memory killer."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _failed(job: Job, reason: str) -> dict[str, Any]:
    return {"case_id": job.case_id, "backend": job.backend, "status": "failed", "reason": reason}


def execute(job: Job) -> Iterator[dict[str, Any]]:
    """Run one job in this process; a failure becomes a failed record, never an exception."""
    from elmbench.registry import resolve

    try:
        for record in resolve(job.task)(job):
            yield {"case_id": job.case_id, "backend": job.backend, **record}
    except ElmbenchError as exc:
        yield _failed(job, str(exc))
    except Exception as exc:  # one failed case (e.g. out of memory) must not end the run
        tail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        yield _failed(job, f"{type(exc).__name__}: {exc} ({tail})")


def execute_group(group: Group) -> Iterator[dict[str, Any]]:
    """Run an interleaved group in this process; on an error, its unreported cases fail."""
    from elmbench.registry import resolve

    reported: set[str] = set()
    try:
        for record in resolve(group.task)(list(group.jobs)):
            reported.add(record["case_id"])
            yield {"backend": group.backend, **record}
    except Exception as exc:  # as in `execute`: the failure is recorded, the run goes on
        if isinstance(exc, ElmbenchError):
            reason = str(exc)
        else:
            tail = traceback.format_exc(limit=3).strip().splitlines()[-1]
            reason = f"{type(exc).__name__}: {exc} ({tail})"
        for job in group.jobs:
            if job.case_id not in reported:
                yield _failed(job, reason)


def _emit(mark: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(mark + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _follow_parent() -> None:
    """A worker ends with the run that started it, quietly: Ctrl-C is the parent's to handle
    (it ends its workers), and a parent that dies, even by SIGKILL, takes the worker with it.

    The parent is watched by polling (a parent that dies makes the worker an orphan with another
    parent id), not by Linux's parent-death signal, which fires when the thread that started the
    worker ends rather than its process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)  # nothing to flush: the parent that read the records is gone

    threading.Thread(target=watch, name="elmbench-parent-watch", daemon=True).start()


def _main() -> None:
    # Run as `python -m`, this file is __main__: set the sink on the module that tasks import.
    from elmbench.backends import isolate

    _follow_parent()
    isolate._progress_sink = lambda event: _emit(PROGRESS_MARK, event)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            data = json.loads(line)
            if "jobs" in data:
                group = Group(data["task"], tuple(Job(**j) for j in data["jobs"]))
                for record in execute_group(group):
                    _emit(MARK, record)
                continue
            for record in execute(Job(**data)):
                _emit(MARK, record)
    except BrokenPipeError:  # the parent is gone: no one reads the records, so end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        os._exit(0)


if __name__ == "__main__":
    _main()
