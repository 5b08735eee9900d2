"""PyTorch normalization variants. Each takes `(dim, eps)` and owns a `weight` of shape (dim,)."""

from __future__ import annotations

import importlib
import shutil

import torch
import torch.nn.functional as F
from torch import nn

from elmbench.norms import Availability

APEX_HINT = (
    "Build apex.normalization and its fused_layer_norm_cuda extension on a CUDA machine with "
    "scripts/build_apex.sh APEX_SOURCE.tar.gz (docs/gpu.md); never 'pip install apex': that PyPI "
    "package is unrelated"
)


class NaiveRMSNorm(nn.Module):
    """The released (CoreNet / HF) RMSNorm, unfused: the paper's bottleneck."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class FusedRMSNorm(nn.Module):
    """PyTorch's native RMSNorm kernel (`F.rms_norm`)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)


class CompiledRMSNorm(NaiveRMSNorm):
    """The naive formula compiled by inductor into one fused kernel."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps)
        self._compiled = torch.compile(super().forward, dynamic=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compiled(x)


class LayerNormNoBias(nn.LayerNorm):
    """LayerNorm with a weight and no bias, so it fits OpenELM's checkpoint keys (ablation)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps=eps, bias=False)


def apex_rms_norm(dim: int, eps: float = 1e-6) -> nn.Module:
    """apex's FusedRMSNorm; its parameter is named `weight`, so checkpoints load unchanged."""
    from apex.normalization import FusedRMSNorm as ApexFusedRMSNorm

    module: nn.Module = ApexFusedRMSNorm(dim, eps=eps)
    return module


def always() -> Availability:
    """Variants written in plain PyTorch run wherever torch does."""
    return Availability(True)


def fused_available() -> Availability:
    """`F.rms_norm` exists from torch 2.4 on."""
    if hasattr(F, "rms_norm"):
        return Availability(True)
    return Availability(False, f"torch {torch.__version__} has no F.rms_norm", "Install torch>=2.6")


def compile_available() -> Availability:
    """Inductor on CPU needs a C++ compiler; on CUDA it needs Triton."""
    has_cxx = shutil.which("g++") is not None or shutil.which("c++") is not None
    if not has_cxx and not torch.cuda.is_available():
        return Availability(
            False,
            "torch.compile (inductor) needs a C++ compiler on CPU",
            "Install g++ (apt-get install g++)",
        )
    return Availability(True)


def apex_available() -> Availability:
    """A real apex build: `apex.normalization` plus its CUDA extension, and a CUDA device."""
    try:
        normalization = importlib.import_module("apex.normalization")
    except ImportError:
        return Availability(False, "NVIDIA apex is not installed", APEX_HINT)
    if not hasattr(normalization, "FusedRMSNorm"):
        return Availability(
            False,
            "the installed 'apex' package is not NVIDIA apex (no apex.normalization.FusedRMSNorm)",
            APEX_HINT,
        )
    try:
        importlib.import_module("fused_layer_norm_cuda")
    except ImportError:
        return Availability(
            False, "apex was built without its fused_layer_norm_cuda extension", APEX_HINT
        )
    if not torch.cuda.is_available():
        return Availability(
            False,
            "apex FusedRMSNorm needs a CUDA device and none is present",
            "Run on a machine with an NVIDIA GPU",
        )
    return Availability(True)
