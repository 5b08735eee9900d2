"""A short CPU read-bandwidth probe: the roofline for CPU decode (it reads every weight per token).

Each reader streams a float32 buffer far larger than the last-level cache with all threads, and
the best of a few passes after a warm-up counts; GB/s are 1e9 bytes per second. A roofline must
not be beaten by a real kernel, so `measure_roofline` keeps the fastest of several readers:
`torch.sum`, and the engine's streaming GEMV kernel (which reads faster on some CPUs).
Their buffers are in transparent huge pages where the engine puts model weights
(`elmbench.engine.hugepages`), since the page size alone changes how fast a stream reads.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from elmbench.engine import hugepages
from elmbench.errors import ConfigError, UnknownNameError

# auto: torch when installed, else numpy; stream: elmbench's streaming GEMV kernel (needs a C
# compiler) reading the buffer as a (rows, 2048) matrix: whole rows (a MiB holds 128 of them), as
# long as decode reads them without splitting into column panels (cpu_layout.PANEL_COLUMNS).
PROBE_BACKENDS = ("auto", "torch", "numpy", "stream")
STREAM_ROW = 2048


@dataclass(frozen=True)
class BandwidthResult:
    """The best read bandwidth of a probe, with every pass's raw time."""

    gb_per_s: float  # best (max) over the repetitions
    bytes_per_repetition: int
    raw_s: tuple[float, ...]  # one wall time per measured pass
    backend: str
    threads: int
    warmup: int
    method: str
    huge_pages: bool = False  # the buffer was advised for transparent huge pages

    @property
    def raw_gb_per_s(self) -> tuple[float, ...]:
        """Bandwidth of each measured pass."""
        return tuple(self.bytes_per_repetition / s / 1e9 for s in self.raw_s)

    def to_record(self) -> dict[str, Any]:
        """JSON-safe form with units in the names."""
        return {
            "membw_gb_per_s": self.gb_per_s,
            "membw_bytes_per_repetition": self.bytes_per_repetition,
            "membw_raw_s": list(self.raw_s),
            "membw_raw_gb_per_s": list(self.raw_gb_per_s),
            "membw_backend": self.backend,
            "membw_threads": self.threads,
            "membw_warmup": self.warmup,
            "membw_method": self.method,
            "membw_huge_pages": self.huge_pages,
        }


def usable_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def measure_read_bandwidth(
    size_mib: int = 512,
    repeats: int = 5,
    backend: str = "auto",
    threads: int | None = None,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> BandwidthResult:
    """Best-of-`repeats` read bandwidth of summing a `size_mib` float32 buffer (~1 s at 512 MiB)."""
    if backend not in PROBE_BACKENDS:
        raise UnknownNameError("bandwidth probe backend", backend, PROBE_BACKENDS)
    if size_mib < 1 or repeats < 1 or warmup < 0:
        raise ConfigError(
            f"bandwidth probe: size_mib and repeats must be >= 1 and warmup >= 0; "
            f"found size_mib={size_mib}, repeats={repeats}, warmup={warmup}"
        )
    if backend == "auto":
        backend = "torch" if importlib.util.find_spec("torch") is not None else "numpy"
    threads = usable_cores() if threads is None else threads
    if threads < 1:
        raise ConfigError(f"bandwidth probe: threads must be >= 1; found {threads}")
    elements = size_mib * 2**20 // 4
    with _reader(backend, elements, threads) as (read, method):
        for _ in range(warmup):
            read()
        raw = []
        for _ in range(repeats):
            start = clock()
            read()
            raw.append(clock() - start)
    nbytes = elements * 4
    best = min(raw)
    huge = backend != "numpy" and hugepages.applies(nbytes)
    return BandwidthResult(
        gb_per_s=nbytes / best / 1e9 if best > 0 else float("inf"),
        bytes_per_repetition=nbytes,
        raw_s=tuple(raw),
        backend=backend,
        threads=threads,
        warmup=warmup,
        method=f"{method} over {size_mib} MiB float32{' in huge pages' if huge else ''}, "
        f"{threads} thread(s), best of {repeats} after {warmup} warm-up",
        huge_pages=huge,
    )


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` for the block, then restored."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextmanager
def _reader(backend: str, elements: int, threads: int) -> Iterator[tuple[Callable[[], float], str]]:
    """A function that reads the whole buffer once, and its description; frees both on exit."""
    if backend in ("torch", "stream"):
        import torch

        # In huge pages where the engine puts a CPU model's weights, so that decode and its
        # roofline read the same kind of memory; filled with ones, since untouched pages would
        # all map to the shared zero page.
        with _torch_threads(threads):
            if backend == "torch":
                buf = hugepages.huge_empty((elements,), torch.float32).fill_(1.0)
                yield (lambda: float(buf.sum())), "torch.sum"
            else:
                from elmbench.engine.cpu_kernels import gemv_eager

                shape = (elements // STREAM_ROW, STREAM_ROW)
                rows = hugepages.huge_empty(shape, torch.float32).fill_(1.0)
                x = torch.ones(1, STREAM_ROW, dtype=torch.float32)
                yield (lambda: float(gemv_eager(x, rows)[0, 0])), "streaming GEMV kernel"
        return
    import numpy as np

    chunks = np.array_split(np.ones(elements, dtype=np.float32), threads)
    # numpy reductions release the GIL, so one chunk per thread streams in parallel.
    with ThreadPoolExecutor(threads) as pool:
        yield (lambda: sum(pool.map(lambda c: float(c.sum()), chunks))), "numpy.sum per thread"


def measure_roofline(size_mib: int = 512, repeats: int = 5) -> dict[str, Any]:
    """The fastest of the read probes that run here, as a record; every probe's figure kept.

    `torch.sum` (numpy without torch) always runs; the streaming GEMV kernel runs when it builds.
    """
    from elmbench.engine.cpu_kernels import KernelUnavailable  # torch is a core dependency

    results = [measure_read_bandwidth(size_mib, repeats)]
    skipped = []
    try:
        results.append(measure_read_bandwidth(size_mib, repeats, backend="stream"))
    except KernelUnavailable as exc:  # no C compiler, or the build failed
        skipped.append(f"stream: the kernel did not build ({exc})")
    best = max(results, key=lambda r: r.gb_per_s)
    record = best.to_record()
    record["membw_method"] = f"best of {len(results)} read probe(s): {best.method}"
    record["membw_probes"] = [
        {"method": r.method, "gb_per_s": r.gb_per_s, "raw_gb_per_s": list(r.raw_gb_per_s)}
        for r in results
    ]
    record["membw_probes_skipped"] = skipped
    return record
