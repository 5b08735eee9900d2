"""How often `elmbench compare` calls a difference between two runs of the same code (A/A), and
the smallest known slowdown it catches (A/B), on a throughput suite (default `ci`).

Each pair is one baseline run A, one more run A' of the same code, and one run B per slowdown
(decode sleeps that fraction of its time: $ELMBENCH_TEST_SLOWDOWN_DECODE), in a seeded random
order; compare(A, A') and compare(A, B) give the verdicts. Writes markdown findings and the raw
results (JSON) to --out. Example (about 35 s a run on a quiet 2-core CPU):

    PYTHONPATH=. .venv/bin/python scripts/compare_aa_ab.py --pairs 10 \
        --slowdowns 0.02,0.03,0.05,0.1 --orders interleaved \
        --figures prefill_on_cpu_tokens_per_s,decode_on_cpu_tokens_per_s --out reports/compare-aa-ab
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from elmbench.compare import SAME, SLOWER, compare_runs
from elmbench.records import read_run
from elmbench.suites import suite_path
from elmbench.throughput.measure import SLOWDOWN_ENV


def load() -> str:
    """The 1-minute load average (Linux), for the conditions of each run."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def run_suite(suite: Path, out: Path, slowdown: float) -> dict[str, Any]:
    """One suite run in a fresh process; its folder, wall time and the load around it."""
    env = dict(os.environ)
    env.pop(SLOWDOWN_ENV, None)
    if slowdown:
        env[SLOWDOWN_ENV] = str(slowdown)
    before, start = load(), time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "elmbench", "throughput", "--suite", str(suite), "--out",
         str(out), "-q", "--format", "json"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"suite run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    path = json.loads(done.stdout)["run"]
    return {"path": path, "wall_s": wall, "load_before": before, "load_after": load(),
            "slowdown": slowdown}  # fmt: skip


def verdicts(base: str, new: str, threshold: float, figures: list[str] | None) -> dict[str, Any]:
    """compare(base, new): exit code, verdict per figure, ratios and detectable changes."""
    comparison = compare_runs(read_run(base), read_run(new), threshold, figures=figures)
    rows = [
        {"case": r.case.get("norm"), "figure": r.figure, "verdict": r.verdict, "ratio": r.ratio,
         "p_adjusted": r.p_adjusted, "detectable_pct": r.detectable_pct}
        for r in comparison.rows
    ]  # fmt: skip
    return {"exit_code": comparison.exit_code, "rows": rows}


def suite_with_order(name: str, order: str, folder: Path) -> Path:
    """A copy of the suite file with `order` set."""
    data = yaml.safe_load(suite_path(name).read_text())
    data["order"] = order
    path = folder / f"{Path(name).stem}-{order}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def findings(results: dict[str, Any], args: argparse.Namespace) -> str:
    """The results as markdown: A/A false calls, A/B detection, run-to-run spread, run time."""
    lines = [
        f"# compare A/A and A/B on the `{args.suite}` suite",
        "",
        f"{results['started_utc']} to {results['finished_utc']}; host {results['host']}; "
        f"threshold {args.threshold:g}%; {args.pairs} pair(s) per order; seed {args.seed}; "
        f"figures judged: {args.figures or 'every one both runs have'}.",
        f"Command: `{results['command']}`",
        "",
        "| order | A/A pairs | pairs with a difference called | rate | ci run wall s (median, "
        "range) | 1-min load (median, range) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for order, data in results["orders"].items():
        aa = data["aa"]
        called = sum(p["exit_code"] != 0 for p in aa)
        walls = [r["wall_s"] for r in data["runs"]]
        loads = [float(r["load_before"]) for r in data["runs"] if r["load_before"] != "?"]
        lines.append(
            f"| {order} | {len(aa)} | {called} | {called / max(len(aa), 1):.0%} | "
            f"{statistics.median(walls):.0f} ({min(walls):.0f}-{max(walls):.0f}) | "
            f"{statistics.median(loads):.1f} ({min(loads):.1f}-{max(loads):.1f}) |"
        )
    lines += ["", "| order | decode slowdown | pairs | regression called (exit 1) | rate | "
              "decode called slower, per case and figure |",
              "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    smallest: dict[str, str] = {}
    for order, data in results["orders"].items():
        for slowdown, pairs in data["ab"].items():
            caught = sum(p["exit_code"] == 1 for p in pairs)
            cases: dict[str, int] = {}
            for p in pairs:
                for r in p["rows"]:
                    if r["figure"].startswith("decode"):
                        key = f"{r['case']} {r['figure']}"
                        cases[key] = cases.get(key, 0) + (r["verdict"] == SLOWER)
            per_case = ", ".join(f"{c} {n}/{len(pairs)}" for c, n in cases.items())
            lines.append(f"| {order} | {float(slowdown):.0%} | {len(pairs)} | {caught} | "
                         f"{caught / max(len(pairs), 1):.0%} | {per_case} |")  # fmt: skip
            if caught >= math.ceil(0.9 * len(pairs)) and order not in smallest:
                smallest[order] = f"{float(slowdown):.0%}"
    lines += [""]
    for order, data in results["orders"].items():
        lines.append(f"- {order}: smallest slowdown caught in at least 9 of 10 pairs: "
                     f"{smallest.get(order, 'none of those tried')}")  # fmt: skip
        # prefill is untouched by the decode slowdown: its calls in A/B pairs are false ones too
        ab = [p for pairs in data["ab"].values() for p in pairs]
        false_prefill = sum(
            any(r["figure"].startswith("prefill") and r["verdict"] != SAME for r in p["rows"])
            for p in ab
        )
        lines.append(f"- {order}: prefill (which the slowdown leaves alone) called different in "
                     f"{false_prefill} of {len(ab)} A/B pairs")  # fmt: skip
        worst = [
            max((abs(100 * (r["ratio"] - 1)) for r in p["rows"] if r["ratio"] is not None),
                default=0.0)
            for p in data["aa"]
        ]  # fmt: skip
        if worst:
            lines.append(
                f"- {order}: largest A/A change of any judged figure, per pair: median "
                f"{statistics.median(worst):.1f}%, 95th percentile "
                f"{float(np.percentile(worst, 95)):.1f}% (a floor above it calls no difference "
                "in 95% of such pairs)"
            )
    lines += ["", "A/A run-to-run change per figure (new / baseline - 1, over the pairs), and the "
              "smallest change each pair could have called:", "",
              "| order | case | figure | median abs change | 95th pct abs change | largest | "
              "median smallest detectable |", "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for order, data in results["orders"].items():
        keyed: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for p in data["aa"]:
            for r in p["rows"]:
                if r["ratio"] is not None:
                    keyed.setdefault((r["case"], r["figure"]), []).append(r)
        for (case, figure), rows in keyed.items():
            changes = [abs(100 * (r["ratio"] - 1)) for r in rows]
            detect = [r["detectable_pct"] for r in rows if r["detectable_pct"] is not None]
            det = f"{statistics.median(detect):.1f}%" if detect else "none"
            lines.append(
                f"| {order} | {case} | {figure} | {statistics.median(changes):.1f}% | "
                f"{float(np.percentile(changes, 95)):.1f}% | {max(changes):.1f}% | {det} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the pairs and write findings.md and results.json to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="ci")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--slowdowns", default="0.03,0.05,0.1",
                        help="decode slowdowns to try, as fractions")  # fmt: skip
    parser.add_argument("--orders", default="interleaved", help="interleaved and/or sequential")
    parser.add_argument("--threshold", type=float, default=5.0)
    parser.add_argument("--figures", default="", help="compare --figures (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs") / "compare-aa-ab")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    slowdowns = [float(s) for s in args.slowdowns.split(",") if s.strip()]
    figures = [f.strip() for f in args.figures.split(",") if f.strip()] or None
    rng = random.Random(args.seed)
    results: dict[str, Any] = {
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": os.uname().nodename, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "orders": {},
    }  # fmt: skip
    for order in [o.strip() for o in args.orders.split(",") if o.strip()]:
        suite = suite_with_order(args.suite, order, args.out)
        data: dict[str, Any] = {"runs": [], "aa": [], "ab": {str(s): [] for s in slowdowns}}
        for pair in range(args.pairs):
            plan = [("A'", 0.0), *((f"B{s}", s) for s in slowdowns)]
            rng.shuffle(plan)
            made = {"A": run_suite(suite, args.out / order, 0.0)}
            for name, slowdown in plan:
                made[name] = run_suite(suite, args.out / order, slowdown)
            data["runs"] += [{"pair": pair, "name": k, **v} for k, v in made.items()]
            data["aa"].append(
                verdicts(made["A"]["path"], made["A'"]["path"], args.threshold, figures)
            )
            for s in slowdowns:
                result = verdicts(made["A"]["path"], made[f"B{s}"]["path"], args.threshold, figures)
                data["ab"][str(s)].append(result)
            print(f"{order} pair {pair + 1}/{args.pairs}: A/A exit {data['aa'][-1]['exit_code']}, "
                  + ", ".join(f"{s:.0%} exit {data['ab'][str(s)][-1]['exit_code']}"
                              for s in slowdowns), flush=True)  # fmt: skip
        results["orders"][order] = data
    results["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = findings(results, args)
    (args.out / "findings.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
