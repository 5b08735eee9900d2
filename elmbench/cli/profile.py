"""`elmbench profile`: where the time goes, by category and model part, the norm share first."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import click

from elmbench.cli.interrupts import resumable
from elmbench.cli.options import Column, as_json, emit
from elmbench.cli.run_options import (
    MEASURE,
    OUTPUT,
    SESSION_OPTIONS,
    after_run,
    check_session,
    given,
    resumed_spec,
    run_options,
    spec_from_options,
)
from elmbench.cli.throughput import Progress, tracked
from elmbench.errors import ConfigError
from elmbench.profile import PHASE_CHOICES
from elmbench.records.types import FailureRecord, ProfileRecord, Record
from elmbench.suites import SuiteSpec

# OpenELM-270M, random weights, best device, the naive norm (the paper's finding), shapes small
# enough to profile both phases in well under a minute on a 2-core CPU.
DEFAULT = SuiteSpec(
    name="profile-default",
    description="OpenELM-270M, seeded random weights, naive RMSNorm, short prompt",
    models=("270m",),
    device="auto",
    norms=("naive",),
    dtypes=("float32",),
    prompt_tokens=(128,),
    gen_tokens=(8,),
    batch_sizes=(1,),
    compile=("none",),
    warmup=1,
    repetitions=2,
    min_seconds=0.0,
)
NORM_PARTS_FIRST = ("attn_norm", "q_norm", "k_norm", "ffn_norm", "final_norm")
LABEL_KEYS = (*ProfileRecord.CASE[:-1],)  # the case fields a column label may need


def _num(value: Any, digits: int = 1) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:,.{digits}f}"


def _per(value: float | None, tokens: float) -> float | None:
    return value / tokens if value is not None and tokens else None


def _shape(r: dict[str, Any]) -> str:
    return f"{r['batch_size']}×{r['prompt_tokens']}+{r['gen_tokens']}"


SUMMARY_COLUMNS = [
    Column.key("model", "model", group=True),
    Column("backend", lambda r: f"{r['backend']}/{r['device']}", group=True),
    Column.key("kernels", "kernels"),
    Column.key("dtype", "dtype"),
    Column.key("compile", "compile"),
    Column.key("norm", "norm"),
    Column("B×P+N", _shape),
    Column.key("phase", "phase"),
    Column("norm %", lambda r: _num(r.get("norm_share_pct")), numeric=True),
    Column("norm ms/step", lambda r: _num(r.get("norm_ms_per_step"), 2), numeric=True),
    Column("norm calls/fwd", lambda r: _num(r.get("norm_calls_per_forward"), 0), numeric=True),
    Column("ops/call", lambda r: _num(r.get("norm_ops_per_call")), numeric=True),
    Column("norm ops/token", lambda r: _num(r.get("norm_ops_per_token")), numeric=True),
    Column("norm kernels/token", lambda r: _num(r.get("norm_kernels_per_token")), numeric=True),
    Column("ms/token", lambda r: _num(r.get("wall_ms_per_token"), 3), numeric=True),
    Column("w/o norm", lambda r: _num(r.get("ms_per_token_without_norm"), 3), numeric=True),
    Column("max speed-up", lambda r: _num(r.get("max_speedup_from_norm"), 2), numeric=True),
    Column("profiled ms/token", lambda r: _num(r.get("profiled_ms_per_token"), 3), numeric=True),
    Column("overhead %", lambda r: _num(r.get("overhead_pct"), 0), numeric=True),
    Column("note", lambda r: _note(r), max_width=40),
]  # fmt: skip


def _note(r: dict[str, Any]) -> str:
    if r.get("status") == "failed":
        return f"failed: {r.get('reason')}"
    return ""


def summary_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per case and phase: the norm headline, counts per token and the what-if."""
    rows = []
    for r in records:
        if isinstance(r, FailureRecord) and r.measurement == ProfileRecord.KIND:
            rows.append({**r.params, "status": r.status, "reason": r.reason})
        if not isinstance(r, ProfileRecord):
            continue
        tokens, norm = r.tokens_per_step, r.norm_share
        row: dict[str, Any] = {
            **r.case(),
            "status": "ok",
            "time_basis": r.time_basis,
            "norm_share_pct": norm.share_pct,
            "norm_ms_per_step": norm.time_ms / max(r.steps, 1),
            "norm_calls_per_forward": _per(norm.calls_per_step, r.forwards_per_step),
            "norm_ops_per_call": norm.ops_per_call,
            "norm_ops_per_token": _per(norm.ops_per_step, tokens),
            "wall_ms_per_token": r.wall_ms_per_token,
            "ms_per_token_without_norm": r.ms_per_token_without_norm,
            "max_speedup_from_norm": r.max_speedup_from_norm,
            "profiled_ms_per_token": _per(r.instrumented_ms_per_step, tokens),
            "overhead_pct": r.overhead_pct,
        }
        if r.time_basis == "device_kernel_time":
            row["norm_kernels_per_token"] = _per(norm.kernels_per_step, tokens)
        rows.append(row)
    return rows


def _labels(records: Sequence[ProfileRecord]) -> dict[str, str]:
    """Short column labels by case id: the case fields that differ between records, the phase."""
    varying = [k for k in LABEL_KEYS if len({getattr(r, k) for r in records}) > 1]
    return {r.case_id: " ".join([*(str(getattr(r, k)) for k in varying), r.phase]) for r in records}


def _cell(label: str, index: int, digits: int) -> Callable[[dict[str, Any]], str]:
    def cell(row: dict[str, Any]) -> str:
        pair = row.get(label)
        return "-" if pair is None else _num(pair[index], digits)

    return cell


def pivot(
    records: Sequence[Record], by: str, order: Sequence[str]
) -> tuple[list[dict[str, Any]], list[Column]]:
    """Rows of categories or parts (`by`), a ms/step and a share column per case and phase."""
    profiles = [r for r in records if isinstance(r, ProfileRecord)]
    labels = _labels(profiles)
    table: dict[str, dict[str, Any]] = {}
    for r in profiles:
        items = r.categories if by == "category" else r.parts
        for item in items:
            name = getattr(item, by)
            row = table.setdefault(name, {by: name})
            row[labels[r.case_id]] = (item.ms_per_step, item.share_pct)
    names = [n for n in order if n in table] + sorted(n for n in table if n not in order)
    columns = [Column.key(by, by)]
    for label in labels.values():
        columns += [
            Column(f"{label} ms", _cell(label, 0, 2), numeric=True),
            Column(f"{label} %", _cell(label, 1, 1), numeric=True),
        ]
    return [table[n] for n in names], columns


# A profiled step is one pass of the phase: the whole prompt, or all n - 1 decode steps.
STEP = "ms per profiled step: one prefill, or one pass of the n - 1 decode tokens"

TOP_COLUMNS = [
    Column.key("case", "case", group=True),
    Column.key("#", "rank", numeric=True),
    Column.key("operator", "op", max_width=60),
    Column("calls/step", lambda r: _num(r["count"] / r["steps"]), numeric=True),
    Column("self ms/step", lambda r: _num(r["self_ms"] / r["steps"], 2), numeric=True),
    Column("share %", lambda r: _num(r["share_pct"]), numeric=True),
]


def top_rows(records: Sequence[Record], n: int) -> list[dict[str, Any]]:
    """The `n` heaviest operators of each case and phase (torch only: MLX has no operators)."""
    profiles = [r for r in records if isinstance(r, ProfileRecord)]
    labels = _labels(profiles)
    return [
        {**asdict(op), "case": labels[r.case_id], "steps": max(r.steps, 1)}
        for r in profiles
        for op in r.top_ops
        if op.rank <= n
    ]


def what_if_lines(records: Sequence[Record]) -> list[str]:
    """One line per decode case: ms/token now and with the norm's share removed."""
    profiles = [r for r in records if isinstance(r, ProfileRecord)]
    labels = _labels(profiles)
    lines = []
    for r in profiles:
        per_token = r.wall_ms_per_token
        if r.phase != "decode" or per_token is None or r.ms_per_token_without_norm is None:
            continue
        speedup = "-" if r.max_speedup_from_norm is None else f"{r.max_speedup_from_norm:.2f}x"
        lines.append(
            f"what if ({labels[r.case_id]}, {r.norm}): {per_token:.3f} ms/token "
            f"-> {r.ms_per_token_without_norm:.3f} ms/token without the norm's "
            f"{r.norm_share.share_pct:.1f}% (at most {speedup} from any norm optimisation)"
        )
    return lines


class ProfileProgress(Progress):
    """The throughput display, with this command's steps (load, profile <phase>)."""

    def __call__(self, kind: str, event: dict[str, Any]) -> None:
        """Handle one event of `profile_spec`."""
        if kind == "progress" and event["phase"] != "load":
            case = event["case"]
            self._update(f"{case.model} {case.backend} {case.norm}: {event['phase']}")
            return
        super().__call__(kind, event)


def show(run: Any, fmt: str, top: int) -> int:
    """Print a profile run's tables (or its records as CSV/JSON); returns how many failed."""
    from elmbench.profile.categories import CATEGORIES, PARTS

    records = run.records
    rows = summary_rows(records)
    failed = sum(r["status"] == "failed" for r in rows)
    if fmt == "json":
        emit(rows, SUMMARY_COLUMNS, fmt, data={"run": str(run.path), "records": as_json(records)})
        return failed
    if fmt == "csv":
        emit(rows, SUMMARY_COLUMNS, fmt)
        return failed
    # Columns no case fills (kernels without a device trace, notes without a failure) are left out.
    columns = [c for c in SUMMARY_COLUMNS if any(c.cell(r) not in ("-", "") for r in rows)]
    emit(rows, columns, fmt, title="profile: the norm's share of each phase")
    if any(r["status"] == "ok" for r in rows):
        click.echo()
        cat_rows, cat_columns = pivot(records, "category", CATEGORIES)
        emit(cat_rows, cat_columns, fmt, title=f"time by category ({STEP}, share %)")
        click.echo()
        order = [*NORM_PARTS_FIRST, *(p for p in PARTS if p not in NORM_PARTS_FIRST)]
        part_rows, part_columns = pivot(records, "part", order)
        emit(part_rows, part_columns, fmt, title=f"time by model part, norms first ({STEP})")
        top_ops = top_rows(records, top)
        if top_ops:
            click.echo()
            emit(top_ops, TOP_COLUMNS, fmt, title=f"top {top} operators (exclusive time)")
    click.echo()
    for line in _notes(run, rows):
        click.echo(f"- {line}" if fmt == "markdown" else line)
    return failed


def _notes(run: Any, rows: Sequence[dict[str, Any]]) -> list[str]:
    notes = what_if_lines(run.records)
    bases = {r.get("time_basis") for r in rows if r["status"] == "ok"}
    if "mlx_staged_eval_wall_time" in bases:
        notes.append(
            "MLX: parts are timed by evaluating the model part by part (an approximation of the "
            "fused lazy graph); ms/token is the plain step, profiled ms/token the staged one"
        )
    if "cpu_self_time" in bases:
        notes.append(
            "torch CPU: shares are of exclusive CPU time with the profiler on (its per-operator "
            "cost included); ms/token is the same loop without the profiler"
        )
    notes.append(f"records: {run.path}")
    if run.ops_csv is not None:
        notes.append(f"operator table: {run.ops_csv}")
    if run.traces is not None:
        chrome = sorted(run.traces.glob("*.chrome.json*"))
        if chrome:
            notes.append(f"Chrome/Perfetto traces: {run.traces}/*.chrome.json ({len(chrome)})")
        notes.append(f"tensorboard --logdir {run.traces}")
    return notes


PROFILE_OPTIONS = ("phase", "trace", "top", "metal_capture")


@click.command()
@run_options(*MEASURE)
@click.option(
    "--phase",
    type=click.Choice(PHASE_CHOICES),
    default="both",
    show_default=True,
    help="Which loop to profile; each phase runs in its own loop.",
)
@click.option(
    "--trace/--no-trace",
    default=True,
    show_default=True,
    help="Write TensorBoard and Chrome traces to <run>/traces (torch).",
)
@click.option("--top", default=10, show_default=True, type=int, help="Operators listed per case.")
@click.option(
    "--metal-capture", is_flag=True, help="MLX on Apple silicon: a Metal capture of one step."
)
@run_options(*SESSION_OPTIONS, *OUTPUT)
@click.pass_context
def profile(
    ctx: click.Context,
    fmt: str,
    quiet: bool,
    phase: str,
    trace: bool,
    top: int,
    metal_capture: bool,
    **options: Any,
) -> None:
    """Profile where the time goes: the norm's share, by category and by model part.

    With no options: OpenELM-270M with seeded random weights on the best device present, stock
    kernels, the naive RMSNorm, a 128-token prompt and 8 new tokens, prefill and decode. torch
    runs under torch.profiler (traces for TensorBoard and Chrome); MLX is timed part by part.
    Compare variants with `--norm naive,fused`. --repetitions sets the profiled steps, --warmup
    the profiler's warm-up steps.
    """
    from elmbench.profile.run import ProfileOptions, profile_spec, stored_run
    from elmbench.records import check_writable
    from elmbench.throughput.weights import checked_weights

    check_session(options)
    check_writable(options.get("out"))
    opts = ProfileOptions(phase=phase, trace=trace, top=top, metal_capture=metal_capture)
    if options.get("resume"):
        stored, stored_opts = stored_run(options["resume"], options.get("out"))
        typed = given(ctx, {**options, **asdict(opts)})
        differing = [
            f"--{k.replace('_', '-')} (run: {getattr(stored_opts, k)}, given: {typed[k]})"
            for k in PROFILE_OPTIONS
            if k in typed and typed[k] != getattr(stored_opts, k)
        ]
        if differing:
            raise ConfigError(
                f"--resume continues a run with its own settings; these differ: "
                f"{', '.join(differing)}. Drop them, or start a new run"
            )
        spec, opts = checked_weights(resumed_spec(stored, typed), models_given=True), stored_opts
    else:
        spec = spec_from_options(DEFAULT, options, kinds=("throughput",))
        chosen = bool(options.get("model") or options.get("suite"))
        spec = checked_weights(spec, models_given=chosen)
    progress = ProfileProgress(enabled=not quiet)
    with resumable("profile") as ref, progress.shown():
        run = profile_spec(
            spec,
            opts,
            out=options.get("out"),
            resume=options.get("resume"),
            retry_failed=options.get("retry_failed", False),
            on_event=tracked(progress, ref),
        )
    failed = show(run, fmt, opts.top)
    after_run(run.path, bool(options.get("report")))
    if failed:
        click.echo(f"{failed} case(s) failed; see the note column and {run.path}", err=True)
        sys.exit(1)


COMMANDS = [profile]
