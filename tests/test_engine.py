"""The kernels axis: stock PyTorch by default, elmbench's engine only when named, and where not."""

from __future__ import annotations

import dataclasses
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from elmbench.backends import ModelSpec, create_backend
from elmbench.engine import ENGINE, STOCK, cpu_kernels, unsupported
from elmbench.errors import UnavailableError
from elmbench.models import comparison
from elmbench.suites import SuiteSpec
from elmbench.throughput.plan import build_plan

PROMPT = np.random.default_rng(3).integers(0, 512, size=(1, 6))
TINY = SuiteSpec(
    name="t", models=("tiny",), device="cpu", backend="torch", norms=("naive",),
    prompt_tokens=(8,), gen_tokens=(4,),
)  # fmt: skip


def test_the_default_torch_case_runs_stock_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    stock_linear = F.linear

    def counting(x: torch.Tensor, w: torch.Tensor, b: Any = None) -> torch.Tensor:
        calls.append(tuple(w.shape))
        return stock_linear(x, w, b)

    def forbidden(*args: Any) -> torch.Tensor:
        raise AssertionError("an elmbench kernel ran in a stock case")

    monkeypatch.setattr(F, "linear", counting)  # nn.Linear and the tied head call F.linear
    monkeypatch.setattr(cpu_kernels, "gemv", forbidden)
    monkeypatch.setattr(cpu_kernels, "attend", forbidden)
    backend = create_backend("torch", ModelSpec(model="tiny", seed=1))
    facts = backend.describe()
    assert facts["kernels"] == STOCK and facts["engine"] is None
    linears = [m for m in backend.model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear for m in linears)
    backend.generate(PROMPT, 3)
    vocab = backend.config.vocab_size
    assert calls and any(shape[0] == vocab for shape in calls)  # the head too went through F


@pytest.mark.usefixtures("gemv_kernel")
def test_the_engine_is_applied_only_when_named_and_changes_no_token() -> None:
    stock = create_backend("torch", ModelSpec(model="tiny", seed=1))
    engine = create_backend("torch", ModelSpec(model="tiny", seed=1, kernels=ENGINE))
    facts = engine.describe()
    assert facts["kernels"] == ENGINE and facts["engine"]["cpu_layout"]["matrices"] > 0
    assert not any(type(m) is nn.Linear for m in engine.model.modules())
    assert (stock.generate(PROMPT, 4) == engine.generate(PROMPT, 4)).all()


def _small_llama(monkeypatch: pytest.MonkeyPatch) -> str:
    cfg = dataclasses.replace(
        comparison.get_comparison("llama-270m"), name="llama-toy", hidden_size=64, num_layers=2,
        num_heads=4, num_kv_heads=2, intermediate_size=96, vocab_size=512,
    )  # fmt: skip
    monkeypatch.setitem(comparison.COMPARISON_MODELS, "llama-toy", cfg)
    return "llama-toy"


@pytest.mark.usefixtures("gemv_kernel")
def test_the_engine_serves_a_comparison_model_and_says_what_it_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _small_llama(monkeypatch)
    stock = create_backend("torch", ModelSpec(model=name, norm="native", seed=2))
    engine = create_backend("torch", ModelSpec(model=name, norm="native", seed=2, kernels=ENGINE))
    described = engine.describe()["engine"]
    assert described["cpu_layout"]["matrices"] == 2 * 7 + 1  # q k v o gate up down, the head
    assert any("attention: transformers' own" in n for n in described["notes"])
    stock.setup(1, 16)
    engine.setup(1, 16)
    assert (stock.generate(PROMPT, 4) == engine.generate(PROMPT, 4)).all()


def test_where_the_engine_cannot_serve_the_plan_says_so() -> None:
    assert unsupported("cpu") is None
    assert "is for the CPU" in (unsupported("cuda:0") or "")
    assert "serves the torch backend" in (unsupported("cpu", "mlx") or "")
    with pytest.raises(UnavailableError, match="serves the torch backend; mlx runs its stock"):
        build_plan(TINY.with_overrides(backend="mlx", device="mlx-cpu", kernels=(ENGINE,)))
    both = build_plan(dataclasses.replace(TINY, backend=None, kernels=(STOCK, ENGINE)))
    assert {(c.backend, c.kernels) for c in both.cases} == {
        ("torch", STOCK), ("torch", ENGINE), ("mlx", STOCK),
    }  # fmt: skip
    assert any("mlx: kernels elmbench left out" in n for n in both.notes)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.usefixtures("gemv_kernel")
def test_a_checkpoints_file_mapping_is_let_go_once_the_engine_copies_the_weights(
    write_checkpoint: Callable[..., Path],
) -> None:
    from elmbench.config import get_config

    folder = write_checkpoint(get_config("tiny"), seed=4)
    weights = str(folder / "model.safetensors")

    def mapped() -> bool:
        gc.collect()
        return weights in Path("/proc/self/maps").read_text()

    stock = create_backend("torch", ModelSpec(weights=str(folder)))
    assert mapped()  # stock runs on the checkpoint's pages as safetensors maps them
    del stock
    engine = create_backend("torch", ModelSpec(weights=str(folder), kernels=ENGINE))
    assert not mapped()  # else the file's pages would count twice in peak memory
    assert engine.generate(PROMPT, 2).shape == (1, 2)
