"""elmbench's Triton RMSNorm kernels: the naive formula in one pass, and residual add + RMSNorm.

Imported only by `triton_norms.TritonRMSNorm` (it needs Triton and, outside tests, CUDA). Under
`TRITON_INTERPRET=1` set before this module is first imported, the kernels run on the CPU.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from elmbench.errors import ConfigError

MAX_BLOCK = 65536  # a row is reduced by one program in registers; OpenELM's widest is 3072
ELEMENTS_PER_PROGRAM = 4096  # small rows (q/k norms: head_dim 64) are packed several a program


@triton.jit
def _rms_norm_rows(
    X,  # (rows, dim) input, unit column stride
    R,  # (rows, dim) residual (read only when HAS_RESIDUAL)
    Y,  # (rows, dim) output, contiguous
    S,  # (rows, dim) x + residual, contiguous (written only when HAS_RESIDUAL)
    W,  # (dim,) weight
    stride_x,
    stride_r,
    n_rows,
    n_cols,
    eps,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS))[:, None].to(tl.int64)  # (ROWS, 1)
    cols = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    mask = (rows < n_rows) & (cols < n_cols)
    # Arithmetic in fp32 only: 16-bit sums and products are then rounded once, as torch rounds.
    x = tl.load(X + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(R + rows * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        summed = (x + r).to(S.dtype.element_ty)  # the residual stream, in the input dtype
        tl.store(S + rows * n_cols + cols, summed, mask=mask)
        x = summed.to(tl.float32)
    mean_square = tl.sum(x * x, axis=1)[:, None] / n_cols  # (ROWS, 1)
    # As NaiveRMSNorm: normalize in fp32, round to the input dtype, then multiply by the weight.
    normed = (x * tl.rsqrt(mean_square + eps)).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    tl.store(Y + rows * n_cols + cols, (normed * w).to(Y.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A (rows, dim) view with unit column stride (copies only when the layout needs it)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    summed: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """Normalize x (or x + residual, written to `summed`) into a new tensor of x's shape."""
    dim = x.shape[-1]
    block = triton.next_power_of_2(dim)
    if block > MAX_BLOCK:
        raise ConfigError(f"the Triton RMSNorm reduces rows of up to {MAX_BLOCK}; found {dim}")
    x2 = _rows(x)
    r2 = x2 if residual is None else _rows(residual)
    n_rows = x2.shape[0]
    # The output dtype of `normed.type_as(x) * weight`: the weight may be wider than x.
    y = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if n_rows == 0:
        return y
    rows = min(ELEMENTS_PER_PROGRAM // block or 1, triton.next_power_of_2(n_rows))
    # Triton launches on the current device; x may live on another GPU (cuda:1).
    on_device = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with on_device:
        _rms_norm_rows[(triton.cdiv(n_rows, rows),)](
            x2,
            r2,
            y,
            y if summed is None else summed,
            weight,
            x2.stride(0),
            r2.stride(0),
            n_rows,
            dim,
            eps,
            ROWS=rows,
            BLOCK=block,
            HAS_RESIDUAL=residual is not None,
            num_warps=min(max(rows * block // 256, 1), 8),  # about 8 elements a thread
        )
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`(x.float() * rsqrt(mean(x^2) + eps)).type_as(x) * weight` over the last dim, one kernel."""
    return _launch(x, None, None, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(rms_norm(x + residual), x + residual)` in one kernel (x, residual: one shape and dtype)."""
    if x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError(
            f"add_rms_norm needs x and residual of one shape and dtype; found "
            f"{tuple(x.shape)} {x.dtype} and {tuple(residual.shape)} {residual.dtype}"
        )
    summed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return _launch(x, residual, summed, weight, eps), summed
