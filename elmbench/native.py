"""Building elmbench's C sources into shared libraries, cached on disk; no torch or MLX here.

Used by the CPU decode kernels (`elmbench.models.cpu_kernels`) and the OpenBLAS shim for MLX
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
    source: str, compiler: str, flags: list[str], out: Path, libs: tuple[str, ...] = ("-lm",)
) -> None:
    """Build C `source` into the shared library `out` (libraries to link after the source)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "source.c"
        src.write_text(source)
        lib = Path(tmp) / out.name
        cmd = [compiler, *flags, "-shared", "-fPIC", str(src), "-o", str(lib), *libs]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise KernelUnavailable(done.stderr.strip().splitlines()[-1] if done.stderr else "")
        os.replace(lib, out)  # atomic: concurrent builders never load a half-written file
