"""Run `elmbench profile`: the throughput plan, one profiling job per case in isolated workers,
records (summary, categories, parts, top operators), the raw operator table as CSV, and traces.

Traces go to <run>/traces (one TensorBoard run folder and one Chrome trace per case and phase).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from elmbench.backends.isolate import Job, report_progress
from elmbench.errors import ConfigError, UnavailableError
from elmbench.profile import parse_phase
from elmbench.records import (
    Record,
    case_id,
    case_record,
    final_records,
    open_run,
    read_run,
)
from elmbench.suites import SuiteSpec
from elmbench.throughput.execute import case_context, execute, model_spec, run_path
from elmbench.throughput.plan import Case, Plan, build_plan

TASK = "elmbench.profile.run:profile_case"
TRACES = "traces"
OPS_CSV = "ops.csv"
SUMMARY = "profile_summary"
# Record kind -> the key that tells its records apart within one case and phase.
RECORD_KEYS = {
    SUMMARY: None,
    "profile_category": "category",
    "profile_part": "part",
    "profile_top_op": "rank",
}
# Keys `ProfileResult.to_records` repeats on every record; the case parameters say the same.
_RESULT_KEYS = ("backend", "model", "norm", "device", "batch_size", "prompt_tokens", "gen_tokens")
CASE_COLUMNS = (
    "model", "backend", "device", "norm", "dtype", "compile",
    "batch_size", "prompt_tokens", "gen_tokens", "phase",
)  # fmt: skip
OP_COLUMNS = (
    "part", "op", "category", "calls", "calls_per_step", "self_cpu_ms", "self_device_ms", "kernels",
)  # fmt: skip
Event = dict[str, Any]


@dataclass(frozen=True)
class ProfileOptions:
    """What `profile` adds to a throughput spec: phases, traces, top operators, Metal capture."""

    phase: str = "both"
    trace: bool = True
    top: int = 10
    metal_capture: bool = False
    wait: int = 1  # profiler steps skipped before warm-up (torch.profiler schedule)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for run.json."""
        return asdict(self)


@dataclass
class ProfileRun:
    """What a profile run produced: its folder, plan, options and final records."""

    path: Path
    plan: Plan
    options: ProfileOptions
    records: list[Record]
    measured: int  # cases profiled in this invocation

    @property
    def traces(self) -> Path | None:
        """The folder to give `tensorboard --logdir`, when traces were written."""
        folder = self.path / TRACES
        return folder if self.options.trace and any(folder.glob("*/*.pt.trace.json*")) else None

    @property
    def ops_csv(self) -> Path | None:
        """The raw operator table, when a torch case wrote one."""
        path = self.path / OPS_CSV
        return path if path.exists() else None


def trace_label(case: Case) -> str:
    """The case's name in trace folders and files (the phase is appended per trace)."""
    shape = f"b{case.batch_size}-p{case.prompt_tokens}-n{case.gen_tokens}"
    return "-".join((case.model, case.backend, case.norm, case.dtype, case.compile, shape))


def record_id(case: Case, phase: str, kind: str = SUMMARY, key: Any = None) -> str:
    """The id of one profile record of a case and phase."""
    return case_id(_record_params(case, phase, kind, key))


def _record_params(case: Case, phase: str, kind: str, key: Any) -> dict[str, Any]:
    params = {**case.params(), "phase": phase, "record": kind}
    sub = RECORD_KEYS[kind]
    if sub is not None:
        params[sub] = key
    return params


def check_plan(plan: Plan, spec: SuiteSpec, options: ProfileOptions) -> None:
    """What the plan allows for throughput but profile cannot do, as one clear error each."""
    from elmbench.models.comparison import COMPARISON_MODELS

    parse_phase(options.phase)
    if options.top < 1:
        raise ConfigError(f"--top must be a positive integer, got {options.top}")
    if options.wait < 0:
        raise ConfigError(f"wait steps must be >= 0, got {options.wait}")
    for case in plan.cases:
        if case.backend == "mlx" and case.compile != "none":
            raise UnavailableError(
                f"compile mode '{case.compile}' in an MLX profile",
                "the MLX profile evaluates the uncompiled model part by part",
                "Use --compile none (compare compiled MLX speed with `elmbench throughput`)",
            )
        if case.model in COMPARISON_MODELS and spec.weights is not None:
            raise ConfigError(
                f"--weights does not apply to {case.model}: comparison models use seeded "
                "random weights"
            )
    if options.metal_capture:
        if not any(c.backend == "mlx" for c in plan.cases):
            raise ConfigError("--metal-capture applies to MLX cases; this plan has none")
        import platform

        if platform.system() != "Darwin":  # checked without importing MLX beside torch
            raise UnavailableError(
                "Metal capture",
                f"Metal exists on Apple silicon only, not on {platform.system()}",
                "Capture on a Mac with Apple silicon",
            )
        from elmbench.profile.mlx_profile import check_metal_capture

        check_metal_capture()


def stored_run(
    resume: str | Path, out: str | Path | None = None
) -> tuple[SuiteSpec, ProfileOptions]:
    """The spec and options a profile run was started with, so `--resume` needs nothing else."""
    from elmbench.throughput.run import spec_from_dict

    meta, _ = read_run(run_path(resume, out))
    if meta.get("kind") != "profile":
        raise ConfigError(f"{resume}: a '{meta.get('kind')}' run cannot be resumed by profile")
    stored = meta.get("profile") or {}
    known = set(ProfileOptions.__dataclass_fields__)
    options = ProfileOptions(**{k: v for k, v in stored.items() if k in known})
    return spec_from_dict(meta.get("spec") or {}), options


def profile_spec(
    spec: SuiteSpec,
    options: ProfileOptions,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    retry_failed: bool = False,
    on_event: Callable[[str, Event], None] = lambda kind, event: None,
) -> ProfileRun:
    """Profile every case of `spec` (or the missing ones of `resume`) and return the records.

    Events: ('plan', {cases, todo, path, notes}), ('progress', worker event with 'index' and
    'case'), ('case', {index, case, records}), as `throughput.run.run_spec` sends them.
    """
    phases = parse_phase(options.phase)
    plan = build_plan(spec)
    check_plan(plan, spec, options)
    writer = open_run(
        "profile",
        spec=spec.to_dict(),
        seed=spec.seed,
        device={b: d.to_record() for b, d in plan.devices.items()},
        extra=None
        if resume is not None
        else {"profile": options.to_dict(), "plan_notes": plan.notes, "cases": len(plan.cases)},
        root=out if resume is None else None,
        resume=run_path(resume, out) if resume is not None else None,
        retry_failed=retry_failed,
    )

    def to_records(case: Case, result: dict[str, Any]) -> list[Record]:
        if result.get("status") != "ok":
            reason = result.get("reason") or "unknown failure"
            return [
                case_record(_record_params(case, ph, SUMMARY, None), "failed", reason)
                for ph in phases
            ]
        context = {**case_context(case, spec, plan), "kind": "profile"}
        records, ops = _case_records(case, result, writer.path, context)
        _append_ops(writer.path / OPS_CSV, case, ops)
        return records

    measured = execute(
        plan,
        writer,
        done=lambda case: all(writer.done(record_id(case, ph)) for ph in phases),
        job=lambda case, key: _job(case, spec, plan, options, writer.path, key),
        key=lambda case: case_id(case.params()),
        records=to_records,
        on_event=on_event,
    )
    _, records = read_run(writer.path)
    return ProfileRun(writer.path, plan, options, final_records(records), measured)


def _job(
    case: Case, spec: SuiteSpec, plan: Plan, options: ProfileOptions, path: Path, key: str
) -> Job:
    params = {
        **case.params(),
        "phases": list(parse_phase(options.phase)),
        "trace_dir": str(path / TRACES) if options.trace else None,
        "label": trace_label(case),
        "schedule": [options.wait, spec.warmup, spec.repetitions],
        "seed": spec.seed,
        "top": options.top,
        "metal_capture": str(path / TRACES / f"{trace_label(case)}.gputrace")
        if options.metal_capture and case.backend == "mlx"
        else None,
    }
    return Job(TASK, case.backend, model_spec(case, spec, plan), params, key)


def _relative(value: Any, root: Path) -> Any:
    """A trace path relative to the run folder, so a moved or committed run still points right."""
    try:
        return str(Path(value).relative_to(root))
    except ValueError:
        return value


def _case_records(
    case: Case, result: dict[str, Any], root: Path, context: dict[str, Any]
) -> tuple[list[Record], list[dict[str, Any]]]:
    """The worker's flat profile records as run records, and its operator rows for the CSV."""
    records: list[Record] = []
    ops: list[dict[str, Any]] = []
    steps: dict[str, int] = {}
    for raw in result["records"]:
        kind = raw["record"]
        if kind == "profile_op":
            ops.append(raw)
            continue
        phase = raw["phase"]
        sub = RECORD_KEYS[kind]
        params = _record_params(case, phase, kind, None if sub is None else raw[sub])
        fields = {
            k: v for k, v in raw.items() if k not in params and k not in (*_RESULT_KEYS, "record")
        }
        if kind == SUMMARY:
            steps[phase] = raw["steps"]
            fields = {
                **{k: _relative(v, root) if k.endswith("_trace") else v for k, v in fields.items()},
                **context,
                "framework_device": raw["device"],
                "ops_csv": OPS_CSV if case.backend == "torch" else None,
            }
        elif "time_ms" in fields:
            fields["ms_per_step"] = fields["time_ms"] / steps[phase]
        records.append(case_record(params, **fields))
    return records, ops


def _append_ops(path: Path, case: Case, ops: list[dict[str, Any]]) -> None:
    """Add a case's operator rows to the run's CSV (the header once, when the file is new)."""
    if not ops:
        return
    new = not path.exists()
    with path.open("a", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*CASE_COLUMNS, *OP_COLUMNS], lineterminator="\n")
        if new:
            writer.writeheader()
        for op in ops:
            writer.writerow(
                {**case.params(), "phase": op["phase"], **{k: op[k] for k in OP_COLUMNS}}
            )


# Worker side ------------------------------------------------------------------------------------


def _load(job: Job) -> Any:
    """The case's backend (the torch backend also builds the comparison models)."""
    from elmbench.backends import ModelSpec, create_backend

    return create_backend(job.backend, ModelSpec(**job.spec))


def profile_case(job: Job) -> Iterator[dict[str, Any]]:
    """Worker task: load one case and profile each phase; yields the flat profile records."""
    p = job.params
    report_progress({"case_id": job.case_id, "phase": "load"})
    target = _load(job)
    result = None
    for phase in p["phases"]:
        report_progress({"case_id": job.case_id, "phase": f"profile {phase}"})
        one = _profile(job, target, phase)
        if result is None:
            result = one
        else:
            result.phases.update(one.phases)
    assert result is not None  # parse_phase gives at least one phase
    yield {"status": "ok", "records": result.to_records(ops=True)}


def _profile(job: Job, target: Any, phase: str) -> Any:
    p = job.params
    shape = (p["prompt_tokens"], p["gen_tokens"], p["batch_size"])
    trace_dir = None if p["trace_dir"] is None else Path(p["trace_dir"])
    if job.backend == "torch":
        from elmbench.profile.torch_profile import profile_torch

        return profile_torch(
            target, phase, *shape,
            trace_dir=trace_dir, schedule=tuple(p["schedule"]), seed=p["seed"],
            run_label=p["label"], record_shapes=trace_dir is not None, top_n=p["top"],
        )  # fmt: skip
    from elmbench.profile.mlx_profile import profile_mlx

    capture = None
    if p["metal_capture"] is not None:
        capture = Path(p["metal_capture"])
        capture.parent.mkdir(parents=True, exist_ok=True)
    return profile_mlx(
        target, phase, *shape, repeats=p["schedule"][2], seed=p["seed"], metal_capture=capture
    )
