"""Which BLAS MLX's CPU matrix products run on, and OpenBLAS in place of the Linux wheel's own.

The Linux `mlx[cpu]` wheel bundles netlib's reference BLAS, a correctness fallback with no
blocking or threading, far slower than an optimised BLAS. MLX built from source on Linux links the
system BLAS instead, so timing the wheel as shipped measures the fallback, not MLX. MLX's CPU
backend calls three BLAS functions (`cblas_sgemm`, `cblas_dgemm`, `cblas_cgemm`); a library
preloaded with `LD_PRELOAD` that defines them is found before the bundled one. elmbench builds
such a library (`mlx_blas_shim.c`) over OpenBLAS from the `scipy-openblas32` wheel and starts the
processes that run MLX with it.

`ELMBENCH_MLX_BLAS` chooses: `auto` (default: OpenBLAS when it can be had, else the bundled BLAS
with a warning), `openblas` (an error when it cannot be had), `bundled` (the wheel as shipped).
Every MLX record names the BLAS that ran (`MlxBackend.describe()["blas"]`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from elmbench.errors import UnavailableError, UnknownNameError

CHOICES = ("auto", "openblas", "bundled")
ENV = "ELMBENCH_MLX_BLAS"
_REEXEC_MARK = "ELMBENCH_MLX_BLAS_REEXEC"
_may_restart = False


@dataclass(frozen=True)
class BlasPlan:
    """What a process that runs MLX should preload (nothing for the bundled BLAS), and why."""

    choice: str
    preload: str | None
    note: str

    def loaded(self) -> bool:
        """Whether this process was started with the preload."""
        return self.preload in os.environ.get("LD_PRELOAD", "").split()

    def env(self) -> dict[str, str]:
        """Environment additions for a child process."""
        if self.preload is None:
            return {}
        current = os.environ.get("LD_PRELOAD", "")
        if self.loaded():
            return {"LD_PRELOAD": current}
        return {"LD_PRELOAD": f"{self.preload} {current}".strip()}


def requested() -> str:
    """The choice from ELMBENCH_MLX_BLAS (default auto), or a clear error."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise UnknownNameError(f"{ENV} value", choice, CHOICES)
    return choice


def build_shim() -> Path:
    """The shim library over scipy-openblas32's OpenBLAS (built once, cached); or why not."""
    from elmbench.engine.native import KernelUnavailable, cache_dir, compile_library

    if platform.system() != "Linux":
        raise UnavailableError(
            "OpenBLAS for MLX", "only the Linux mlx-cpu wheel bundles the reference BLAS"
        )
    try:
        import scipy_openblas32
    except ImportError as exc:
        raise UnavailableError(
            "OpenBLAS for MLX",
            f"scipy-openblas32 is not installed ({exc})",
            f"pip install scipy-openblas32 (it comes with elmbench[mlx]), or set {ENV}=bundled",
        ) from exc
    lib_dir = scipy_openblas32.get_lib_dir()
    source = resources.files("elmbench.backends").joinpath("mlx_blas_shim.c").read_text()
    compiler = os.environ.get("CC", "cc")
    key = "\0".join([source, compiler, lib_dir, platform.node()])
    path = cache_dir() / f"mlx_blas_shim-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if not path.exists():
        libs = (f"-L{lib_dir}", f"-l{scipy_openblas32.get_library()}", f"-Wl,-rpath,{lib_dir}")
        try:
            compile_library(source, compiler, ["-O2"], path, libs)
        except (OSError, subprocess.SubprocessError, KernelUnavailable) as exc:
            raise UnavailableError(
                "OpenBLAS for MLX", f"the shim did not build with {compiler} ({exc})"
            ) from exc
    return path


@functools.cache
def plan() -> BlasPlan:
    """Resolve ELMBENCH_MLX_BLAS once per process: the library to preload, or none and why."""
    choice = requested()
    if choice == "bundled":
        return BlasPlan(choice, None, f"{ENV}=bundled")
    try:
        shim = str(build_shim())
        return BlasPlan(choice, shim, "OpenBLAS (scipy-openblas32) via elmbench's shim")
    except UnavailableError as exc:
        if choice == "openblas":
            raise
        return BlasPlan(choice, None, str(exc))


def warn_if_bundled(blas_plan: BlasPlan, loaded: bool) -> None:
    """One line on stderr when MLX will run on the Linux wheel's reference BLAS unasked."""
    if blas_plan.choice == "bundled" or loaded or not _bundled_reference():
        return
    why = blas_plan.note if blas_plan.preload is None else "OpenBLAS is not preloaded here"
    print(
        f"elmbench: MLX runs on the reference BLAS of the mlx-cpu wheel ({why}); "
        "its CPU timings measure that BLAS",
        file=sys.stderr,
    )


def _bundled_reference() -> bool:
    """Whether the installed MLX is the Linux wheel that bundles the reference BLAS."""
    try:
        import mlx
    except ImportError:
        return False
    libs = Path(mlx.__path__[0]).parent / "mlx_cpu.libs"
    return any(libs.glob("libblas*")) if libs.is_dir() else False


def allow_restart() -> None:
    """Let `ensure_in_process` restart this process: the console script's entry point does;
    library callers and tests (which run commands inside their own process) do not."""
    global _may_restart
    _may_restart = True


def ensure_in_process() -> None:
    """For a command that runs MLX in this process: restart it once with the plan's preload.

    The restart (`exec`) keeps the command line; it happens at most once. Without it (not the
    console script, or the preload did not take) MLX runs on what this process has, and its
    records say which BLAS that was.
    """
    blas_plan = plan()
    loaded = blas_plan.loaded()
    if blas_plan.preload is None or loaded or not _may_restart or os.environ.get(_REEXEC_MARK):
        warn_if_bundled(blas_plan, loaded)
        return
    env = dict(os.environ, **blas_plan.env(), **{_REEXEC_MARK: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "elmbench", *sys.argv[1:]], env)


def describe() -> str:
    """The BLAS this process's MLX calls: the preloaded library's identity, or the bundled one."""
    path = _global_provider("cblas_sgemm")
    if path is not None and "mlx_blas_shim" in Path(path).name:
        config = ctypes.CDLL(path).elm_blas_config
        config.restype = ctypes.c_char_p
        return f"{config().decode().strip()} (scipy-openblas32 via elmbench's shim {path})"
    if path is not None:
        return f"cblas_sgemm from {path}"
    if _bundled_reference():
        return "reference BLAS bundled with the mlx-cpu wheel"
    return "the BLAS MLX was built with"


def _global_provider(symbol: str) -> str | None:
    """The file of the library that defines `symbol` in the global scope (preloads), if any."""

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    try:
        address = ctypes.cast(getattr(ctypes.CDLL(None), symbol), ctypes.c_void_p).value
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    except (AttributeError, OSError):
        return None
    info = DlInfo()
    if not address or not libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)):
        return None
    return info.dli_fname.decode() if info.dli_fname else None
