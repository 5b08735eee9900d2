"""OpenELM in PyTorch, exactly as released (CoreNet / HF), with a static KV cache.

Attribute names equal the HF checkpoint keys, so `load_state_dict(strict=True)` is the
compatibility test. The norm is injected by registry name, never hard-coded.
`part(name)` labels the parts that are not modules for the profiler; it is a no-op unless on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from elmbench.config import ElmConfig
from elmbench.norms import get_norm

NormFactory = Callable[[int, float], nn.Module]
# (q, k, v, pos, mask) -> attention output of a cached step; see `sdpa_cached`
CachedAttention = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor
]

PART_PREFIX = "elm::"
_labels_on = False
_NO_LABEL = contextlib.nullcontext()


def part(name: str) -> contextlib.AbstractContextManager[Any]:
    """A profiler range `elm::<name>` while part labels are on; otherwise a shared no-op."""
    if _labels_on:
        return torch.profiler.record_function(PART_PREFIX + name)
    return _NO_LABEL


@contextlib.contextmanager
def part_labels() -> Iterator[None]:
    """Turn the labels of `part()` on for a profiling run (modules are labelled by hooks)."""
    global _labels_on
    before, _labels_on = _labels_on, True
    try:
        yield
    finally:
        _labels_on = before


def norm_factory(name: str) -> NormFactory:
    """The `(dim, eps)` constructor of a registered torch norm variant."""
    variant = get_norm(name, "torch")
    return variant.build


def add_norm(
    norm: nn.Module, x: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(norm(x + residual), x + residual)`, in one kernel where the variant has `add_norm`.

    Without a residual, `(norm(x), x)`. Other variants add, then normalize, as the release does.
    """
    if residual is None:
        return norm(x), x
    fused = getattr(norm, "add_norm", None)
    if fused is not None:
        normed, summed = fused(x, residual)
        return normed, summed
    summed = x + residual
    return norm(summed), summed


def rope_tables(head_dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin tables (length, head_dim) for rotate-half RoPE over the full head."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    theta = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat((theta, theta), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE computed in fp32 and cast back, as the released code does."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).type_as(x)


def sdpa_cached(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """A cached step's attention: q (B, H_q, T, D) over the whole cache buffers (B, H_kv, S_max,
    D), `mask` (T, S_max) keeping key j for query i iff j <= pos[i]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


class KVCache(nn.Module):
    """Preallocated K/V buffers indexed by position (static shapes for compile and CUDA graphs)."""

    k: torch.Tensor
    v: torch.Tensor

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        shape = (batch, kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def fits(self, shape: tuple[int, ...], like: torch.Tensor) -> bool:
        """Whether the buffers have this shape and `like`'s dtype and device."""
        k = self.k
        return k.shape == shape and k.dtype == like.dtype and k.device == like.device

    def clear(self) -> None:
        """Zero both buffers in place (their addresses stay)."""
        self.k.zero_()
        self.v.zero_()

    def update(
        self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T, D) at positions `pos` (T,); return the whole buffers."""
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k, self.v


class OpenELMMultiHeadCausalAttention(nn.Module):
    """Fused QKV projection, per-head Q/K RMSNorm before RoPE, GQA, causal SDPA."""

    def __init__(self, cfg: ElmConfig, layer: int, make_norm: NormFactory) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.n_q = cfg.num_query_heads[layer]
        self.n_kv = cfg.num_kv_heads[layer]
        d, h = cfg.model_dim, cfg.head_dim
        self.qkv_proj = nn.Linear(d, (self.n_q + 2 * self.n_kv) * h, bias=False)
        self.q_norm = make_norm(h, cfg.norm_eps)
        self.k_norm = make_norm(h, cfg.norm_eps)
        self.out_proj = nn.Linear(self.n_q * h, d, bias=False)
        self.cache: KVCache | None = None
        self.cached_attention: CachedAttention = sdpa_cached  # a CPU layout may swap the kernel

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        pos: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).view(b, t, self.n_q + 2 * self.n_kv, self.head_dim)
        qkv = qkv.transpose(1, 2)  # (B, H_q + 2 H_kv, T, D)
        q, k, v = qkv.split([self.n_q, self.n_kv, self.n_kv], dim=1)
        q, k = self.q_norm(q), self.k_norm(k)
        with part("rope"):
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if pos is None:
            # No cache: causal, or packed rows' tree mask (B, 1, T, T) when one is given.
            with part("sdpa"):
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True
                )
        else:
            if self.cache is None:
                raise RuntimeError("setup_cache() must be called before cached steps")
            with part("kv_cache"):
                k, v = self.cache.update(pos, k, v)  # (B, H_kv, S_max, D)
            with part("sdpa"):
                out = self.cached_attention(q, k, v, pos, mask)
        out = out.transpose(1, 2).reshape(b, t, self.n_q * self.head_dim)  # (B, T, H_q * D)
        return self.out_proj(out)


class OpenELMFeedForwardNetwork(nn.Module):
    """SwiGLU: `proj_1` holds the gate rows first, then the up rows."""

    def __init__(self, cfg: ElmConfig, layer: int) -> None:
        super().__init__()
        d, f = cfg.model_dim, cfg.ffn_dims[layer]
        self.proj_1 = nn.Linear(d, 2 * f, bias=False)
        self.proj_2 = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_1(x).chunk(2, dim=-1)
        with part("activation"):
            hidden = F.silu(gate) * up
        return self.proj_2(hidden)


class OpenELMDecoderLayer(nn.Module):
    """Pre-norm block: h = x + attn(attn_norm(x)); y = h + ffn(ffn_norm(h)).

    Each residual add is done by the norm that reads its sum (`add_norm`): the block takes the
    previous block's FFN output undone and returns its own, for the next norm to add.
    """

    def __init__(self, cfg: ElmConfig, layer: int, make_norm: NormFactory) -> None:
        super().__init__()
        self.attn = OpenELMMultiHeadCausalAttention(cfg, layer, make_norm)
        self.ffn = OpenELMFeedForwardNetwork(cfg, layer)
        self.ffn_norm = make_norm(cfg.model_dim, cfg.norm_eps)
        self.attn_norm = make_norm(cfg.model_dim, cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        ffn_out: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        pos: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The block on the stream `x + ffn_out` (None: x alone); (h, this block's FFN output)."""
        normed, x = add_norm(self.attn_norm, x, ffn_out)
        normed, h = add_norm(self.ffn_norm, x, self.attn(normed, cos, sin, pos, mask))
        return h, self.ffn(normed)


class OpenELMModel(nn.Module):
    """Token embeddings, the decoder layers and the final norm (HF `transformer`)."""

    layers: list[OpenELMDecoderLayer]  # an nn.ModuleList at run time

    def __init__(self, cfg: ElmConfig, make_norm: NormFactory) -> None:
        super().__init__()
        self.token_embeddings = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.layers = nn.ModuleList(  # type: ignore[assignment]
            OpenELMDecoderLayer(cfg, i, make_norm) for i in range(cfg.num_layers)
        )
        self.norm = make_norm(cfg.model_dim, cfg.norm_eps)


class OpenELM(nn.Module):
    """OpenELM for causal LM (HF `OpenELMForCausalLM`): tied output head, no biases."""

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    causal_mask: torch.Tensor

    def __init__(self, cfg: ElmConfig, norm: str = "naive") -> None:
        super().__init__()
        self.config = cfg
        self.norm_name = norm
        self.transformer = OpenELMModel(cfg, norm_factory(norm))
        # The tied head as a function of (x, embedding weight): a CPU layout may swap the kernel.
        self.head_linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear
        self.max_seq_len = 0
        self.reset_buffers()

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)build the fp32 RoPE tables, on `device` if given (after loading onto `meta`)."""
        cfg = self.config
        length = max(cfg.rope_max_length, cfg.max_context_length, self.max_seq_len)
        cos, sin = rope_tables(cfg.head_dim, length, cfg.rope_freq_constant)
        if device is not None:
            cos, sin = cos.to(device), sin.to(device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def setup_cache(self, batch_size: int, max_seq_len: int) -> None:
        """Preallocate every layer's KV cache for `max_seq_len` positions.

        The same shape again keeps the buffers, zeroed: CUDA graphs recorded on their addresses
        stay valid (new buffers would have them recorded again).
        """
        weight = self.transformer.token_embeddings.weight
        self.max_seq_len = max_seq_len
        if max_seq_len > self.rope_cos.shape[0]:
            self.reset_buffers(weight.device)
        for layer in self.transformer.layers:
            attn = layer.attn
            shape = (batch_size, attn.n_kv, max_seq_len, self.config.head_dim)
            if attn.cache is not None and attn.cache.fits(shape, weight):
                attn.cache.clear()
            else:
                attn.cache = KVCache(*shape, weight.dtype, weight.device)
        mask = getattr(self, "causal_mask", None)
        if mask is None or mask.shape[0] != max_seq_len or mask.device != weight.device:
            causal = torch.ones(max_seq_len, max_seq_len, dtype=torch.bool, device=weight.device)
            self.register_buffer("causal_mask", torch.tril(causal), persistent=False)

    def forward(
        self, tokens: torch.Tensor, pos: torch.Tensor | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """Logits (B, T, V) for tokens (B, T); with `pos` (T,), a cached step at those positions."""
        t = tokens.shape[1]
        if pos is None:
            if t > self.rope_cos.shape[0]:
                self.max_seq_len = t
                self.reset_buffers(tokens.device)
            cos, sin, mask = self.rope_cos[:t], self.rope_sin[:t], None
        else:
            cos, sin = self.rope_cos[pos], self.rope_sin[pos]
            mask = self.causal_mask[pos]  # (T, S_max): key j visible to query i iff j <= pos[i]
        x = self.hidden(tokens, cos, sin, pos, mask)
        if last_only:
            x = x[:, -1:]
        return self.head(x)

    def hidden(
        self,
        tokens: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        pos: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The final norm's output (B, T, d) for tokens (B, T): the head's input."""
        x, ffn_out = self.transformer.token_embeddings(tokens), None
        for layer in self.transformer.layers:
            x, ffn_out = layer(x, ffn_out, cos, sin, pos, mask)
        normed, _ = add_norm(self.transformer.norm, x, ffn_out)
        return normed

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The tied head: logits (..., V) of normed hidden states (..., d)."""
        with part("head"):
            return self.head_linear(x, self.transformer.token_embeddings.weight)

    def packed_logits(
        self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Logits (N, V) at flat indices `rows` (N,) of packed rows (B, T), without a cache.

        Each token has its own position (B, T) and sees the keys `mask` (B, T, T) allows: the
        tokens of one shared prefix and its branches sit in one row, each branch placed at the
        positions it would have on its own (see `elmbench.accuracy.packing`).
        """
        if int(positions.max()) >= self.rope_cos.shape[0]:
            self.max_seq_len = int(positions.max()) + 1
            self.reset_buffers(tokens.device)
        cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        x = self.hidden(tokens, cos, sin, None, mask[:, None])  # (B, T, d); cos, sin (B, 1, T, D)
        return self.head(x.flatten(0, 1)[rows])

    def prefill(self, tokens: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """Run the prompt (B, T) through the cache from position 0; logits of the last position."""
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        return self(tokens, pos, last_only=last_only)

    def decode(self, token: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """One cached step for token (B, 1) at `position`; logits (B, 1, V)."""
        if not isinstance(position, torch.Tensor):
            position = torch.tensor([position], device=token.device)
        return self(token, position.view(1))

    def num_parameters(self) -> int:
        """Parameters actually held (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())
