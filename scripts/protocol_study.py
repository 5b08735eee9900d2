"""What a shorter protocol would have reported, from long throughput runs: for each case, replay
the candidate protocols on stretches of its raw repetitions and compare their medians with the
whole run's median. Also each run's ratios between its cases (variant against the first case),
the figure an interleaved run is meant to make steadier.

    PYTHONPATH=. .venv/bin/python scripts/protocol_study.py runs/<long-run> [runs/<another> ...]

A long run: the default's cases with many repetitions, e.g. a suite file with `repetitions: 24`,
`min_seconds: 0` (and `order: interleaved` or `sequential`). Prints markdown.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass

import numpy as np

from elmbench.measure.stats import LEVEL, Summary, ratio_test
from elmbench.records import ThroughputRecord, read_run

FIGURES = ("prefill_tokens_per_s", "decode_tokens_per_s")


@dataclass(frozen=True)
class Candidate:
    """A protocol to replay: minimum repetitions and seconds, an optional precision and cap."""

    name: str
    repetitions: int
    min_seconds: float
    precision_pct: float | None = None
    max_seconds: float | None = None


CANDIDATES = (
    Candidate("3 reps, 1 s (today)", 3, 1.0),
    Candidate("6 reps, 2 s", 6, 2.0),
    Candidate("10 reps, 2 s", 10, 2.0),
    Candidate("6 reps, ±5% or 30 s", 6, 2.0, 5.0, 30.0),
    Candidate("6 reps, ±3% or 30 s", 6, 2.0, 3.0, 30.0),
)


def replay(record: ThroughputRecord, start: int, c: Candidate) -> tuple[int, float] | None:
    """Repetitions the candidate would take from `start` on, and the seconds they measure
    (None when the run has too few repetitions left)."""
    total = record.sections_raw_s["total"]
    for n in range(1, len(total) - start + 1):
        window = slice(start, start + n)
        seconds = float(sum(total[window]))
        if n < c.repetitions or seconds < c.min_seconds:
            continue
        if c.precision_pct is None:
            return n, seconds
        precise = True
        for name in ("prefill", "decode"):
            s = Summary.of(record.sections_raw_s[name][window])
            pct = s.ci_half_width_pct
            precise &= s.ci_level >= LEVEL and pct is not None and pct <= c.precision_pct
        if precise or (c.max_seconds is not None and seconds >= c.max_seconds):
            return n, seconds
    return None


def study(record: ThroughputRecord) -> list[str]:
    """One markdown row per candidate: error of the replayed medians against the run's."""
    rows = []
    for c in CANDIDATES:
        errors: dict[str, list[float]] = {f: [] for f in FIGURES}
        used, seconds, unstable = [], [], 0
        starts = range(len(record.sections_raw_s["total"]))
        replays = [(s, r) for s in starts if (r := replay(record, s, c)) is not None]
        for start, (n, secs) in replays:
            used.append(n)
            seconds.append(secs)
            for f in FIGURES:
                raw = record.metrics[f].raw
                errors[f].append(100 * abs(statistics.median(raw[start:start + n])
                                           / record.metrics[f].value - 1))  # fmt: skip
            cvs = [Summary.of(record.sections_raw_s[k][start : start + n]).cv
                   for k in ("total", "prefill", "decode")]  # fmt: skip
            unstable += any(cv is None or cv > 0.10 for cv in cvs)
        if not replays:
            rows.append(f"| {record.norm} | {c.name} | too few repetitions to replay | | | | |")
            continue
        cells = [
            f"{np.percentile(errors[f], 50):.1f}% / {np.percentile(errors[f], 90):.1f}%"
            for f in FIGURES
        ]
        rows.append(
            f"| {record.norm} | {c.name} | {len(replays)} | {statistics.median(used):.0f} "
            f"({min(used)}-{max(used)}) | {statistics.median(seconds):.1f} | {cells[0]} | "
            f"{cells[1]} | {unstable}/{len(replays)} |"
        )
    return rows


def main() -> None:
    """Print the study of each run given."""
    for ref in sys.argv[1:]:
        run = read_run(ref)
        records = [r for r in run.of(ThroughputRecord) if r.metrics.get("decode_tokens_per_s")]
        orders = ", ".join(sorted({r.protocol.order for r in records}))
        membw = (run.meta.extra.get("membw") or {}).get("membw_gb_per_s")
        bandwidth = f"{membw:.1f} GB/s" if isinstance(membw, (int, float)) else "not probed"
        print(f"## {run.meta.run_id} ({orders}; start-of-run read bandwidth {bandwidth})\n")
        print("| case | decode tok/s (median, CV) | prefill tok/s (median, CV) | reps |")
        print("|---|---:|---:|---:|")
        for r in records:
            d, p = (r.metrics[f] for f in ("decode_tokens_per_s", "prefill_tokens_per_s"))
            dcv, pcv = Summary.of(d.raw).cv or 0, Summary.of(p.raw).cv or 0
            print(f"| {r.norm} | {d.value:.2f} ({dcv:.1%}) | {p.value:.1f} ({pcv:.1%}) | "
                  f"{len(d.raw)} |")  # fmt: skip
        print("\nReplayed protocols (from every starting repetition): repetitions and measured "
              "seconds they take, |median / run median - 1| at the 50th / 90th percentile, and "
              "how often a section would be flagged unstable (CV > 10%):\n")  # fmt: skip
        print("| case | protocol | replays | reps (median, range) | measured s | prefill error "
              "| decode error | flagged unstable |")  # fmt: skip
        print("|---|---|---:|---|---:|---:|---:|---:|")
        for r in records:
            print("\n".join(study(r)))
        print("\nRatios between cases in this run (median of the variant / median of the first, "
              "95% bootstrap interval; its half-width is what the order steadies):\n")  # fmt: skip
        print("| figure | cases | ratio | 95% interval | half-width | paired by repetition: "
              "median ratio, its interval's half-width |")  # fmt: skip
        print("|---|---|---:|---|---:|---|")
        first = records[0]
        for r in records[1:]:
            for f in FIGURES:
                a, b = first.metrics[f].raw, r.metrics[f].raw
                t = ratio_test(a, b)
                paired = Summary.of([y / x for x, y in zip(a, b, strict=False)])
                half = paired.ci_half_width_pct
                print(f"| {f} | {r.norm} / {first.norm} | {t.ratio:.3f} | {t.ci_low:.3f} .. "
                      f"{t.ci_high:.3f} | {t.ci_half_width_pct:.1f}% | {paired.median:.3f}, "
                      f"{'-' if half is None else f'{half:.1f}%'} |")  # fmt: skip
        print()


if __name__ == "__main__":
    main()
