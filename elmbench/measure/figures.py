"""Derived throughput figures: FLOPs of a forward, bytes a decode step reads, rooflines.

Counts are analytic and stated: matmuls and attention only (norms, RoPE and activations are a
negligible share of FLOPs, though not of time, which is the paper's point).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelFacts:
    """What the figures need to know about a model, from an ElmConfig or a comparison config."""

    name: str
    num_params: int
    linear_params: int  # matmul weights of the layers (excluding the embedding / tied head)
    head_params: int  # vocab x model_dim, used as the output projection
    attn_widths: tuple[int, ...]  # query heads x head_dim, per layer
    kv_elems_per_token: int  # K and V elements cached per token over all layers
    num_norms: int

    @classmethod
    def of(cls, cfg: Any) -> ModelFacts:
        """Facts of an OpenELM `ElmConfig` or a `ComparisonConfig`."""
        if hasattr(cfg, "num_query_heads"):  # ElmConfig
            layers = range(cfg.num_layers)
            norm_params = 2 * cfg.model_dim + 2 * cfg.head_dim
            linear = sum(cfg.layer_params(i) - norm_params for i in layers)
            widths = tuple(cfg.num_query_heads[i] * cfg.head_dim for i in layers)
            head = cfg.vocab_size * cfg.model_dim
        else:
            d = cfg.hidden_size
            kv = cfg.num_kv_heads * cfg.head_dim
            linear = cfg.num_layers * (2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size)
            widths = (d,) * cfg.num_layers
            head = cfg.vocab_size * d
        return cls(
            cfg.name,
            cfg.num_params,
            linear,
            head,
            widths,
            cfg.kv_cache_bytes_per_token(1),
            cfg.num_norms,
        )


def forward_flops(
    facts: ModelFacts,
    batch: int,
    new_tokens: int,
    context_before: int = 0,
    logits_rows: int | None = None,
) -> int:
    """FLOPs of one forward over `new_tokens` per sequence after `context_before` cached ones.

    2 per multiply-add: linear layers on every new token, the head on `logits_rows` rows
    (default: every new token), and causal attention (QK^T and AV) over the visible keys.
    """
    rows = new_tokens if logits_rows is None else logits_rows
    linear = 2 * facts.linear_params * new_tokens
    head = 2 * facts.head_params * rows
    # Query i (0-based among the new tokens) sees context_before + i + 1 keys.
    visible = new_tokens * context_before + new_tokens * (new_tokens + 1) // 2
    attention = sum(2 * 2 * width * visible for width in facts.attn_widths)
    return batch * (linear + head + attention)


def decode_bytes(
    weight_bytes: int,
    facts: ModelFacts,
    batch: int,
    prompt_tokens: int,
    decode_steps: int,
    kv_bytes_per_element: int,
) -> int:
    """Bytes read by `decode_steps` cached steps: all weights once per step plus the KV cache.

    Step s (0-based) runs after the prompt and s + 1 generated tokens, so it reads
    prompt_tokens + s + 1 cached positions per sequence.
    """
    positions = sum(prompt_tokens + s + 1 for s in range(decode_steps))
    kv = batch * facts.kv_elems_per_token * kv_bytes_per_element * positions
    return decode_steps * weight_bytes + kv


def share(value: float | None, peak: float | None) -> float | None:
    """value / peak, or None when either is unknown (never guessed)."""
    if value is None or not peak:
        return None
    return value / peak
