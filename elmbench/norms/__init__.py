"""Registry of RMSNorm variants per backend: one `(dim, eps)` constructor, one numerics contract.

Entries resolve lazily; `available()` says why a variant cannot run here and how to get it.
A module that fuses the residual add also offers `add_norm(x, residual) -> (normed, x + residual)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elmbench.errors import ConfigError, UnavailableError, UnknownNameError
from elmbench.registry import resolve

BACKENDS = ("torch", "mlx")


@dataclass(frozen=True)
class Availability:
    """Whether a variant runs here; when not, the reason and what to do about it."""

    ok: bool
    reason: str = ""
    hint: str = ""


@dataclass(frozen=True)
class NormVariant:
    """One normalization implementation for one backend."""

    name: str
    backend: str
    factory: str  # "module:attr" of a callable (dim, eps) -> module with a `weight` parameter
    check: str  # "module:attr" of a callable () -> Availability
    summary: str
    changes_numerics: bool = False  # True only for ablations that are not RMSNorm

    def available(self) -> Availability:
        """Whether this variant can be built here (imports its backend lazily)."""
        try:
            result: Availability = resolve(self.check)()
        except ImportError as exc:
            return Availability(
                False, f"{self.backend} is not installed ({exc})", _INSTALL_HINT[self.backend]
            )
        return result

    def build(self, dim: int, eps: float) -> Any:
        """Construct the module; raises UnavailableError with the install hint when it cannot."""
        status = self.available()
        if not status.ok:
            raise UnavailableError(
                f"norm '{self.name}' ({self.backend})", status.reason, status.hint
            )
        return resolve(self.factory)(dim, eps)

    @property
    def label(self) -> str:
        """The name with a warning when the variant changes the model's numerics."""
        return self.name + (" (ablation: changes numerics)" if self.changes_numerics else "")


_INSTALL_HINT = {
    "torch": "Install PyTorch: pip install torch==2.13.0",
    "mlx": "Install MLX: pip install 'mlx[cpu]' on Linux, or pip install mlx on Apple silicon",
}

_T = "elmbench.norms.torch_norms"
_TT = "elmbench.norms.triton_norms"
_M = "elmbench.norms.mlx_norms"

NORMS: dict[str, dict[str, NormVariant]] = {
    "torch": {
        "naive": NormVariant(
            "naive",
            "torch",
            f"{_T}:NaiveRMSNorm",
            f"{_T}:always",
            "released unfused RMSNorm: fp32 upcast, mean of squares, rsqrt, "
            "cast, weight (the paper's baseline)",
        ),
        "fused": NormVariant(
            "fused",
            "torch",
            f"{_T}:FusedRMSNorm",
            f"{_T}:fused_available",
            "PyTorch native torch.nn.functional.rms_norm",
        ),
        "compiled": NormVariant(
            "compiled",
            "torch",
            f"{_T}:CompiledRMSNorm",
            f"{_T}:compile_available",
            "the naive RMSNorm through torch.compile (inductor)",
        ),
        "apex": NormVariant(
            "apex",
            "torch",
            f"{_T}:apex_rms_norm",
            f"{_T}:apex_available",
            "NVIDIA apex FusedRMSNorm (CUDA kernel)",
        ),
        "triton": NormVariant(
            "triton",
            "torch",
            f"{_TT}:TritonRMSNorm",
            f"{_TT}:triton_available",
            "elmbench's Triton kernel: the naive formula in one pass, residual add fused in",
        ),
        "layernorm": NormVariant(
            "layernorm",
            "torch",
            f"{_T}:LayerNormNoBias",
            f"{_T}:always",
            "LayerNorm (no bias) in the RMSNorm slots: the paper's LayerNorm-vs-RMSNorm ablation",
            changes_numerics=True,
        ),
    },
    "mlx": {
        "naive": NormVariant(
            "naive",
            "mlx",
            f"{_M}:NaiveRMSNorm",
            f"{_M}:always",
            "released unfused RMSNorm: fp32 upcast, mean of squares, rsqrt, "
            "cast, weight (the paper's baseline)",
        ),
        "fused": NormVariant(
            "fused",
            "mlx",
            f"{_M}:FusedRMSNorm",
            f"{_M}:always",
            "MLX fused kernel mx.fast.rms_norm",
        ),
        "compiled": NormVariant(
            "compiled",
            "mlx",
            f"{_M}:CompiledRMSNorm",
            f"{_M}:always",
            "the naive RMSNorm through mx.compile",
        ),
    },
}


def variants(backend: str = "torch") -> dict[str, NormVariant]:
    """All variants registered for a backend."""
    if backend not in NORMS:
        raise UnknownNameError("backend", backend, BACKENDS)
    return NORMS[backend]


def get_norm(name: str, backend: str = "torch") -> NormVariant:
    """The variant by name; a name that exists only on another backend gets a pointed error."""
    table = variants(backend)
    if name in table:
        return table[name]
    others = [b for b, t in NORMS.items() if b != backend and name in t]
    if others:
        raise ConfigError(
            f"norm '{name}' exists only for the {' and '.join(others)} backend, not {backend}; "
            f"{backend} norms: {', '.join(sorted(table))}"
        )
    raise UnknownNameError(f"{backend} norm", name, table)


def parse_norms(spec: str, backend: str = "torch") -> list[NormVariant]:
    """Parse `naive,fused` or `all` (every variant available here) into variants."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        return [v for v in variants(backend).values() if v.available().ok]
    return [get_norm(n, backend) for n in names]
