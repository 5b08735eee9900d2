"""Data-parallel accuracy: two CPU processes (gloo) equal one process; rank 0 reports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "evaldata"

SCRIPT = """
import json, sys
from pathlib import Path
from elmbench.accuracy.runner import AccuracyPlan, run_accuracy
from elmbench.backends import ModelSpec
from elmbench.suites import load_suite, suite_path
suite = load_suite(suite_path("llm360"))
plan = AccuracyPlan("torch", ModelSpec(model="tiny", seed=2), ("naive",), sys.argv[1],
                    Path(sys.argv[2]), tasks=("PIQA", "TruthfulQA"), limit=6, batch_size=4,
                    allow_random=True)
records = run_accuracy(suite, plan)
print("RESULT " + json.dumps([[r["label"], r["metric"], r["value"], r["samples"]]
                             for r in records]))  # the runner's plain dicts
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(argv: list[str], world: int) -> list[tuple[str, str]]:
    """Start `argv` as `world` ranks the way torchrun / accelerate launch do; (stdout, stderr)."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        if world > 1:
            env.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
        procs.append(
            subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outputs.append((out, err))
    return outputs


def _run(tokenizer: Path, world: int) -> list[list[object] | None]:
    results: list[list[object] | None] = []
    for out, _ in _launch([sys.executable, "-c", SCRIPT, str(tokenizer), str(DATA)], world):
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        results.append(json.loads(lines[0][7:]) if lines else None)
    return results


@pytest.mark.slow
def test_two_process_run_equals_single_process(sp_model: Path) -> None:
    (single,) = _run(sp_model, 1)
    rank0, rank1 = _run(sp_model, 2)
    assert single and rank0 == single  # same values and sample counts (6 per task, gathered)
    assert rank1 == []  # other ranks write nothing


def _cli_values(out: Path) -> tuple[Path, list[tuple[object, ...]]]:
    (run,) = [p for p in out.iterdir() if p.is_dir()]  # one run folder, whatever the world size
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    return run, sorted((r["label"], r["metric"], r["value"], r["samples"]) for r in records)


@pytest.mark.slow
def test_cli_under_two_ranks_writes_one_run_equal_to_one_process(
    sp_model: Path, tmp_path: Path
) -> None:
    def argv(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "elmbench", "accuracy", "--model", "tiny", "--allow-random",
            "--tokenizer", str(sp_model), "--data-dir", str(DATA), "--suite", "llm360",
            "--tasks", "PIQA,TruthfulQA", "--limit", "6", "--eval-batch-size", "4",
            "--out", str(out), "--format", "json",
        ]  # fmt: skip

    ((single_out, _),) = _launch(argv(tmp_path / "one"), 1)
    (rank0_out, _), (rank1_out, _) = _launch(argv(tmp_path / "two"), 2)
    _, single = _cli_values(tmp_path / "one")
    run, both = _cli_values(tmp_path / "two")
    assert both == single  # gathered over both ranks: the same values and sample counts
    assert json.loads((run / "run.json").read_text())["extra"]["world_size"] == 2
    assert json.loads(rank0_out)["run_dir"] == str(run)  # rank 0 reports
    assert rank1_out.strip() == ""  # the other rank prints and writes nothing
    assert json.loads(single_out)["records"]
