"""The CPU decode layout: kernels that must match `F.linear` and SDPA wherever they are used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elmbench.backends import ModelSpec, create_backend
from elmbench.config import get_config
from elmbench.engine import cpu_kernels, cpu_layout
from elmbench.models.openelm_torch import OpenELM

needs_kernel = pytest.mark.usefixtures("gemv_kernel")


@needs_kernel
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 37, 19), (3, 64, 128), (8, 130, 1000)])
def test_gemv_matches_linear(rows: int, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen)
    np.testing.assert_allclose(cpu_kernels.gemv_eager(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)
    x3 = x.view(rows, 1, k)  # leading dimensions are kept
    assert cpu_kernels.gemv_eager(x3, w).shape == (rows, 1, n)


@needs_kernel
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 37, 19), (1, 96, 1280), (5, 64, 130)])
def test_bf16_gemv_is_fp32_arithmetic_on_bf16_weights(rows: int, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, k, generator=gen).bfloat16()
    w = torch.randn(n, k, generator=gen).bfloat16()
    exact = F.linear(x.float(), w.float())  # bf16 widens to fp32 exactly
    out = cpu_kernels.gemv_eager(x, w)
    assert out.dtype == torch.bfloat16
    # the only rounding beyond fp32 sums is the result's, to bf16: half an ulp (2^-8 relative)
    np.testing.assert_allclose(out.float(), exact, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(torch.ops.elmbench.gemv(x, w).float(), out.float(), rtol=0)
    with pytest.raises(RuntimeError, match="one dtype"):
        torch.ops.elmbench.gemv(x.float(), w)


def test_column_panels_split_long_rows_only() -> None:
    assert cpu_kernels.panel_count(1280, 2048) == 1  # short rows stay as they are
    assert cpu_kernels.panel_count(5120, 2048) == 4  # 1,280 columns each
    assert cpu_kernels.panel_count(4608, 2048) == 3
    assert cpu_kernels.panel_count(8 * 2053, 2048) == 1  # only 8-column panels would divide it
    w = torch.arange(24.0).view(2, 12)
    panels = cpu_kernels.to_panels(w, 3)
    assert panels.shape == (3, 2, 4) and torch.equal(panels[1], w[:, 4:8])
    assert torch.equal(cpu_kernels.from_panels(panels.contiguous()), w)


@needs_kernel
@pytest.mark.parametrize(
    ("rows", "n", "k", "panels"),
    [(1, 37, 24, 3), (3, 3000, 128, 2), (8, 130, 1000, 5), (5, 700, 4096, 4)],
)
def test_gemv_over_column_panels_matches_linear(rows: int, n: int, k: int, panels: int) -> None:
    # (3, 3000, 128, 2): shares of many chunks each, so threads take chunks from each other
    gen = torch.Generator().manual_seed(k)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen)
    laid = cpu_kernels.to_panels(w, panels).contiguous()
    ref = F.linear(x, w)
    for out in (cpu_kernels.gemv_eager(x, laid), torch.ops.elmbench.gemv(x, laid)):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cpu_layout.linear(x, laid), ref, rtol=1e-5, atol=1e-4)
    exact = F.linear(x.bfloat16().float(), w.bfloat16().float())
    out = cpu_kernels.gemv_eager(x.bfloat16(), laid.bfloat16()).float()
    np.testing.assert_allclose(out, exact, rtol=2**-8, atol=1e-6)
    with pytest.raises(RuntimeError, match="do not match"):
        torch.ops.elmbench.gemv(x[:, :-8], laid)


@needs_kernel
def test_gemv_inside_torch_compile_matches_linear() -> None:
    x, w = torch.randn(1, 40), torch.randn(24, 40)
    compiled = torch.compile(lambda a, b: cpu_kernels.gemv(a, b) * 2.0, fullgraph=True)
    np.testing.assert_allclose(compiled(x, w), 2.0 * F.linear(x, w), rtol=1e-5, atol=1e-4)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    mask = torch.tril(torch.ones(k.shape[2], k.shape[2], dtype=torch.bool))[pos]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


@needs_kernel
@pytest.mark.parametrize(
    ("batch", "hq", "hkv", "rows", "cache", "dim", "first"),
    [
        (1, 20, 5, 1, 640, 64, 575),  # OpenELM-270M's first layer in decode, many key chunks
        (2, 12, 3, 3, 100, 64, 40),  # batch and several query rows, each with its own end
        (1, 4, 4, 1, 7, 16, 0),  # position 0: a single visible key
        (3, 8, 2, 2, 300, 24, 250),  # head size not a multiple of 8
        (1, 6, 2, 8, 200, 40, 124),  # the last rows end in the second chunk of 128 keys
        (1, 10, 2, 1, 300, 72, 299),  # five rows (a pair twice and one alone), D = 64 + 8
    ],
)
def test_attention_kernel_matches_sdpa(
    batch: int, hq: int, hkv: int, rows: int, cache: int, dim: int, first: int
) -> None:
    gen = torch.Generator().manual_seed(first)
    q = torch.randn(batch, hq, rows, dim, generator=gen)
    k, v = (torch.randn(batch, hkv, cache, dim, generator=gen) for _ in range(2))
    pos = torch.arange(first, first + rows)
    np.testing.assert_allclose(
        cpu_kernels.attend_eager(q, k, v, pos), _sdpa(q, k, v, pos), rtol=1e-5, atol=1e-5
    )
    # keys after the last position are never read: garbage there changes nothing
    k[:, :, first + rows :], v[:, :, first + rows :] = float("nan"), float("nan")
    assert not cpu_kernels.attend_eager(q, k, v, pos).isnan().any()


@needs_kernel
def test_attention_kernel_rows_ending_chunks_apart() -> None:
    # row 0 ends in the first chunk of keys, row 1 three chunks (of 128) later: chunks past a
    # row's end hold nothing of it (and must not write outside the kernel's buffers)
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 8, 2, 32, generator=gen)
    k, v = (torch.randn(2, 4, 500, 32, generator=gen) for _ in range(2))
    pos = torch.tensor([10, 450])
    for _ in range(3):
        np.testing.assert_allclose(
            cpu_kernels.attend_eager(q, k, v, pos), _sdpa(q, k, v, pos), rtol=1e-5, atol=1e-5
        )


@needs_kernel
def test_attention_kernel_inside_torch_compile_and_its_limits() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, 1, 32, generator=gen).transpose(1, 2).transpose(1, 2)
    k, v = torch.randn(2, 1, 2, 50, 32, generator=gen)
    pos = torch.tensor([30])
    compiled = torch.compile(lambda *a: cpu_kernels.attend(*a) + 1.0, fullgraph=True)
    np.testing.assert_allclose(compiled(q, k, v, pos), _sdpa(q, k, v, pos) + 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="whole groups"):
        cpu_kernels.attend_eager(torch.randn(1, 3, 1, 8), k[:, :, :, :8], v[:, :, :, :8], pos)
    chosen = cpu_layout.ChosenAttention()  # too many rows per KV head: SDPA, same answer
    wide, pos_wide = torch.randn(1, 8, 9, 32, generator=gen), torch.arange(9)
    mask = torch.tril(torch.ones(50, 50, dtype=torch.bool))[pos_wide]
    np.testing.assert_allclose(
        chosen(wide, k, v, pos_wide, mask), _sdpa(wide, k, v, pos_wide), atol=1e-6
    )


def _kernel_everywhere(layout: cpu_layout.CpuLayout, rows: int) -> None:
    for target in layout.targets:
        target.choose.kernel_rows.add(rows)


@needs_kernel
@pytest.mark.parametrize("panel_columns", [cpu_layout.PANEL_COLUMNS, 16])
def test_laid_out_model_matches_the_stock_model(panel_columns: int) -> None:
    cfg = get_config("tiny")
    torch.manual_seed(0)
    stock = OpenELM(cfg).eval()
    laid_out = OpenELM(cfg).eval()
    laid_out.load_state_dict(stock.state_dict())
    state = stock.state_dict()
    layout = cpu_layout.apply_cpu_layout(laid_out, panel_columns)
    panelled = layout.describe()["column_panels"]
    assert bool(panelled) == (panel_columns == 16)  # every tiny row is longer than 16
    # same parameters under the same names, and the same (N, K) matrices in the state dict
    assert laid_out.state_dict().keys() == state.keys()
    for key, value in laid_out.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert {t.kind for t in layout.targets} == {"qkv_proj", "out_proj", "proj_1", "proj_2", "head"}
    assert layout.attention_layers == cfg.num_layers
    _kernel_everywhere(layout, 2)
    tokens = torch.randint(0, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for model in (stock, laid_out):
            model.setup_cache(2, 8)
        ref, out = stock.prefill(tokens), laid_out.prefill(tokens)  # 12 rows: F.linear
        np.testing.assert_allclose(out, ref, atol=1e-5)
        step = ref.argmax(-1)
        np.testing.assert_allclose(laid_out.decode(step, 6), stock.decode(step, 6), atol=1e-5)


@needs_kernel
def test_column_panels_load_a_state_dict_and_refuse_a_wrong_one() -> None:
    cfg = get_config("tiny")
    torch.manual_seed(0)
    laid_out = OpenELM(cfg).eval()
    cpu_layout.apply_cpu_layout(laid_out, 16)
    other = OpenELM(cfg).eval().state_dict()
    laid_out.load_state_dict(other)  # (N, K) matrices go into the panels
    for key, value in laid_out.state_dict().items():
        assert torch.equal(value, other[key]), key
    module = laid_out.transformer.layers[0].ffn.proj_2
    assert module.weight.dim() == 3 and "panels=" in repr(module)
    key = "transformer.layers.0.ffn.proj_2.weight"
    with pytest.raises(RuntimeError, match="size mismatch"):
        laid_out.load_state_dict({**other, key: other[key][:, :-8]})


@needs_kernel
def test_laid_out_bf16_model_matches_the_stock_bf16_model() -> None:
    cfg = get_config("tiny")
    torch.manual_seed(0)
    stock = OpenELM(cfg).eval().bfloat16()
    laid_out = OpenELM(cfg).eval().bfloat16()
    laid_out.load_state_dict(stock.state_dict())
    layout = cpu_layout.apply_cpu_layout(laid_out)
    _kernel_everywhere(layout, 1)
    tokens = torch.randint(0, cfg.vocab_size, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for model in (stock, laid_out):
            model.setup_cache(1, 8)
        step = stock.prefill(tokens).argmax(-1)
        laid_out.prefill(tokens)
        ref, out = stock.decode(step, 6).float(), laid_out.decode(step, 6).float()
    # bf16 activations round at every layer, differently in F.linear and the kernel's fp32 sums
    np.testing.assert_allclose(out, ref, atol=0.05 * ref.abs().max().item())
    assert (out.argmax(-1) == ref.argmax(-1)).all()


@needs_kernel
def test_probe_records_a_choice_per_kind_and_skips_many_rows() -> None:
    torch.manual_seed(0)
    layout = cpu_layout.apply_cpu_layout(OpenELM(get_config("tiny")).eval())
    probe = layout.prepare(1, repeats=1)
    assert set(probe["chosen"]) == {"qkv_proj", "out_proj", "proj_1", "proj_2", "head"}
    assert set(probe["chosen"].values()) <= {"aten", "gemv"}
    assert "more than" in layout.prepare(cpu_layout.MAX_KERNEL_ROWS + 1)["skipped"]
    assert [p["rows"] for p in layout.describe()["probes"]] == [1, cpu_layout.MAX_KERNEL_ROWS + 1]


def test_backend_records_when_the_layout_does_not_apply() -> None:
    spec = ModelSpec(model="tiny", dtype="float16", kernels="elmbench")
    engine = create_backend("torch", spec).describe()["engine"]
    assert engine["cpu_layout"] is None and "dtype float16" in engine["notes"][0]


def test_no_compiler_falls_back_to_stock_kernels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("ELMBENCH_CACHE", str(tmp_path / "cache"))
    cpu_kernels.load_kernels.cache_clear()
    try:
        backend = create_backend("torch", ModelSpec(model="tiny", seed=3, kernels="elmbench"))
        engine = backend.describe()["engine"]
        assert engine["cpu_layout"] is None and "did not build" in engine["notes"][0]
        prompt = np.random.default_rng(0).integers(0, 512, size=(1, 4))
        assert backend.generate(prompt, 3).shape == (1, 3)
    finally:
        cpu_kernels.load_kernels.cache_clear()


@needs_kernel
def test_ops_have_a_cpu_implementation_that_checks_its_inputs() -> None:
    facts = cpu_kernels.load_kernels().describe()
    assert "ops: C++" in facts or "ops: Python" in facts
    x, w = torch.randn(2, 1, 40), torch.randn(24, 40)
    np.testing.assert_allclose(torch.ops.elmbench.gemv(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)
    with pytest.raises(RuntimeError, match="elmbench::gemv"):
        torch.ops.elmbench.gemv(torch.randn(1, 39), w)  # K does not match
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.elmbench.gemv(x.double(), w.double())
    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 9, 16)
    pos = torch.tensor([8])
    np.testing.assert_allclose(
        torch.ops.elmbench.attend(q, k, k, pos), _sdpa(q, k, k, pos), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(RuntimeError, match="whole groups"):
        torch.ops.elmbench.attend(torch.randn(1, 3, 1, 16), k, k, pos)


@needs_kernel
def test_ops_fall_back_to_python_without_a_cxx_compiler(tmp_path: Path) -> None:
    # Registration happens once a process, so the fallback is seen in a fresh one.
    script = (
        "import torch, torch.nn.functional as F\n"
        "from elmbench.engine import cpu_kernels\n"
        "facts = cpu_kernels.load_kernels().describe()\n"
        "x, w = torch.randn(1, 40), torch.randn(24, 40)\n"
        "assert torch.allclose(cpu_kernels.gemv(x, w), F.linear(x, w), atol=1e-4)\n"
        "panels = cpu_kernels.to_panels(w, 5).contiguous()\n"
        "assert torch.allclose(cpu_kernels.gemv(x, panels), F.linear(x, w), atol=1e-4)\n"
        "print(facts)\n"
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "ELMBENCH_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "ops: Python (the C++ binding did not build" in done.stdout
