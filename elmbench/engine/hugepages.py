"""CPU tensors in transparent huge pages (Linux): fewer TLB misses when decode streams the weights.

Reading memory in 4 KiB pages costs a page walk every 4 KiB, and on a virtual machine each walk
goes through two page tables; in 2 MiB pages a stream needs one walk per 2 MiB. Where
`madvise(MADV_HUGEPAGE)` exists, `huge_empty` backs a tensor with a private anonymous mapping
aligned to 2 MiB and asks the kernel for huge pages, which it grants as the memory is first
touched (not guaranteed: it needs free contiguous memory). The engine
(`--kernels elmbench`) moves a CPU model's large parameters there, and the read-bandwidth probe
always reads such buffers, so that with the engine decode and its roofline see the same kind of
memory. `ELMBENCH_HUGEPAGES=off` turns both off.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

HUGE_PAGE = 2 * 2**20
MIN_BYTES = HUGE_PAGE  # smaller tensors cannot fill a huge page


def unavailable() -> str | None:
    """Why huge pages are not used here (None when they are)."""
    if os.environ.get("ELMBENCH_HUGEPAGES", "").lower() in ("0", "off", "no", "false"):
        return "turned off by ELMBENCH_HUGEPAGES"
    return _system_reason()


@functools.cache
def _system_reason() -> str | None:
    """What the platform or the kernel's setting rules out (read once a process)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return "madvise(MADV_HUGEPAGE) does not exist on this platform"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read()
    except OSError:
        return "transparent huge pages are not offered by this kernel"
    if "[never]" in mode:
        return "transparent huge pages are set to 'never' by the system"
    return None


def applies(nbytes: int) -> bool:
    """Whether `huge_empty` puts a tensor of `nbytes` in memory advised for huge pages."""
    return nbytes >= MIN_BYTES and unavailable() is None


def huge_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor in memory advised for huge pages (plain `torch.empty` if not)."""
    import torch

    numel = math.prod(shape)
    if not applies(numel * dtype.itemsize):
        return torch.empty(shape, dtype=dtype)
    nbytes = numel * dtype.itemsize
    # Private, not shared: shared anonymous memory follows the (usually off) shmem THP setting.
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    start = _address(region)
    offset = -start % HUGE_PAGE  # the tensor starts on a huge-page boundary
    # The tensor keeps `region` alive (torch holds the buffer); it is unmapped with the tensor.
    flat = torch.frombuffer(region, dtype=dtype, count=numel, offset=offset)
    return flat.view(shape)


def huge_copy(value: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of the CPU tensor `value` in memory advised for huge pages."""
    return huge_empty(tuple(value.shape), value.dtype).copy_(value)


def _address(region: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(region))


def move_parameters(model: nn.Module) -> dict[str, Any]:
    """Copy `model`'s CPU parameters of 2 MiB or more into huge-page memory; what happened.

    The smaller ones are copied too (into ordinary memory): a checkpoint's tensors are views of
    its file's one mapping, which any parameter left on it would keep whole and resident.
    """
    reason = unavailable()
    if reason is not None:
        return {"used": False, "reason": reason}
    moved = 0
    for param in model.parameters():  # each shared (tied) parameter once
        nbytes = param.numel() * param.element_size()
        if param.device.type != "cpu":
            continue
        if nbytes < MIN_BYTES:
            param.data = param.data.clone()
            continue
        param.data = huge_copy(param.data)
        moved += nbytes
    return_freed_memory()
    return {
        "used": True,
        "parameters_mib": round(moved / 2**20, 1),
        "process_huge_mib": process_huge_mib(),
    }


def return_freed_memory() -> None:
    """Hand the freed originals back to the OS (glibc keeps freed heap memory otherwise, and a
    second model loaded in a process would show twice its size in RSS and in peak memory)."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return
    trim(0)


def process_huge_mib() -> float | None:
    """Anonymous memory of this process in huge pages (Linux), in MiB; None where unknown."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            found = re.search(r"AnonHugePages:\s+(\d+) kB", f.read())
    except OSError:
        return None
    return round(int(found.group(1)) / 1024, 1) if found else None
