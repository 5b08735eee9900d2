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
                             for r in records]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(tokenizer: Path, world: int) -> list[list[object] | None]:
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
                [sys.executable, "-c", SCRIPT, str(tokenizer), str(DATA)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results: list[list[object] | None] = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        results.append(json.loads(lines[0][7:]) if lines else None)
    return results


@pytest.mark.slow
def test_two_process_run_equals_single_process(sp_model: Path) -> None:
    (single,) = _run(sp_model, 1)
    rank0, rank1 = _run(sp_model, 2)
    assert single and rank0 == single  # same values and sample counts (6 per task, gathered)
    assert rank1 == []  # other ranks write nothing
