"""elmbench's CPU decode kernels (`cpu_kernels.c`): built once per machine, called from torch.

Two kernels, for a few rows at a time (decode): `elm_gemv_f32` and `elm_gemv_bf16`, a
matrix-vector product (fp32 or bf16 weights, fp32 arithmetic; long rows stored as column panels)
in which each thread streams its own contiguous range of weight rows, and
`elm_attend_f32`, attention of a few query rows over the KV cache that reads only its filled part,
split over threads by chunks of keys. They are built with the system C compiler (`$CC`, else `cc`)
and cached on disk (`$ELMBENCH_CACHE/kernels`, else `~/.cache/elmbench/kernels`); without a
compiler `KernelUnavailable` says why and the stock torch kernels run instead. Each is also a
torch op (`elmbench::gemv`, `elmbench::attend`), so `torch.compile` graphs call it as one opaque
node; the ops' CPU implementations are a small C++ binding (`cpu_ops.cpp`, built with `$CXX`, else
`c++`, against torch's headers), or Python where that does not build. The C++ binding also
defines the ops' C shims, which AOTInductor's libraries call directly (`aoti_c_shims`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from elmbench.engine.native import KernelUnavailable, cache_dir, compile_library

MAX_ATTEND_ROWS = 64  # query rows per KV head the attention kernel takes (MAX_ROWS in the C file)

_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-mcpu=native", "-fopenmp"],  # clang on arm64 spells it -mcpu
    ["-O3", "-march=native"],  # no OpenMP (Apple clang): one thread, and the probe decides
)


@dataclass(frozen=True)
class CpuKernels:
    """The built kernels, how they were built, and what implements the torch ops."""

    gemv: Any  # ctypes function elm_gemv_f32
    attend: Any  # ctypes function elm_attend_f32
    gemv_bf16: Any  # ctypes function elm_gemv_bf16
    library: str
    flags: tuple[str, ...]
    ops: str = ""

    def describe(self) -> str:
        """How the kernels were compiled, for records."""
        kernels = "elm_gemv_f32, elm_gemv_bf16, elm_attend_f32"
        return f"{kernels} ({' '.join(self.flags)}); ops: {self.ops}"


def kernel_source(name: str = "cpu_kernels.c") -> str:
    """A kernel source file shipped with elmbench."""
    return resources.files("elmbench.engine").joinpath(name).read_text()


def _bind(lib: ctypes.CDLL) -> tuple[Any, Any, Any]:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    gemvs = lib.elm_gemv_f32, lib.elm_gemv_bf16
    for gemv in gemvs:
        gemv.argtypes = [ptr] * 3 + [i64] * 4 + [ctypes.c_int]
        gemv.restype = None
    attend = lib.elm_attend_f32
    attend.argtypes = [ptr] * 5 + [i64] * 6 + [ctypes.c_float, ctypes.c_int]
    attend.restype = ctypes.c_int
    return gemvs[0], attend, gemvs[1]


@functools.cache
def load_kernels() -> CpuKernels:
    """Build (once per machine, cached on disk) and load the kernels; KernelUnavailable if not."""
    compiler = os.environ.get("CC", "cc")
    source = kernel_source()
    errors = []
    for flags in _FLAG_SETS:
        key = "\0".join([source, compiler, *flags, platform.machine(), platform.node()])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = cache_dir() / f"elm_kernels-{digest}.so"
        try:
            if not path.exists():
                compile_library(source, compiler, flags, path)
            gemv_fn, attend_fn, gemv_bf16_fn = _bind(ctypes.CDLL(str(path)))
        except (OSError, AttributeError, subprocess.SubprocessError, KernelUnavailable) as exc:
            errors.append(f"{compiler} {' '.join(flags)}: {exc}")
            continue
        ops = _register_ops(str(path))
        return CpuKernels(gemv_fn, attend_fn, gemv_bf16_fn, str(path), (compiler, *flags), ops)
    raise KernelUnavailable("; ".join(errors))


def _build_ops(library: str) -> Path:
    """Build (cached on disk) the C++ binding of the ops, linked to the kernel `library`."""
    compiler = os.environ.get("CXX", "c++")
    root = Path(torch.__file__).parent
    flags = [
        "-O2",
        "-std=c++20",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{root / 'include'}",
    ]
    libs = (f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}", "-lc10", "-ltorch_cpu", library)
    source = kernel_source("cpu_ops.cpp")
    key = "\0".join([source, compiler, *flags, *libs, torch.__version__])
    path = cache_dir() / f"elm_ops-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if not path.exists():
        compile_library(source, compiler, flags, path, libs, suffix=".cpp")
    return path


_ops_implementation: list[str] = []  # set once a process: a kernel is registered only once

# The ops' C shims that cpu_ops.cpp also defines, by op: the symbol and its inputs.
_C_SHIMS = {
    "gemv": ("aoti_torch_cpu_gemv", "AtenTensorHandle x, AtenTensorHandle weight"),
    "attend": (
        "aoti_torch_cpu_attend",
        "AtenTensorHandle q, AtenTensorHandle k, AtenTensorHandle v, AtenTensorHandle pos",
    ),
}


def _register_ops(library: str) -> str:
    """Give `elmbench::gemv` and `elmbench::attend` their CPU implementations (once a process):
    the C++ binding where it builds (a call then never enters Python), else Python."""
    if not _ops_implementation:
        try:
            path = _build_ops(library)
            # global, so that AOTInductor's libraries find the binding's C shims (aoti_c_shims)
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            torch.ops.load_library(str(path))
            _ops_implementation.append(f"C++ ({path.name})")
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _LIBRARY.impl("gemv", gemv_eager, "CPU")
            _LIBRARY.impl("attend", attend_eager, "CPU")
            _ops_implementation.append(f"Python (the C++ binding did not build: {exc})")
    return _ops_implementation[0]


def aoti_c_shims() -> dict[Any, list[str]]:
    """The ops' C shims, for AOTInductor's `aot_inductor.custom_ops_to_c_shims`, where the
    process sees them (the C++ binding, loaded globally; else none): its generated code then
    calls them directly instead of through its proxy executor, which boxes every call's
    arguments (81 calls a token at 270M)."""
    process = ctypes.CDLL(None)
    if not all(hasattr(process, symbol) for symbol, _ in _C_SHIMS.values()):
        return {}
    return {
        getattr(torch.ops.elmbench, op).default: [
            f"AOTITorchError {symbol}({inputs}, AtenTensorHandle* out)"
        ]
        for op, (symbol, inputs) in _C_SHIMS.items()
    }


def gemv_eager(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ weight^T through the kernel (fp32 or bf16 weights, CPU, few rows).

    `weight` is (N, K), or (P, N, K / P): column panels (`to_panels`). The arithmetic is fp32
    either way; a bf16 input and result are converted at the ends.
    """
    kernels = load_kernels()
    kernel = kernels.gemv_bf16 if weight.dtype == torch.bfloat16 else kernels.gemv
    xf = x.to(torch.float32).contiguous()
    panels = panels_of(weight)
    n, k = weight.shape[-2], weight.shape[-1] * panels
    if x.shape[-1] != k:
        raise ValueError(f"gemv: x {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
    weight = weight.contiguous()
    out = xf.new_empty((*x.shape[:-1], n))
    rows = x.numel() // k
    ptrs = (weight.data_ptr(), xf.data_ptr(), out.data_ptr())
    kernel(*ptrs, n, k, rows, panels, torch.get_num_threads())
    return out.to(x.dtype)


def panel_count(k: int, widest: int) -> int:
    """The fewest equal column panels of at most `widest` columns, each a multiple of 8 and at
    least an eighth of `widest` wide; 1 when the rows are short enough or no such split exists."""
    if k <= widest:
        return 1
    for panels in range(2, k // max(8, widest // 8) + 1):
        width, rest = divmod(k, panels)
        if rest == 0 and width <= widest and width % 8 == 0:
            return panels
    return 1


def panels_of(weight: torch.Tensor) -> int:
    """How many column panels a GEMV weight holds: P of (P, N, K / P), 1 for an (N, K) matrix."""
    return weight.shape[0] if weight.dim() == 3 else 1


def to_panels(weight: torch.Tensor, panels: int) -> torch.Tensor:
    """(N, K) as (P, N, K / P), each column panel contiguous (a view when P is 1)."""
    n, k = weight.shape
    return weight.view(n, panels, k // panels).transpose(0, 1)


def from_panels(panels: torch.Tensor) -> torch.Tensor:
    """(P, N, K / P) column panels back as the (N, K) matrix (a copy unless P is 1)."""
    p, n, width = panels.shape
    return panels.transpose(0, 1).reshape(n, p * width)


def attend_fits(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the attention kernel takes these shapes: whole GQA groups, few rows per KV head."""
    hq, hkv, rows = q.shape[1], k.shape[1], q.shape[2]
    return hq % hkv == 0 and hq // hkv * rows <= MAX_ATTEND_ROWS


def attend_eager(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """Causal attention of q (B, Hq, T, D) over a cache k, v (B, Hkv, S, D): row t sees 0..pos[t].

    Equals `F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)` with the
    mask `key <= pos[t]`, with the default scale 1/sqrt(D).
    """
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    if not attend_fits(q, k):
        raise ValueError(
            f"attention kernel: {hq} query heads over {hkv} KV heads with {t} rows; needs whole "
            f"groups of at most {MAX_ATTEND_ROWS} rows per KV head"
        )
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    pos = pos.to(torch.int64).contiguous()
    out = torch.empty_like(q)
    ptrs = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), pos.data_ptr())
    status = load_kernels().attend(*ptrs, b, hq, hkv, t, s, d, d**-0.5, torch.get_num_threads())
    if status != 0:
        raise MemoryError(f"attention kernel: no scratch memory (status {status})")
    return out


# The kernels as opaque ops for torch.compile graphs, defined with the dispatcher directly; their
# CPU implementations are registered by `load_kernels` (81 calls a token at 270M, so the cost of
# a call counts). Inference only: no autograd formula.
_LIBRARY = torch.library.Library("elmbench", "DEF")
_LIBRARY.define("gemv(Tensor x, Tensor weight) -> Tensor")
_LIBRARY.define("attend(Tensor q, Tensor k, Tensor v, Tensor pos) -> Tensor")


@torch.library.register_fake("elmbench::gemv")
def _gemv_fake(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[-2]))


@torch.library.register_fake("elmbench::attend")
def _attend_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The GEMV kernel as the op `elmbench::gemv` (after `load_kernels`), eager or compiled."""
    return torch.ops.elmbench.gemv(x, weight)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The attention kernel as the op `elmbench::attend` (after `load_kernels`)."""
    return torch.ops.elmbench.attend(q, k, v, pos)
