"""Comparison models through `transformers`, with random weights and OpenELM's interface.

`olmo-1b` is the model the paper compared OpenELM's speed with; `llama-270m` is a LLaMA-architecture
peer of OpenELM-270M's size, run through HF's own KV cache as an external throughput reference.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from elmbench.errors import UnknownNameError
from elmbench.norms import get_norm

NATIVE = "native"


@dataclass(frozen=True)
class ComparisonConfig:
    """A comparison architecture and the facts throughput needs (params, norms, KV bytes)."""

    name: str
    family: str  # "olmo" | "llama"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    norm_eps: float
    native_norm: str
    summary: str
    hf_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.hidden_size // self.num_heads

    @property
    def num_norms(self) -> int:
        """Two norms per layer plus the final one (33 for OLMo-1B)."""
        return 2 * self.num_layers + 1

    @property
    def num_params(self) -> int:
        """Parameters with tied embeddings and the native norms (OLMo's hold no parameters)."""
        d, f = self.hidden_size, self.intermediate_size
        kv = self.num_kv_heads * self.head_dim
        layer = 2 * d * d + 2 * d * kv + 3 * d * f
        norm_params = 0 if self.family == "olmo" else self.num_norms * d
        return self.vocab_size * d + self.num_layers * layer + norm_params

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Bytes of K and V cached per token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element


COMPARISON_MODELS: dict[str, ComparisonConfig] = {
    "olmo-1b": ComparisonConfig(
        "olmo-1b",
        "olmo",
        hidden_size=2048,
        num_layers=16,
        num_heads=16,
        num_kv_heads=16,
        intermediate_size=8192,
        vocab_size=50304,
        norm_eps=1e-5,
        native_norm="non-parametric LayerNorm",
        summary="OLMo-1B (allenai/OLMo-1B config): the paper's speed comparison",
        hf_kwargs={"max_position_embeddings": 2048, "pad_token_id": 1, "eos_token_id": 50279},
    ),
    "llama-270m": ComparisonConfig(
        "llama-270m",
        "llama",
        hidden_size=1280,
        num_layers=16,
        num_heads=20,
        num_kv_heads=5,
        intermediate_size=2688,
        vocab_size=32000,
        norm_eps=1e-6,
        native_norm="LlamaRMSNorm",
        summary="LLaMA-architecture peer of OpenELM-270M's size (HF transformers reference)",
        hf_kwargs={"max_position_embeddings": 2048},
    ),
}


def get_comparison(name: str) -> ComparisonConfig:
    """A comparison model by name."""
    if name not in COMPARISON_MODELS:
        raise UnknownNameError("comparison model", name, COMPARISON_MODELS)
    return COMPARISON_MODELS[name]


def _hf_model(cfg: ComparisonConfig) -> nn.Module:
    common = dict(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=True,
        **cfg.hf_kwargs,
    )
    if cfg.family == "olmo":
        from transformers import OlmoConfig, OlmoForCausalLM

        return OlmoForCausalLM(OlmoConfig(**common))
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(rms_norm_eps=cfg.norm_eps, **common))


def swap_norms(model: nn.Module, cfg: ComparisonConfig, norm: str) -> int:
    """Replace every native norm module with the registry's variant; returns how many."""
    variant = get_norm(norm, "torch")
    native = "LayerNorm" if cfg.family == "olmo" else "RMSNorm"
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if type(mod).__name__.endswith(native) and type(mod).__module__.startswith("transformers")
    ]
    for name, _ in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, variant.build(cfg.hidden_size, cfg.norm_eps))
    return len(targets)


class HFCausalLM(nn.Module):
    """An HF causal LM behind OpenELM's interface: forward, setup_cache, prefill, decode."""

    def __init__(self, cfg: ComparisonConfig, model: nn.Module, norm: str) -> None:
        super().__init__()
        self.config = cfg
        self.norm_name = norm
        self.hf: Any = model
        self.cache: Any = None
        # The cache's keyword: `cache` in newer transformers, which deprecate `past_key_values`.
        params = inspect.signature(model.forward).parameters
        self.cache_keyword = "cache" if "cache" in params else "past_key_values"

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) of a full forward without a cache."""
        out = self.hf(input_ids=tokens, use_cache=False, logits_to_keep=1 if last_only else 0)
        return out.logits

    def setup_cache(self, batch_size: int, max_seq_len: int) -> None:
        """A fresh HF DynamicCache (the library's own KV cache, as users run it)."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.hf.config)

    def prefill(self, tokens: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """Prompt through the cache; logits of the last position."""
        out = self.hf(
            input_ids=tokens,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
            **{self.cache_keyword: self.cache},
        )
        return out.logits

    def decode(self, token: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """One cached step (HF tracks positions in its cache)."""
        out = self.hf(input_ids=token, use_cache=True, **{self.cache_keyword: self.cache})
        return out.logits

    def num_parameters(self) -> int:
        """Parameters actually held (tied head counted once)."""
        return sum(p.numel() for p in self.parameters())


def build_comparison(
    name: str,
    norm: str = NATIVE,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> HFCausalLM:
    """Random-weight comparison model; `norm` other than 'native' swaps in a registry variant."""
    cfg = get_comparison(name)
    if norm != NATIVE:
        get_norm(norm, "torch")  # an unknown name fails before the slow build
    torch.manual_seed(seed)
    model = _hf_model(cfg)
    if norm != NATIVE:
        swap_norms(model, cfg, norm)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return HFCausalLM(cfg, model, norm)
