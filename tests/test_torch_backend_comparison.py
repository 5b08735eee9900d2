"""Comparison models (OLMo, LLaMA through transformers) behind the torch backend."""

from __future__ import annotations

import numpy as np
import pytest

from elmbench.backends import ModelSpec, create_backend
from elmbench.errors import ConfigError, UnavailableError
from elmbench.models import comparison
from elmbench.models.comparison import ComparisonConfig


def _small(family: str) -> ComparisonConfig:
    native = "non-parametric LayerNorm" if family == "olmo" else "LlamaRMSNorm"
    return ComparisonConfig(
        f"{family}-small", family, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=96, vocab_size=128, norm_eps=1e-5, native_norm=native,
        summary="test model", hf_kwargs={"max_position_embeddings": 64},
    )  # fmt: skip


@pytest.fixture(params=["olmo", "llama"])
def small(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    cfg = _small(request.param)
    monkeypatch.setitem(comparison.COMPARISON_MODELS, cfg.name, cfg)
    return cfg.name


@pytest.mark.parametrize("norm", ["native", "fused"])
def test_cached_greedy_matches_full_forwards(small: str, norm: str) -> None:
    backend = create_backend("torch", ModelSpec(model=small, norm=norm, seed=1))
    prompt = np.random.default_rng(0).integers(0, 128, size=(2, 5))
    generated = backend.generate(prompt, 4)
    seq = prompt
    for _ in range(4):
        t = seq.shape[1]
        rows = backend.logprob_rows(seq, [t, t], [1, 1])
        seq = np.concatenate([seq, np.stack([r[0].argmax() for r in rows])[:, None]], axis=1)
    np.testing.assert_array_equal(generated, seq[:, 5:])
    facts = backend.describe()
    assert (
        facts["num_norms"] == 5
        and facts["native_norm"] == comparison.COMPARISON_MODELS[small].native_norm
    )
    cfg = comparison.COMPARISON_MODELS[small]
    # OLMo's LayerNorms hold no parameters; the RMSNorm variants swapped in hold a weight each.
    added = cfg.num_norms * cfg.hidden_size if cfg.family == "olmo" and norm != "native" else 0
    assert facts["num_params"] == cfg.num_params + added
    assert facts["kernels"] == "stock" and facts["engine"] is None


def test_weights_and_compile_do_not_apply(small: str) -> None:
    with pytest.raises(ConfigError, match="drop --weights"):
        create_backend("torch", ModelSpec(model=small, weights="/some/folder"))
    with pytest.raises(UnavailableError, match="--compile none"):
        create_backend("torch", ModelSpec(model=small, compile="inductor"))
