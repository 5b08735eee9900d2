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
from elmbench.records import Context, FailureRecord, ProfileRecord, Record, read_run
from elmbench.records.codec import from_json, to_json
from elmbench.suites import SuiteSpec
from elmbench.throughput.execute import case_context, execute, model_spec
from elmbench.throughput.plan import Case, Plan, build_plan
from elmbench.throughput.run import open_or_resume, spec_from_dict

TASK = "elmbench.profile.run:profile_case"
TRACES = "traces"
OPS_CSV = "ops.csv"
CASE_COLUMNS = (*ProfileRecord.CASE[:-1], "phase")
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
    parts = (case.model, case.backend, case.kernels, case.norm, case.dtype, case.compile, shape)
    return "-".join(parts)


def phase_params(case: Case, phase: str) -> dict[str, Any]:
    """The case fields of one phase's record."""
    return {**case.params(), "phase": phase}


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
    meta = read_run(resume, out).meta
    if meta.kind != "profile":
        raise ConfigError(f"{resume}: a '{meta.kind}' run cannot be resumed by profile")
    stored = meta.extra.get("profile") or {}
    known = set(ProfileOptions.__dataclass_fields__)
    options = ProfileOptions(**{k: v for k, v in stored.items() if k in known})
    return spec_from_dict(meta.spec), options


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
    extra = {"profile": options.to_dict(), "plan_notes": plan.notes, "cases": len(plan.cases)}
    with open_or_resume("profile", spec, plan, extra, out, resume, retry_failed) as writer:

        def to_records(case: Case, result: dict[str, Any]) -> list[Record]:
            context = case_context(case, spec, plan)
            if result.get("status") != "ok":
                reason = result.get("reason") or "unknown failure"
                return [
                    FailureRecord(
                        ProfileRecord.KIND, phase_params(case, ph), reason, "failed", context
                    )
                    for ph in phases
                ]
            _append_ops(writer.path / OPS_CSV, case, result["ops"])
            return _case_records(case, result, writer.path, context)

        measured = execute(
            plan,
            writer,
            done=lambda case: all(
                writer.done(ProfileRecord.case_id_of(phase_params(case, ph))) for ph in phases
            ),
            job=lambda case, key: _job(case, spec, plan, options, writer.path, key),
            key=lambda case: case.case_id,
            records=to_records,
            on_event=on_event,
        )
    return ProfileRun(writer.path, plan, options, read_run(writer.path).records, measured)


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


def _relative(value: str, root: Path) -> str:
    """A trace path relative to the run folder, so a moved or committed run still points right."""
    try:
        return str(Path(value).relative_to(root))
    except ValueError:
        return value


def _case_records(case: Case, result: dict[str, Any], root: Path, context: Context) -> list[Record]:
    """One typed record per profiled phase of the worker's result."""
    records: list[Record] = []
    for phase, fields in result["phases"].items():
        data = {
            **phase_params(case, phase),
            **fields,
            "traces": {k: _relative(v, root) for k, v in fields["traces"].items()},
            "ops_csv": OPS_CSV if result["ops"] else None,
        }
        data["context"] = to_json(context, "context", [])
        records.append(from_json(ProfileRecord, data, f"profile of {case.case_id}"))
    return records


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
    _check_finite(target, p)
    yield {"status": "ok", "phases": result.phase_fields(), "ops": result.op_rows()}


def _check_finite(target: Any, p: dict[str, Any]) -> None:
    """After profiling: a greedy generation of the case's shape (one row) has finite logits."""
    import numpy as np

    from elmbench.measure.finite import check_finite_logits

    rng = np.random.default_rng(p["seed"])
    prompt = rng.integers(0, target.config.vocab_size, size=(1, p["prompt_tokens"]))
    generated = target.generate(prompt, p["gen_tokens"])  # (1, N)
    whole = np.concatenate([prompt, generated[:, :-1]], axis=1)  # (1, P + N - 1)
    check_finite_logits(target, whole, p["gen_tokens"])


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
