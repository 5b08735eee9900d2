"""Run backend jobs in separate processes (MLX's Linux CPU wheel and torch interfere through BLAS
in one process) and stream their records back to the one run that asked for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from elmbench.errors import ElmbenchError

MARK = "@@elmbench-record@@ "


@dataclass(frozen=True)
class Job:
    """One case: a task function ("module:attr"), the backend, the model spec and parameters."""

    task: str
    backend: str
    spec: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    case_id: str = ""


def run_isolated(
    jobs: list[Job],
    on_record: Callable[[dict[str, Any]], None] | None = None,
    python: str = sys.executable,
) -> list[dict[str, Any]]:
    """Run jobs in one child process per backend, in order; return (and stream) their records."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.backend, []).append(job)
    records = []
    for backend, group in groups.items():
        for record in _run_group(backend, group, python):
            records.append(record)
            if on_record is not None:
                on_record(record)
    return records


def _run_group(backend: str, jobs: list[Job], python: str) -> Iterator[dict[str, Any]]:
    payload = "\n".join(json.dumps(asdict(j)) for j in jobs) + "\n"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [python, "-m", "elmbench.backends.isolate"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None  # set by PIPE above
    proc.stdin.write(payload)
    proc.stdin.close()
    seen = set()
    for line in proc.stdout:
        if line.startswith(MARK):
            record = json.loads(line[len(MARK) :])
            seen.add(record.get("case_id"))
            yield record
    code = proc.wait()
    for job in jobs:
        if job.case_id not in seen:  # the child died before reporting this case
            yield _failed(job, f"{backend} worker process exited with code {code}")


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


def _main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        job = Job(**json.loads(line))
        for record in execute(job):
            sys.stdout.write(MARK + json.dumps(record) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    _main()
