"""Accuracy on MLX: the adapter gives torch's log-likelihoods on the MLX backend, agrees with
mlx-lm's own lm-eval adapter on the same checkpoint and tokenizer, and the CLI gives the same
metrics on both backends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from elmbench.accuracy.adapter import ElmLM
from elmbench.accuracy.tokenizer import SentencePieceTokenizer
from elmbench.backends import ModelSpec, create_backend, mlx_blas
from elmbench.config import get_config

pytest.importorskip("mlx.core")

DATA = Path(__file__).parent / "data" / "evaldata"


class Req:
    """The part of lm-eval's Instance the adapters read."""

    def __init__(self, *args: Any) -> None:
        self.args = args


def real_requests(limit: int = 6) -> list[Req]:
    """PIQA and ARC-Challenge questions with each of their answers, from the real data samples."""
    reqs = []
    for line in (DATA / "piqa" / "validation.jsonl").read_text().splitlines()[:limit]:
        doc = json.loads(line)
        reqs += [Req(f"Question: {doc['goal']}\nAnswer:", f" {doc[s]}") for s in ("sol1", "sol2")]
    for line in (DATA / "arc_challenge" / "test.jsonl").read_text().splitlines()[:limit]:
        doc = json.loads(line)
        reqs += [
            Req(f"Question: {doc['question']}\nAnswer:", f" {c}") for c in doc["choices"]["text"]
        ]
    return reqs


def test_torch_and_mlx_backends_give_the_same_loglikelihoods(sp_model: Path) -> None:
    tok = SentencePieceTokenizer(sp_model)
    spec = ModelSpec(model="tiny", seed=7)  # the same seeded weights on both backends
    torch_lm = ElmLM(create_backend("torch", spec), tok, batch_size=4)
    mlx_lm = ElmLM(create_backend("mlx", spec), tok, batch_size=4)
    reqs = real_requests()
    got_t = torch_lm.loglikelihood(reqs, disable_tqdm=True)
    got_m = mlx_lm.loglikelihood(reqs, disable_tqdm=True)
    # fp32 on both sides: sums of a few dozen log-probs agree to float32 rounding.
    np.testing.assert_allclose([ll for ll, _ in got_m], [ll for ll, _ in got_t], atol=1e-3)
    assert [g for _, g in got_m] == [g for _, g in got_t]
    texts = [Req(r.args[0] + r.args[1]) for r in reqs[:4]]
    rolling_t = torch_lm.loglikelihood_rolling(texts, disable_tqdm=True)
    rolling_m = mlx_lm.loglikelihood_rolling(texts, disable_tqdm=True)
    np.testing.assert_allclose(rolling_m, rolling_t, atol=1e-3)


def hf_folder(sp_model: Path, write_checkpoint: Callable[..., Path]) -> Path:
    """The tiny model saved by elmbench's HF saver, with the tokenizer as an HF LLaMA tokenizer."""
    folder = write_checkpoint(get_config("tiny"), seed=11)
    shutil.copy(sp_model, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": True,  # as in the paper and in elmbench's adapter
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
        )
    )
    return folder


# Plain one-line texts: transformers' conversion of the SentencePiece model to a fast tokenizer
# (how mlx-lm loads tokenizer.model) differs from SentencePiece on newlines, runs of spaces and
# unknown characters, which would compare tokenizers rather than the scoring.
PAIRS = [
    ("The object is", " a dictionary"),
    ("The object is", " a list of strings"),
    ("Return the", " value"),
    ("Return the", " default"),
    ("Serialize obj to a JSON formatted", " string"),
    ("Serialize obj to a JSON formatted", " str instance"),
    ("If the function is", " a method of the class"),
]


def test_mlx_backend_agrees_with_mlx_lm_evaluate(
    sp_model: Path, write_checkpoint: Callable[..., Path]
) -> None:
    pytest.importorskip("lm_eval")
    evaluate = pytest.importorskip("mlx_lm.evaluate")
    folder = hf_folder(sp_model, write_checkpoint)
    theirs = evaluate.MLXLM(str(folder), batch_size=4)
    assert theirs.use_chat_template is False  # plain prompts, BOS added, as in elmbench
    ours = ElmLM(
        create_backend("mlx", ModelSpec(model=None, weights=str(folder))),
        SentencePieceTokenizer(sp_model),
        batch_size=3,
    )
    for context, continuation in PAIRS:  # the same token ids reach both models
        ctx, cont = ours._encode_pair(context, continuation)
        assert theirs._tokenize([context + continuation])[0] == tuple(ctx + cont)
        assert theirs._tokenize([context])[0] == tuple(ctx)
    reqs = [Req(c, x) for c, x in PAIRS]
    want = theirs.loglikelihood(reqs)
    got = ours.loglikelihood(reqs, disable_tqdm=True)
    # mlx-lm scores the context through its KV cache, then each answer; elmbench scores every
    # request in one batched forward: the same fp32 model, different kernels and orders.
    np.testing.assert_allclose([ll for ll, _ in got], [ll for ll, _ in want], atol=1e-4)
    assert [g for _, g in got] == [bool(g) for _, g in want]
    # Rolling: elmbench follows lm-eval's HF model, whose BOS-led encoding also gets the BOS
    # prefix token ([BOS, BOS, text]); mlx-lm's rolling scores [BOS, text]. So the sequence
    # elmbench scores goes through mlx-lm's own scoring function (the one its rolling uses).
    texts = [c + x for c, x in PAIRS[:4]]
    rolling = ours.loglikelihood_rolling([Req(t) for t in texts], disable_tqdm=True)
    for text, total in zip(texts, rolling, strict=True):
        seq = [ours.prefix_token_id, *ours.tok_encode(text)]  # one window: shorter than 256
        scores, _, _ = theirs._score_fn([seq])
        assert total == pytest.approx(float(np.array(scores).sum()), abs=1e-4)


def test_cli_gives_the_same_metrics_on_both_backends(tmp_path: Path, sp_model: Path) -> None:
    values = {}
    for device in ("cpu", "mlx-cpu"):
        out = tmp_path / device
        result = CliRunner().invoke(
            cli_group(),
            ["accuracy", "--model", "tiny", "--allow-random", "--tokenizer", str(sp_model),
             "--data-dir", str(DATA), "--tasks", "PIQA,ARC-c", "--limit", "6", "--device",
             device, "--out", str(out), "--format", "json"],
            env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        records = json.loads(result.stdout)["records"]
        assert {r["backend"] for r in records} == {"torch" if device == "cpu" else "mlx"}
        values[device] = {(r["label"], r["metric"]): r["value"] for r in records}
    assert len(values["cpu"]) == 4 and values["cpu"] == values["mlx-cpu"]


def cli_group() -> Any:
    """The click group (imported late: it lists every command module)."""
    from elmbench.cli import cli

    return cli


@pytest.mark.skipif(
    not mlx_blas._bundled_reference(),
    reason="the restart swaps the Linux mlx-cpu wheel's reference BLAS",
)
def test_console_command_restarts_mlx_on_openblas(tmp_path: Path, sp_model: Path) -> None:
    """`python -m elmbench accuracy` on MLX restarts itself with OpenBLAS preloaded, once, and
    the records say so; the metrics equal the in-process (bundled BLAS) run's."""
    args = ["accuracy", "--model", "tiny", "--allow-random", "--tokenizer", str(sp_model),
            "--data-dir", str(DATA), "--tasks", "PIQA", "--limit", "4", "--device", "mlx-cpu",
            "--format", "json"]  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ELMBENCH_MLX_BLAS": "openblas"}
    done = subprocess.run(
        [sys.executable, "-m", "elmbench", *args, "--out", str(tmp_path / "sub")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    restarted = json.loads(done.stdout)["records"]
    assert {r["blas"].split(" ")[0] for r in restarted} == {"OpenBLAS"}
    here = CliRunner().invoke(cli_group(), [*args, "--out", str(tmp_path / "here")], env=env)
    assert here.exit_code == 0, here.output
    in_process = json.loads(here.stdout)["records"]
    assert {r["blas"] for r in in_process} == {"reference BLAS bundled with the mlx-cpu wheel"}
    assert [r["value"] for r in restarted] == [r["value"] for r in in_process]
