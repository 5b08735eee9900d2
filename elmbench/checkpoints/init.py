"""Seeded random weights with the released initializer (CoreNet `reset_parameters`).

Drawn with numpy (no torch, no mlx) so both backends get bit-identical weights from one seed.
"""

from __future__ import annotations

import numpy as np

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


def random_arrays(cfg: ElmConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """A full HF-keyed float32 state drawn in key order from `seed`."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in expected_shapes(cfg).items():
        std = init_std(cfg, key, shape)
        if std is None:
            state[key] = np.ones(shape, dtype=np.float32)
        else:
            arr = rng.standard_normal(shape, dtype=np.float32)
            arr *= np.float32(std)
            state[key] = arr
    return state
