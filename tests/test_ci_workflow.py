"""The GitHub Actions workflow installs and tests as the README says, runs the `ci` suite and
compares it with the committed baseline, whose cases are the suite's."""

from __future__ import annotations

from pathlib import Path

import yaml

from elmbench.records import ThroughputRecord, read_run
from elmbench.suites import SuiteSpec, load_suite, suite_path
from elmbench.throughput.plan import build_plan

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
INSTALL = " && ".join(
    [
        "python3 -m venv .venv",
        ".venv/bin/pip install torch==2.13.0",
        '.venv/bin/pip install -e ".[all]"',
    ]
)
TESTS = ".venv/bin/python -m pytest -q"


def test_the_workflow_runs_the_readmes_commands_then_the_ci_suite_and_compare() -> None:
    readme = (ROOT / "README.md").read_text()
    assert INSTALL in readme and TESTS in readme
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["test-and-compare"]["steps"]
    commands = [line.strip() for s in steps for line in s.get("run", "").splitlines()]
    assert INSTALL in commands and TESTS in commands
    suite = next(i for i, c in enumerate(commands) if "throughput --suite ci" in c)
    compare = next(
        i for i, c in enumerate(commands) if c.startswith(".venv/bin/elmbench compare ci")
    )
    assert commands.index(TESTS) < suite < compare
    assert "--figures prefill_on_cpu_tokens_per_s,decode_on_cpu_tokens_per_s" in commands


def test_the_committed_baseline_holds_the_ci_suites_cases() -> None:
    spec = load_suite(suite_path("ci"))
    assert isinstance(spec, SuiteSpec)
    baseline = read_run(ROOT / "reports" / "baselines" / "ci")
    measured = {r.case_id for r in baseline.of(ThroughputRecord)}
    assert measured == {case.case_id for case in build_plan(spec).cases}
    stored = baseline.meta.spec
    for key in ("warmup", "repetitions", "min_seconds", "precision_pct", "max_seconds", "order"):
        assert stored[key] == getattr(spec, key), key
