"""NaN and infinity: found in a checkpoint of any float dtype before a run, and, when a model that
passed computes them anyway (float16 overflowing), failing the case or task with the reason.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from elmbench.backends.isolate import Job, run_isolated
from elmbench.checkpoints.verify import check_checkpoint
from elmbench.cli import cli
from elmbench.config import get_config
from elmbench.errors import CheckpointError, NonFiniteError
from elmbench.measure.finite import check_finite_logits
from elmbench.records import AccuracyRecord, FailureRecord, read_run

DATA = Path(__file__).parent / "data" / "evaldata"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ELMBENCH_DATA": None}
KEY = "transformer.layers.2.attn.out_proj.weight"


def _poison(folder: Path, dtype: str, value: float) -> None:
    """Store the checkpoint's tensors as `dtype`, with `value` in one weight."""
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = {k: v.to(getattr(torch, dtype)) for k, v in load_file(str(path)).items()}
    state[KEY][1, 2] = value
    save_file(state, str(path))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_the_scan_finds_nan_and_infinity_in_every_float_dtype(
    write_checkpoint: Any, dtype: str, value: float
) -> None:
    folder = write_checkpoint(get_config("tiny"))
    _poison(folder, dtype, value)
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(folder)
    assert f"key '{KEY}'; expected finite values, found 1 of " in str(info.value)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_the_largest_finite_value_of_each_dtype_passes(write_checkpoint: Any, dtype: str) -> None:
    import torch

    folder = write_checkpoint(get_config("tiny"))
    _poison(folder, dtype, float(torch.finfo(getattr(torch, dtype)).max))
    assert check_checkpoint(folder).cfg.name == folder.name


class Rows:
    """A stand-in backend whose forward gives these log-prob rows."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def logprob_rows(self, tokens: np.ndarray, lengths: list[int], last: list[int]) -> list[Any]:
        assert tokens.shape == (1, 10) and lengths == [10] and last == [4]
        return [self.rows]


def test_the_logits_that_chose_each_token_must_be_finite() -> None:
    tokens = np.zeros((1, 10), dtype=np.int64)  # 6 prompt tokens, 4 generated (the last unfed)
    rows = np.zeros((4, 7), dtype=np.float32)
    check_finite_logits(Rows(rows), tokens, 4)
    rows[2, 5] = np.nan
    rows[3, 0] = -np.inf
    with pytest.raises(NonFiniteError, match=r"at 2 of the 4 positions .* the first at position 8"):
        check_finite_logits(Rows(rows), tokens, 4)


@pytest.fixture
def overflowing(write_checkpoint: Any) -> Path:
    """A tiny checkpoint with finite, large weights: float16 activations overflow to inf/NaN."""
    from elmbench.checkpoints.hf import save_hf
    from elmbench.checkpoints.torch_load import load_state

    folder = write_checkpoint(get_config("tiny"), name="overflowing")
    cfg, state, _ = load_state(get_config("tiny"), weights=folder)
    save_hf(cfg, {k: v * 3e3 if v.ndim == 2 else v for k, v in state.items()}, folder)
    check_checkpoint(folder)  # every value is finite: only the run can tell
    return folder


def _job(task: str, weights: Path, **params: Any) -> Job:
    spec = {"model": "tiny", "weights": str(weights), "norm": "naive", "dtype": "float16",
            "seed": 0, "device": "cpu", "compile": "none"}  # fmt: skip
    return Job(task, "torch", spec, {"batch_size": 1, "prompt_tokens": 8, "gen_tokens": 4,
                                     "seed": 0, **params}, "case")  # fmt: skip


def test_non_finite_logits_fail_a_throughput_and_a_profile_case(overflowing: Path) -> None:
    """Both cases in one worker process, as a run sends them (and not in this process, whose
    peak-memory counters the measurement would restart)."""
    throughput = _job("elmbench.throughput.measure:throughput", overflowing, warmup=0,
                      repetitions=1, min_seconds=0.0)  # fmt: skip
    params = {"phases": ["decode"], "trace_dir": None, "label": "t", "schedule": [0, 1, 1],
              "top": 3, "metal_capture": None}  # fmt: skip
    profile = _job("elmbench.profile.run:profile_case", overflowing, **params)
    records = run_isolated([throughput, replace(profile, case_id="profile")])
    assert [(r["case_id"], r["status"]) for r in records] == [
        ("case", "failed"), ("profile", "failed"),
    ]  # fmt: skip
    reason = records[0]["reason"]
    assert reason.startswith("non-finite logits (NaN or infinity) at ")
    assert "float16 overflowing" in reason
    assert records[1]["reason"].startswith("non-finite logits (NaN or infinity) at ")


def test_non_finite_log_likelihoods_fail_the_task_and_the_run_goes_on(
    overflowing: Path, sp_model: Path, tmp_path: Path
) -> None:
    args = [
        "accuracy", "--weights", str(overflowing), "--dtype", "float16", "--tokenizer",
        str(sp_model), "--data-dir", str(DATA), "--tasks", "PIQA,BoolQ", "--limit", "2",
        "--out", str(tmp_path / "runs"), "-q",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args, env=OFFLINE, prog_name="elmbench")
    assert result.exit_code == 1, result.output
    assert "task metric(s) failed (non-finite log-likelihoods" in result.stderr
    (run,) = list((tmp_path / "runs").iterdir())
    records = read_run(run).records
    assert records and all(isinstance(r, FailureRecord) for r in records)
    assert {(r.params["task"], r.measurement) for r in records} == {
        ("piqa", "accuracy"), ("boolq", "accuracy"),
    }  # fmt: skip
    ids = [r.case_id for r in records]
    assert ids == [AccuracyRecord.case_id_of(r.params) for r in records]
    # A resume keeps the failures; --retry-failed measures them again and replaces them.
    for extra in ([], ["--retry-failed"]):
        again = CliRunner().invoke(
            cli, ["accuracy", "--resume", str(run), "-q", *extra], env=OFFLINE, prog_name="elmbench"
        )
        assert again.exit_code == 1, again.output
        lines = (run / "records.jsonl").read_text().splitlines()
        assert len(lines) == len(ids) and [r.case_id for r in read_run(run).records] == ids


def test_in_an_interleaved_group_a_non_finite_case_fails_alone(
    overflowing: Path, write_checkpoint: Any
) -> None:
    from elmbench.backends.isolate import Group

    timing = {"warmup": 0, "repetitions": 2, "min_seconds": 0.0}
    bad = _job("elmbench.throughput.measure:throughput", overflowing, **timing)
    healthy = _job("elmbench.throughput.measure:throughput",
                   write_checkpoint(get_config("tiny"), name="healthy"), **timing)  # fmt: skip
    good = replace(healthy, spec={**healthy.spec, "dtype": "float32"}, case_id="good")
    records = run_isolated([Group("elmbench.throughput.measure:throughput_interleaved",
                                  (bad, good))])  # fmt: skip
    status = {r["case_id"]: r["status"] for r in records}
    assert status == {"case": "failed", "good": "ok"}
    failed = next(r for r in records if r["case_id"] == "case")
    assert failed["reason"].startswith("non-finite logits (NaN or infinity) at ")
