"""The backend seam: one small interface over torch and MLX for throughput, profile and accuracy.

Backends are resolved lazily by name; `available()` explains what is missing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from elmbench.errors import UnavailableError, UnknownNameError
from elmbench.norms import Availability
from elmbench.registry import resolve


def decode_steps(
    decode: Callable[[Any, int], Any],
    token: Any,
    position: int,
    steps: int,
    stop: Callable[[Any], bool] | None = None,
) -> list[Any]:
    """The cached decode loop that throughput, profile and accuracy share.

    `steps` greedy steps from `token` (B, 1) at `position`, each `decode(token, position)` giving
    the next; returns the new token handles. `stop(token)`, when given, may end it early; without
    it the loop never waits for the device, so frameworks can queue the steps.
    """
    out = []
    for i in range(steps):
        token = decode(token, position + i)
        out.append(token)
        if stop is not None and stop(token):
            break
    return out


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a preset and/or weights, the norm variant, dtype, seed and device."""

    model: str | None = "270m"
    weights: str | None = None
    norm: str = "naive"
    dtype: str = "float32"
    seed: int = 0
    device: str = "cpu"  # torch: cpu | cuda | cuda:N | mps; mlx: cpu | gpu
    quantize: int | None = None  # MLX only: 4 or 8 bits on load
    group_size: int = 64
    crop_vocab: bool = True
    compile: str = "none"  # one of COMPILE_MODES[backend]
    kernels: str = "stock"  # stock: the framework as users run it; elmbench: elmbench's engine

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for records and subprocess jobs."""
        return asdict(self)


class Backend(ABC):
    """A loaded model on one framework and device, with the steps the measurements need.

    Token arrays cross the seam as numpy int arrays; `prefill`/`decode` return backend-native
    next-token handles (greedy) so that a decode loop needs no host round trip per token.
    """

    name: str = ""
    config: Any  # the model's ElmConfig (or ComparisonConfig)

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    def setup(self, batch_size: int, max_seq_len: int) -> None:
        """Allocate the KV cache for a batch and a maximum sequence length."""

    @abstractmethod
    def prefill(self, tokens: np.ndarray) -> Any:
        """Run the prompt (B, T) from position 0; return the greedy next tokens (B, 1)."""

    @abstractmethod
    def decode(self, tokens: Any, position: int) -> Any:
        """One cached step for tokens (B, 1) at `position`; return the greedy next tokens."""

    @abstractmethod
    def to_numpy(self, tokens: Any) -> np.ndarray:
        """Materialise a token handle on the host."""

    @abstractmethod
    def logprob_rows(
        self, tokens: np.ndarray, lengths: list[int], last: list[int]
    ) -> list[np.ndarray]:
        """One full forward over right-padded tokens (B, T); for row b, the fp32 log-softmax
        (last[b], V) at its final `last[b]` real positions (those before lengths[b])."""

    packs_rows = False  # whether `score_packed` is implemented (OpenELM on torch and MLX)

    def memory_limit_bytes(self) -> int | None:
        """Device memory a batch may fill (GPUs); None on CPUs, where memory is not the limit."""
        return None

    def score_packed(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        mask: np.ndarray,
        rows: np.ndarray,
        targets: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One forward over packed rows: tokens and their positions (B, T), tree masks (B, T, T).

        For each pair i: the fp32 log-prob of targets[i] after flat position rows[i] (an index
        into B * T), and whether it is the argmax there. See `elmbench.accuracy.packing`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not score packed rows")

    def score(self, tokens: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log-prob of each target (B, T) after its prefix, and whether it is the argmax."""
        b, t = tokens.shape
        rows = np.stack(self.logprob_rows(tokens, [t] * b, [t] * b))  # (B, T, V)
        picked = np.take_along_axis(rows, targets[..., None], axis=-1)[..., 0]
        return picked, rows.argmax(-1) == targets

    @abstractmethod
    def synchronize(self, value: Any = None) -> None:
        """Wait until queued device work (and `value`, if given) has finished."""

    @abstractmethod
    def peak_memory_bytes(self) -> tuple[int, str]:
        """Peak memory so far and how it was measured (device allocator or process RSS)."""

    @abstractmethod
    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window where the framework allows it."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Framework, version, device and model facts for records."""

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        """Greedy generation of `new_tokens` after `prompt` (EOS ignored); returns (B, new)."""
        b, t = prompt.shape
        self.setup(b, t + new_tokens)
        tok = self.prefill(prompt)
        out = [tok, *decode_steps(self.decode, tok, t, new_tokens - 1)]
        return np.concatenate([self.to_numpy(x) for x in out], axis=1)


@dataclass(frozen=True)
class BackendEntry:
    """Registry entry: the implementation and its availability check, both lazily resolved."""

    name: str
    target: str
    check: str
    summary: str

    def available(self) -> Availability:
        """Whether the framework imports here."""
        try:
            result: Availability = resolve(self.check)()
        except ImportError as exc:
            return Availability(False, f"{self.name} is not installed ({exc})", "")
        return result


# Compile modes per backend, with what each does ("none" first: the default).
COMPILE_MODES: dict[str, dict[str, str]] = {
    "torch": {
        "none": "eager PyTorch",
        "inductor": "torch.compile (inductor): decode fullgraph with a tensor position; prefill",
        "cudagraphs": "inductor with CUDA graphs (mode 'reduce-overhead') for decode; CUDA only",
        "aoti": "AOTInductor (CPU): decode compiled ahead of time to C++; prefill inductor",
    },
    "mlx": {
        "none": "eager MLX (lazy graphs, evaluated per step)",
        "mx.compile": "mx.compile over each block's stateless parts (norms, projections, FFN)",
    },
}

BACKENDS: dict[str, BackendEntry] = {
    "torch": BackendEntry(
        "torch",
        "elmbench.backends.torch_backend:TorchBackend",
        "elmbench.backends.torch_backend:available",
        "PyTorch eager or compiled (CPU, CUDA, Apple MPS)",
    ),
    "mlx": BackendEntry(
        "mlx",
        "elmbench.backends.mlx_backend:MlxBackend",
        "elmbench.backends.mlx_backend:available",
        "MLX (Metal on Apple silicon; CPU on Linux)",
    ),
}


def create_backend(name: str, spec: ModelSpec) -> Backend:
    """Load `spec` on the named backend; unknown or unavailable backends are clear errors."""
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, BACKENDS)
    entry = BACKENDS[name]
    status = entry.available()
    if not status.ok:
        raise UnavailableError(f"backend '{name}'", status.reason, status.hint)
    backend: Backend = resolve(entry.target)(spec)
    return backend
