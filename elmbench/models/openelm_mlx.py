"""OpenELM in MLX: the mirror image of `openelm_torch`, with a preallocated KV cache.

Same classes in the same order; attribute names equal the HF checkpoint keys, so
`load_weights(strict=True)` is the compatibility test. Framework differences: RoPE and attention are
MLX's fast kernels (`mx.fast.rope` with a position offset, `mx.fast.scaled_dot_product_attention`
with native GQA), so there are no RoPE tables or mask buffers, and a position is a Python int;
each residual add stays in its block (mx.compile fuses it), where torch hands it to the next norm.
Nothing here evaluates: logits come back lazy and the caller decides when to `mx.eval`.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten

from elmbench.config import ElmConfig
from elmbench.errors import ConfigError
from elmbench.norms import get_norm

NormFactory = Callable[[int, float], nn.Module]


def flat_parameters(module: nn.Module) -> dict[str, mx.array]:
    """Every parameter by its dotted key (`transformer.layers.0.attn.qkv_proj.weight`)."""
    flat: dict[str, mx.array] = {}
    tree_flatten(module.parameters(), destination=flat)
    return flat


def norm_factory(name: str) -> NormFactory:
    """The `(dim, eps)` constructor of a registered MLX norm variant."""
    variant = get_norm(name, "mlx")
    return variant.build


def rope_at(head_dim: int, positions: mx.array, base: float) -> tuple[mx.array, mx.array]:
    """fp32 cos/sin (..., head_dim) at `positions` for rotate-half RoPE over the full head."""
    inv_freq = 1.0 / (base ** (mx.arange(0, head_dim, 2, dtype=mx.float32) / head_dim))
    theta = positions.astype(mx.float32)[..., None] * inv_freq
    emb = mx.concatenate([theta, theta], axis=-1)
    return mx.cos(emb), mx.sin(emb)


def apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate-half RoPE computed in fp32 and cast back, as the released code does."""
    xf = x.astype(mx.float32)
    x1, x2 = mx.split(xf, 2, axis=-1)
    rotated = mx.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


# Packed rows (no cache): per-token RoPE cos, sin (B, 1, T, D) and the tree mask (B, 1, T, T).
Packed = tuple[mx.array, mx.array, mx.array]


class KVCache:
    """Preallocated K/V buffers written by slice at a start position.

    A plain object, not an `nn.Module`: an MLX module would list the buffers as parameters.
    Keys are cached after RoPE (rotated with their own offsets), which equals the torch side.
    """

    def __init__(
        self, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype: mx.Dtype
    ) -> None:
        shape = (batch, kv_heads, max_len, head_dim)
        self.max_len = max_len
        self.k = mx.zeros(shape, dtype=dtype)
        self.v = mx.zeros(shape, dtype=dtype)

    def update(self, pos: int, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Write k, v (B, H_kv, T, D) at positions pos..pos+T-1; return the filled prefix."""
        end = pos + k.shape[2]
        if end > self.max_len:
            raise ConfigError(
                f"KV cache holds {self.max_len} positions; a step at {pos}..{end - 1} does not "
                "fit (call setup_cache with a larger max_seq_len)"
            )
        self.k[:, :, pos:end, :] = k
        self.v[:, :, pos:end, :] = v
        return self.k[:, :, :end, :], self.v[:, :, :end, :]  # (B, H_kv, pos + T, D)


class OpenELMMultiHeadCausalAttention(nn.Module):
    """Fused QKV projection, per-head Q/K RMSNorm before RoPE, GQA, causal SDPA."""

    def __init__(self, cfg: ElmConfig, layer: int, make_norm: NormFactory) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.n_q = cfg.num_query_heads[layer]
        self.n_kv = cfg.num_kv_heads[layer]
        self.rope_base = float(cfg.rope_freq_constant)
        self.scale = cfg.head_dim**-0.5
        d, h = cfg.model_dim, cfg.head_dim
        self.qkv_proj = nn.Linear(d, (self.n_q + 2 * self.n_kv) * h, bias=False)
        self.q_norm = make_norm(h, cfg.norm_eps)
        self.k_norm = make_norm(h, cfg.norm_eps)
        self.out_proj = nn.Linear(self.n_q * h, d, bias=False)
        self.cache: KVCache | None = None

    def rope(self, x: mx.array, offset: int) -> mx.array:
        """Rotate-half (non-traditional) RoPE over the full head, positions from `offset`."""
        return mx.fast.rope(
            x, self.head_dim, traditional=False, base=self.rope_base, scale=1.0, offset=offset
        )

    def project(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Q, K (per-head normalized, before RoPE) and V, each (B, H, T, D): no cache, no offset."""
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).reshape(b, t, self.n_q + 2 * self.n_kv, self.head_dim)
        qkv = qkv.transpose(0, 2, 1, 3)  # (B, H_q + 2 H_kv, T, D)
        q, k, v = mx.split(qkv, [self.n_q, self.n_q + self.n_kv], axis=1)
        return self.q_norm(q), self.k_norm(k), v

    def __call__(self, x: mx.array, pos: int | None, packed: Packed | None = None) -> mx.array:
        return self.attend(*self.project(x), pos, packed)

    def attend(
        self,
        q: mx.array,
        k: mx.array,
        v: mx.array,
        pos: int | None,
        packed: Packed | None = None,
    ) -> mx.array:
        """RoPE from `pos`, the cache update, causal attention and the output projection."""
        b, _, t, _ = q.shape
        mask: mx.array | str | None
        if packed is not None:  # no cache: each token at its own position, keys as the tree allows
            cos, sin, mask = packed
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        else:
            offset = 0 if pos is None else pos
            q = self.rope(q, offset)
            k = self.rope(k, offset)
            if pos is not None:
                if self.cache is None:
                    raise RuntimeError("setup_cache() must be called before cached steps")
                k, v = self.cache.update(pos, k, v)  # (B, H_kv, pos + T, D)
            # "causal" aligns the last query with the last key, so a chunk at any offset sees its
            # prefix; a single query sees everything cached, so it needs no mask.
            mask = "causal" if t > 1 else None
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        out = out.transpose(0, 2, 1, 3).reshape(b, t, self.n_q * self.head_dim)  # (B, T, H_q*D)
        return self.out_proj(out)


class OpenELMFeedForwardNetwork(nn.Module):
    """SwiGLU: `proj_1` holds the gate rows first, then the up rows."""

    def __init__(self, cfg: ElmConfig, layer: int) -> None:
        super().__init__()
        d, f = cfg.model_dim, cfg.ffn_dims[layer]
        self.proj_1 = nn.Linear(d, 2 * f, bias=False)
        self.proj_2 = nn.Linear(f, d, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.proj_1(x), 2, axis=-1)
        return self.proj_2(nn.silu(gate) * up)


class OpenELMDecoderLayer(nn.Module):
    """Pre-norm block: h = x + attn(attn_norm(x)); y = h + ffn(ffn_norm(h))."""

    def __init__(self, cfg: ElmConfig, layer: int, make_norm: NormFactory) -> None:
        super().__init__()
        self.attn = OpenELMMultiHeadCausalAttention(cfg, layer, make_norm)
        self.ffn = OpenELMFeedForwardNetwork(cfg, layer)
        self.ffn_norm = make_norm(cfg.model_dim, cfg.norm_eps)
        self.attn_norm = make_norm(cfg.model_dim, cfg.norm_eps)
        # The stateless halves of the block; `OpenELM.compile_steps` swaps in compiled ones.
        self.attn_inputs_step: Callable[[mx.array], tuple[mx.array, mx.array, mx.array]]
        self.attn_inputs_step = self.attn_inputs
        self.ffn_step: Callable[[mx.array], mx.array] = self.ffn_block

    def attn_inputs(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """attn_norm, then the attention's projection and Q/K norms (no cache, no position)."""
        return self.attn.project(self.attn_norm(x))

    def ffn_block(self, h: mx.array) -> mx.array:
        """h + ffn(ffn_norm(h))."""
        return h + self.ffn(self.ffn_norm(h))

    def __call__(self, x: mx.array, pos: int | None, packed: Packed | None = None) -> mx.array:
        h = x + self.attn.attend(*self.attn_inputs_step(x), pos, packed)
        return self.ffn_step(h)


class OpenELMModel(nn.Module):
    """Token embeddings, the decoder layers and the final norm (HF `transformer`)."""

    def __init__(self, cfg: ElmConfig, make_norm: NormFactory) -> None:
        super().__init__()
        self.token_embeddings = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        # A Python list, so the keys read `layers.0.attn...` as in the checkpoint.
        self.layers = [OpenELMDecoderLayer(cfg, i, make_norm) for i in range(cfg.num_layers)]
        self.norm = make_norm(cfg.model_dim, cfg.norm_eps)


class OpenELM(nn.Module):
    """OpenELM for causal LM (HF `OpenELMForCausalLM`): tied output head, no biases."""

    def __init__(self, cfg: ElmConfig, norm: str = "naive") -> None:
        super().__init__()
        self.config = cfg
        self.norm_name = norm
        self.transformer = OpenELMModel(cfg, norm_factory(norm))
        self.max_seq_len = 0
        self.head_step: Callable[[mx.array], mx.array] = self.head

    @property
    def dtype(self) -> mx.Dtype:
        """The activation dtype (norm weights are never quantized, so they carry it)."""
        weight: mx.array = self.transformer.norm.weight
        return weight.dtype

    def setup_cache(self, batch_size: int, max_seq_len: int) -> None:
        """Preallocate every layer's KV cache for `max_seq_len` positions."""
        self.max_seq_len = max_seq_len
        for layer in self.transformer.layers:
            attn = layer.attn
            attn.cache = KVCache(
                batch_size, attn.n_kv, max_seq_len, self.config.head_dim, self.dtype
            )

    def __call__(
        self, tokens: mx.array, pos: int | None = None, last_only: bool = False
    ) -> mx.array:
        """Logits (B, T, V) for tokens (B, T); with `pos`, a cached step from that position."""
        x = self.hidden(tokens, pos)
        if last_only:
            x = x[:, -1:]
        return self.head_step(x)

    def hidden(self, tokens: mx.array, pos: int | None, packed: Packed | None = None) -> mx.array:
        """The decoder layers' output (B, T, d) for tokens (B, T), before the final norm."""
        x = self.transformer.token_embeddings(tokens)
        for layer in self.transformer.layers:
            x = layer(x, pos, packed)
        return x

    def head(self, x: mx.array) -> mx.array:
        """Final norm and the tied head (`as_linear` also serves a quantized embedding)."""
        return self.transformer.token_embeddings.as_linear(self.transformer.norm(x))

    def packed_logits(
        self, tokens: mx.array, positions: mx.array, mask: mx.array, rows: mx.array
    ) -> mx.array:
        """Logits (N, V) at flat indices `rows` (N,) of packed rows (B, T), without a cache.

        Each token has its own position (B, T) and sees the keys `mask` (B, T, T) allows: the
        tokens of one shared prefix and its branches sit in one row, each branch placed at the
        positions it would have on its own (see `elmbench.accuracy.packing`).
        """
        cos, sin = rope_at(self.config.head_dim, positions, float(self.config.rope_freq_constant))
        x = self.hidden(tokens, None, (cos[:, None], sin[:, None], mask[:, None]))
        return self.head_step(x.reshape(-1, x.shape[-1])[rows])

    def compile_steps(self) -> list[str]:
        """Put the stateless parts of every step under `mx.compile`; the parts compiled.

        The KV-cache update and attention stay eager: their shapes change with each position,
        and a compiled graph would be traced again at every step. Compile after loading weights:
        compiled graphs hold the parameters they close over.
        """
        for layer in self.transformer.layers:
            layer.attn_inputs_step = mx.compile(layer.attn_inputs)
            layer.ffn_step = mx.compile(layer.ffn_block)
        self.head_step = mx.compile(self.head)
        return ["attn_norm+qkv_proj+q_norm+k_norm", "ffn_norm+ffn+residual", "final_norm+head"]

    def prefill(self, tokens: mx.array, last_only: bool = True) -> mx.array:
        """Run the prompt (B, T) through the cache from position 0; logits of the last position."""
        return self(tokens, 0, last_only=last_only)

    def decode(self, token: mx.array, position: int) -> mx.array:
        """One cached step for token (B, 1) at `position`; lazy logits (B, 1, V)."""
        return self(token, int(position))

    def num_parameters(self) -> int:
        """Parameters the model represents (tied head once; quantized weights unpacked)."""
        packed = {
            name: m.bits
            for name, m in self.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        }
        total = 0
        for key, value in flat_parameters(self).items():
            module, _, leaf = key.rpartition(".")
            if module not in packed:
                total += value.size
            elif leaf == "weight":  # uint32 words, each packing 32 / bits values
                total += value.size * 32 // packed[module]
        return total
