"""Shared click options (`--backend`, `--model`, `--format`) and the one renderer behind `--format`.

Imports here stay light (click, stdlib): rich is imported only when a table is printed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from elmbench.norms import BACKENDS

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("table", "markdown", "csv", "json")


def backend_option(default: str = "torch", allow_all: bool = False) -> Callable[[F], F]:
    """`--backend torch|mlx` (plus `all` when `allow_all`), passed to the command as `backend`."""
    choices = [*BACKENDS, "all"] if allow_all else list(BACKENDS)
    return click.option(
        "--backend",
        type=click.Choice(choices, case_sensitive=False),
        default=default,
        show_default=True,
        help="Framework to run on." + (" 'all' means every backend." if allow_all else ""),
    )


def model_option(default: str | None = "270m") -> Callable[[F], F]:
    """`--model NAME`, validated against the presets (unknown names get "did you mean")."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        from elmbench.config import get_config

        return get_config(value).name

    return click.option(
        "--model",
        default=default,
        show_default=True,
        callback=check,
        help="Model preset: 270m, 450m, 1_1b, 3b, their -instruct twins, official names, tiny.",
    )


def format_option(func: F) -> F:
    """`--format table|markdown|csv|json`, passed to the command as `fmt`."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS, case_sensitive=False),
        default="table",
        show_default=True,
        help="Output format: a table for people; markdown, csv or json for files and scripts.",
    )(func)


@dataclass(frozen=True)
class Column:
    """One column of a human-readable table: its header and how to render a row's cell."""

    header: str
    cell: Callable[[dict[str, Any]], str]
    numeric: bool = False  # right-aligned
    max_width: int | None = None  # wrap longer cells in the rich table
    group: bool = False  # show a value only where it changes from the row above

    @classmethod
    def key(cls, header: str, key: str, numeric: bool = False, **kwargs: Any) -> Column:
        """A column that shows `row[key]`, with thousands separators for integers."""
        return cls(header, lambda row: show(row[key]), numeric, **kwargs)


def show(value: Any) -> str:
    """A value as people read it: 271,527,168, yes/no, shapes as 2048×768, '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return "×".join(str(v) for v in value)
    return str(value)


def emit(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    fmt: str,
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    data: Any = None,
) -> None:
    """Print `columns` of rows as a table or markdown; csv: every key, raw; json: `data` or rows."""
    fmt = fmt.lower()
    if fmt == "json":
        click.echo(json.dumps(rows if data is None else data, indent=2, default=str))
    elif fmt == "csv":
        click.echo(_csv(rows), nl=False)
    elif fmt == "markdown":
        click.echo(_markdown(rows, columns, title, notes))
    else:
        _rich_table(rows, columns, title, notes)


def as_json(records: Sequence[Any]) -> list[dict[str, Any]]:
    """Typed records as JSON objects, with their kind and case id first."""
    from elmbench.records.codec import to_json

    return [{"kind": r.KIND, "case_id": r.case_id, **to_json(r, "", [])} for r in records]


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # Lists in rows are shapes; "x" keeps the cell one plain token.
        writer.writerow(
            {
                k: "x".join(map(str, v)) if isinstance(v, (list, tuple)) else v
                for k, v in row.items()
            }
        )
    return buf.getvalue()


def _cells(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> list[list[str]]:
    out: list[list[str]] = []
    prev: list[str] = []
    for row in rows:
        cells = [c.cell(row) for c in columns]
        shown = [
            "" if c.group and i < len(prev) and cell == prev[i] else cell
            for i, (c, cell) in enumerate(zip(columns, cells, strict=True))
        ]
        out.append(shown)
        prev = cells
    return out


def _markdown(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    title: str | None,
    notes: Sequence[str],
) -> str:
    def line(cells: Sequence[str]) -> str:
        # <br> keeps multi-line cells inside one row (GitHub renders it).
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", "<br>") for c in cells) + " |"

    out = [f"**{title}**", ""] if title else []
    out.append(line([c.header for c in columns]))
    out.append("|" + "|".join("---:" if c.numeric else "---" for c in columns) + "|")
    out.extend(line(cells) for cells in _cells(rows, columns))
    if notes:
        out.extend(["", *notes])
    return "\n".join(out)


def _rich_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    title: str | None,
    notes: Sequence[str],
) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # A pipe or file has no width: use a wide one so no cell is cut, as the table keeps its
    # natural width anyway.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(width=200 if wide else None, highlight=False)
    # One space between columns keeps the presets table within 100 columns.
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)
    for col in columns:
        table.add_column(
            col.header.replace(" ", "\n") if col.numeric else col.header,
            justify="right" if col.numeric else "left",
            no_wrap=col.numeric,
            overflow="fold",
            max_width=col.max_width,
        )
    for cells in _cells(rows, columns):
        # Text(), not str: cells such as "pip install 'mlx[cpu]'" are not rich markup.
        table.add_row(*(Text(c) for c in cells))
    if title:
        # Printed apart from the table, so a long title never wraps to the table's width.
        console.print(Text(title, style="bold"))
    console.print(table)
    for note in notes:
        console.print(Text(note))
