"""`elmbench throughput` (the main job) and `elmbench suites` (list and validate suite files)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from elmbench.cli.options import Column, as_json, emit, format_option
from elmbench.cli.run_options import measure_options, spec_from_options
from elmbench.suites import SuiteSpec

# The embedded default: OpenELM-270M, random weights, best device, every available RMSNorm
# variant; about two minutes on a 2-core CPU.
DEFAULT = SuiteSpec(
    name="default",
    description="OpenELM-270M, seeded random weights, every available RMSNorm variant",
    models=("270m",),
    device="auto",
    norms=("all",),
    dtypes=("float32",),
    prompt_tokens=(128,),
    gen_tokens=(32,),
    batch_sizes=(1,),
    compile=("none",),
    warmup=1,
    repetitions=3,
    min_seconds=1.0,
)


def _num(value: Any, digits: int = 1) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:,.{digits}f}"


def _scale(row: dict[str, Any], key: str, unit: float) -> float | None:
    value = row.get(key)
    return value / unit if isinstance(value, (int, float)) else None


THROUGHPUT_COLUMNS = [
    Column.key("model", "model", group=True),
    Column("backend", lambda r: f"{r['backend']}/{r['device']}", group=True),
    Column.key("kernels", "kernels"),
    Column.key("dtype", "dtype"),
    Column.key("compile", "compile"),
    Column.key("norm", "norm"),
    Column("B×P+N", lambda r: f"{r['batch_size']}×{r['prompt_tokens']}+{r['gen_tokens']}"),
    Column("prefill tok/s", lambda r: _num(r.get("prefill_tokens_per_s")), numeric=True),
    Column("decode tok/s", lambda r: _num(r.get("decode_tokens_per_s"), 2), numeric=True),
    Column("ms/token", lambda r: _num(r.get("decode_ms_per_token")), numeric=True),
    Column("decode GB/s", lambda r: _num(r.get("decode_bandwidth_gb_per_s")), numeric=True),
    Column("roofline GB/s", lambda r: _num(r.get("roofline_gb_per_s")), numeric=True),
    Column("% roofline", lambda r: _num(r.get("decode_roofline_pct")), numeric=True),
    Column("prefill GFLOP/s", lambda r: _num(_scale(r, "prefill_flop_per_s", 1e9)), numeric=True),
    Column("peak MiB", lambda r: _num(_scale(r, "peak_memory_bytes", 2**20), 0), numeric=True),
    Column("note", lambda r: _note(r), max_width=40),
]  # fmt: skip

NORM_COLUMNS = [
    Column.key("model", "model", group=True),
    Column("backend", lambda r: f"{r['backend']}/{r['device']}", group=True),
    Column.key("dtype", "dtype"),
    Column.key("norm", "norm"),
    Column("shape", lambda r: f"{r['where']} ×{r['tokens']} tokens"),
    Column("µs/call", lambda r: _num(r.get("norm_call_us"), 2), numeric=True),
    Column("GB/s", lambda r: _num(r.get("norm_bandwidth_gb_per_s")), numeric=True),
    Column("% roofline", lambda r: _num(r.get("norm_roofline_pct")), numeric=True),
    Column("note", lambda r: _note(r), max_width=40),
]


def _note(row: dict[str, Any]) -> str:
    if row.get("status") == "failed":
        return f"failed: {row.get('reason')}"
    return "" if row.get("stable", True) else "unstable timing"


class Progress:
    """A live display on stderr: case i of N, its phase and repetition, elapsed time."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.monotonic()
        self.total = 0
        self.done = 0
        self._progress: Any = None
        self._task: Any = None

    @contextmanager
    def shown(self) -> Iterator[Progress]:
        """Show the display while the body runs (a plain line per case when stderr is a file)."""
        if not self.enabled:
            yield self
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        console = Console(stderr=True)
        self._progress = RichProgress(
            TextColumn("[bold]case"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=console, transient=False,
        )  # fmt: skip
        with self._progress:
            self._task = self._progress.add_task("planning", total=None)
            yield self

    def __call__(self, kind: str, event: dict[str, Any]) -> None:
        """Handle one event of `run_spec`."""
        if kind == "plan":
            self.total, self.done = event["todo"], 0
            for note in event["notes"]:
                self._say(f"note: {note}")
            skipped = event["cases"] - event["todo"]
            if skipped:
                self._say(f"resuming {event['path']}: {skipped} finished case(s) kept")
            self._update(f"{event['todo']} case(s) → {event['path']}")
        elif kind == "progress":
            case = event["case"]
            what = {"load": "loading", "warm-up": f"warm-up {event.get('step')}"}.get(
                event["phase"], f"repetition {event.get('step')}"
            )
            self._update(f"{_label(case)}: {what}")
        elif kind == "case":
            self.done += 1
            failed = [r for r in event["records"] if r.status == "failed"]
            if failed:
                self._say(f"case {_label(event['case'])} failed: {failed[0].reason}")
            self._update(f"{_label(event['case'])}: done")

    def _update(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task, total=self.total, completed=self.done, description=text
            )

    def _say(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text, err=True)


def _label(case: Any) -> str:
    shape = (
        f"{case.where}×{case.tokens}"
        if case.where
        else f"B{case.batch_size} P{case.prompt_tokens} N{case.gen_tokens}"
    )
    return (
        f"{case.model} {case.backend} {case.kernels} {case.norm} {case.dtype} {case.compile} "
        f"{shape}"
    )


def run_and_show(default: SuiteSpec, options: dict[str, Any], fmt: str, quiet: bool) -> None:
    """Shared body of the measuring commands: spec, run with progress, final table."""
    from elmbench.throughput.run import run_spec, stored_spec
    from elmbench.throughput.table import case_rows

    if options.get("resume"):
        spec = stored_spec(options["resume"], options.get("out"))
    else:
        spec = spec_from_options(default, options)
    progress = Progress(enabled=not quiet)
    with progress.shown():
        result = run_spec(
            spec,
            out=options.get("out"),
            resume=options.get("resume"),
            retry_failed=options.get("retry_failed", False),
            on_event=progress,
        )
    rows = case_rows(result.records)
    columns = NORM_COLUMNS if spec.kind == "norms" else THROUGHPUT_COLUMNS
    notes = [f"records: {result.path}"]
    membw = next(iter(result.plan.devices.values())).profile
    if membw.bandwidth_gb_per_s and membw.measured and spec.kind == "throughput":
        notes.insert(
            0,
            f"roofline: the read-bandwidth probe beside each case (roofline GB/s); at the start "
            f"of the run {membw.bandwidth_gb_per_s:.1f} GB/s ({membw.source})",
        )
    elif membw.bandwidth_gb_per_s:
        notes.insert(0, f"roofline: {membw.bandwidth_gb_per_s:.1f} GB/s ({membw.source})")
    failed = sum(r.get("status") == "failed" for r in rows)
    title = f"{spec.kind} ({spec.name} suite{' with options' if _overridden(options) else ''})"
    if fmt == "json":
        emit(rows, columns, fmt, data={"run": str(result.path), "records": as_json(result.records)})
    else:
        emit(rows, columns, fmt, title=title, notes=notes)
    if failed:
        click.echo(f"{failed} case(s) failed; see the note column and {result.path}", err=True)
        sys.exit(1)


def _overridden(options: dict[str, Any]) -> bool:
    ignore = ("suite", "out", "resume", "retry_failed")
    return any(v not in (None, (), False) for k, v in options.items() if k not in ignore)


@click.command()
@measure_options
@click.option("--retry-failed", is_flag=True, help="With --resume: measure failed cases again.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@format_option
def throughput(fmt: str, quiet: bool, **options: Any) -> None:
    """Measure prefill and decode speed (the main job).

    With no options: OpenELM-270M with seeded random weights on the best device present,
    every RMSNorm variant available there, 128-token prompts and 32 new tokens. Every case is
    written as records to reports/<run-id>/ as soon as it finishes. `--suite norms` runs the
    RMSNorm micro-benchmark instead.
    """
    run_and_show(DEFAULT, options, fmt, quiet)


@click.group(invoke_without_command=True)
@click.pass_context
def suites(ctx: click.Context) -> None:
    """List the suite files in suites/ (`suites validate` checks them)."""
    if ctx.invoked_subcommand is not None:
        return
    from elmbench.suites import list_suites, load_suite

    rows = []
    for path in list_suites():
        suite = load_suite(path)
        rows.append({"name": path.stem, "kind": getattr(suite, "kind", "accuracy"),
                     "description": getattr(suite, "description", "")})  # fmt: skip
    emit(rows, [Column.key("suite", "name"), Column.key("kind", "kind"),
                Column.key("description", "description", max_width=80)], "table")  # fmt: skip


@suites.command("validate")
@click.argument("files", nargs=-1)
def validate(files: tuple[str, ...]) -> None:
    """Check suite files (default: every file in suites/); one line per problem."""
    from elmbench.errors import ElmbenchError
    from elmbench.suites import list_suites, load_suite, suite_path

    paths = [suite_path(f) for f in files] or list_suites()
    bad = 0
    for path in paths:
        try:
            load_suite(path)
        except ElmbenchError as exc:
            bad += 1
            click.echo(f"error: {exc}", err=True)
        else:
            click.echo(f"ok: {path}")
    if bad:
        sys.exit(2)


COMMANDS = [throughput, suites]
