"""Rows for people from typed records: one row per case, the headline figures as columns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from elmbench.records import FailureRecord, NormBenchRecord, Record, ThroughputRecord


def case_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per case (throughput, norm micro-benchmark, or its failure), in record order."""
    rows = []
    for record in records:
        if isinstance(record, FailureRecord):
            if record.measurement in (ThroughputRecord.KIND, NormBenchRecord.KIND):
                rows.append({**record.params, "status": record.status, "reason": record.reason})
            continue
        if not isinstance(record, (ThroughputRecord, NormBenchRecord)):
            continue
        row: dict[str, Any] = {**record.case(), "status": "ok"}
        row.update({name: estimate.value for name, estimate in record.metrics.items()})
        row["stable"] = not any(w.startswith("unstable") for w in record.warnings)
        if isinstance(record, ThroughputRecord) and record.roofline is not None:
            row["roofline_gb_per_s"] = record.roofline.peak_gb_per_s
        rows.append(row)
    return rows


def fastest(rows: Iterable[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The row with the highest value of `metric` (None when no row has it)."""
    have = [r for r in rows if isinstance(r.get(metric), (int, float))]
    return max(have, key=lambda r: r[metric]) if have else None
