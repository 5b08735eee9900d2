"""The RMSNorm micro-benchmark, run inside a backend's worker: one variant on one input shape.

Shapes are a model's: `hidden` normalizes (tokens, model_dim) rows as the attention and FFN norms
do; `head` normalizes (tokens x (query + KV heads of the widest layer), head_dim) rows as the q/k
norms do. Each repetition makes enough calls to last about a millisecond; time is per call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from elmbench.backends.isolate import Job, report_progress
from elmbench.config import get_config
from elmbench.dtypes import BYTES, mlx_dtype, torch_dtype
from elmbench.measure.protocol import Timer, run_protocol
from elmbench.norms import get_norm
from elmbench.throughput.measure import _progress, protocol_of

TARGET_REPETITION_S = 1e-3


def norm_shape(model: str, where: str, tokens: int) -> tuple[int, int, float]:
    """(rows, dim, eps) of a norm call for `tokens` tokens of `model`."""
    cfg = get_config(model)
    if where == "hidden":
        return tokens, cfg.model_dim, cfg.norm_eps
    heads = cfg.num_query_heads[-1] + cfg.num_kv_heads[-1]
    return tokens * heads, cfg.head_dim, cfg.norm_eps


def _torch_call(norm: str, rows: int, dim: int, eps: float, dtype: str, device: str) -> Any:
    import torch

    module = get_norm(norm, "torch").build(dim, eps).to(device=device, dtype=torch_dtype(dtype))
    x = torch.randn(rows, dim, device=device).to(torch_dtype(dtype))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    @torch.inference_mode()
    def call() -> None:
        module(x)

    return call, sync


def _mlx_call(norm: str, rows: int, dim: int, eps: float, dtype: str, device: str) -> Any:
    import mlx.core as mx

    mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)
    module = get_norm(norm, "mlx").build(dim, eps)
    module.set_dtype(mlx_dtype(dtype))
    x = mx.random.normal((rows, dim)).astype(mlx_dtype(dtype))
    mx.eval(x, module.parameters())

    def call() -> None:
        mx.eval(module(x))  # each call evaluated: the launch cost is part of what is measured

    return call, lambda: None


def norm_call(job: Job) -> Iterator[dict[str, Any]]:
    """Time one norm variant on one shape; per-call seconds and the bytes it moves."""
    p = job.params
    report_progress({"case_id": job.case_id, "phase": "load"})
    rows, dim, eps = norm_shape(p["model"], p["where"], p["tokens"])
    make = _torch_call if job.backend == "torch" else _mlx_call
    call, sync = make(p["norm"], rows, dim, eps, p["dtype"], job.spec["device"])
    calls = _calls_per_repetition(call, sync)
    protocol = protocol_of(p)
    on_call, on_repetition = _progress(job, protocol)

    def once(timer: Timer) -> dict[str, float]:
        on_call()
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        return {"call": (time.perf_counter() - start) / calls}

    timing = run_protocol(once, protocol, sync=sync, on_repetition=on_repetition)
    bpe = BYTES[p["dtype"]]
    yield {
        "status": "ok",
        "timing": timing.to_record(),
        "rows": rows,
        "dim": dim,
        "calls_per_repetition": calls,
        "bytes_per_call": 2 * rows * dim * bpe + dim * bpe,  # read x, write y, read the weight
    }


def _calls_per_repetition(call: Callable[[], None], sync: Callable[[], None]) -> int:
    call()  # first call: lazy imports, compilation
    sync()
    start = time.perf_counter()
    call()
    sync()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(10_000, math.ceil(TARGET_REPETITION_S / once)))
