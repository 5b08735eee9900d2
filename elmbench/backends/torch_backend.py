"""The torch backend: OpenELM (or a comparison model) in PyTorch on CPU, CUDA or Apple MPS.

Stock PyTorch unless the spec asks for elmbench's engine (`kernels: elmbench`, CPU only:
`elmbench.engine`); `describe()` records which kernels ran and what the engine did.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from elmbench.backends import Backend, ModelSpec
from elmbench.backends.torch_compile import check_compile_mode, compile_steps, mark_cache_static
from elmbench.engine.torch_engine import ENGINE, KERNELS, STOCK, TorchEngine, unsupported
from elmbench.errors import ConfigError, UnavailableError, UnknownNameError
from elmbench.measure.rss import reset_rss_peak, rss_peak_bytes
from elmbench.models.comparison import COMPARISON_MODELS
from elmbench.norms import Availability

if TYPE_CHECKING:
    from elmbench.models.comparison import HFCausalLM
    from elmbench.models.openelm_torch import OpenELM


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


class TorchBackend(Backend):
    """OpenELM (elmbench.models.openelm_torch) or a comparison model behind the backend seam."""

    name = "torch"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if spec.quantize:
            raise UnavailableError(
                "--quantize with the torch backend",
                "quantized weights are an MLX feature here",
                "Use --backend mlx, or drop --quantize",
            )
        self.device = torch_device(spec.device)
        self._rss_window = False  # whether the CPU peak has been restarted (reset_peak_memory)
        check_compile_mode(spec.compile, self.device)
        self.model: OpenELM | HFCausalLM
        self.comparison = spec.model in COMPARISON_MODELS
        if spec.model is not None and self.comparison:
            self._load_comparison(spec.model, spec)
        else:
            from elmbench.checkpoints.torch_load import load_model

            self.model, self.source = load_model(
                spec.model,
                spec.weights,
                spec.norm,
                spec.dtype,
                self.device,
                spec.seed,
                spec.crop_vocab,
            )
        self.config = self.model.config
        self.engine = self._engine(spec.kernels)
        self.steps = compile_steps(self.model, spec.compile, engine=self.engine is not None)
        self.positions: list[torch.Tensor] = []  # one tensor per position, kept across setups
        self.max_seq_len = 0

    def _load_comparison(self, name: str, spec: ModelSpec) -> None:
        from elmbench.checkpoints import WeightsSource
        from elmbench.checkpoints.torch_load import torch_dtype
        from elmbench.models.comparison import build_comparison

        if spec.weights is not None:
            raise ConfigError(
                f"'{spec.model}' is a comparison model with seeded random weights; "
                "drop --weights, or give an OpenELM preset"
            )
        if spec.compile != "none":
            raise UnavailableError(
                f"--compile {spec.compile} with '{spec.model}'",
                "comparison models run through transformers' own (dynamic) KV cache",
                "Use --compile none for comparison models",
            )
        self.model = build_comparison(
            name, spec.norm, torch_dtype(spec.dtype), self.device, spec.seed
        )
        self.source = WeightsSource("random", seed=spec.seed)

    def _engine(self, kernels: str) -> TorchEngine | None:
        """elmbench's engine where the spec asks for it (CPU only), else None: stock PyTorch."""
        if kernels == STOCK:
            return None
        if kernels != ENGINE:
            raise UnknownNameError("kernels", kernels, KERNELS)
        reason = unsupported(str(self.device))
        if reason is not None:
            raise UnavailableError("--kernels elmbench", reason, "Use --kernels stock")
        return TorchEngine.apply(self.model, self.comparison)

    def setup(self, batch_size: int, max_seq_len: int) -> None:
        """Allocate the static KV cache; probe the CPU layout for this batch size (once)."""
        self.model.setup_cache(batch_size, max_seq_len)
        self.steps.reset()
        if self.engine is not None:
            self.engine.prepare(batch_size)
        if self.spec.compile == "cudagraphs":
            mark_cache_static(self.model)
        # One tensor per position, made now: a decode step then needs no host-to-device copy.
        self.max_seq_len = max_seq_len
        for p in range(len(self.positions), max_seq_len):
            self.positions.append(torch.tensor([p], device=self.device))

    @torch.inference_mode()
    def prefill(self, tokens: np.ndarray) -> torch.Tensor:
        """Prompt through the cache; greedy next tokens (B, 1)."""
        x = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        return self.steps.prefill(x)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """One cached step; greedy next tokens (B, 1)."""
        if not 0 <= position < self.max_seq_len:
            raise ConfigError(
                f"decode at position {position}, but setup() allocated {self.max_seq_len} "
                "positions; call setup with a larger max_seq_len"
            )
        return self.steps.decode(tokens, self.positions[position])

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

    def memory_limit_bytes(self) -> int | None:
        """CUDA: the GPU's memory; MPS: Metal's recommended working set; CPU: None."""
        if self.device.type == "cuda":
            return int(torch.cuda.mem_get_info(self.device)[1])
        if self.device.type == "mps":
            return int(torch.mps.recommended_max_memory())
        return None

    @property
    def packs_rows(self) -> bool:  # type: ignore[override]
        """OpenELM scores packed rows; comparison models run as transformers builds them."""
        return not self.comparison

    @torch.inference_mode()
    def score_packed(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        mask: np.ndarray,
        rows: np.ndarray,
        targets: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Target log-probs and argmax flags at flat positions of packed rows, from one forward."""
        if not self.packs_rows:
            return super().score_packed(tokens, positions, mask, rows, targets)
        unique, inverse = np.unique(rows, return_inverse=True)  # a position may score several

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, device=self.device)

        model: OpenELM = self.model  # type: ignore[assignment]
        logits = model.packed_logits(
            tensor(tokens), tensor(positions), tensor(mask), tensor(unique)
        )
        logp = torch.log_softmax(logits.float(), dim=-1)  # (U, V)
        at, want = tensor(inverse.reshape(-1)), tensor(targets)
        picked = logp[at, want]
        greedy = logp.argmax(-1)[at] == want
        return picked.cpu().numpy(), greedy.cpu().numpy()

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
        # the RSS peak since the last reset where Linux allows one, else since the process began
        return (
            rss_peak_bytes(),
            "process_rss_peak" if self._rss_window else "process_rss_peak_lifetime",
        )

    def reset_peak_memory(self) -> None:
        """Reset the CUDA peak counter, or restart the process's RSS peak (Linux)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.device.type == "cpu":
            self._rss_window = reset_rss_peak()

    def describe(self) -> dict[str, Any]:
        """torch version, device name, model and weights identity."""
        if self.device.type == "cuda":
            device_name = torch.cuda.get_device_name(self.device)
        else:
            device_name = platform.processor() or platform.machine()
        facts: dict[str, Any] = {
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
            "compile": self.spec.compile,
            "compile_details": self.steps.details,
            "kernels": self.spec.kernels,
            "engine": None if self.engine is None else self.engine.describe(),
        }
        facts["num_norms"] = self.config.num_norms
        native = getattr(self.config, "native_norm", None)
        if native is not None:
            facts["native_norm"] = native
        return facts
