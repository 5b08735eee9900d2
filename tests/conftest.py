"""Shared fixtures: tiny configs of the real architecture and random HF checkpoints on disk."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from elmbench.config import ElmConfig, get_config


def few_layer_270m(layers: int = 3) -> ElmConfig:
    """A few layers of OpenELM-270M (its dims and per-layer heads/FFN widths), for parity tests."""
    base = get_config("270m")
    picks = [0, 7, 15][:layers] if layers <= 3 else list(range(layers))
    return dataclasses.replace(
        base,
        name=f"270m-{layers}l",
        num_layers=len(picks),
        num_query_heads=tuple(base.num_query_heads[i] for i in picks),
        num_kv_heads=tuple(base.num_kv_heads[i] for i in picks),
        ffn_dims=tuple(base.ffn_dims[i] for i in picks),
        ffn_multipliers=tuple(base.ffn_multipliers[i] for i in picks),
    )


@pytest.fixture
def tiny_cfg() -> ElmConfig:
    """The `tiny` preset: 3 layers, per-layer heads and FFN widths, GQA, qk-norm, tied head."""
    return get_config("tiny")


@pytest.fixture
def small270_cfg() -> ElmConfig:
    """Three layers (first, middle, last) of OpenELM-270M."""
    return few_layer_270m(3)


@pytest.fixture
def write_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a seeded random HF-layout checkpoint of a config; returns the folder."""

    def make(
        cfg: ElmConfig,
        seed: int = 0,
        name: str = "ckpt",
        dtype: str = "float32",
        max_shard_bytes: int | None = None,
    ) -> Path:
        from elmbench.checkpoints.hf import save_hf
        from elmbench.checkpoints.torch_load import load_state

        cfg, state, _ = load_state(cfg, seed=seed, dtype=dtype)
        return save_hf(cfg, state, tmp_path / name, max_shard_bytes=max_shard_bytes)

    return make


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 400-piece SentencePiece model (LLaMA ids: unk 0, BOS 1, EOS 2) trained on stdlib text."""
    import sentencepiece as spm

    text = inspect.getsource(json) + inspect.getsource(inspect)
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 20]
    prefix = tmp_path_factory.mktemp("spm") / "tok"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(prefix),
        vocab_size=400,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


@pytest.fixture
def gemv_kernel() -> None:
    """Skip where elmbench's CPU kernels cannot be built (no C compiler): they are optional."""
    from elmbench.engine import cpu_kernels

    try:
        cpu_kernels.load_kernels()
    except cpu_kernels.KernelUnavailable as exc:
        pytest.skip(f"the CPU kernels do not build here: {exc}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` skip, with the reason, where no CUDA device is present."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in marked:
        item.add_marker(pytest.mark.skip(reason="no CUDA device"))
