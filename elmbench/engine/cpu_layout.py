"""CPU decode layout: few-row linears and cached attention through elmbench's CPU kernels.

Decode on a CPU reads every weight once per token, so it runs at the speed of matrix-vector
products. BLAS sgemv/sgemm with one row can leave much of the memory bandwidth unused; a plain C
kernel in which each thread streams its own contiguous range of weight rows (taking chunks of
another's when it runs out) reads them the way a plain sum does. Like the weight prepacking of
inference engines, this is decided once per model and batch size: a short timed probe keeps, for
each kind of matrix, whichever of the kernel and `F.linear` is faster.

Row-major weights already stream, so short rows are not repacked. Rows longer than
`PANEL_COLUMNS` (the FFN-down matrices of the larger layers, up to 5,120 columns at 270M) are: the
kernel rereads the input row from L1 for every weight row, and a long weight row pushes it out.
Such a matrix is stored as column panels (P, N, K / P), each panel contiguous and its rows short
enough for the input's share to stay in L1. The parameter keeps its name and object, its state
dict stays (N, K), and longer steps (prefill) run `F.linear` per panel, so the weights are not
held twice.

Cached attention of a few query rows (decode) goes through the attention kernel, which reads only
the filled part of the KV cache and splits it over threads; SDPA with a mask reads and computes
over the whole preallocated cache at every step. Longer steps (prefill) keep SDPA.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from elmbench.engine import hugepages
from elmbench.engine.cpu_kernels import (
    CpuKernels,
    attend,
    attend_fits,
    from_panels,
    gemv,
    gemv_eager,
    load_kernels,
    panel_count,
    panels_of,
    to_panels,
)
from elmbench.models.openelm_torch import OpenELM, sdpa_cached

MAX_KERNEL_ROWS = 8  # the GEMV rereads each 4-row block per input row: right for decode only
# The widest column panel: its weight row and the input's share (8 KiB each in fp32) stay in a
# 32 KiB L1 together.
PANEL_COLUMNS = 2048


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear` (no bias) of an (N, K) weight, or of column panels (P, N, K / P) one by one."""
    panels = panels_of(weight)
    if panels == 1:
        return F.linear(x, weight)
    width = weight.shape[-1]
    out = F.linear(x[..., :width], weight[0])
    for p in range(1, panels):
        out = out + F.linear(x[..., p * width : (p + 1) * width], weight[p])
    return out


class ChosenLinear:
    """`F.linear` or the kernel, by the row count of the input: the probe's choice per matrix."""

    def __init__(self) -> None:
        self.kernel_rows: set[int] = set()

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.numel() // x.shape[-1] in self.kernel_rows:
            return gemv(x, weight)
        return linear(x, weight)


class ChosenAttention:
    """The attention kernel for fp32 cached steps of at most MAX_KERNEL_ROWS query rows, else
    SDPA."""

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        pos: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if q.dtype == torch.float32 and q.shape[2] <= MAX_KERNEL_ROWS and attend_fits(q, k):
            return attend(q, k, v, pos)
        return sdpa_cached(q, k, v, pos, mask)


class StreamingLinear(nn.Module):
    """A bias-free `nn.Linear` stand-in (same `weight` parameter) that uses `ChosenLinear`.

    With more than `panel_columns` inputs, the parameter's data becomes column panels (P, N, K / P)
    in place; its state dict still holds, and loads, the (N, K) matrix.
    """

    def __init__(self, weight: nn.Parameter, panel_columns: int = PANEL_COLUMNS) -> None:
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.panels = panel_count(self.in_features, panel_columns)
        if self.panels > 1:
            weight.data = hugepages.huge_copy(to_panels(weight.data, self.panels))
            self.register_state_dict_post_hook(_state_as_matrix)
            self.register_load_state_dict_pre_hook(_state_as_panels)
        self.choose = ChosenLinear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.choose(x, self.weight)

    def extra_repr(self) -> str:
        panels = f", panels={self.panels}" if self.panels > 1 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}{panels}"


def _state_as_matrix(
    module: nn.Module, state: dict[str, Any], prefix: str, metadata: dict[str, Any]
) -> None:
    state[prefix + "weight"] = from_panels(state[prefix + "weight"])


def _state_as_panels(module: StreamingLinear, state: dict[str, Any], prefix: str, *_: Any) -> None:
    key, panels = prefix + "weight", module.panels
    # a shape that does not split is left to load_state_dict's own error
    if key in state and state[key].dim() == 2 and state[key].shape[1] % panels == 0:
        state[key] = to_panels(state[key], panels)


@dataclass
class _Target:
    kind: str  # the module's own name: qkv_proj, out_proj, proj_1, proj_2, head, ...
    weight: torch.Tensor  # (N, K), or column panels (P, N, K / P)
    choose: ChosenLinear

    @property
    def panels(self) -> int:
        return panels_of(self.weight)

    @property
    def in_features(self) -> int:
        return self.weight.shape[-1] * self.panels


@dataclass
class CpuLayout:
    """The streaming linears of one model and, per probed row count, what the probe chose."""

    kernels: CpuKernels
    targets: list[_Target]
    attention_layers: int = 0
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
            "aten": linear,
            "gemv": gemv_eager,
        }
        inputs = [torch.randn(rows, t.in_features, dtype=t.weight.dtype) for t in self.targets]
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
        """The kernels, threads and every probe's choices, for records."""
        return {
            "kernel": self.kernels.describe(),
            "threads": torch.get_num_threads(),
            "matrices": len(self.targets),
            "column_panels": {
                f"{t.kind} {t.weight.shape[-2]}x{t.in_features}": t.panels
                for t in self.targets
                if t.panels > 1
            },
            "panel_columns": PANEL_COLUMNS,
            "attention": (
                f"elm_attend_f32 in {self.attention_layers} layers for cached steps of at most "
                f"{MAX_KERNEL_ROWS} query rows; SDPA otherwise"
            ),
            "probes": list(self.probes.values()),
        }


def applies(model: nn.Module) -> str | None:
    """Why the layout does not apply to `model` (None when it does): fp32 or bf16 on the CPU."""
    weight = next(model.parameters())
    if weight.device.type != "cpu":
        return f"device {weight.device.type} (the kernel is for the CPU)"
    if weight.dtype not in (torch.float32, torch.bfloat16):
        return f"dtype {str(weight.dtype).removeprefix('torch.')} (the kernels are fp32 and bf16)"
    return None


def apply_cpu_layout(model: nn.Module, panel_columns: int = PANEL_COLUMNS) -> CpuLayout:
    """Swap every bias-free `nn.Linear` (and the tied head, via `head_linear`) for the chooser,
    and OpenELM's cached attention for the attention kernel.

    Parameters stay the same objects under the same names, so state dicts and parameter counts do
    not change (matrices with long rows hold column panels, presented as (N, K) in state dicts);
    `F.linear` stays in use until `prepare(rows)` has probed a row count.
    """
    kernels = load_kernels()
    targets: list[_Target] = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and module.bias is None:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            streaming = StreamingLinear(module.weight, panel_columns)
            setattr(parent, child, streaming)
            targets.append(_Target(child, streaming.weight, streaming.choose))
    if any(t.panels > 1 for t in targets):
        hugepages.return_freed_memory()  # the row-major originals
    attention_layers = 0
    if isinstance(model, OpenELM):  # the tied head is a function of the embedding
        head = ChosenLinear()
        model.head_linear = head
        targets.append(_Target("head", model.transformer.token_embeddings.weight, head))
        for layer in model.transformer.layers:
            layer.attn.cached_attention = ChosenAttention()
            attention_layers += 1
    return CpuLayout(kernels, targets, attention_layers=attention_layers)
