"""Building elmbench's C sources into shared libraries, cached on disk; no torch or MLX here.

Used by the CPU decode kernels (`elmbench.engine.cpu_kernels`) and the OpenBLAS shim for MLX
(`elmbench.backends.mlx_blas`), which builds before MLX or torch is loaded.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


class KernelUnavailable(RuntimeError):
    """The kernels could not be built here (no C compiler, or it failed)."""


def cache_dir() -> Path:
    """Where built kernels are kept ($ELMBENCH_CACHE, else ~/.cache/elmbench)."""
    root = os.environ.get("ELMBENCH_CACHE") or Path.home() / ".cache" / "elmbench"
    return Path(root) / "kernels"


def compile_library(
    source: str,
    compiler: str,
    flags: list[str],
    out: Path,
    libs: tuple[str, ...] = ("-lm",),
    suffix: str = ".c",
) -> None:
    """Build `source` (C, or C++ with suffix ".cpp") into the shared library `out` (libraries to
    link after the source)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / f"source{suffix}"
        src.write_text(source)
        lib = Path(tmp) / out.name
        cmd = [compiler, *flags, "-shared", "-fPIC", str(src), "-o", str(lib), *libs]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise KernelUnavailable(_first_error(done.stderr))
        os.replace(lib, out)  # atomic: concurrent builders never load a half-written file


def _first_error(stderr: str) -> str:
    """The compiler's first error line (a C++ build prints pages after it), else its last line."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line]
    return (errors or lines or ["the compiler failed without a message"])[0 if errors else -1]
