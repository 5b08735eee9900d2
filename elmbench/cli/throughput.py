"""`elmbench throughput` (the main job) and `elmbench suites` (list and validate suite files)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import click

from elmbench.cli.interrupts import RunRef, resumable
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
from elmbench.errors import ElmbenchError
from elmbench.suites import SuiteSpec

# The embedded default: OpenELM-270M, random weights, best device, every available RMSNorm
# variant. The variants run interleaved (a drift of a shared machine hits them alike) until each
# median's 95% interval is within +-5%, or 30 measured seconds a case: six repetitions at least,
# the fewest for a 95% interval of a median. Why these: docs/report.md, "The default protocol".
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
    repetitions=6,
    min_seconds=2.0,
    precision_pct=5.0,
    max_seconds=30.0,
    order="interleaved",
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
    """A live display on stderr: case i of N, its phase and repetition, elapsed time.

    The display starts with the run's first event, so that an error found before the run (the
    checks of the plan) is the only line on stderr.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.monotonic()
        self.total = 0
        self.done = 0
        self.path: Any = None  # the run folder, once the run has one
        self._progress: Any = None
        self._task: Any = None
        self._stack: ExitStack | None = None

    @contextmanager
    def shown(self) -> Iterator[Progress]:
        """Show the display while the body runs (from its first event on)."""
        with ExitStack() as stack:
            self._stack = stack
            try:
                yield self
            finally:
                self._stack = None

    def _start(self) -> None:
        if not self.enabled or self._progress is not None or self._stack is None:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        console = Console(stderr=True)
        self._progress = RichProgress(
            TextColumn("[bold]case"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=console, transient=False,
        )  # fmt: skip
        self._stack.enter_context(self._progress)
        self._task = self._progress.add_task("planning", total=None)

    def __call__(self, kind: str, event: dict[str, Any]) -> None:
        """Handle one event of `run_spec`."""
        self._start()
        if kind == "plan":
            self.path = event["path"]
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


def tracked(
    on_event: Callable[[str, dict[str, Any]], None], ref: RunRef
) -> Callable[[str, dict[str, Any]], None]:
    """`on_event`, noting the run folder in `ref` when the run announces it (for an interrupt)."""

    def handle(kind: str, event: dict[str, Any]) -> None:
        if kind == "plan":
            ref.path = event["path"]
        on_event(kind, event)

    return handle


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


def measured_spec(ctx: click.Context, default: SuiteSpec, options: dict[str, Any]) -> SuiteSpec:
    """The spec of a new run from the options, or a resumed run's own (options typed again must
    equal it); every check is made here, before anything runs."""
    from elmbench.records import check_writable, read_run
    from elmbench.throughput.run import stored_spec
    from elmbench.throughput.weights import checked_weights

    check_session(options)
    check_writable(options.get("out"))
    if not options.get("resume"):
        spec = spec_from_options(default, options)
        return checked_weights(
            spec, models_given=bool(options.get("model") or options.get("suite"))
        )
    kind = read_run(options["resume"], options.get("out")).meta.kind
    if kind != "throughput":
        raise ElmbenchError(f"{options['resume']}: cannot resume a '{kind}' run as 'throughput'")
    spec = resumed_spec(stored_spec(options["resume"], options.get("out")), given(ctx, options))
    return checked_weights(spec, models_given=True)


def run_and_show(spec: SuiteSpec, options: dict[str, Any], fmt: str, quiet: bool) -> None:
    """Shared body of the measuring commands: run with progress, final table."""
    from elmbench.throughput.run import run_spec
    from elmbench.throughput.table import case_rows

    progress = Progress(enabled=not quiet)
    with resumable("throughput") as ref, progress.shown():
        result = run_spec(
            spec,
            out=options.get("out"),
            resume=options.get("resume"),
            retry_failed=options.get("retry_failed", False),
            on_event=tracked(progress, ref),
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
    if any("interleaved" in getattr(r, "skipped", {}).get("peak_memory_bytes", "")
           for r in result.records):  # fmt: skip
        notes.insert(
            -1,
            "peak MiB: not measured when cases run interleaved (they share one process); a "
            "sequential run measures it (order: sequential in a suite file)",
        )
    failed = sum(r.get("status") == "failed" for r in rows)
    title = f"{spec.kind} ({spec.name} suite{' with options' if _overridden(options) else ''})"
    if fmt == "json":
        emit(rows, columns, fmt, data={"run": str(result.path), "records": as_json(result.records)})
    else:
        emit(rows, columns, fmt, title=title, notes=notes)
    after_run(result.path, bool(options.get("report")))
    if failed:
        click.echo(f"{failed} case(s) failed; see the note column and {result.path}", err=True)
        sys.exit(1)


def _overridden(options: dict[str, Any]) -> bool:
    ignore = ("suite", "out", "resume", "retry_failed", "report")
    return any(v not in (None, (), False) for k, v in options.items() if k not in ignore)


@click.command()
@run_options(
    *MEASURE,
    "min_seconds",
    "precision",
    "max_seconds",
    "order",
    "threads",
    *SESSION_OPTIONS,
    *OUTPUT,
)
@click.pass_context
def throughput(ctx: click.Context, fmt: str, quiet: bool, **options: Any) -> None:
    """Measure prefill and decode speed: the main job.

    With no options: OpenELM-270M with seeded random weights on the best device present, stock
    kernels, every RMSNorm variant available there, 128-token prompts and 32 new tokens. Each
    case is written to the run folder as soon as it finishes. `--suite norms` runs the RMSNorm
    micro-benchmark instead.
    """
    spec = measured_spec(ctx, DEFAULT, options)
    run_and_show(spec, options, fmt, quiet)


COMMANDS = [throughput]
