"""elmbench's Triton RMSNorm kernels on the CPU, under Triton's interpreter, against naive.

Run by `test_norms_triton.py` in a child process with TRITON_INTERPRET=1: Triton 3.x reads it
when each `@triton.jit` runs, its own helpers (tl.sum's combine function) included, so it must be
set before Triton is first imported. Not collected on its own (the name has no `test_` prefix).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_norms_triton.py with TRITON_INTERPRET=1", allow_module_level=True)

from elmbench.checkpoints.torch_load import build_model, load_state
from elmbench.norms import get_norm, triton_kernels
from elmbench.norms.torch_norms import NaiveRMSNorm
from elmbench.norms.triton_norms import KERNELS, TritonRMSNorm

EPS = 1e-6
# (rows, dim): odd and model-sized dims, one row (decode), a few (a partly masked block of rows),
# and 128 (many programs). 128 rows of the widest dims add only interpreter time: 3 rows already
# take two programs there (one row each, the second masked).
SHAPES = [
    (rows, dim)
    for dim in (1, 7, 64, 1280, 2048, 3072, 5120)
    for rows in (1, 3, 128)
    if not (rows == 128 and dim > 1280)
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Relative bounds in units of eps = finfo(dtype).eps, the largest relative size of one ulp.
# fp32: both accumulate the mean of squares in fp32; only the summation order and rsqrt differ
# (a few ulps; at most 3 in these cases), so 16 ulps is still tight.
# bf16, fp16: both normalize in fp32, round to the 16-bit type, multiply by the weight and round
# again. Where their fp32 values straddle a rounding boundary the normalized value differs by one
# ulp (relative <= eps), and the product's rounding by one more: <= 2 eps. The interpreter casts
# fp32 to bf16 by truncation (a GPU rounds to nearest even): still within one ulp a cast.
ULPS = {torch.float32: 16, torch.bfloat16: 2, torch.float16: 2}


def _rtol(dtype: torch.dtype) -> float:
    return ULPS[dtype] * torch.finfo(dtype).eps


def test_the_kernels_are_interpreted() -> None:
    assert "Interpreted" in type(triton_kernels._rms_norm_rows).__name__


@pytest.fixture
def triton_on_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """`get_norm('triton')` builds here: CUDA claimed present, the kernels interpreted."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    yield sys.modules[KERNELS]


def _inputs(
    rows: int, dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations with a nonzero mean, a residual, and a non-trivial weight, all in `dtype`."""
    gen = torch.Generator().manual_seed(rows * 10_000 + dim)
    x = 3 * torch.randn(rows, dim, generator=gen) + 0.5
    residual = torch.randn(rows, dim, generator=gen)
    weight = 1 + 0.5 * torch.randn(dim, generator=gen)
    return x.to(dtype), residual.to(dtype), weight.to(dtype)


def _naive(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    module = NaiveRMSNorm(x.shape[-1], EPS).to(weight.dtype).requires_grad_(False)
    module.weight.copy_(weight)
    return module(x)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize(("rows", "dim"), SHAPES)
def test_kernels_match_naive(rows: int, dim: int, dtype: torch.dtype) -> None:
    x, residual, weight = _inputs(rows, dim, dtype)
    got = triton_kernels.rms_norm(x, weight, EPS)
    want = _naive(x, weight)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=_rtol(dtype), atol=0.0)
    if dtype is torch.float16:
        # Both round fp16 to nearest even here, so elements differ only where the fp32 values
        # straddle a boundary; rounding once (no cast before the weight) would differ in many.
        assert (got == want).float().mean() >= 0.99

    normed, summed = triton_kernels.add_rms_norm(x, residual, weight, EPS)
    assert normed.dtype == summed.dtype == dtype
    # The sum is rounded once to the input dtype, as torch's `x + residual` is: equal, except
    # for the interpreter's truncating bf16 cast (one ulp).
    sum_rtol = torch.finfo(dtype).eps if dtype is torch.bfloat16 else 0.0
    torch.testing.assert_close(summed, x + residual, rtol=sum_rtol, atol=0.0)
    torch.testing.assert_close(normed, _naive(summed, weight), rtol=_rtol(dtype), atol=0.0)


def test_kernels_take_strided_rows_and_a_wider_weight() -> None:
    # q as the attention hands it over: (B, H, T, D) split from a transposed projection.
    qkv = torch.randn(2, 5, 6, 16).to(torch.bfloat16).transpose(1, 2)  # (B, H=6, T=5, D)
    q = qkv[:, :4]
    assert not q.is_contiguous()
    weight = 1 + 0.5 * torch.randn(16)
    got = triton_kernels.rms_norm(q, weight.bfloat16(), EPS)
    want = _naive(q, weight.bfloat16())
    torch.testing.assert_close(got, want, rtol=_rtol(torch.bfloat16), atol=0.0)
    # An fp32 weight on bf16 activations: naive's `type_as(x) * weight` promotes to fp32.
    wide = triton_kernels.rms_norm(q, weight, EPS)
    naive = NaiveRMSNorm(16, EPS).requires_grad_(False)
    naive.weight.copy_(weight)
    assert wide.dtype == naive(q).dtype == torch.float32
    # the normalized value is still rounded to bf16 before the fp32 product: bf16's bound
    torch.testing.assert_close(wide, naive(q), rtol=_rtol(torch.bfloat16), atol=0.0)
    assert triton_kernels.rms_norm(q[:0], weight, EPS).shape == (0, 4, 5, 16)  # no launch
    with pytest.raises(ValueError, match="one shape and dtype"):
        triton_kernels.add_rms_norm(q, q.float(), weight, EPS)


@pytest.mark.usefixtures("triton_on_cpu")
def test_variant_builds_and_adds_through_its_call() -> None:
    module = get_norm("triton").build(64, EPS)
    assert isinstance(module, TritonRMSNorm)
    assert [name for name, _ in module.named_parameters()] == ["weight"]
    x, residual, weight = _inputs(3, 64, torch.float32)
    module.requires_grad_(False).weight.copy_(weight)
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))  # how the profiler labels norms
    torch.testing.assert_close(module(x), _naive(x, weight), rtol=_rtol(x.dtype), atol=0.0)
    normed, summed = module.add_norm(x, residual)
    assert len(calls) == 2  # the fused call is seen as the norm's own
    assert torch.equal(summed, x + residual)
    torch.testing.assert_close(normed, _naive(x + residual, weight), rtol=_rtol(x.dtype), atol=0.0)


@pytest.mark.usefixtures("triton_on_cpu")
def test_model_with_the_triton_kernels_equals_naive() -> None:
    cfg, state, _ = load_state("tiny", seed=6)
    tokens = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    naive = build_model(cfg, state)
    model = build_model(cfg, state, norm="triton")  # strict load: the keys are unchanged
    norms = [m for m in model.modules() if isinstance(m, TritonRMSNorm)]
    assert len(norms) == cfg.num_norms
    seen: list[int] = []
    for m in norms:
        m.register_forward_hook(lambda *_: seen.append(1))
    with torch.no_grad():
        got = model(tokens)
        want = naive(tokens)
    assert len(seen) == cfg.num_norms  # one call per norm, fused or not: the profile sees each
    # fp32 kernels within 16 ulps of naive at each norm (see ULPS), through three layers.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model.setup_cache(2, 12)  # a cached prefill and a decode step (each norm sees B rows)
    with torch.no_grad():
        model.prefill(tokens[:, :8])
        step = model.decode(tokens[:, 8:9], 8)
    torch.testing.assert_close(step[:, 0], want[:, 8], rtol=1e-5, atol=1e-5)
