"""Rows for people from metric records: one row per case, the headline metrics as columns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from elmbench.records import Record

CASE_KEYS = (
    "model", "backend", "device", "norm", "dtype", "compile",
    "batch_size", "prompt_tokens", "gen_tokens", "where", "tokens",
)  # fmt: skip


def case_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Pivot records (one per case and metric) into one row per case, in first-seen order."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        key = tuple(record.get(k) for k in CASE_KEYS)
        row = rows.setdefault(key, {k: record[k] for k in CASE_KEYS if k in record})
        metric = record.get("metric")
        if record["status"] == "failed":
            row["status"] = "failed"
            row["reason"] = record.get("reason")
        elif record["status"] == "ok" and metric:
            row[metric] = record.get("value")
            if metric == "decode_roofline_pct":  # the peak it is a share of (per case on CPUs)
                row["roofline_gb_per_s"] = record.get("peak_gb_per_s")
            row.setdefault("status", "ok")
            if record.get("section_warnings") or record.get("stable") is False:
                row["stable"] = False
            row.setdefault("stable", True)
    return list(rows.values())


def fastest(rows: Iterable[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The row with the highest value of `metric` (None when no row has it)."""
    have = [r for r in rows if isinstance(r.get(metric), (int, float))]
    return max(have, key=lambda r: r[metric]) if have else None
