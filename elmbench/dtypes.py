"""The one dtype table: the names users type, their canonical names and bytes per element.

Frameworks' own dtype objects come from `torch_dtype` and `mlx_dtype`, imported on use.
"""

from __future__ import annotations

from typing import Any

from elmbench.errors import ElmbenchError

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # canonical names, in the order shown
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
NAMES = tuple(BYTES)


def canonical(name: str) -> str:
    """`fp32`, `Float32`, ... -> `float32`; anything else is one clear error."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in BYTES:
        raise ElmbenchError(
            f"unknown dtype '{name}'. Valid dtypes: {', '.join(NAMES)} (or fp32, bf16, fp16)"
        )
    return key


def torch_dtype(name: Any) -> Any:
    """The torch dtype of a name (a torch dtype passes through)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    return getattr(torch, canonical(name))


def mlx_dtype(name: Any) -> Any:
    """The MLX dtype of a name (an MLX dtype passes through)."""
    import mlx.core as mx

    if isinstance(name, mx.Dtype):
        return name
    return getattr(mx, canonical(name))
