"""`elmbench report` (tables and figures from run folders) and `elmbench compare` (a baseline
against a new run, with a verdict and an exit code for CI)."""

from __future__ import annotations

import sys

import click


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN [RUN ...]")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder for the report (default: the first run's folder).",
)
@click.option(
    "--format",
    "formats",
    type=click.Choice(["md", "csv", "html", "json"], case_sensitive=False),
    multiple=True,
    help="What to write (repeat for several); default: md, csv and html.",
)
@click.option("--plots/--no-plots", default=True, show_default=True, help="Draw the figures.")
def report(runs: tuple[str, ...], out: str | None, formats: tuple[str, ...], plots: bool) -> None:
    """Tables and figures from one or more run folders (or run ids).

    Any mix of throughput, norm micro-benchmark, profile and accuracy runs, from one machine or
    several: writes summary.md, a CSV per table (tables/), figures as PNG and SVG (figures/) and
    one self-contained report.html. Runs are labelled R1, R2, ... and never averaged together.
    """
    from elmbench.report import DEFAULT_FORMATS, make_report

    chosen = tuple(f.lower() for f in formats) or DEFAULT_FORMATS
    result = make_report(list(runs), out, chosen, plots)
    for line in result.summary:
        click.echo(line)


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="BASELINE NEW")
@click.option(
    "--threshold",
    type=float,
    default=5.0,
    show_default=True,
    help="Smallest change in % that is called faster or slower (the floor under noise).",
)
@click.option(
    "--save-baseline",
    "save_name",
    metavar="NAME",
    help="Instead of comparing: store the one RUN given as reports/baselines/NAME.",
)
@click.option(
    "--figures",
    metavar="NAMES",
    help="Judge only these timed figures (comma-separated), e.g. "
    "prefill_on_cpu_tokens_per_s,decode_on_cpu_tokens_per_s; default: every one both runs have.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "json"], case_sensitive=False),
    default="markdown",
    show_default=True,
    help="markdown (for a pull request) or json.",
)
def compare(
    runs: tuple[str, ...], threshold: float, save_name: str | None, figures: str | None, fmt: str
) -> None:
    """Compare a new run with a baseline run: verdicts and an exit code for CI.

    BASELINE and NEW are run folders, run ids, or a saved baseline's name. Cases are matched on
    every case field. Timed figures: ratio of medians with a bootstrap interval, Mann-Whitney
    test (Holm over the comparison) and a minimum change (--threshold); accuracy: delta against
    the combined standard error. Prints markdown (appended to
    $GITHUB_STEP_SUMMARY when set). Exit status: 0 no significant regression, 1 a regression,
    2 bad input or nothing comparable.
    """
    import json

    from elmbench import compare as cmp
    from elmbench.errors import ElmbenchError

    if save_name is not None:
        if len(runs) != 1:
            raise ElmbenchError("--save-baseline NAME takes exactly one RUN to store")
        path = cmp.save_baseline(runs[0], save_name)
        click.echo(f"baseline '{save_name}' saved to {path}")
        return
    if len(runs) != 2:
        raise ElmbenchError(f"compare takes BASELINE and NEW (2 runs); {len(runs)} given")
    chosen = [f.strip() for f in figures.split(",") if f.strip()] if figures else None
    comparison = cmp.compare_runs(
        cmp.resolve_run(runs[0]), cmp.resolve_run(runs[1]), threshold_pct=threshold, figures=chosen
    )
    text = cmp.markdown(comparison)
    if fmt == "json":
        click.echo(json.dumps(cmp.as_dict(comparison), indent=2))
    else:
        click.echo(text, nl=False)
    cmp.write_step_summary(text)
    sys.exit(comparison.exit_code)


COMMANDS = [report, compare]
