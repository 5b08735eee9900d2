"""Seeded random weights with the released initializer (CoreNet `reset_parameters`)."""

from __future__ import annotations

import torch

from elmbench.checkpoints.layout import expected_shapes
from elmbench.config import ElmConfig


def init_std(cfg: ElmConfig, key: str, shape: tuple[int, ...]) -> float | None:
    """The normal std for a key, or None for norm weights (ones)."""
    if len(shape) == 1:
        return None
    if key.endswith("token_embeddings.weight"):
        return float(cfg.model_dim**-0.5)
    if key.endswith(("attn.out_proj.weight", "ffn.proj_2.weight")):
        # Re-drawn after the generic init, scaled with depth (as in OPT).
        return float(cfg.model_dim**-0.5 * (2 * cfg.num_layers) ** -0.5)
    return float(shape[1] ** -0.5)  # Linear: N(0, in_features^-0.5)


def random_state(cfg: ElmConfig, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A full HF-keyed state dict drawn in fp32 on the CPU from `seed`, then cast to `dtype`.

    Drawing on the CPU in key order makes the weights identical across backends and devices.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_shapes(cfg).items():
        std = init_std(cfg, key, shape)
        if std is None:
            tensor = torch.ones(shape)
        else:
            tensor = torch.empty(shape).normal_(0.0, std, generator=gen)
        state[key] = tensor.to(dtype)
    return state
