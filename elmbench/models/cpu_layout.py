"""CPU decode layout: few-row linears through a streaming GEMV kernel, chosen per matrix by a probe.

Decode on a CPU reads every weight once per token, so it runs at the speed of matrix-vector
products. BLAS sgemv/sgemm with one row (MKL on this class of machine) leaves much of the memory
bandwidth unused; a plain C kernel that walks contiguous blocks of four weight rows on every thread
streams at close to the read roofline. Like the weight prepacking of inference engines, this is
decided once per model and batch size: a short timed probe keeps, for each matrix, whichever of
the kernel and `F.linear` is faster. Row-major weights already stream, so nothing is repacked.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from elmbench.models.openelm_torch import OpenELM

MAX_KERNEL_ROWS = 8  # the kernel rereads each 4-row block per input row: right for decode only

# GCC/Clang vector extensions: 8-float registers (AVX2 on x86, two NEON on arm64) without
# intrinsics; -march=native picks the instructions. One block = four weight rows, so each thread
# streams four sequential lines; OpenMP splits the blocks into one contiguous range per thread.
KERNEL_SOURCE = r"""
#include <stdint.h>
#include <string.h>

typedef float vf __attribute__((vector_size(32)));
#define LANES 8

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < LANES; ++i) s += v[i];
  return s;
}

static void rows4(const float *w, const float *x, float *y, int64_t k) {
  const float *w1 = w + k, *w2 = w1 + k, *w3 = w2 + k;
  vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
  int64_t j = 0, kv = k - k % LANES;
  for (; j < kv; j += LANES) {
    vf xv = load(x + j);
    a0 += load(w + j) * xv;
    a1 += load(w1 + j) * xv;
    a2 += load(w2 + j) * xv;
    a3 += load(w3 + j) * xv;
  }
  float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
  for (; j < k; ++j) {
    s0 += w[j] * x[j];
    s1 += w1[j] * x[j];
    s2 += w2[j] * x[j];
    s3 += w3[j] * x[j];
  }
  y[0] = s0; y[1] = s1; y[2] = s2; y[3] = s3;
}

static void row1(const float *w, const float *x, float *y, int64_t k) {
  vf a = {0};
  int64_t j = 0, kv = k - k % LANES;
  for (; j < kv; j += LANES) a += load(w + j) * load(x + j);
  float s = hsum(a);
  for (; j < k; ++j) s += w[j] * x[j];
  *y = s;
}

/* y (m, n) = x (m, k) @ w (n, k)^T, all row-major and contiguous. */
void elm_gemv_f32(const float *w, const float *x, float *y, int64_t n, int64_t k, int64_t m,
                  int threads) {
  int64_t blocks = (n + 3) / 4;
  /* Small matrices stay on one thread: waking the others costs more than it saves. */
#pragma omp parallel for num_threads(threads) schedule(static) if (n * k >= 32768)
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t r0 = 4 * b;
    for (int64_t i = 0; i < m; ++i) {
      if (r0 + 4 <= n) {
        rows4(w + r0 * k, x + i * k, y + i * n + r0, k);
      } else {
        for (int64_t r = r0; r < n; ++r) row1(w + r * k, x + i * k, y + i * n + r, k);
      }
    }
  }
}
"""

_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-mcpu=native", "-fopenmp"],  # clang on arm64 spells it -mcpu
    ["-O3", "-march=native"],  # no OpenMP (Apple clang): one thread, and the probe decides
)


class KernelUnavailable(RuntimeError):
    """The GEMV kernel could not be built here (no C compiler, or it failed)."""


@dataclass(frozen=True)
class GemvKernel:
    """The built kernel and how it was built."""

    function: Any  # ctypes function elm_gemv_f32
    library: str
    flags: tuple[str, ...]

    def describe(self) -> str:
        """How the kernel was compiled, for records."""
        return f"elm_gemv_f32 ({' '.join(self.flags)})"


def cache_dir() -> Path:
    """Where built kernels are kept ($ELMBENCH_CACHE, else ~/.cache/elmbench)."""
    root = os.environ.get("ELMBENCH_CACHE") or Path.home() / ".cache" / "elmbench"
    return Path(root) / "kernels"


def _compile(compiler: str, flags: list[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "elm_gemv.c"
        src.write_text(KERNEL_SOURCE)
        lib = Path(tmp) / out.name
        cmd = [compiler, *flags, "-shared", "-fPIC", str(src), "-o", str(lib)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise KernelUnavailable(done.stderr.strip().splitlines()[-1] if done.stderr else "")
        os.replace(lib, out)  # atomic: concurrent builders never load a half-written file


@functools.cache
def load_kernel() -> GemvKernel:
    """Build (once per machine, cached on disk) and load the kernel; KernelUnavailable if not."""
    compiler = os.environ.get("CC", "cc")
    errors = []
    for flags in _FLAG_SETS:
        key = "\0".join([KERNEL_SOURCE, compiler, *flags, platform.machine(), platform.node()])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = cache_dir() / f"elm_gemv-{digest}.so"
        try:
            if not path.exists():
                _compile(compiler, flags, path)
            lib = ctypes.CDLL(str(path))
        except (OSError, subprocess.SubprocessError, KernelUnavailable) as exc:
            errors.append(f"{compiler} {' '.join(flags)}: {exc}")
            continue
        fn = lib.elm_gemv_f32
        i64 = ctypes.c_int64
        fn.argtypes = [ctypes.c_void_p] * 3 + [i64, i64, i64, ctypes.c_int]
        fn.restype = None
        return GemvKernel(fn, str(path), (compiler, *flags))
    raise KernelUnavailable("; ".join(errors))


def gemv_eager(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T through the kernel (fp32, CPU, few rows)."""
    kernel = load_kernel()
    x = x.contiguous()
    n, k = weight.shape
    out = x.new_empty((*x.shape[:-1], n))
    rows = x.numel() // k
    kernel.function(
        weight.data_ptr(), x.data_ptr(), out.data_ptr(), n, k, rows, torch.get_num_threads()
    )
    return out


@torch.library.custom_op("elmbench::gemv", mutates_args=())
def gemv_op(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The kernel as an opaque op, so that torch.compile graphs can call it."""
    return gemv_eager(x, weight.contiguous())


@gemv_op.register_fake
def _gemv_fake(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The kernel: direct in eager (no dispatcher round trip), the custom op under compile."""
    if torch.compiler.is_compiling():
        return torch.ops.elmbench.gemv(x, weight)
    return gemv_eager(x, weight)


class ChosenLinear:
    """`F.linear` or the kernel, by the row count of the input: the probe's choice per matrix."""

    def __init__(self) -> None:
        self.kernel_rows: set[int] = set()

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.numel() // weight.shape[1] in self.kernel_rows:
            return gemv(x, weight)
        return F.linear(x, weight)


class StreamingLinear(nn.Module):
    """A bias-free `nn.Linear` stand-in (same `weight` parameter) that uses `ChosenLinear`."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.choose = ChosenLinear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.choose(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


@dataclass
class _Target:
    kind: str  # the module's own name: qkv_proj, out_proj, proj_1, proj_2, head, ...
    weight: torch.Tensor
    choose: ChosenLinear


@dataclass
class CpuLayout:
    """The streaming linears of one model and, per probed row count, what the probe chose."""

    kernel: GemvKernel
    targets: list[_Target]
    probes: dict[int, dict[str, Any]] = field(default_factory=dict)

    def prepare(self, rows: int, repeats: int = 5) -> dict[str, Any]:
        """Probe (once per row count) `F.linear` and the kernel per kind of matrix; keep the faster.

        Kinds (qkv_proj, out_proj, proj_1, proj_2, head) share shapes and access patterns; one
        decision per kind over all its matrices is far steadier on a busy machine than one per
        matrix.
        """
        if rows in self.probes:
            return self.probes[rows]
        if rows > MAX_KERNEL_ROWS:
            self.probes[rows] = {"rows": rows, "skipped": f"more than {MAX_KERNEL_ROWS} rows"}
            return self.probes[rows]
        methods: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
            "aten": F.linear,
            "gemv": gemv_eager,
        }
        inputs = [torch.randn(rows, t.weight.shape[1], dtype=t.weight.dtype) for t in self.targets]
        best = [dict.fromkeys(methods, float("inf")) for _ in self.targets]
        order = list(methods)
        with torch.inference_mode():
            for fn in methods.values():  # warm-up: build, page in, wake the threads
                fn(inputs[0], self.targets[0].weight)
            for _ in range(repeats):
                # Whole sweeps, methods alternating A B B A: each matrix arrives cold (a sweep is
                # far larger than the cache), as in decode; a busy spell hits both methods alike.
                for name in order:
                    for target, x, times in zip(self.targets, inputs, best, strict=True):
                        start = time.perf_counter()
                        methods[name](x, target.weight)
                        times[name] = min(times[name], time.perf_counter() - start)
                order.reverse()
        seconds: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(methods, 0.0))
        nbytes: dict[str, int] = defaultdict(int)
        for target, times in zip(self.targets, best, strict=True):
            nbytes[target.kind] += target.weight.numel() * target.weight.element_size()
            for name in methods:
                seconds[target.kind][name] += times[name]
        chosen = {kind: min(sec, key=lambda m: sec[m]) for kind, sec in seconds.items()}
        for target in self.targets:
            if chosen[target.kind] == "gemv":
                target.choose.kernel_rows.add(rows)
        self.probes[rows] = {
            "rows": rows,
            "chosen": chosen,
            "probe_gb_per_s": {
                kind: {m: round(nbytes[kind] / s / 1e9, 2) for m, s in sec.items()}
                for kind, sec in seconds.items()
            },
        }
        return self.probes[rows]

    def describe(self) -> dict[str, Any]:
        """The kernel, threads and every probe's choices, for records."""
        return {
            "kernel": self.kernel.describe(),
            "threads": torch.get_num_threads(),
            "matrices": len(self.targets),
            "probes": list(self.probes.values()),
        }


def applies(model: nn.Module) -> str | None:
    """Why the layout does not apply to `model` (None when it does): fp32 on the CPU only.

    ELMBENCH_GEMV=off turns it off, for measuring the stock kernels against it.
    """
    if os.environ.get("ELMBENCH_GEMV", "").lower() in ("0", "off", "no", "false"):
        return "turned off by ELMBENCH_GEMV"
    weight = next(model.parameters())
    if weight.device.type != "cpu":
        return f"device {weight.device.type} (the kernel is for the CPU)"
    if weight.dtype != torch.float32:
        return f"dtype {str(weight.dtype).removeprefix('torch.')} (the kernel is fp32)"
    return None


def apply_cpu_layout(model: nn.Module) -> CpuLayout:
    """Swap every bias-free `nn.Linear` (and the tied head, via `head_linear`) for the chooser.

    Parameters stay the same objects under the same names, so state dicts and parameter counts do
    not change; `F.linear` stays in use until `prepare(rows)` has probed a row count.
    """
    kernel = load_kernel()
    targets: list[_Target] = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and module.bias is None:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            streaming = StreamingLinear(module.weight)
            setattr(parent, child, streaming)
            targets.append(_Target(child, streaming.weight, streaming.choose))
    if isinstance(model, OpenELM):  # the tied head is a function of the embedding
        head = ChosenLinear()
        model.head_linear = head
        targets.append(_Target("head", model.transformer.token_embeddings.weight, head))
    return CpuLayout(kernel, targets)
