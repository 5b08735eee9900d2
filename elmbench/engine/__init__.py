"""elmbench's own CPU engine, an opt-in `kernels` choice (`--kernels elmbench`), never a default.

Streaming GEMV and cached-attention kernels in C (`cpu_kernels`), the model layout that routes
decode through them (`cpu_layout`), weights in transparent huge pages (`hugepages`), their build
(`native`), and what applies to a loaded torch model (`torch_engine`). See README.md here.
This module imports nothing heavy: the plan and the suites read its names.
"""

from __future__ import annotations

STOCK = "stock"  # the framework exactly as its users run it
ENGINE = "elmbench"  # elmbench's engine
KERNELS = (STOCK, ENGINE)


def unsupported(device: str, backend: str = "torch") -> str | None:
    """Why the engine cannot serve a backend and device at all (None where it can)."""
    if backend != "torch":
        return f"elmbench's engine serves the torch backend; {backend} runs its stock kernels"
    if device.split(":")[0] != "cpu":
        return f"elmbench's engine is for the CPU; '{device}' runs stock PyTorch kernels"
    return None
