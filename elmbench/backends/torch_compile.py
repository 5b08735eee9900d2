"""Compile modes of the torch backend: eager, torch.compile (inductor), AOTInductor, CUDA graphs.

Decode is compiled whole (fullgraph) with the position as a tensor, so one graph serves every
step of a shape; the first calls compile, which the throughput protocol counts as warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from elmbench.backends import COMPILE_MODES
from elmbench.errors import UnavailableError, UnknownNameError

TORCH_COMPILE_MODES = COMPILE_MODES["torch"]
MLX_COMPILE_MODES = COMPILE_MODES["mlx"]

TokenStep = Callable[[torch.Tensor], torch.Tensor]
DecodeStep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# The modes that run on one kind of device only: that device type, and why.
_DEVICE_OF_MODE = {
    "cudagraphs": ("cuda", "CUDA graphs need a CUDA device"),
    "aoti": ("cpu", "elmbench runs AOTInductor on the CPU only"),
}


def check_compile_mode(mode: str, device: torch.device) -> None:
    """A torch compile mode that runs on `device`, or a clear error naming what is allowed."""
    allowed = ", ".join(TORCH_COMPILE_MODES)
    if mode in MLX_COMPILE_MODES and mode not in TORCH_COMPILE_MODES:
        raise UnavailableError(
            f"--compile {mode} with the torch backend",
            "it is an MLX compile mode",
            f"Use --backend mlx, or one of the torch modes: {allowed}",
        )
    if mode not in TORCH_COMPILE_MODES:
        raise UnknownNameError("torch compile mode", mode, TORCH_COMPILE_MODES)
    needs = _DEVICE_OF_MODE.get(mode)
    if needs is not None and device.type != needs[0]:
        raise UnavailableError(
            f"--compile {mode}",
            f"{needs[1]}, not '{device.type}'",
            "On this device use --compile none or --compile inductor",
        )


@dataclass
class Steps:
    """The model's prefill and decode as the mode runs them, returning greedy next tokens (B, 1)."""

    mode: str
    prefill: TokenStep
    decode: DecodeStep  # (tokens (B, 1), position (1,) tensor on the model's device)
    details: dict[str, Any] = field(default_factory=dict)
    reset: Callable[[], None] = lambda: None  # after setup replaced the KV-cache buffers


def compile_steps(model: nn.Module, mode: str, engine: bool = False) -> Steps:
    """Wrap `model`'s prefill and cached decode (tensor position) for the compile mode.

    Nothing compiles here: torch.compile works on the first call of each shape. With `engine`,
    AOTInductor calls elmbench's kernels through their C shims (see `torch_aoti`).
    """
    steps: Any = model

    def prefill(tokens: torch.Tensor) -> torch.Tensor:
        return steps.prefill(tokens).argmax(-1)

    def decode(tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return steps.decode(tokens, position).argmax(-1)

    if mode == "none":
        return Steps(mode, prefill, decode, {"compile": "none (eager)"})
    if mode == "inductor":
        on_cpu = next(model.parameters()).device.type == "cpu"
        options = decode_options(cpp_wrapper=on_cpu)
        decode_kind = "fullgraph, static shapes"
        decode_kind += (
            ", guards on inputs and global state only" if "guard_filter_fn" in options else ""
        )
        decode_kind += ", C++ wrapper" if options.get("cpp_wrapper") else ""
        return Steps(
            mode,
            torch.compile(prefill),
            torch.compile(decode, fullgraph=True, dynamic=False, options=options),
            {"compile": "inductor", "decode": decode_kind, "prefill": "default"},
        )
    if mode == "aoti":
        from elmbench.backends.torch_aoti import AotiDecode

        aoti = AotiDecode(model, engine)
        details = {
            "compile": "aoti",
            "decode": "AOTInductor, on the model's own weights and cache",
            "prefill": "inductor",
        }
        return Steps(mode, torch.compile(prefill), aoti, details, aoti.reset)
    # mode="reduce-overhead" is these inductor options; the guard filter matters most here, where
    # a replayed step's GPU time can be shorter than checking every parameter's guard.
    options = {**decode_options(), "triton.cudagraphs": True}
    decode_kind = "inductor + CUDA graphs, fullgraph, static shapes"
    if "guard_filter_fn" in options:  # (torch.compile takes it out of the options)
        decode_kind += ", guards on inputs and global state only"
    graphed = torch.compile(decode, fullgraph=True, dynamic=False, options=options)

    def decode_graphed(tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        # A CUDA graph's outputs live in its static pool and the next replay overwrites them.
        return graphed(tokens, position).clone()

    return Steps(
        mode,
        prefill,
        decode_graphed,
        {"compile": "cudagraphs", "decode": decode_kind, "prefill": "eager"},
    )


def input_guards_only(guard_entries: list[Any]) -> list[bool]:
    """Dynamo guard filter for decode: keep global state, shapes and non-parameter tensors.

    Each decode call otherwise re-checks every parameter tensor and module attribute of a model
    that does not change while it is benchmarked, a cost paid on every token. The tokens,
    position and KV-cache buffers are still checked.
    """
    return [
        e.guard_type in ("GLOBAL_STATE", "SHAPE_ENV")
        or (e.guard_type == "TENSOR_MATCH" and not isinstance(e.value, nn.Parameter))
        for e in guard_entries
    ]


def decode_options(cpp_wrapper: bool = False) -> dict[str, Any]:
    """torch.compile options for decode (guard filters need torch 2.8 or newer).

    `cpp_wrapper` (used on the CPU) has inductor call the step's ~150 kernels and ops from C++
    instead of a Python function, which takes the interpreter out of every step.
    """
    options: dict[str, Any] = {"cpp_wrapper": True} if cpp_wrapper else {}
    if hasattr(torch.compiler, "keep_tensor_guards_unsafe"):
        options["guard_filter_fn"] = input_guards_only
    return options


def mark_cache_static(model: nn.Module) -> None:
    """Give CUDA graphs fixed KV-cache addresses (the buffers are written in place each step)."""
    from elmbench.models.openelm_torch import KVCache

    for module in model.modules():
        if isinstance(module, KVCache):
            torch._dynamo.mark_static_address(module.k)
            torch._dynamo.mark_static_address(module.v)
