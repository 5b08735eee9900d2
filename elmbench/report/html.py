"""The report as markdown (summary.md) and as one self-contained HTML page (figures embedded as
base64 PNG, no external files, scripts or fonts)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

from elmbench.report.figures import ReportFigure
from elmbench.report.tables import Table

MARK = "<!-- written by elmbench report; it rewrites this file -->"

MODELS_SECTION = ("models", "Models")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem auto;
       max-width: 1500px; padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
nav a { margin-right: 1rem; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { border: 1px solid #d6d6d6; padding: .2rem .4rem; text-align: left; }
td { white-space: nowrap; }
td:nth-child(n+2) { white-space: normal; }
th { background: #f3f3f3; position: sticky; top: 0; white-space: normal; min-width: 3rem;
     vertical-align: bottom; }
tr:nth-child(even) td { background: #fafafa; }
p.common { font-size: .85rem; color: #444; margin: .3rem 0; }
ul.notes { font-size: .85rem; color: #444; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #444; }
"""


def _common_text(common: Mapping[str, str]) -> str:
    return " · ".join(f"{k} {v}" for k, v in common.items())


def sections(
    tables: Sequence[Table], figures: Sequence[ReportFigure]
) -> list[tuple[str, str, Table | None, list[ReportFigure]]]:
    """(anchor, heading, table, figures) in reading order; figures sit beside their table."""
    out: list[tuple[str, str, Table | None, list[ReportFigure]]] = []
    for table in tables:
        out.append(
            (table.name, table.title, table, [f for f in figures if f.section == table.name])
        )
    models = [f for f in figures if f.section == MODELS_SECTION[0]]
    if models:
        out.append((*MODELS_SECTION, None, models))
    placed = {f.name for _, _, _, figs in out for f in figs}
    rest = [f for f in figures if f.name not in placed]
    if rest:
        out.append(("figures", "Other figures", None, rest))
    return out


def markdown(
    title: str,
    lead: Sequence[str],
    tables: Sequence[Table],
    figures: Sequence[ReportFigure],
    figure_dir: str = "figures",
) -> str:
    """summary.md: each table as markdown with its notes, each figure linked beside it."""
    lines = [MARK, f"# {title}", "", *lead, ""]
    for _anchor, heading, table, figs in sections(tables, figures):
        lines += [f"## {heading}", ""]
        if table is not None:
            if table.common:
                lines += [f"every row: {_common_text(table.common)}", ""]
            lines += [markdown_table(table), ""]
            lines += [f"- {note}" for note in table.notes]
            if table.notes:
                lines.append("")
        for fig in figs:
            lines += [f"![{fig.title}]({figure_dir}/{fig.name}.png)", ""]
    return "\n".join(lines).rstrip() + "\n"


_NUMERIC = re.compile(r"^(-|[+-]?[\d,.]+(x|%)?|\[[\d,.\s-]+\])$")


def _numeric_columns(table: Table) -> list[str]:
    shown = table.shown
    return [c for c in shown.columns if all(_NUMERIC.match(str(v)) for v in shown[c])]


def markdown_table(table: Table) -> str:
    """The shown view as a markdown table: cells as written, numeric columns right-aligned."""
    numeric = _numeric_columns(table)
    align = ["right" if c in numeric else "left" for c in table.shown.columns]
    text: str = table.shown.to_markdown(index=False, disable_numparse=True, colalign=align)
    return text


def html_table(table: Table) -> str:
    """The shown view as an HTML table (pandas' Styler): numeric columns right-aligned."""
    styler = table.shown.style.hide(axis="index").set_properties(
        subset=_numeric_columns(table), **{"text-align": "right"}
    )
    text: str = styler.to_html(table_uuid=table.name, exclude_styles=False)
    return text


def png_bytes(figure: ReportFigure, dpi: int = 110) -> bytes:
    """The figure as PNG."""
    import io

    buffer = io.BytesIO()
    figure.figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def page(
    title: str,
    lead: Sequence[str],
    tables: Sequence[Table],
    figures: Sequence[ReportFigure],
    pngs: Mapping[str, bytes],
) -> str:
    """One self-contained HTML page: tables, notes and base64 PNG figures."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *[f"<p>{html.escape(line)}</p>" for line in lead],
    ]
    order = sections(tables, figures)
    links = " ".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _, _ in order)
    parts.append(f"<nav>{links}</nav>")
    for anchor, heading, table, figs in order:
        parts.append(f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>')
        if table is not None:
            if table.common:
                parts.append(
                    f'<p class="common">every row: {html.escape(_common_text(table.common))}</p>'
                )
            rendered = html_table(table)
            parts.append(f'<div class="scroll">{rendered}</div>')
            if table.notes:
                items = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
                parts.append(f'<ul class="notes">{items}</ul>')
        for fig in figs:
            data = base64.b64encode(pngs[fig.name]).decode("ascii")
            alt = html.escape(fig.title, quote=True)
            parts.append(
                f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(fig.title)}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
