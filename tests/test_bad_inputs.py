"""Every bad input a user can give, as a table: each is one `error:` line on stderr, exit status 2,
no traceback, nothing on stdout, and no run folder made or changed, before any model loads.

Rows are grouped by class (the column `cls`); `ROWS_BY_CLASS` counts them. Checkpoints are tiny
ones written by the `write_checkpoint` fixture and then broken in one way each.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from elmbench.cli import cli
from elmbench.config import get_config

DATA = Path(__file__).parent / "data" / "evaldata"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ELMBENCH_DATA": None}
RUN_COMMANDS = ("throughput", "profile", "accuracy")
LINUX = sys.platform.startswith("linux")


# A row is a command line with placeholders, made real in the test's own folder:
#   {ckpt:HOW}  a tiny checkpoint broken as HOW says (BREAK, SHARDED, make_checkpoint)
#   {run:KIND[:HOW]}  an existing run folder of KIND, spoiled as HOW says (make_run)
#   {suite:NAME}  a suite file with the text SUITES[NAME]
#   {out} {file} {folder} {nowhere} {tok}  a folder for runs, a plain file, a folder that is no
#   run, a path that does not exist, the test tokenizer
PLACEHOLDER = re.compile(r"\{([a-z]+)(?::([\w.-]+))?(?::([\w-]+))?\}")


@dataclass(frozen=True)
class Row:
    """One bad input: its class, its command line and what its one line must say."""

    cls: str
    id: str
    line: str
    needles: tuple[str, ...]
    marks: tuple[Any, ...] = ()

    @property
    def command(self) -> str:
        """The command (or the first word after `elmbench`)."""
        return self.line.split()[0]


def r(cls: str, id: str, line: str, *needles: str, marks: tuple[Any, ...] = ()) -> Row:
    """A row of the table."""
    return Row(cls, id, line, needles, marks)


# Checkpoints: each written by write_checkpoint (tiny, float32), then broken ---------------------


def _config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _resave(folder: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Rewrite model.safetensors with `change` applied to its tensors (numpy arrays)."""
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    save_file(change(load_file(str(path))), str(path))


def _with(key: str, value: np.ndarray) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda state: {**state, key: value}


def _without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda state: {k: v for k, v in state.items() if k != key}


def _nan(state: dict[str, Any]) -> dict[str, Any]:
    key = "transformer.layers.1.ffn.proj_1.weight"
    bad = state[key].copy()
    bad[0, :3] = np.nan
    return {**state, key: bad}


def _quantized(folder: Path) -> None:
    """An MLX-community 4-bit folder (packed uint32 weights, scales and biases), made by hand."""
    from safetensors.numpy import save_file

    from elmbench.checkpoints.layout import expected_shapes, quantized_layout

    cfg = get_config("tiny")
    entry = {"group_size": 32, "bits": 4}
    linear = {k.removesuffix(".weight") + ".scales" for k, s in expected_shapes(cfg).items()}
    shapes, modules = quantized_layout(cfg, entry, linear, "config.json")
    packed = {f"{m}.weight" for m in modules}
    state = {
        k: np.zeros(s, dtype=np.uint32) if k in packed else np.ones(s, dtype=np.float32)
        for k, s in shapes.items()
    }
    save_file(state, str(folder / "model.safetensors"))
    _config(folder, quantization=entry)


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _shards_one_missing(folder: Path) -> None:
    sorted(folder.glob("model-0000*-of-*.safetensors"))[1].unlink()


EMB = "transformer.token_embeddings.weight"
BREAK: dict[str, Callable[[Path], None]] = {
    "good": lambda f: None,
    "empty": lambda f: [p.unlink() for p in f.iterdir()] and None,
    "config-invalid-json": lambda f: (f / "config.json").write_text("{not json"),
    "config-not-a-mapping": lambda f: (f / "config.json").write_text("[1, 2]"),
    "config-missing-key": lambda f: _config(f, model_dim=None),
    "config-not-openelm": lambda f: _config(f, model_type="llama"),
    "config-wrong-type": lambda f: _config(f, num_transformer_layers="three"),
    "no-weights-file": lambda f: (f / "model.safetensors").unlink(),
    "truncated": _truncate,
    "random-bytes": lambda f: (f / "model.safetensors").write_bytes(os.urandom(4096)),
    "empty-weights-file": lambda f: (f / "model.safetensors").write_bytes(b""),
    "shape-contradicts-config": lambda f: _config(f, model_dim=128),
    "missing-key": lambda f: _resave(f, _without("transformer.norm.weight")),
    "unexpected-key": lambda f: _resave(f, _with("transformer.extra", np.ones(3, np.float32))),
    "integer-dtype": lambda f: _resave(f, _with(EMB, np.ones((512, 64), np.int32))),
    "nan-weights": lambda f: _resave(f, _nan),
    "inf-weights": lambda f: _resave(f, _with("transformer.norm.weight", np.full(64, np.inf))),
    "quantized": _quantized,
}
SHARDED = {
    "shard-missing": _shards_one_missing,
    "index-invalid": lambda f: (f / "model.safetensors.index.json").write_text("{}"),
}


def make_checkpoint(how: str, write_checkpoint: Callable[..., Path], tmp_path: Path) -> Path:
    """A tiny checkpoint broken as `how` says; `pt-*` are CoreNet files."""
    if how == "missing":
        return tmp_path / "no-such-checkpoint"
    if how == "pt-random-bytes":
        path = tmp_path / "model.pt"
        path.write_bytes(os.urandom(2048))
        return path
    if how == "pt-tiny":
        import torch

        from elmbench.checkpoints.torch_load import load_state

        _, state, _ = load_state("tiny")
        path = tmp_path / "tiny.pt"
        torch.save({k.removeprefix("transformer."): v for k, v in state.items()}, path)
        return path
    if how in SHARDED:
        folder = write_checkpoint(get_config("tiny"), name=how, max_shard_bytes=100_000)
        SHARDED[how](folder)
        return folder
    folder = write_checkpoint(get_config("tiny"), name=how)
    BREAK[how](folder)
    return folder


# Run folders to resume ----------------------------------------------------------------------


def make_run(kind: str, how: str, root: Path, sp_model: Path) -> Path:
    """A run folder of `kind` with no records yet (a run interrupted at its start), spoiled."""
    from elmbench.profile.run import ProfileOptions
    from elmbench.records import open_run
    from elmbench.suites import SuiteSpec

    extra: dict[str, Any] = {}
    if kind == "accuracy":
        from elmbench.cli.accuracy import settings

        spec = settings(
            {"model": ("tiny",), "allow_random": True, "tokenizer": str(sp_model),
             "data_dir": str(DATA), "tasks": "PIQA", "limit": 2}
        )  # fmt: skip
    else:
        spec = SuiteSpec(
            name="t", models=("tiny",), device="cpu", backend="torch", norms=("naive",),
            prompt_tokens=(8,), gen_tokens=(4,), min_seconds=0.0, repetitions=1,
        ).to_dict()  # fmt: skip
        if kind == "profile":
            extra["profile"] = ProfileOptions().to_dict()
    with open_run(kind, spec=spec, extra=extra, root=root) as writer:
        path = writer.path
    if how == "run-json-invalid":
        (path / "run.json").write_text("{oops")
    elif how == "schema-unknown":
        meta = json.loads((path / "run.json").read_text())
        (path / "run.json").write_text(json.dumps({**meta, "schema_version": 99}))
    elif how == "records-corrupt":
        (path / "records.jsonl").write_text('{"not": "a record"\n{"x": 1}\n')
    return path


# The table --------------------------------------------------------------------------------------

T, P, A = RUN_COMMANDS
QUICK = "-m tiny --device cpu --backend torch --norm naive -p 8 -n 4"
NO_MODEL = "--device cpu --backend torch --norm naive -p 8 -n 4"
ACC = f"--tokenizer {{tok}} --data-dir {DATA} --tasks PIQA --limit 2"
ACC_RANDOM = f"-m tiny --allow-random {ACC}"
BASE = {T: QUICK, P: QUICK, A: ACC_RANDOM}
linux_only = (pytest.mark.skipif(not LINUX, reason="/proc and /sys are Linux's"),)
MLX_CPU = LINUX and importlib.util.find_spec("mlx") is not None  # mlx[cpu], no Apple GPU
mlx_only = (pytest.mark.skipif(not MLX_CPU, reason="MLX on the CPU only: the Linux wheel"),)

CHECKPOINT_ERRORS = {
    "missing": "no-such-checkpoint",
    "empty": "no config.json: a checkpoint folder holds config.json and model.safetensors",
    "config-invalid-json": "config.json: not valid JSON",
    "config-not-a-mapping": "not a config; expected a JSON object, found list",
    "config-missing-key": "missing config entry; key 'model_dim'",
    "config-not-openelm": "not an OpenELM config; key 'model_type'; expected openelm, found llama",
    "config-wrong-type": "num_transformer_layers",
    "no-weights-file": "no model.safetensors or model.safetensors.index.json in the folder",
    "truncated": "corrupt safetensors file",
    "random-bytes": "corrupt safetensors file",
    "empty-weights-file": "corrupt safetensors file",
    "shape-contradicts-config": "shape contradicts",
    "missing-key": "missing key (required by",
    "unexpected-key": "unexpected key (not in the OpenELM layout",
    "integer-dtype": "wrong dtype; key 'transformer.token_embeddings.weight'",
    "nan-weights": "non-finite weights (NaN or infinity)",
    "inf-weights": "key 'transformer.norm.weight'; expected finite values, found 64 of 64",
    "shard-missing": "shard listed in model.safetensors.index.json is missing",
    "index-invalid": "not a safetensors index",
    "pt-random-bytes": "not a readable torch checkpoint",
}
CHECKPOINT_ROWS = [
    r("checkpoint", f"{cmd}-{how}",
      f"{cmd} {ACC if cmd == A else NO_MODEL} {'-m tiny' if how.startswith('pt-') else ''} "
      f"--weights {{ckpt:{how}}}", needle)
    for how, needle in CHECKPOINT_ERRORS.items() for cmd in RUN_COMMANDS
]  # fmt: skip

MISLABEL_ROWS = [
    row
    for cmd, base in ((T, NO_MODEL), (P, NO_MODEL), (A, ACC))
    for row in (
        r("mislabel", f"{cmd}-preset-is-not-the-checkpoint",
          f"{cmd} {base} -m 270m --weights {{ckpt:good}}",
          "--model 270m: the checkpoint is not OpenELM-270M", "matches tiny"),
        r("mislabel", f"{cmd}-two-models-one-checkpoint",
          f"{cmd} {base} -m tiny,270m --weights {{ckpt:good}}", "--weights is one checkpoint",
          "at most one --model"),
        r("mislabel", f"{cmd}-pt-of-another-preset",
          f"{cmd} {base} -m 270m --weights {{ckpt:pt-tiny}}", "the '270m' preset"),
        r("mislabel", f"{cmd}-pt-without-model", f"{cmd} {base} --weights {{ckpt:pt-tiny}}",
          "a CoreNet .pt file has no config; name its preset with --model"),
        r("mislabel", f"{cmd}-quantized-folder-on-torch",
          f"{cmd} {base} --weights {{ckpt:quantized}}",
          "is an MLX-quantized folder, which only the MLX backend reads"),
    )
] + [
    r("mislabel", f"{cmd}-comparison-model-with-weights",
      f"{cmd} {NO_MODEL} -m olmo-1b --weights {{ckpt:good}}",
      "--weights does not apply to olmo-1b")
    for cmd in (T, P)
]  # fmt: skip

OUTPUT_ROWS = [
    row
    for cmd in RUN_COMMANDS
    for row in (
        r("output", f"{cmd}-out-is-a-file", f"{cmd} {BASE[cmd]} --out {{file}}",
          "is a file, not a folder"),
        r("output", f"{cmd}-out-under-a-file", f"{cmd} {BASE[cmd]} --out {{file}}/runs",
          "is not a folder; give a folder for run folders"),
        r("output", f"{cmd}-out-in-proc", f"{cmd} {BASE[cmd]} --out /proc/elmbench-runs",
          "cannot write in /proc", marks=linux_only),
        r("output", f"{cmd}-out-in-sys", f"{cmd} {BASE[cmd]} --out /sys/elmbench/runs",
          "cannot write in /sys", marks=linux_only),
    )
]  # fmt: skip

RESUME_ROWS = [
    row
    for cmd, other in ((T, A), (P, T), (A, T))
    for row in (
        r("resume", f"{cmd}-retry-failed-without-resume", f"{cmd} --retry-failed",
          "--retry-failed measures a run's failed cases again: add --resume RUN"),
        r("resume", f"{cmd}-no-such-run", f"{cmd} --resume {{nowhere}}", "no such run folder"),
        r("resume", f"{cmd}-not-a-run", f"{cmd} --resume {{folder}}",
          "is not an elmbench run folder"),
        r("resume", f"{cmd}-another-kind", f"{cmd} --resume {{run:{other}}}", f"'{other}' run",
          "resume"),
        r("resume", f"{cmd}-run-json-invalid", f"{cmd} --resume {{run:{cmd}:run-json-invalid}}",
          "run.json: not valid JSON"),
        r("resume", f"{cmd}-schema-unknown", f"{cmd} --resume {{run:{cmd}:schema-unknown}}",
          "schema_version 99 is not supported"),
        r("resume", f"{cmd}-records-corrupt", f"{cmd} --resume {{run:{cmd}:records-corrupt}}",
          "records.jsonl:1: not a JSON record"),
        r("resume", f"{cmd}-locked", f"{cmd} --resume {{run:{cmd}:locked}}",
          "is being written by elmbench pid", "one writer at a time"),
    )
] + [
    r("resume", "throughput-other-prompt", "throughput --resume {run:throughput} -p 32",
      "these differ: -p/--prompt-tokens (run: 8, given: 32)"),
    r("resume", "throughput-other-model", "throughput --resume {run:throughput} -m 270m",
      "these differ: --model (run: tiny, given: 270m)"),
    r("resume", "profile-other-norm", "profile --resume {run:profile} --norm fused",
      "these differ: --norm (run: naive, given: fused)"),
    r("resume", "profile-other-phase", "profile --resume {run:profile} --phase decode",
      "these differ: --phase (run: both, given: decode)"),
    r("resume", "accuracy-other-limit", "accuracy --resume {run:accuracy} --limit 5",
      "these differ: --limit (run: 2, given: 5)"),
]  # fmt: skip

VALUE_ROWS = [
    row
    for cmd in (T, P)
    for row in (
        r("value", f"{cmd}-prompt-zero", f"{cmd} {QUICK} -p 0",
          "'prompt_tokens' must be a positive integer"),
        r("value", f"{cmd}-prompt-not-a-number", f"{cmd} {QUICK} -p abc",
          "-p/--prompt-tokens: expected integers"),
        r("value", f"{cmd}-gen-zero", f"{cmd} {QUICK} -n 0",
          "'gen_tokens' must be a positive integer"),
        r("value", f"{cmd}-batch-zero", f"{cmd} {QUICK} -b 0",
          "'batch_sizes' must be a positive integer"),
        r("value", f"{cmd}-repetitions-zero", f"{cmd} {QUICK} --repetitions 0",
          "'repetitions' must be an integer >= 1"),
        r("value", f"{cmd}-repetitions-not-int", f"{cmd} {QUICK} --repetitions x",
          "'x' is not a valid integer"),
        r("value", f"{cmd}-warmup-negative", f"{cmd} {QUICK} --warmup -1",
          "'warmup' must be an integer >= 0"),
        r("value", f"{cmd}-seed-negative", f"{cmd} {QUICK} --seed -1",
          "'seed' must be an integer >= 0"),
        r("value", f"{cmd}-dtype-unknown", f"{cmd} {QUICK} --dtype int8",
          "key 'dtypes' must be dtypes from"),
        r("value", f"{cmd}-compile-unknown", f"{cmd} {QUICK} --compile jit",
          "key 'compile' must be modes from"),
        r("value", f"{cmd}-kernels-unknown", f"{cmd} {QUICK} --kernels fast",
          "key 'kernels' must be kernels from"),
        r("value", f"{cmd}-quantize-3-bits", f"{cmd} {QUICK} --quantize 3",
          "key 'quantize' must be one of 4, 8"),
        r("value", f"{cmd}-group-size-48", f"{cmd} {QUICK} --group-size 48",
          "'group_size' must be one of 32, 64, 128"),
        r("value", f"{cmd}-backend-unknown", f"{cmd} -m tiny --backend jax", "'jax' is not one of"),
        r("value", f"{cmd}-format-unknown", f"{cmd} {QUICK} --format xml", "'xml' is not one of"),
        r("value", f"{cmd}-unknown-option", f"{cmd} {QUICK} --fast", "No such option '--fast'"),
        r("value", f"{cmd}-option-without-value", f"{cmd} --out {{out}} -m",
          "Option '-m' requires an argument"),
        r("value", f"{cmd}-longer-than-the-context", f"{cmd} {QUICK} -p 250 -n 10",
          "prompt_tokens + gen_tokens = 260 exceeds tiny's context of 256 tokens"),
    )
] + [
    r("value", "throughput-precision-not-a-percentage", f"throughput {QUICK} --precision tight",
      "--precision: expected a percentage such as 3%, found tight"),
    r("value", "throughput-precision-zero", f"throughput {QUICK} --precision 0%",
      "--precision: must be more than 0%"),
    r("value", "throughput-max-seconds-zero", f"throughput {QUICK} --max-seconds 0",
      "'max_seconds' must be a number > 0"),
    r("value", "throughput-min-seconds-negative", f"throughput {QUICK} --min-seconds -1",
      "'min_seconds' must be a number >= 0"),
    r("value", "profile-phase-unknown", f"profile {QUICK} --phase decod",
      "'decod' is not one of 'prefill', 'decode', 'both'"),
    r("value", "profile-top-zero", f"profile {QUICK} --top 0", "--top must be a positive integer"),
    r("value", "accuracy-eval-batch-size-zero", f"accuracy {ACC_RANDOM} --eval-batch-size 0",
      "--eval-batch-size: a positive integer or auto, found 0"),
    r("value", "accuracy-limit-zero", f"accuracy {ACC_RANDOM} --limit 0",
      "0 is not in the range x>=1"),
    r("value", "accuracy-dtype-unknown", f"accuracy {ACC_RANDOM} --dtype int8", "int8"),
    r("value", "accuracy-kernels-unknown", f"accuracy {ACC_RANDOM} --kernels fast",
      "key 'kernels' must be kernels from"),
    r("value", "accuracy-unknown-option", f"accuracy {ACC_RANDOM} --shots 5",
      "No such option '--shots'"),
]  # fmt: skip

NAME_ROWS = [
    row
    for cmd in RUN_COMMANDS
    for row in (
        r("name", f"{cmd}-model-unknown", f"{cmd} {BASE[cmd]} -m 270n", "unknown model '270n'",
          "Did you mean '270m'?"),
        r("name", f"{cmd}-norm-unknown", f"{cmd} {BASE[cmd]} --norm nope", "unknown",
          "norm 'nope'"),
        r("name", f"{cmd}-device-unknown", f"{cmd} {BASE[cmd]} --device tpu", "unknown device",
          "tpu"),
        r("name", f"{cmd}-suite-unknown", f"{cmd} {BASE[cmd]} --suite nope",
          "unknown suite 'nope'"),
    )
]  # fmt: skip

ANY_DEVICE = "-m tiny --norm naive -p 8 -n 4"
DEVICE_ROWS = [
    row
    for cmd, base in ((T, ANY_DEVICE), (P, ANY_DEVICE), (A, ACC_RANDOM))
    for row in (
        r("device", f"{cmd}-cuda-absent", f"{cmd} {base} --device cuda",
          "a CUDA GPU (--device cuda) is not available here"),
        r("device", f"{cmd}-mps-absent", f"{cmd} {base} --device mps",
          "(--device mps) is not available here"),
        r("device", f"{cmd}-mlx-gpu-off-apple", f"{cmd} {base} --device mlx-gpu",
          "MLX on Apple silicon (--device mlx-gpu) is not available here", "--device mlx-cpu",
          marks=mlx_only),
        r("device", f"{cmd}-apple-profile-off-apple", f"{cmd} {base} --device m2max",
          "(--device m2max) is not available here", marks=mlx_only),
        r("device", f"{cmd}-apex-without-cuda", f"{cmd} {base} --device cpu --norm apex",
          "norm 'apex' (torch) is not available here"),
        r("device", f"{cmd}-apex-on-mlx", f"{cmd} {base} --device mlx-cpu --norm apex",
          "norm 'apex' exists only for the torch backend, not mlx; mlx norms: compiled",
          marks=mlx_only),
        r("device", f"{cmd}-triton-on-cpu",
          f"{cmd} {base} --device cpu --backend torch --norm triton",
          "norm 'triton' (torch) is not available here"),
        r("device", f"{cmd}-quantize-on-torch",
          f"{cmd} {base} --device cpu --backend torch --quantize 4",
          "--quantize 4 quantizes MLX weights"),
        r("device", f"{cmd}-engine-on-mlx", f"{cmd} {base} --device mlx-cpu --kernels elmbench",
          "--kernels elmbench", marks=mlx_only),
    )
] + [
    row
    for cmd in (T, P)
    for row in (
        r("device", f"{cmd}-cudagraphs-on-cpu",
          f"{cmd} {ANY_DEVICE} --device cpu --compile cudagraphs",
          "CUDA graphs need a CUDA device"),
        r("device", f"{cmd}-mx-compile-on-torch",
          f"{cmd} {ANY_DEVICE} --device cpu --backend torch --compile mx.compile",
          "compile mode 'mx.compile' does not apply to backend torch"),
        r("device", f"{cmd}-aoti-on-mlx", f"{cmd} {ANY_DEVICE} --device mlx-cpu --compile aoti",
          "compile mode 'aoti' does not apply to backend mlx", marks=mlx_only),
        r("device", f"{cmd}-comparison-model-on-mlx", f"{cmd} -m olmo-1b --device mlx-cpu",
          "comparison models run on the torch backend only", marks=mlx_only),
    )
] + [
    r("device", "profile-compiled-mlx",
      f"profile {ANY_DEVICE} --device mlx-cpu --compile mx.compile",
      "evaluates the uncompiled model", marks=mlx_only),
    r("device", "profile-metal-capture-without-mlx", f"profile {QUICK} --metal-capture",
      "--metal-capture applies to MLX cases"),
]  # fmt: skip

SUITES = {
    "invalid-yaml": "models: [tiny\n",
    "not-a-mapping": "- tiny\n",
    "unknown-key": "model: [tiny]\n",
    "bad-value": "repetitions: 0\n",
    "unknown-model": "models: [tiny, 3bb]\n",
    "weights-missing": "models: [tiny]\nweights: /no/such/ckpt\n",
    "accuracy-no-tasks": "kind: accuracy\ntasks: []\n",
    "accuracy-no-metrics": "kind: accuracy\ntasks:\n  - {label: A, task: piqa, shots: 0}\n",
    "accuracy-lm-eval-unknown": "kind: accuracy\ntasks:\n"
    "  - {label: ARC-c, task: arc_challenge_x, shots: 0, metrics: [acc]}\n",
}
SUITE_ROWS = [
    row
    for cmd in (T, P)
    for row in (
        r("suite", f"{cmd}-suite-file-missing", f"{cmd} --suite no-such.yaml",
          "no-such.yaml: suite file not found"),
        r("suite", f"{cmd}-suite-invalid-yaml", f"{cmd} --suite {{suite:invalid-yaml}}",
          "not valid YAML"),
        r("suite", f"{cmd}-suite-not-a-mapping", f"{cmd} --suite {{suite:not-a-mapping}}",
          "a suite is a mapping of keys to values"),
        r("suite", f"{cmd}-suite-unknown-key", f"{cmd} --suite {{suite:unknown-key}}",
          "unknown key 'model' (did you mean 'models'?)"),
        r("suite", f"{cmd}-suite-bad-value", f"{cmd} --suite {{suite:bad-value}}",
          "key 'repetitions' must be an integer >= 1; found 0"),
        r("suite", f"{cmd}-suite-unknown-model", f"{cmd} --suite {{suite:unknown-model}}",
          "key 'models': unknown model '3bb'"),
        r("suite", f"{cmd}-suite-weights-missing", f"{cmd} --suite {{suite:weights-missing}}",
          "key 'weights': /no/such/ckpt: no such file or folder"),
        r("suite", f"{cmd}-accuracy-suite", f"{cmd} --suite zero_shot",
          "suite 'zero_shot' is of kind 'accuracy'"),
    )
] + [
    r("suite", "profile-norms-suite", "profile --suite norms", "is of kind 'norms'"),
    r("suite", "accuracy-throughput-suite", f"accuracy {ACC_RANDOM} --suite smoke",
      "not an accuracy suite"),
    r("suite", "accuracy-suite-file-missing", f"accuracy {ACC_RANDOM} --suite no-such.yaml",
      "suite file not found"),
    r("suite", "accuracy-suite-without-tasks",
      f"accuracy {ACC_RANDOM} --suite {{suite:accuracy-no-tasks}}",
      "key 'tasks' must be a non-empty list"),
    r("suite", "accuracy-lm-eval-task-unknown",
      "accuracy -m tiny --allow-random --tokenizer {tok} --suite {suite:accuracy-lm-eval-unknown}",
      "task 'arc_challenge_x' (ARC-c) is not a task of lm-eval", "Did you mean 'arc_challenge'?"),
    r("suite", "validate-lm-eval-task-unknown", "suites validate {suite:accuracy-lm-eval-unknown}",
      "task 'arc_challenge_x' (ARC-c) is not a task of lm-eval"),
    r("suite", "validate-file-missing", "suites validate no-such.yaml", "suite file not found"),
    r("suite", "validate-unknown-key", "suites validate {suite:unknown-key}",
      "unknown key 'model'"),
    r("suite", "validate-accuracy-task-without-metrics",
      "suites validate {suite:accuracy-no-metrics}", "needs label, task, shots and metrics"),
]  # fmt: skip

ONE_TASK = f"--data-dir {DATA} --tasks PIQA"
ACCURACY_ROWS = [
    r("accuracy-input", "no-tokenizer", f"accuracy -m tiny --allow-random {ONE_TASK}",
      "no tokenizer given", "--tokenizer PATH"),
    r("accuracy-input", "tokenizer-missing",
      f"accuracy -m tiny --allow-random {ONE_TASK} --tokenizer /no/such/tokenizer.model",
      "does not exist"),
    r("accuracy-input", "tokenizer-hub-offline",
      f"accuracy -m tiny --allow-random {ONE_TASK} --tokenizer nobody/no-such-tokenizer",
      "cannot be loaded"),
    r("accuracy-input", "no-weights", f"accuracy -m tiny {ACC}", "'tiny' has no released weights"),
    r("accuracy-input", "no-model-no-weights", f"accuracy {ACC}", "accuracy needs a model"),
    r("accuracy-input", "two-released-models", f"accuracy -m 270m,450m {ACC}",
      "give one --model at a time"),
    r("accuracy-input", "weights-hub-offline", f"accuracy --weights nobody/no-such-model {ACC}",
      "cannot be had from the Hugging Face Hub"),
    r("accuracy-input", "task-unknown", f"accuracy {ACC_RANDOM} --tasks ARC-x",
      "suite 'zero_shot': unknown task 'ARC-x'"),
    r("accuracy-input", "task-data-missing", f"accuracy {ACC_RANDOM} --tasks HellaSwag",
      "task 'hellaswag' has no local data: expected"),
    r("accuracy-input", "data-dir-missing",
      "accuracy -m tiny --allow-random --tokenizer {tok} --data-dir /no/such/data",
      "data directory '/no/such/data' does not exist"),
    r("accuracy-input", "offline-without-data",
      "accuracy -m tiny --allow-random --tokenizer {tok}", "offline", "--data-dir DIR"),
]  # fmt: skip

INFO_ROWS = [
    r("info", "unknown-command", "benchmark", "No such command 'benchmark'"),
    r("info", "models-unknown", "models 270n", "unknown model '270n'"),
    r("info", "models-two-names", "models 270m 450m", "unexpected extra argument"),
    r("info", "models-format-unknown", "models --format xml", "'xml' is not one of"),
    r("info", "norms-backend-unknown", "norms --backend jax", "jax"),
    r("info", "devices-unknown-option", "devices --all", "No such option '--all'"),
    r("info", "env-extra-argument", "env now", "unexpected extra argument"),
    r("info", "suites-unknown-subcommand", "suites check", "No such command 'check'"),
]  # fmt: skip

ROWS = [
    *CHECKPOINT_ROWS, *MISLABEL_ROWS, *OUTPUT_ROWS, *RESUME_ROWS, *VALUE_ROWS, *NAME_ROWS,
    *DEVICE_ROWS, *SUITE_ROWS, *ACCURACY_ROWS, *INFO_ROWS,
]  # fmt: skip
ROWS_BY_CLASS = Counter(row.cls for row in ROWS)


class Place:
    """Makes a row's placeholders real in one test's folder."""

    def __init__(self, tmp: Path, write_checkpoint: Any, sp_model: Path) -> None:
        self.tmp, self.write_checkpoint, self.sp_model = tmp, write_checkpoint, sp_model
        self.held: list[Any] = []  # writers holding a run locked, closed after the command

    def __call__(self, match: re.Match[str]) -> str:
        kind, arg, how = match.groups()
        tmp = self.tmp
        if kind == "ckpt":
            return str(make_checkpoint(arg, self.write_checkpoint, tmp))
        if kind == "run":
            path = make_run(arg, how or "", tmp / "existing", self.sp_model)
            if how == "locked":
                from elmbench.records import resume_run

                self.held.append(resume_run(path, kind=arg))  # another writer holds the run
            return str(path)
        if kind == "suite":
            path = tmp / f"{arg}.yaml"
            path.write_text(SUITES[arg])
            return str(path)
        if kind == "file":
            (tmp / "file").write_text("not a folder\n")
        elif kind == "folder":
            (tmp / "folder").mkdir(exist_ok=True)
        elif kind == "tok":
            return str(self.sp_model)
        return str(tmp / kind)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every run folder's files under `root`: none may appear or change."""
    names = ("run.json", "records.jsonl")
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.name in names and p.is_file()}


@pytest.mark.parametrize(
    "case", [pytest.param(row, id=f"{row.cls}:{row.id}", marks=row.marks) for row in ROWS]
)
def test_bad_input_is_one_line_exit_2_and_no_run(
    case: Row,
    tmp_path: Path,
    write_checkpoint: Any,
    sp_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a run under the default root would land here, and be seen
    place = Place(tmp_path, write_checkpoint, sp_model)
    args = [PLACEHOLDER.sub(place, word) for word in shlex.split(case.line)]
    if args[0] in RUN_COMMANDS and "--out" not in args and "--resume" not in args:
        args += ["--out", str(tmp_path / "out")]
    before = _snapshot(tmp_path)
    env = {**OFFLINE, "ELMBENCH_REPORTS": str(tmp_path / "reports"), "COLUMNS": "100"}
    if "lm-eval-task-unknown" in case.id:
        env.update(HF_HUB_OFFLINE=None, HF_DATASETS_OFFLINE=None)  # online, task names are checked
    try:
        result = CliRunner().invoke(cli, args, env=env, prog_name="elmbench")
    finally:
        for writer in place.held:
            writer.close()
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stdout == ""
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in case.needles:
        assert needle in lines[0], lines[0]
    assert _snapshot(tmp_path) == before  # no run folder made, none changed


def test_the_table_covers_every_class_and_command() -> None:
    assert len(ROWS) >= 100
    assert len({row.id for row in ROWS}) == len(ROWS)
    commands = {row.command for row in ROWS}
    assert {*RUN_COMMANDS, "models", "norms", "devices", "env", "suites"} <= commands
    assert set(ROWS_BY_CLASS) == {
        "checkpoint", "mislabel", "output", "resume", "value", "name", "device", "suite",
        "accuracy-input", "info",
    }  # fmt: skip


def test_weights_alone_make_the_checkpoint_its_model(write_checkpoint: Any) -> None:
    from elmbench.suites import SuiteSpec
    from elmbench.throughput.weights import checked_weights

    folder = write_checkpoint(get_config("tiny"))
    spec = SuiteSpec(name="t", models=("270m",), weights=str(folder))  # 270m: the default's
    assert checked_weights(spec, models_given=False).models == ("tiny",)
    assert checked_weights(spec.with_overrides(models=("tiny",)), models_given=True) == (
        spec.with_overrides(models=("tiny",))
    )


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused_before_any_run(
    tmp_path: Path, sp_model: Path
) -> None:
    """Ids the embedding cannot look up would end in an IndexError inside the model."""
    from elmbench.accuracy.tokenizer import SentencePieceTokenizer, check_vocabulary
    from elmbench.errors import ElmbenchError

    tokenizer = SentencePieceTokenizer(sp_model)  # 400 pieces
    check_vocabulary(tokenizer, "tiny", 512)
    with pytest.raises(ElmbenchError, match="has 400 pieces but toy's vocabulary has 300"):
        check_vocabulary(tokenizer, "toy", 300)
