"""`elmbench report`: tables (pandas) and figures (matplotlib) from run folders, written as
summary.md, one CSV per table, one self-contained HTML page and, on request, JSON.

Reads records only (never torch or mlx); pandas and matplotlib are imported when a report is made.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elmbench.errors import ElmbenchError
from elmbench.records import Run, ThroughputRecord, read_run

FORMATS = ("md", "csv", "html", "json")
DEFAULT_FORMATS = ("md", "csv", "html")
SUMMARY_FILE = "summary.md"
HTML_FILE = "report.html"
JSON_FILE = "report.json"
TABLE_DIR = "tables"
FIGURE_DIR = "figures"


@dataclass
class ReportResult:
    """What a report wrote: the folder, its files, the tables and figures, a short summary."""

    out: Path
    files: list[Path] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # table names
    figures: list[str] = field(default_factory=list)  # figure names
    summary: list[str] = field(default_factory=list)  # lines for the terminal


def make_report(
    runs: Sequence[str | Path],
    out: str | Path | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    plots: bool = True,
) -> ReportResult:
    """Read the runs, build every table and figure they have content for and write them to `out`
    (default: the first run's folder)."""
    from elmbench.report import html as render
    from elmbench.report.tables import build_tables, label_runs

    if not runs:
        raise ElmbenchError("report: give at least one run folder (or run id)")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ElmbenchError(f"report format '{unknown[0]}': allowed: {', '.join(FORMATS)}")
    loaded = _read_distinct(runs)
    target = Path(out) if out is not None else loaded[0].path
    _check_out(target)
    labelled = label_runs(loaded)
    tables = build_tables(labelled)
    figures = []
    if plots:
        from elmbench.report.figures import build_figures

        figures = build_figures(labelled)
    title = "elmbench report"
    lead = [
        f"{lr.label}: {lr.run.meta.run_id} ({lr.run.meta.host.get('hostname')}, {lr.hardware})"
        for lr in labelled
    ]
    result = ReportResult(target, tables=[t.name for t in tables],
                          figures=[f.name for f in figures])  # fmt: skip
    target.mkdir(parents=True, exist_ok=True)
    pngs = {f.name: render.png_bytes(f) for f in figures}
    if figures:
        folder = target / FIGURE_DIR
        folder.mkdir(exist_ok=True)
        for fig in figures:
            (folder / f"{fig.name}.png").write_bytes(pngs[fig.name])
            fig.figure.savefig(folder / f"{fig.name}.svg", format="svg")
            result.files += [folder / f"{fig.name}.png", folder / f"{fig.name}.svg"]
    if "md" in formats:
        path = target / SUMMARY_FILE
        path.write_text(render.markdown(title, lead, tables, figures, FIGURE_DIR), "utf-8")
        result.files.append(path)
    if "csv" in formats:
        folder = target / TABLE_DIR
        folder.mkdir(exist_ok=True)
        for table in tables:
            path = folder / f"{table.name}.csv"
            table.frame.to_csv(path, index=False)
            result.files.append(path)
    if "html" in formats:
        path = target / HTML_FILE
        path.write_text(render.page(title, lead, tables, figures, pngs), "utf-8")
        result.files.append(path)
    if "json" in formats:
        path = target / JSON_FILE
        data = {
            "runs": [
                {"label": lr.label, "run_id": lr.run.meta.run_id, "path": str(lr.run.path)}
                for lr in labelled
            ],
            "tables": {t.name: json.loads(t.frame.to_json(orient="records")) for t in tables},
            "figures": [{"name": f.name, "title": f.title, "section": f.section} for f in figures],
        }
        path.write_text(json.dumps(data, indent=2) + "\n", "utf-8")
        result.files.append(path)
    result.summary = _summary(loaded, labelled, result)
    return result


def _read_distinct(runs: Sequence[str | Path]) -> list[Run]:
    loaded: list[Run] = []
    for ref in runs:
        run = read_run(ref)
        if any(r.path.resolve() == run.path.resolve() for r in loaded):
            continue  # the same folder named twice: one run
        loaded.append(run)
    return loaded


def _check_out(target: Path) -> None:
    """A report may rewrite its own files, never a summary or page someone else wrote."""
    from elmbench.report.html import MARK

    if target.exists() and not target.is_dir():
        raise ElmbenchError(f"--out {target} is a file; give a folder for the report")
    for name in (SUMMARY_FILE, HTML_FILE):
        path = target / name
        if not path.is_file():
            continue
        head = path.read_text("utf-8", errors="replace")[:2000]
        if MARK not in head and "elmbench report" not in head:
            raise ElmbenchError(
                f"{path} exists and was not written by elmbench report; give --out another folder"
            )


def _summary(runs: Sequence[Run], labelled: Sequence[object], result: ReportResult) -> list[str]:
    counts = []
    for run in runs:
        kinds: dict[str, int] = {}
        for record in run.records:
            kinds[record.KIND] = kinds.get(record.KIND, 0) + 1
        what = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no records"
        counts.append(f"{run.meta.run_id} ({what})")
    lines = [f"report of {len(runs)} run(s): " + "; ".join(counts)]
    best = max(
        (r for run in runs for r in run.of(ThroughputRecord) if "decode_tokens_per_s" in r.metrics),
        key=lambda r: r.metrics["decode_tokens_per_s"].value,
        default=None,
    )
    if best is not None:
        lines.append(
            f"fastest decode: {best.model} {best.backend}/{best.device} {best.kernels} "
            f"{best.norm} {best.dtype} {best.compile}: "
            f"{best.metrics['decode_tokens_per_s'].value:,.2f} tokens/s"
        )
    written = [p.name for p in result.files if p.suffix in (".md", ".html", ".json")]
    csvs = sum(p.suffix == ".csv" for p in result.files)
    parts = [*written]
    if csvs:
        parts.append(f"{csvs} CSV table(s) in {TABLE_DIR}/")
    if result.figures:
        parts.append(f"{len(result.figures)} figure(s) (PNG and SVG) in {FIGURE_DIR}/")
    lines.append(f"wrote to {result.out}: " + ", ".join(parts))
    return lines
