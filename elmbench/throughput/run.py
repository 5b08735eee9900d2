"""Run a throughput or norm-benchmark spec: plan, roofline probe, isolated workers, records;
throughput cases one after another or interleaved (a repetition of each in turn).

Each finished case's records are appended (flushed, fsynced) as soon as its worker reports it, so
an interrupted run loses no finished case and `resume` measures only what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from elmbench.backends.isolate import Group, Job, Unit
from elmbench.dtypes import BYTES
from elmbench.measure.protocol import INTERLEAVED
from elmbench.records import Record, RunWriter, open_run, read_run, resume_run, run_path
from elmbench.suites import SuiteSpec
from elmbench.throughput.execute import case_context, execute, model_spec
from elmbench.throughput.metrics import (
    failed_record,
    model_facts,
    norm_record,
    throughput_record,
)
from elmbench.throughput.plan import Case, Plan, build_plan

TASKS = {
    "throughput": "elmbench.throughput.measure:throughput",
    "norms": "elmbench.throughput.norm_bench:norm_call",
}
INTERLEAVED_TASK = "elmbench.throughput.measure:throughput_interleaved"
# Interleaved cases hold their models in one worker at once: together at most this share of the
# memory free when the run starts (more cases run in several interleaved groups, said in a note).
MEMORY_SHARE = 0.5
Event = dict[str, Any]


@dataclass
class RunResult:
    """What a run produced: its folder, the plan, and its final records (resumed ones included)."""

    path: Path
    plan: Plan
    records: list[Record]
    measured: int  # cases measured in this invocation
    skipped_done: int  # cases already finished in the resumed run


def spec_from_dict(data: dict[str, Any]) -> SuiteSpec:
    """A SuiteSpec back from run.json (lists become tuples)."""
    known = {f.name for f in fields(SuiteSpec)}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known
    }
    return SuiteSpec(**values)


def stored_spec(resume: str | Path, root: str | Path | None = None) -> SuiteSpec:
    """The spec a run was started with, so that `--resume RUN` needs no other option."""
    return spec_from_dict(read_run(resume, root).meta.spec)


def _probe_bandwidth(plan: Plan, stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """Measure the CPU's read bandwidth (the roofline) once per run, or reuse the stored figure."""
    needs = [b for b, d in plan.devices.items() if d.profile.measured or d.profile.kind == "cpu"]
    if not needs:
        return None
    if stored is None:
        from elmbench.measure.membw import measure_roofline

        stored = measure_roofline()
    for backend in needs:
        plan.devices[backend] = plan.devices[backend].with_measured_bandwidth(
            stored["membw_gb_per_s"], stored["membw_method"]
        )
    return stored


def _job(case: Case, spec: SuiteSpec, plan: Plan, key: str) -> Job:
    params = {
        **case.params(),
        "seed": spec.seed,
        "warmup": spec.warmup,
        "repetitions": spec.repetitions,
        "min_seconds": spec.min_seconds,
        "precision_pct": spec.precision_pct,
        "max_seconds": spec.max_seconds,
        "probe_bandwidth": spec.kind == "throughput"
        and plan.devices[case.backend].profile.measured,
    }
    return Job(TASKS[spec.kind], case.backend, model_spec(case, spec, plan), params, key)


def thread_env(threads: int | None) -> dict[str, str] | None:
    """The workers' CPU threads (OpenMP: torch's intra-op pool and OpenBLAS), when a spec pins
    them; records show the count the framework used (`describe`)."""
    if threads is None:
        return None
    return {"OMP_NUM_THREADS": str(threads)}


def available_memory_bytes() -> int | None:
    """Memory the system could give now (Linux MemAvailable, else the physical total)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def case_memory_bytes(case: Case) -> int:
    """What a loaded case holds: its weights (the KV cache and activations are far smaller here
    than the margin)."""
    return int(1.25 * model_facts(case.model).num_params * BYTES[case.dtype])


def interleave(pairs: list[tuple[Case, Job]], budget: int | None, notes: list[str]) -> list[Unit]:
    """Groups of jobs, per backend, that a worker runs interleaved; their models together fit in
    `budget` bytes. A case alone in its group runs as it would sequentially (and says so)."""
    by_backend: dict[str, list[list[tuple[Case, Job]]]] = {}
    for case, job in pairs:
        chunks = by_backend.setdefault(case.backend, [[]])
        used = sum(case_memory_bytes(c) for c, _ in chunks[-1])
        if chunks[-1] and budget is not None and used + case_memory_bytes(case) > budget:
            chunks.append([])
        chunks[-1].append((case, job))
    units: list[Unit] = []
    for backend, chunks in by_backend.items():
        if len(chunks) > 1:
            notes.append(
                f"{backend}: the cases run interleaved in {len(chunks)} groups, one after "
                f"another: all their models at once would not fit in {MEMORY_SHARE:.0%} of the "
                f"free memory ({(budget or 0) / 2**30:.1f} GiB)"
            )
        for chunk in chunks:
            jobs = tuple(j for _, j in chunk)
            units.append(Group(INTERLEAVED_TASK, jobs) if len(jobs) > 1 else jobs[0])
    return units


def open_or_resume(
    kind: str,
    spec: SuiteSpec,
    plan: Plan,
    extra: dict[str, Any],
    out: str | Path | None,
    resume: str | Path | None,
    retry_failed: bool,
) -> RunWriter:
    """A new run folder for `spec`, or the resumed one (its own settings, locked)."""
    if resume is not None:
        given = spec.to_dict()
        stored = read_run(resume, out).meta.spec
        if "order" not in stored and given.get("order") == "sequential":
            del given["order"]  # a run recorded before runs had an order ran sequentially
        return resume_run(run_path(resume, out), kind=kind, spec=given, retry_failed=retry_failed)
    return open_run(
        kind,
        spec=spec.to_dict(),
        seed=spec.seed,
        device={b: d.to_record() for b, d in plan.devices.items()},
        extra=extra,
        root=out,
    )


def run_spec(
    spec: SuiteSpec,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    retry_failed: bool = False,
    on_event: Callable[[str, Event], None] = lambda kind, event: None,
) -> RunResult:
    """Measure every case of `spec` (or the missing ones of `resume`) and return the records.

    Events for progress displays: ('plan', {cases, todo, path, notes}), ('progress', worker event
    with 'index'), ('case', {index, case, records}).
    """
    plan = build_plan(spec)
    stored_membw = None
    if resume is not None:
        stored_membw = read_run(resume, out).meta.extra.get("membw")
    membw = _probe_bandwidth(plan, stored_membw)
    extra = {"membw": membw, "plan_notes": plan.notes, "cases": len(plan.cases)}
    with open_or_resume("throughput", spec, plan, extra, out, resume, retry_failed) as writer:

        def to_records(case: Case, result: dict[str, Any]) -> list[Record]:
            device = plan.devices[case.backend]
            context = case_context(case, spec, plan)
            if result.get("status") != "ok":
                return [failed_record(case, result.get("reason", "unknown failure"), context)]
            if spec.kind == "norms":
                return [norm_record(case, result, device, context)]
            return [throughput_record(case, result, device, context)]

        units: Callable[[list[tuple[Case, Job]]], list[Unit]] | None = None
        if spec.order == INTERLEAVED and spec.kind == "throughput":
            free = available_memory_bytes()
            budget = None if free is None else int(MEMORY_SHARE * free)

            def grouped(pairs: list[tuple[Case, Job]]) -> list[Unit]:
                return interleave(pairs, budget, plan.notes)

            units = grouped

        measured = execute(
            plan,
            writer,
            done=lambda case: writer.done(case.case_id),
            job=lambda case, key: _job(case, spec, plan, key),
            key=lambda case: case.case_id,
            records=to_records,
            on_event=on_event,
            units=units,
            env=thread_env(spec.threads),
        )
    run = read_run(writer.path)
    done_before = len(plan.cases) - measured
    return RunResult(writer.path, plan, run.records, measured, done_before)
