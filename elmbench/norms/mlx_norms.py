"""MLX normalization variants. Each takes `(dim, eps)` and owns a `weight` of shape (dim,)."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx import nn

from elmbench.norms import Availability


def naive_rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    """The released formula: fp32 upcast, mean of squares, rsqrt, cast back, times the weight."""
    xf = x.astype(mx.float32)
    out = xf * mx.rsqrt(mx.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return out.astype(x.dtype) * weight


class NaiveRMSNorm(nn.Module):
    """The released (CoreNet / HF) RMSNorm, unfused: one MLX op per step of the formula."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return naive_rms_norm(x, self.weight, self.eps)


class FusedRMSNorm(nn.Module):
    """MLX's fused kernel `mx.fast.rms_norm` (one Metal kernel on Apple silicon)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight, self.eps)


_COMPILED: dict[float, Callable[[mx.array, mx.array], mx.array]] = {}


def compiled_rms_norm(eps: float) -> Callable[[mx.array, mx.array], mx.array]:
    """The naive formula compiled once per eps and shared, so each input shape compiles once."""
    if eps not in _COMPILED:
        # eps is closed over, so the compiled graph takes only arrays.
        _COMPILED[eps] = mx.compile(lambda x, w: naive_rms_norm(x, w, eps))
    return _COMPILED[eps]


class CompiledRMSNorm(NaiveRMSNorm):
    """The naive formula through `mx.compile`, which fuses its element-wise steps."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps)
        self._compiled = compiled_rms_norm(eps)

    def __call__(self, x: mx.array) -> mx.array:
        return self._compiled(x, self.weight)


def always() -> Availability:
    """Variants written in MLX run wherever mlx imports (Metal on Apple silicon, CPU on Linux)."""
    return Availability(True)
