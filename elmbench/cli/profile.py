"""`elmbench profile`: where the time goes, by category and model part, the norm share first."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from elmbench.cli.options import Column, emit, format_option
from elmbench.cli.run_options import measure_options, spec_from_options
from elmbench.cli.throughput import Progress
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
CASE_KEYS = ("model", "backend", "device", "norm", "dtype", "compile", "shape")


def _num(value: Any, digits: int = 1) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:,.{digits}f}"


def _per(value: Any, tokens: Any) -> float | None:
    ok = isinstance(value, (int, float)) and isinstance(tokens, (int, float)) and tokens
    return value / tokens if ok else None


def _shape(r: dict[str, Any]) -> str:
    return f"{r['batch_size']}×{r['prompt_tokens']}+{r['gen_tokens']}"


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (*(r.get(k) for k in CASE_KEYS[:-1]), _shape(r), r["phase"])


SUMMARY_COLUMNS = [
    Column.key("model", "model", group=True),
    Column("backend", lambda r: f"{r['backend']}/{r['device']}", group=True),
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


def summary_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per case and phase: the norm headline, counts per token and the what-if."""
    rows = []
    for r in records:
        if r.get("record") != "profile_summary":
            continue
        row = dict(r)
        if r["status"] == "ok":
            tokens, forwards = r["tokens_per_step"], r["forwards_per_step"]
            row["norm_ms_per_step"] = r["norm_time_ms"] / r["steps"]
            row["norm_calls_per_forward"] = _per(r["norm_calls_per_step"], forwards)
            row["norm_ops_per_token"] = _per(r.get("norm_ops_per_step"), tokens)
            if r.get("time_basis") == "device_kernel_time":
                row["norm_kernels_per_token"] = _per(r.get("norm_kernels_per_step"), tokens)
            row["profiled_ms_per_token"] = _per(r["instrumented_ms_per_step"], tokens)
        rows.append(row)
    return rows


def _labels(summaries: Sequence[dict[str, Any]]) -> dict[tuple[Any, ...], str]:
    """Short column labels: only the case keys that differ between summaries, and the phase."""
    varying = [i for i, _ in enumerate(CASE_KEYS) if len({_key(s)[i] for s in summaries}) > 1]
    return {_key(s): " ".join([*(str(_key(s)[i]) for i in varying), s["phase"]]) for s in summaries}


def _cell(label: str, index: int, digits: int) -> Callable[[dict[str, Any]], str]:
    def cell(row: dict[str, Any]) -> str:
        pair = row.get(label)
        return "-" if pair is None else _num(pair[index], digits)

    return cell


def pivot(
    records: Sequence[dict[str, Any]], kind: str, key: str, order: Sequence[str]
) -> tuple[list[dict[str, Any]], list[Column]]:
    """Rows of `key` (category or part), a ms/step and a share column per case and phase."""
    summaries = [r for r in summary_rows(records) if r["status"] == "ok"]
    labels = _labels(summaries)
    table: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("record") != kind or r["status"] != "ok":
            continue
        row = table.setdefault(r[key], {key: r[key]})
        row[labels[_key(r)]] = (r["ms_per_step"], r["share_pct"])
    names = [n for n in order if n in table] + sorted(n for n in table if n not in order)
    columns = [Column.key(key, key)]
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


def top_rows(records: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The `n` heaviest operators of each case and phase (torch only: MLX has no operators)."""
    summaries = {_key(s): s for s in summary_rows(records) if s["status"] == "ok"}
    labels = _labels(list(summaries.values()))
    return [
        {**r, "case": labels[_key(r)], "steps": summaries[_key(r)]["steps"]}
        for r in records
        if r.get("record") == "profile_top_op" and r["status"] == "ok" and r["rank"] <= n
    ]


def what_if_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per decode case: ms/token now and with the norm's share removed."""
    labels = _labels([r for r in rows if r["status"] == "ok"])
    lines = []
    for r in rows:
        if r["status"] != "ok" or r["phase"] != "decode" or r.get("wall_ms_per_token") is None:
            continue
        lines.append(
            f"what if ({labels[_key(r)]}, {r['norm']}): {r['wall_ms_per_token']:.3f} ms/token "
            f"-> {r['ms_per_token_without_norm']:.3f} ms/token without the norm's "
            f"{r['norm_share_pct']:.1f}% (at most {r['max_speedup_from_norm']:.2f}x from any "
            "norm optimisation)"
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
        emit(rows, SUMMARY_COLUMNS, fmt, data={"run": str(run.path), "records": records})
        return failed
    if fmt == "csv":
        emit(rows, SUMMARY_COLUMNS, fmt)
        return failed
    # Columns no case fills (kernels without a device trace, notes without a failure) are left out.
    columns = [c for c in SUMMARY_COLUMNS if any(c.cell(r) not in ("-", "") for r in rows)]
    emit(rows, columns, fmt, title="profile: the norm's share of each phase")
    if any(r["status"] == "ok" for r in rows):
        click.echo()
        cat_rows, cat_columns = pivot(records, "profile_category", "category", CATEGORIES)
        emit(cat_rows, cat_columns, fmt, title=f"time by category ({STEP}, share %)")
        click.echo()
        order = [*NORM_PARTS_FIRST, *(p for p in PARTS if p not in NORM_PARTS_FIRST)]
        part_rows, part_columns = pivot(records, "profile_part", "part", order)
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
    notes = what_if_lines(rows)
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


@click.command()
@measure_options
@click.option(
    "--phase",
    default="both",
    show_default=True,
    metavar="prefill|decode|both",
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
@click.option("--retry-failed", is_flag=True, help="With --resume: profile failed cases again.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@format_option
def profile(
    fmt: str,
    quiet: bool,
    phase: str,
    trace: bool,
    top: int,
    metal_capture: bool,
    retry_failed: bool,
    **options: Any,
) -> None:
    """Profile where the time goes: the norm's share, by category and by model part.

    With no options: OpenELM-270M with seeded random weights on the best device present, the
    naive RMSNorm, a 128-token prompt and 8 new tokens, prefill and decode. torch runs under
    torch.profiler (traces for TensorBoard and Chrome); MLX is timed part by part. Compare
    variants with `--norm naive,fused`. --repetitions sets the profiled steps, --warmup the
    profiler's warm-up steps; --min-seconds does not apply.
    """
    from elmbench.profile.run import ProfileOptions, profile_spec, stored_run

    if options.get("resume"):
        spec, opts = stored_run(options["resume"], options.get("out"))
    else:
        spec = spec_from_options(DEFAULT, options, kinds=("throughput",))
        opts = ProfileOptions(phase=phase, trace=trace, top=top, metal_capture=metal_capture)
    progress = ProfileProgress(enabled=not quiet)
    with progress.shown():
        run = profile_spec(
            spec,
            opts,
            out=options.get("out"),
            resume=options.get("resume"),
            retry_failed=retry_failed,
            on_event=progress,
        )
    failed = show(run, fmt, opts.top)
    if failed:
        click.echo(f"{failed} case(s) failed; see the note column and {run.path}", err=True)
        sys.exit(1)


COMMANDS = [profile]
