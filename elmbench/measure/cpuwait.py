"""Time this process's threads spent ready to run while other tasks had their CPU (Linux).

On a shared machine a kernel thread or another process sometimes takes a CPU from a benchmark
thread for milliseconds, and in a step whose threads meet at joins the others wait as long. Linux
keeps, for each thread, the nanoseconds it spent waiting on a run queue: the second field of
`/proc/self/task/<tid>/schedstat` (proc(5)). Summed over the threads between two snapshots, that
is the thread time the region lost to other tasks in this system. A hypervisor's preemption of a
virtual CPU is not in it (that is steal time).
"""

from __future__ import annotations

from pathlib import Path

TASKS = Path("/proc/self/task")
THREAD_SELF = Path("/proc/thread-self/schedstat")

Snapshot = dict[str, int]  # thread id -> nanoseconds waited on a run queue so far


def snapshot(tasks: Path = TASKS) -> Snapshot | None:
    """Each live thread's run-queue wait so far; None where the system does not report it."""
    try:
        threads = list(tasks.iterdir())
    except OSError:  # not Linux, or no /proc here
        return None
    waited: Snapshot = {}
    for thread in threads:
        try:
            fields = (thread / "schedstat").read_text().split()
            waited[thread.name] = int(fields[1])
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile, or no schedstat
            continue
    return waited or None


def own_wait_ns(path: Path = THREAD_SELF) -> int | None:
    """The calling thread's run-queue wait so far (exact: a running thread's count is current);
    None where the system does not report it."""
    try:
        return int(path.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def waited_s(before: Snapshot | None, tasks: Path = TASKS) -> float | None:
    """Seconds the process's threads waited for a CPU since `before` (summed over threads).

    Threads started since count from zero; a thread that ended since takes its part with it (and
    a thread id reused since counts from zero at most).
    """
    after = snapshot(tasks)
    if before is None or after is None:
        return None
    return sum(max(ns - before.get(tid, 0), 0) for tid, ns in after.items()) / 1e9
