"""The torch backend: OpenELM in PyTorch eager on CPU, CUDA or Apple MPS."""

from __future__ import annotations

import platform
import resource
import sys
from typing import Any

import numpy as np
import torch

from elmbench.backends import Backend, ModelSpec
from elmbench.errors import UnavailableError
from elmbench.norms import Availability


def available() -> Availability:
    """torch imports (it is a core dependency, so this holds wherever elmbench installs)."""
    return Availability(True)


def torch_device(name: str) -> torch.device:
    """Validate a torch device name against what is present."""
    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UnavailableError(
            "device 'cuda'",
            "no CUDA GPU is visible to torch",
            "Use --device cpu, or run on a machine with an NVIDIA GPU",
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UnavailableError(
            "device 'mps'", "Apple MPS is not available here", "Use --device cpu"
        )
    if kind not in ("cpu", "cuda", "mps"):
        raise UnavailableError(f"device '{name}'", "torch runs on cpu, cuda[:N] or mps")
    return torch.device(name)


def rss_peak_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class TorchBackend(Backend):
    """OpenELM (elmbench.models.openelm_torch) behind the backend seam."""

    name = "torch"

    def __init__(self, spec: ModelSpec) -> None:
        from elmbench.checkpoints.torch_load import load_model

        super().__init__(spec)
        if spec.quantize:
            raise UnavailableError(
                "--quantize with the torch backend",
                "quantized weights are an MLX feature here",
                "Use --backend mlx, or drop --quantize",
            )
        self.device = torch_device(spec.device)
        self.model, self.source = load_model(
            spec.model, spec.weights, spec.norm, spec.dtype, self.device, spec.seed, spec.crop_vocab
        )
        self.config = self.model.config

    def setup(self, batch_size: int, max_seq_len: int) -> None:
        """Allocate the static KV cache."""
        self.model.setup_cache(batch_size, max_seq_len)

    @torch.inference_mode()
    def prefill(self, tokens: np.ndarray) -> torch.Tensor:
        """Prompt through the cache; greedy next tokens (B, 1)."""
        x = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        return self.model.prefill(x).argmax(-1)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """One cached step; greedy next tokens (B, 1)."""
        return self.model.decode(tokens, position).argmax(-1)

    def to_numpy(self, tokens: torch.Tensor) -> np.ndarray:
        """Tokens on the host."""
        return tokens.cpu().numpy()

    @torch.inference_mode()
    def logprob_rows(
        self, tokens: np.ndarray, lengths: list[int], last: list[int]
    ) -> list[np.ndarray]:
        """fp32 log-softmax rows at each sequence's last positions, from one forward."""
        x = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        logits = self.model(x)  # (B, T, V)
        return [
            torch.log_softmax(logits[b, n - k : n].float(), dim=-1).cpu().numpy()
            for b, (n, k) in enumerate(zip(lengths, last, strict=True))
        ]

    def synchronize(self, value: Any = None) -> None:
        """CUDA/MPS synchronize; CPU work is already done when ops return."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def peak_memory_bytes(self) -> tuple[int, str]:
        """CUDA allocator peak, MPS driver allocation, or process RSS on CPU."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)), "cuda_max_allocated"
        if self.device.type == "mps":
            return int(torch.mps.driver_allocated_memory()), "mps_driver_allocated"
        return rss_peak_bytes(), "process_rss_peak"

    def reset_peak_memory(self) -> None:
        """Reset the CUDA peak counter (RSS peaks cannot be reset)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def describe(self) -> dict[str, Any]:
        """torch version, device name, model and weights identity."""
        if self.device.type == "cuda":
            device_name = torch.cuda.get_device_name(self.device)
        else:
            device_name = platform.processor() or platform.machine()
        return {
            "backend": "torch",
            "torch_version": torch.__version__,
            "device": str(self.device),
            "device_name": device_name,
            "threads": torch.get_num_threads(),
            "model": self.config.name,
            "num_params": self.model.num_parameters(),
            "weights": self.source.describe(),
            "norm": self.spec.norm,
            "dtype": self.spec.dtype,
        }
