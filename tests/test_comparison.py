"""Comparison models: OLMo-1B's published shape, norm counts, the norm swap, cached decode."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from elmbench.config import get_config
from elmbench.errors import UnknownNameError
from elmbench.models import comparison
from elmbench.models.comparison import ComparisonConfig, build_comparison, get_comparison


@pytest.fixture
def small_olmo(monkeypatch: pytest.MonkeyPatch) -> ComparisonConfig:
    """OLMo's architecture at toy size, registered under a test name."""
    cfg = dataclasses.replace(
        get_comparison("olmo-1b"),
        name="olmo-toy",
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=128,
        vocab_size=300,
    )
    monkeypatch.setitem(comparison.COMPARISON_MODELS, "olmo-toy", cfg)
    return cfg


def test_olmo_1b_is_the_published_configuration() -> None:
    cfg = get_comparison("olmo-1b")
    assert (
        cfg.hidden_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.intermediate_size,
        cfg.vocab_size,
    ) == (2048, 16, 16, 8192, 50304)
    assert cfg.num_norms == 33 and get_config("1_1b").num_norms == 113
    assert cfg.num_params == 1_176_764_416


def test_llama_peer_is_openelm_270m_sized() -> None:
    peer, elm = get_comparison("llama-270m"), get_config("270m")
    assert abs(peer.num_params - elm.num_params) / elm.num_params < 0.01
    assert peer.vocab_size == elm.vocab_size and peer.num_layers == elm.num_layers


def test_built_model_matches_its_config_and_caches(small_olmo: ComparisonConfig) -> None:
    model = build_comparison("olmo-toy", seed=0)
    assert model.num_parameters() == small_olmo.num_params
    tokens = torch.randint(0, 300, (2, 10))
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated transformers arguments
        full = model(tokens)
        model.setup_cache(2, 16)
        steps = [model.prefill(tokens[:, :6], last_only=False)]
        steps += [model.decode(tokens[:, i : i + 1], i) for i in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_norm_swap_replaces_every_layernorm(small_olmo: ComparisonConfig) -> None:
    native = build_comparison("olmo-toy", seed=0)
    swapped = build_comparison("olmo-toy", norm="naive", seed=0)
    names = [type(m).__name__ for m in swapped.modules()]
    assert names.count("NaiveRMSNorm") == small_olmo.num_norms
    assert "OlmoLayerNorm" not in names
    tokens = torch.randint(0, 300, (1, 5))
    with torch.inference_mode():
        assert not torch.allclose(native(tokens), swapped(tokens))  # RMSNorm != LayerNorm


def test_unknown_names() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'olmo-1b'"):
        get_comparison("olmo1b")
    with pytest.raises(UnknownNameError):
        build_comparison("olmo-1b", norm="fusd")
