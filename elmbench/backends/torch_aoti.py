"""Decode through AOTInductor: the step exported once and compiled ahead of time to C++.

`torch.compile` runs each decode step through Python wrappers (dynamo's guards, AOT autograd's
runtime, the compiled graph's call); AOTInductor compiles the exported step into a shared library
that one call runs, with no Python in between. The library is built without the weights
(`package_constants_in_so=False`) and then pointed at the model's own parameters and KV-cache
buffers (`user_managed=True`): no copy of the weights, and the cache it writes is the one prefill
filled. With elmbench's engine, its kernels are called through their C shims
(`cpu_kernels.aoti_c_shims`) instead of the proxy executor, and the generated kernels of decode's
size run on one thread (`DECODE_MIN_CHUNK`); measurements are in docs/engine.md.

The first call of each token shape exports and compiles (about 15 s at 270M), which the throughput
protocol counts as warm-up; `reset` (after new KV-cache buffers) drops what was built. CPU only:
the constants are handed over as non-owning aliases made through numpy (see `_unowned`).
"""

from __future__ import annotations

import ctypes
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class _DecodeStep(nn.Module):
    """The model's cached decode with the greedy choice, as one module to export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model.decode(tokens, position)  # type: ignore[operator]
        return logits.argmax(-1)


class AotiDecode:
    """Greedy decode (tokens (B, 1), position (1,) tensor) through AOTInductor, built per shape."""

    def __init__(self, model: nn.Module, engine: bool = False) -> None:
        self.step = _DecodeStep(model)
        self.engine = engine
        self.runners: dict[tuple[int, ...], Any] = {}  # by token shape (long, on the CPU)

    def reset(self) -> None:
        """Forget the built libraries: they point at buffers that setup has just replaced."""
        self.runners.clear()

    def __call__(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        shape = tuple(tokens.shape)
        runner = self.runners.get(shape)
        if runner is None:
            runner = self.runners[shape] = self._build(tokens, position)
        (out,) = runner.loader.boxed_run([tokens, position])
        return out

    def _build(self, tokens: torch.Tensor, position: torch.Tensor) -> Any:
        with _quiet_pytree(), tempfile.TemporaryDirectory(prefix="elmbench-aoti-") as tmp:
            exported = torch.export.export(self.step, (tokens, position), strict=False)
            package = compile_package(exported, Path(tmp) / "decode.pt2", self.engine)
            runner = torch._inductor.aoti_load_package(package)
        _forget_last_trace()
        tensors = dict(self.step.named_parameters()) | dict(self.step.named_buffers())
        constants = {name: _unowned(tensors[name]) for name in runner.get_constant_fqns()}
        runner.load_constants(constants, check_full_update=True, user_managed=True)
        return runner


# Elements each thread must get before inductor runs a generated kernel on several threads
# (its default: 512). A decode step's norms, RoPE and activations hold a few thousand elements:
# serial, they skip an OpenMP region each (about 50 a token at 270M), whose forks and barriers
# cost more than the work.
DECODE_MIN_CHUNK = 32768


def compile_package(
    exported: torch.export.ExportedProgram, path: Path, engine: bool = False
) -> str:
    """AOTInductor's package of an exported program, without its weights (they are handed over
    at load). With elmbench's engine, its kernels are called through their C shims and
    decode-sized generated kernels run on one thread; otherwise inductor's defaults hold."""
    configs: dict[str, Any] = {"aot_inductor.package_constants_in_so": False}
    if engine:
        from elmbench.engine import cpu_kernels

        configs["aot_inductor.custom_ops_to_c_shims"] = cpu_kernels.aoti_c_shims()
        configs["cpp.min_chunk_size"] = DECODE_MIN_CHUNK
    with _quiet_pytree():
        package: str = torch._inductor.aoti_compile_and_package(
            exported, package_path=str(path), inductor_configs=configs
        )
    return package


@contextmanager
def _quiet_pytree() -> Iterator[None]:
    """Silence the FutureWarning that torch 2.13's export and AOTInductor raise about their own
    use of a deprecated pytree API (nothing a user can change)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*LeafSpec.* is deprecated", FutureWarning)
        yield


def _unowned(tensor: torch.Tensor) -> torch.Tensor:
    """The CPU tensor's memory seen through a tensor that does not own it.

    torch 2.13's AOTInductor loader never releases the tensors it is given as user-managed
    constants, so handing it the parameters themselves kept the whole model alive after the
    benchmark dropped it (1.1 GB of 270M's weights per build). It gets these aliases instead
    (numpy over the raw address): what it keeps is a small wrapper, and the weights and cache are
    freed with the model, which `AotiDecode` keeps alive for as long as the library can run.
    """
    storage = tensor.untyped_storage()
    raw = (ctypes.c_uint8 * storage.nbytes()).from_address(storage.data_ptr())
    flat = torch.from_numpy(np.ctypeslib.as_array(raw)).view(tensor.dtype)
    return flat.as_strided(tensor.shape, tensor.stride(), tensor.storage_offset())


def _forget_last_trace() -> None:
    """Drop torch's module-level map from the last export trace's fake tensors to graph nodes.

    torch (2.13) keeps it until the next trace; through the traced graph it holds the model's
    weights after the model is gone.
    """
    from torch.fx.experimental import proxy_tensor

    getattr(proxy_tensor, "_FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT", {}).clear()
