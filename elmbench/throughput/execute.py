"""What every measuring command shares: run folders by path or id, model specs for workers, and
the loop that sends a plan's unfinished cases to per-backend workers and appends their records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from elmbench.backends.isolate import Job, Unit, run_isolated
from elmbench.records import Context, Record, RunWriter
from elmbench.suites import SuiteSpec
from elmbench.throughput.plan import Case, Plan

Event = dict[str, Any]


def model_spec(case: Case, spec: SuiteSpec, plan: Plan) -> dict[str, Any]:
    """The ModelSpec (as a dict, for a worker) of one case."""
    return {
        "model": case.model,
        "weights": spec.weights,
        "norm": case.norm,
        "dtype": case.dtype,
        "seed": spec.seed,
        "device": plan.devices[case.backend].framework_device,
        "compile": case.compile,
        "kernels": case.kernels,
        "quantize": spec.quantize,
        "group_size": spec.group_size,
    }


def case_context(case: Case, spec: SuiteSpec, plan: Plan) -> Context:
    """What every record of a case carries: device profile and hardware, weights, seed."""
    device = plan.devices[case.backend]
    return Context(
        device_profile=device.profile.name,
        device_hardware=device.detected.hardware,
        device_mismatch=device.mismatch,
        weights=spec.weights or f"random(seed={spec.seed})",
        random_weights=spec.weights is None,
        seed=spec.seed,
        quantize=spec.quantize,
    )


def execute(
    plan: Plan,
    writer: RunWriter,
    *,
    done: Callable[[Case], bool],
    job: Callable[[Case, str], Job],
    key: Callable[[Case], str],
    records: Callable[[Case, dict[str, Any]], Sequence[Record]],
    on_event: Callable[[str, Event], None],
    units: Callable[[list[tuple[Case, Job]]], list[Unit]] | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Run the plan's cases that are not `done` and append their `records`; returns how many ran.

    `units` may gather the jobs into groups that a worker runs interleaved (default: one by one);
    `env` is added to the workers' environment.

    Events: ('plan', {cases, todo, path, notes}), ('progress', worker event with 'index' and
    'case'), ('case', {index, case, records}).
    """
    todo: dict[str, tuple[int, Case]] = {}
    pairs: list[tuple[Case, Job]] = []
    for index, case in enumerate(plan.cases, 1):
        if done(case):
            continue
        case_key = key(case)
        todo[case_key] = (index, case)
        pairs.append((case, job(case, case_key)))
    jobs: list[Unit] = units(pairs) if units is not None else [j for _, j in pairs]
    on_event(
        "plan",
        {"cases": len(plan.cases), "todo": len(pairs), "path": writer.path, "notes": plan.notes},
    )

    def on_record(result: dict[str, Any]) -> None:
        index, case = todo[result["case_id"]]
        made = list(records(case, result))
        writer.append(*made)
        on_event("case", {"index": index, "case": case, "records": made})

    def on_progress(event: dict[str, Any]) -> None:
        index, case = todo[event["case_id"]]
        on_event("progress", {**event, "index": index, "case": case})

    run_isolated(jobs, on_record=on_record, on_progress=on_progress, env=env)
    writer.finish()
    return len(pairs)
