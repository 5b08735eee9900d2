"""PyTorch OpenELM: cached decode equals the full forward, low-precision runs, parity with mlx-lm's
independent OpenELM, and each architectural detail against a computation written out here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import few_layer_270m

from elmbench.checkpoints.hf import save_hf
from elmbench.checkpoints.layout import expected_shapes
from elmbench.checkpoints.torch_load import build_model, load_state
from elmbench.config import ElmConfig, get_config
from elmbench.models import openelm_torch
from elmbench.models.openelm_torch import (
    OpenELM,
    OpenELMFeedForwardNetwork,
    OpenELMMultiHeadCausalAttention,
    apply_rope,
    norm_factory,
    rope_tables,
)
from elmbench.norms import get_norm
from elmbench.norms.torch_norms import NaiveRMSNorm

BATCH, SEQ, PREFILL = 2, 12, 5


@dataclass
class Setup:
    """A model with seeded random weights, its inputs and its fp32 full-sequence logits."""

    cfg: ElmConfig
    state: dict[str, torch.Tensor]
    model: OpenELM
    tokens: torch.Tensor  # (B, T)
    logits: torch.Tensor  # (B, T, V), fp32 full forward
    folder: Path  # the same weights in HF layout


@pytest.fixture(scope="module", params=["tiny", "270m-3l"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """tiny, and three layers (first, middle, last) of OpenELM-270M at full width."""
    cfg = get_config("tiny") if request.param == "tiny" else few_layer_270m(3)
    cfg, state, _ = load_state(cfg, seed=0)
    model = build_model(cfg, state)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen)
    with torch.no_grad():
        logits = model(tokens)
    folder = save_hf(cfg, state, tmp_path_factory.mktemp(request.param) / "ckpt")
    return Setup(cfg, state, model, tokens, logits, folder)


# Cache and full forward --------------------------------------------------------------------------


def test_cached_decode_equals_full_forward(setup: Setup) -> None:
    model, tokens = setup.model, setup.tokens
    model.setup_cache(BATCH, SEQ + 4)
    steps = [model.prefill(tokens[:, :PREFILL], last_only=False)]
    for i in range(PREFILL, SEQ):
        position: int | torch.Tensor = i if i % 2 else torch.tensor(i)  # both spellings
        steps.append(model.decode(tokens[:, i : i + 1], position))
    cached = torch.cat(steps, dim=1)
    assert cached.shape == setup.logits.shape
    # Same fp32 arithmetic on the same values; only SDPA's masked-buffer reduction order differs.
    torch.testing.assert_close(cached, setup.logits, rtol=0, atol=1e-4)


def test_setup_again_keeps_the_cache_buffers_zeroed(setup: Setup) -> None:
    """Same shape: the same buffers (CUDA graphs hold their addresses), cleared; else new ones."""
    model, tokens = setup.model, setup.tokens
    model.setup_cache(BATCH, SEQ)
    cache = model.transformer.layers[-1].attn.cache
    assert cache is not None
    first = model.prefill(tokens[:, :PREFILL])
    addresses = (cache.k.data_ptr(), cache.v.data_ptr(), model.causal_mask.data_ptr())
    model.setup_cache(BATCH, SEQ)
    assert model.transformer.layers[-1].attn.cache is cache
    assert (cache.k.data_ptr(), cache.v.data_ptr(), model.causal_mask.data_ptr()) == addresses
    assert not cache.k.any() and not cache.v.any()  # nothing of the previous prompt is left
    torch.testing.assert_close(model.prefill(tokens[:, :PREFILL]), first, rtol=0, atol=0)
    model.setup_cache(1, SEQ)  # another batch size: new buffers
    assert model.transformer.layers[-1].attn.cache is not cache
    model.setup_cache(BATCH, SEQ + 1)  # another length: a new mask too
    assert model.causal_mask.shape == (SEQ + 1, SEQ + 1)


def test_prefill_last_only_matches_last_row(setup: Setup) -> None:
    model, tokens = setup.model, setup.tokens
    model.setup_cache(BATCH, SEQ)
    last = model.prefill(tokens[:, :PREFILL])
    assert last.shape == (BATCH, 1, setup.cfg.vocab_size)
    torch.testing.assert_close(last[:, 0], setup.logits[:, PREFILL - 1], rtol=0, atol=1e-4)
    full_last = model(tokens, last_only=True)
    torch.testing.assert_close(full_last, setup.logits[:, -1:], rtol=0, atol=1e-5)


def test_prefix_logits_do_not_see_the_future(setup: Setup) -> None:
    """Causality: changing the last token leaves every earlier position's logits unchanged."""
    tokens = setup.tokens.clone()
    tokens[:, -1] = (tokens[:, -1] + 1) % setup.cfg.vocab_size
    logits = setup.model(tokens)
    torch.testing.assert_close(logits[:, :-1], setup.logits[:, :-1], rtol=0, atol=1e-5)
    assert (logits[:, -1] - setup.logits[:, -1]).abs().max() > 1e-3


# Low precision ------------------------------------------------------------------------------------

# Unit roundoff: bf16 keeps 8 significand bits (u = 2^-8), fp16 11 (u = 2^-11).
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_close_to_fp32(setup: Setup, dtype: torch.dtype) -> None:
    if setup.cfg.name != "tiny" and dtype is torch.float16:
        pytest.skip("full-width model checked in bf16, the paper's dtype; fp16 on tiny")
    cfg, state = setup.cfg, setup.state
    model = build_model(cfg, {k: v.to(dtype) for k, v in state.items()})
    logits = model(setup.tokens)
    assert logits.dtype == dtype
    assert torch.isfinite(logits).all()
    # Why 8u: every stored weight and activation is rounded once to the dtype (relative error
    # <= u). Along the path to a logit a 3-layer model rounds ~16 times (weight cast, qkv, q/k
    # norm, RoPE, attention, out_proj, residual, ffn_norm, proj_1, SwiGLU, proj_2, residual per
    # layer, then final norm and head); independent errors add in quadrature, sqrt(16) u = 4u,
    # which is what is observed (4.0u in both dtypes). 8u is the margin; a dtype bug (a norm or
    # RoPE computed in low precision, an overflow) gives errors of tens of u or non-finite values.
    ref = setup.logits
    rel = ((logits.float() - ref).norm() / ref.norm()).item()
    assert rel < 8 * UNIT_ROUNDOFF[dtype]


# Independent reference: mlx-lm ------------------------------------------------------------------


def test_logits_equal_mlx_lm(setup: Setup) -> None:
    mx = pytest.importorskip("mlx.core")
    from mlx_lm.utils import load_model

    mlx_model, _ = load_model(setup.folder, strict=True)
    mlx_logits = np.array(mlx_model(mx.array(setup.tokens.numpy())))
    # Both in fp32 with different kernels and summation orders: differences are a few fp32 ulps
    # of values ~5, grown through 3 layers; observed max 2e-5, so 1e-4 leaves a 5x margin while
    # any real mismatch (head order, RoPE layout, norm placement) is O(1).
    np.testing.assert_allclose(mlx_logits, setup.logits.numpy(), rtol=0, atol=1e-4)


# Architecture, one detail at a time ---------------------------------------------------------------


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, norm weights included (ones would hide a missing multiply)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[1] ** -0.5)


def _rms64(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def _rope64(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half RoPE in float64: dims i and i + h/2 rotate by position * base^(-2i/h)."""
    t, h = x.shape[-2], x.shape[-1]
    pos = torch.arange(t, dtype=torch.float64)[:, None]
    angle = pos * base ** (-torch.arange(0, h, 2, dtype=torch.float64) / h)  # (T, h/2)
    c, s = angle.cos(), angle.sin()
    x1, x2 = x[..., : h // 2], x[..., h // 2 :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def _reference_attention(
    attn: OpenELMMultiHeadCausalAttention,
    x: torch.Tensor,
    cfg: ElmConfig,
    head_map: list[int] | None = None,
) -> torch.Tensor:
    """One attention layer written out in float64, GQA through an explicit repeat_interleave
    (or through `head_map`: query head j reads KV head head_map[j])."""
    b, t, _ = x.shape
    n_q, n_kv, h = attn.n_q, attn.n_kv, cfg.head_dim
    qkv = x.double() @ attn.qkv_proj.weight.double().T  # (B, T, (n_q + 2 n_kv) h)
    q = qkv[..., : n_q * h].reshape(b, t, n_q, h).transpose(1, 2)  # rows: Q heads first,
    k = qkv[..., n_q * h : (n_q + n_kv) * h].reshape(b, t, n_kv, h).transpose(1, 2)  # then K,
    v = qkv[..., (n_q + n_kv) * h :].reshape(b, t, n_kv, h).transpose(1, 2)  # then V
    q = _rope64(
        _rms64(q, attn.q_norm.get_parameter("weight"), cfg.norm_eps), cfg.rope_freq_constant
    )
    k = _rope64(
        _rms64(k, attn.k_norm.get_parameter("weight"), cfg.norm_eps), cfg.rope_freq_constant
    )
    if head_map is None:
        group = n_q // n_kv
        k = k.repeat_interleave(group, dim=1)  # query head j reads KV head j // group
        v = v.repeat_interleave(group, dim=1)
    else:
        k, v = k[:, head_map], v[:, head_map]
    scores = q @ k.transpose(-1, -2) / math.sqrt(h)  # (B, n_q, T, T)
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(b, t, n_q * h)
    return out @ attn.out_proj.weight.double().T


def _attention(cfg: ElmConfig, layer: int, seed: int) -> OpenELMMultiHeadCausalAttention:
    attn = OpenELMMultiHeadCausalAttention(cfg, layer, norm_factory("naive"))
    _randomize(attn, seed)
    return attn


ATTENTION_CASES = [("tiny", 1), ("tiny", 2), ("270m-3l", 0)]  # groups of 2, 4 and 4


@pytest.mark.parametrize(("model", "layer"), ATTENTION_CASES)
def test_attention_equals_written_out_reference(model: str, layer: int) -> None:
    cfg = get_config("tiny") if model == "tiny" else few_layer_270m(1)
    attn = _attention(cfg, layer, seed=layer)
    t = 9
    x = torch.randn(2, t, cfg.model_dim, generator=torch.Generator().manual_seed(5))
    cos, sin = rope_tables(cfg.head_dim, t, cfg.rope_freq_constant)
    with torch.no_grad():
        got = attn(x, cos, sin, None, None)
    want = _reference_attention(attn, x, cfg)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_gqa_mapping_is_not_modulo() -> None:
    """Consecutive query heads share a KV head; the other plausible mapping (j % n_kv) differs."""
    cfg = get_config("tiny")
    attn = _attention(cfg, 1, seed=1)  # 4 query heads, 2 KV heads
    t = 6
    x = torch.randn(1, t, cfg.model_dim, generator=torch.Generator().manual_seed(2))
    cos, sin = rope_tables(cfg.head_dim, t, cfg.rope_freq_constant)
    with torch.no_grad():
        got = attn(x, cos, sin, None, None).double()
    consecutive = _reference_attention(attn, x, cfg, head_map=[0, 0, 1, 1])
    modulo = _reference_attention(attn, x, cfg, head_map=[0, 1, 0, 1])
    torch.testing.assert_close(got, consecutive, rtol=1e-5, atol=1e-5)
    assert (got - modulo).abs().max() > 1e-2


def test_zero_key_rows_leave_only_the_values_path() -> None:
    """With K rows zeroed, attention is uniform over the prefix: the output is the running mean
    of V (read from the last n_kv*h rows), each query head j using KV head j // group."""
    cfg = get_config("tiny")
    layer = 1  # 4 query heads on 2 KV heads
    attn = _attention(cfg, layer, seed=3)
    n_q, n_kv, h = attn.n_q, attn.n_kv, cfg.head_dim
    with torch.no_grad():
        attn.qkv_proj.weight[n_q * h : (n_q + n_kv) * h] = 0
    t = 7
    x = torch.randn(2, t, cfg.model_dim, generator=torch.Generator().manual_seed(4))
    cos, sin = rope_tables(h, t, cfg.rope_freq_constant)
    with torch.no_grad():
        got = attn(x, cos, sin, None, None)
        v = x @ attn.qkv_proj.weight[(n_q + n_kv) * h :].T  # (B, T, n_kv h)
        running_mean = v.cumsum(1) / torch.arange(1, t + 1)[:, None]
        heads = running_mean.reshape(2, t, n_kv, h)[:, :, [j // (n_q // n_kv) for j in range(n_q)]]
        want = heads.reshape(2, t, n_q * h) @ attn.out_proj.weight.T
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_swiglu_gate_rows_first() -> None:
    cfg = get_config("tiny")
    ffn = OpenELMFeedForwardNetwork(cfg, 1)
    _randomize(ffn, seed=6)
    f = cfg.ffn_dims[1]
    x = torch.randn(3, 5, cfg.model_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        w1, w2 = ffn.proj_1.weight.double(), ffn.proj_2.weight.double()
        gate, up = x.double() @ w1[:f].T, x.double() @ w1[f:].T
        want = (gate * torch.sigmoid(gate) * up) @ w2.T  # silu(gate) * up
        got = ffn(x)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_rope_is_rotate_half_over_the_full_head() -> None:
    h, t = 16, 64
    cos, sin = rope_tables(h, t, 10000.0)
    x = torch.randn(2, 3, t, h, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(
        apply_rope(x, cos, sin).double(), _rope64(x.double(), 10000.0), rtol=1e-5, atol=1e-5
    )
    # Scores depend on relative position only: shift both positions, the dot product stays.
    q, k = x[0, 0, 0], x[0, 1, 0]
    shift = 20
    rq, rk = apply_rope(q.expand(t, h), cos, sin), apply_rope(k.expand(t, h), cos, sin)
    near = rq[10] @ rk[3]
    torch.testing.assert_close(rq[10 + shift] @ rk[3 + shift], near, rtol=1e-5, atol=1e-5)


def test_rope_runs_in_fp32_and_casts_back() -> None:
    """bf16 input: the result is the exact rotation rounded once to bf16, not bf16 arithmetic."""
    h, t = 16, 64
    cos, sin = rope_tables(h, t, 10000.0)
    x = torch.randn(2, 3, t, h, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    got = apply_rope(x, cos, sin)
    assert got.dtype == torch.bfloat16
    want = _rope64(x.double(), 10000.0).to(torch.bfloat16)
    # fp32 then one rounding equals the float64 result rounded, except at rare rounding ties
    # (observed: all equal). Rotating in bf16 arithmetic would round each product: ~28% differ.
    assert (got == want).float().mean().item() > 0.99


def test_tied_head_is_final_hidden_times_embedding(setup: Setup) -> None:
    model = setup.model
    captured: list[torch.Tensor] = []
    handle = model.transformer.norm.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        logits = model(setup.tokens[:, :4])
    finally:
        handle.remove()
    embedding = model.transformer.token_embeddings.weight
    torch.testing.assert_close(logits, captured[0] @ embedding.T, rtol=1e-5, atol=1e-5)
    assert not any("lm_head" in name for name, _ in model.named_parameters())


def test_state_dict_keys_equal_layout(setup: Setup) -> None:
    model = setup.model
    want = expected_shapes(setup.cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == want
    model.setup_cache(1, 8)  # caches and RoPE tables are buffers, never checkpoint keys
    assert model.state_dict().keys() == want.keys()
    assert setup.model.num_parameters() == setup.cfg.num_params


@pytest.mark.parametrize("norm", ["fused", "compiled"])
def test_model_with_other_norms_equals_naive(norm: str) -> None:
    if not get_norm(norm).available().ok:
        pytest.skip(get_norm(norm).available().reason)
    cfg, state, _ = load_state("tiny", seed=2)
    tokens = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(3))
    naive = build_model(cfg, state)(tokens)
    other = build_model(cfg, state, norm=norm)
    assert other.state_dict().keys() == expected_shapes(cfg).keys()
    # fp32, same formula; only the reduction order inside the norm kernel differs.
    torch.testing.assert_close(other(tokens), naive, rtol=1e-5, atol=1e-5)


# Residual adds through the norms ------------------------------------------------------------------


class AddNormStandIn(NaiveRMSNorm):
    """Naive RMSNorm that offers `add_norm`, as the Triton variant does, and counts its calls."""

    calls = 0

    def add_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        AddNormStandIn.calls += 1
        summed = x + residual
        return self(summed), summed


def _written_out(model: openelm_torch.OpenELM, tokens: torch.Tensor) -> torch.Tensor:
    """The released block, unfused: h = x + attn(attn_norm(x)); y = h + ffn(ffn_norm(h))."""
    t = tokens.shape[1]
    cos, sin = model.rope_cos[:t], model.rope_sin[:t]
    x = model.transformer.token_embeddings(tokens)
    for layer in model.transformer.layers:
        h = x + layer.attn(layer.attn_norm(x), cos, sin, None, None)
        x = h + layer.ffn(layer.ffn_norm(h))
    embedding = model.transformer.token_embeddings.weight
    return torch.nn.functional.linear(model.transformer.norm(x), embedding)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_adds_through_add_norm_and_equals_the_released_block(
    monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    cfg, state, _ = load_state("tiny", seed=5, dtype=dtype)
    tokens = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    naive = build_model(cfg, state)
    monkeypatch.setattr(openelm_torch, "norm_factory", lambda name: AddNormStandIn)
    AddNormStandIn.calls = 0
    fused = build_model(cfg, state)  # strict load: the keys are unchanged
    with torch.no_grad():
        want = _written_out(naive, tokens)
        # Norms without `add_norm` add, then normalize: the released block to the bit.
        assert torch.equal(naive(tokens), want)
        got = fused(tokens)
    # Each residual add went to a norm: attn_norm of layers 2.., every ffn_norm, the final norm.
    assert AddNormStandIn.calls == 2 * cfg.num_layers
    assert torch.equal(got, want)
