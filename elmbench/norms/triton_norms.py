"""The `triton` norm variant: elmbench's own Triton RMSNorm kernel, with residual add fused in.

Triton is imported only when a module is built (`triton_kernels`), so the availability check and
the registry stay importable without it.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from elmbench.norms import Availability

KERNELS = "elmbench.norms.triton_kernels"
TRITON_HINT = (
    "Install Triton on Linux: pip install 'elmbench[triton]' (PyTorch's CUDA wheels include it)"
)


class TritonRMSNorm(nn.Module):
    """The naive formula in one kernel; `add_norm` also adds the residual in the same pass."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        kernels = importlib.import_module(KERNELS)
        self._rms_norm = kernels.rms_norm
        self._add_rms_norm = kernels.add_rms_norm

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """norm(x); with a residual, (norm(x + residual), x + residual) from one kernel."""
        if residual is None:
            return self._rms_norm(x, self.weight, self.eps)
        return self._add_rms_norm(x, residual, self.weight, self.eps)

    def add_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual), through `__call__` so profiler hooks see it."""
        normed, summed = self(x, residual)
        return normed, summed


def triton_available() -> Availability:
    """Triton importable and a CUDA device present (the interpreter is for tests only)."""
    try:
        importlib.import_module("triton.language")
    except ImportError as exc:
        return Availability(False, f"Triton is not installed ({exc})", TRITON_HINT)
    if not torch.cuda.is_available():
        return Availability(
            False,
            "elmbench's Triton kernels need a CUDA device and none is present",
            "Run on a machine with an NVIDIA GPU",
        )
    return Availability(True)
