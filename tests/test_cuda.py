"""On a CUDA device: every torch norm variant equals naive, the Triton add + norm is exact where it
should be, and every torch compile mode generates what eager does (CUDA graphs on the model's own
KV cache). Marked `cuda`: skipped with the reason "no CUDA device" elsewhere (see docs/gpu.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_norms_torch import TOLERANCES  # one table of tolerances against naive

from elmbench.backends import ModelSpec, create_backend
from elmbench.checkpoints.torch_load import build_model, load_state
from elmbench.norms import get_norm
from elmbench.norms.torch_norms import NaiveRMSNorm

pytestmark = pytest.mark.cuda

EPS = 1e-6
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (rows, dim) of hidden states: one decode row, a few rows, a prompt's rows, an odd width.
ROWS_DIMS = [(1, 1280), (3, 2048), (512, 3072), (8, 5120), (5, 7)]
PROMPT = np.random.default_rng(0).integers(0, 512, size=(2, 7))


def _available(name: str) -> None:
    status = get_norm(name).available()
    if not status.ok:
        pytest.skip(f"norm '{name}' is not available: {status.reason}. {status.hint}")


def _pair(name: str, dim: int, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """naive and `name` with one random weight, on the GPU in `dtype`."""
    weight = 1 + 0.5 * torch.randn(dim, generator=torch.Generator().manual_seed(dim))
    modules = []
    for variant in ("naive", name):
        module = get_norm(variant).build(dim, EPS).to("cuda", dtype).requires_grad_(False)
        module.get_parameter("weight").copy_(weight)
        modules.append(module)
    return modules[0], modules[1]


def _activations(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(sum(shape))
    return (3 * torch.randn(shape, generator=gen) + 0.5).to("cuda", dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize(("rows", "dim"), ROWS_DIMS)
@pytest.mark.parametrize("name", ["fused", "compiled", "apex", "triton"])
def test_variant_matches_naive(name: str, rows: int, dim: int, dtype: torch.dtype) -> None:
    _available(name)
    naive, other = _pair(name, dim, dtype)
    x = _activations((rows, dim), dtype)
    want, got = naive(x), other(x)
    assert got.dtype == want.dtype == dtype and got.shape == x.shape
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    if name == "triton" and dtype is not torch.float32:
        # Same formula, same roundings (to nearest even on the GPU): elements differ only where
        # the two fp32 values straddle a rounding boundary.
        assert (got == want).float().mean() >= 0.99


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", ["fused", "compiled", "apex", "triton"])
def test_variant_matches_naive_on_per_head_rows(name: str, dtype: torch.dtype) -> None:
    """q as the attention hands it to q_norm: (B, H, T, D), not contiguous."""
    _available(name)
    naive, other = _pair(name, 64, dtype)
    qkv = _activations((2, 9, 12, 64), dtype).transpose(1, 2)  # (B, H=12, T=9, D)
    q = qkv[:, :8]
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(other(q), naive(q), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_triton_add_norm_is_the_sum_then_naive(dtype: torch.dtype) -> None:
    _available("triton")
    naive, triton = _pair("triton", 2048, dtype)
    x, residual = _activations((64, 2048), dtype), _activations((64, 2049), dtype)[:, 1:]
    normed, summed = triton.add_norm(x, residual)
    assert torch.equal(summed, x + residual)  # rounded once to the dtype, as torch rounds it
    want = naive(x + residual)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(normed, want, rtol=rtol, atol=atol)
    if dtype is not torch.float32:
        assert (normed == want).float().mean() >= 0.99


@pytest.mark.parametrize("name", ["fused", "compiled", "apex", "triton"])
def test_model_with_each_norm_equals_naive(name: str) -> None:
    _available(name)
    cfg, state, _ = load_state("tiny", seed=2)
    tokens = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(3))
    tokens = tokens.cuda()
    with torch.no_grad():
        want = build_model(cfg, state, device="cuda")(tokens)
        got = build_model(cfg, state, norm=name, device="cuda")(tokens)
    # fp32 (matmuls without TF32, torch's default), same formula; reduction orders differ.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["naive", "triton"])
@pytest.mark.parametrize("mode", ["none", "inductor", "cudagraphs"])
def test_compile_mode_generates_what_eager_does(mode: str, norm: str) -> None:
    _available(norm)
    from torch._dynamo.utils import counters

    spec = ModelSpec(model="tiny", seed=3, device="cuda", norm=norm)
    eager = create_backend("torch", spec)
    compiled = create_backend("torch", ModelSpec(**{**spec.to_dict(), "compile": mode}))
    counters.clear()
    want = eager.generate(PROMPT, 8)
    np.testing.assert_array_equal(compiled.generate(PROMPT, 8), want)
    # setup() again at the same shape keeps the cache buffers: the graphs stay valid.
    np.testing.assert_array_equal(compiled.generate(PROMPT, 8), want)
    # another batch size: new buffers, a new graph
    np.testing.assert_array_equal(compiled.generate(PROMPT[:1], 5), eager.generate(PROMPT[:1], 5))
    if mode == "cudagraphs":
        assert counters["inductor"]["cudagraph_skips"] == 0  # no fallback to plain inductor
        assert "CUDA graphs" in compiled.describe()["compile_details"]["decode"]
    # The decode steps wrote the model's own KV cache, as eager did.
    caches = [b.model.transformer.layers[0].attn.cache for b in (compiled, eager)]
    assert caches[0] is not None and caches[1] is not None
    torch.testing.assert_close(caches[0].k[:, :, 7:11], caches[1].k[:, :, 7:11], atol=1e-5, rtol=0)


def test_naive_is_the_reference_here() -> None:
    """The CUDA naive module is the released formula (what every test above compares with)."""
    x = _activations((4, 64), torch.float32)
    naive = NaiveRMSNorm(64, EPS).cuda()
    x64 = x.double()
    want = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + EPS)
    torch.testing.assert_close(naive(x).double(), want, rtol=1e-6, atol=1e-6)
