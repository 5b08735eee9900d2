"""Checkpoints: the HF layout, strict validation, loaders per backend, seeded random init.

This module stays free of torch and mlx; `torch_load` and the MLX loader import their framework.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightsSource:
    """Where weights came from: 'random' (with seed), an HF folder, a CoreNet file, MLX folder."""

    kind: str
    path: str = ""
    seed: int | None = None

    def describe(self) -> str:
        """One line for records and tables."""
        return f"random(seed={self.seed})" if self.kind == "random" else f"{self.kind}:{self.path}"
