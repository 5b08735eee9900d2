"""The MLX backend: OpenELM in MLX on the Apple GPU (Metal) or, on Linux, the CPU."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from elmbench.backends import COMPILE_MODES, Backend, ModelSpec, mlx_blas
from elmbench.errors import UnavailableError
from elmbench.norms import Availability


def available() -> Availability:
    """MLX imports with a usable device."""
    try:
        import mlx.core as mx
    except ImportError as exc:
        return Availability(
            False,
            f"mlx is not installed ({exc})",
            "pip install 'mlx[cpu]' on Linux, or pip install mlx on a Mac",
        )
    return Availability(True, f"default device {mx.default_device()}")


def mlx_device(name: str) -> Any:
    """The MLX device for 'cpu' or 'gpu' (Metal, Apple silicon only)."""
    import mlx.core as mx

    if name == "cpu":
        return mx.cpu
    if name == "gpu":
        if not mx.metal.is_available():
            raise UnavailableError(
                "MLX device 'gpu'",
                "Metal is not available (MLX on Apple silicon only)",
                "Use --device mlx-cpu",
            )
        return mx.gpu
    raise UnavailableError(f"MLX device '{name}'", "MLX runs on 'cpu' or 'gpu'")


class MlxBackend(Backend):
    """OpenELM (elmbench.models.openelm_mlx) behind the backend seam."""

    name = "mlx"

    def __init__(self, spec: ModelSpec) -> None:
        import mlx.core as mx

        super().__init__(spec)
        self.mx = mx
        mx.set_default_device(mlx_device(spec.device))  # check the device before loading

        from elmbench.checkpoints.mlx_load import load_mlx_model

        self.model, self.source = load_mlx_model(
            spec.model,
            spec.weights,
            spec.norm,
            spec.dtype,
            spec.seed,
            spec.crop_vocab,
            spec.quantize,
            spec.group_size,
        )
        self.config = self.model.config
        mx.eval(self.model.parameters())
        self.compiled_parts = self._compile(spec.compile)

    def _compile(self, mode: str) -> list[str]:
        """`mx.compile` the model's stateless parts (after loading: graphs hold the weights)."""
        if mode == "none":
            return []
        if mode != "mx.compile":
            raise UnavailableError(
                f"--compile {mode} with the MLX backend",
                "MLX compiles with mx.compile",
                f"Use --compile {' or --compile '.join(COMPILE_MODES['mlx'])} with --backend mlx",
            )
        return self.model.compile_steps()

    def setup(self, batch_size: int, max_seq_len: int) -> None:
        """Allocate the KV cache."""
        self.model.setup_cache(batch_size, max_seq_len)

    def prefill(self, tokens: np.ndarray) -> Any:
        """Prompt through the cache; lazy greedy next tokens (B, 1)."""
        x = self.mx.array(tokens.astype(np.int32))
        return self.mx.argmax(self.model.prefill(x), axis=-1)

    def decode(self, tokens: Any, position: int) -> Any:
        """One cached step, left lazy: the caller evaluates (async on Apple silicon)."""
        return self.mx.argmax(self.model.decode(tokens, position), axis=-1)

    def to_numpy(self, tokens: Any) -> np.ndarray:
        """Tokens on the host."""
        return np.array(tokens)

    def logprob_rows(
        self, tokens: np.ndarray, lengths: list[int], last: list[int]
    ) -> list[np.ndarray]:
        """fp32 log-softmax rows at each sequence's last positions, from one forward."""
        mx = self.mx
        logits = self.model(mx.array(tokens.astype(np.int32)))  # (B, T, V)
        rows = []
        for b, (n, k) in enumerate(zip(lengths, last, strict=True)):
            part = logits[b, n - k : n].astype(mx.float32)
            rows.append(part - mx.logsumexp(part, axis=-1, keepdims=True))
        mx.eval(rows)
        return [np.array(r) for r in rows]

    packs_rows = True

    def memory_limit_bytes(self) -> int | None:
        """Metal's recommended working set on Apple silicon; None on the CPU."""
        if self.mx.default_device() != self.mx.gpu:
            return None
        info = self.mx.device_info()
        return int(info.get("max_recommended_working_set_size") or self.mx.get_memory_limit())

    def score_packed(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        mask: np.ndarray,
        rows: np.ndarray,
        targets: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Target log-probs and argmax flags at flat positions of packed rows, from one forward."""
        mx = self.mx
        unique, inverse = np.unique(rows, return_inverse=True)  # a position may score several
        logits = self.model.packed_logits(
            mx.array(tokens.astype(np.int32)),
            mx.array(positions.astype(np.int32)),
            mx.array(mask),
            mx.array(unique.astype(np.int32)),
        ).astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # (U, V)
        at, want = (
            mx.array(inverse.reshape(-1).astype(np.int32)),
            mx.array(targets.astype(np.int32)),
        )
        picked = logp[at, want]
        greedy = mx.argmax(logp, axis=-1)[at] == want
        mx.eval(picked, greedy)
        return np.array(picked), np.array(greedy)

    def synchronize(self, value: Any = None) -> None:
        """Evaluate `value` (lazy graphs run only when evaluated), then wait for the stream."""
        if value is not None:
            self.mx.eval(value)
        self.mx.synchronize()

    def peak_memory_bytes(self) -> tuple[int, str]:
        """MLX allocator peak (unified memory on Apple silicon, host memory on Linux)."""
        return int(self.mx.get_peak_memory()), "mlx_peak_memory"

    def reset_peak_memory(self) -> None:
        """Start a new peak window."""
        self.mx.reset_peak_memory()

    def describe(self) -> dict[str, Any]:
        """MLX version, device, model and weights identity."""
        mx = self.mx
        return {
            "backend": "mlx",
            "mlx_version": mx.__version__,
            "device": str(mx.default_device()),
            "device_name": platform.processor() or platform.machine(),
            "model": self.config.name,
            "num_params": self.model.num_parameters(),
            "weights": self.source.describe(),
            "norm": self.spec.norm,
            "dtype": self.spec.dtype,
            "quantize": self.spec.quantize,
            "compile": self.spec.compile,
            "compiled_parts": self.compiled_parts,
            "blas": mlx_blas.describe(),
        }
