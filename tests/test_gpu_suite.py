"""The gpu suite: its plan on an H100 (faked here) with and without apex and Triton, and its
clear error on a machine without a GPU."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest
import torch
from test_devices import H100_BOX
from test_norms_torch import _install_fake_apex

from elmbench import devices
from elmbench.errors import UnavailableError
from elmbench.suites import SuiteSpec, load_suite, suite_path
from elmbench.throughput.plan import build_plan

OPENELM = ("270m", "450m", "1_1b", "3b")
RMSNORMS = ["naive", "fused", "compiled", "apex", "triton"]


def _gpu_suite() -> SuiteSpec:
    spec = load_suite(suite_path("gpu"))
    assert isinstance(spec, SuiteSpec)
    return spec


@pytest.fixture
def h100(monkeypatch: pytest.MonkeyPatch) -> None:
    """An H100 box as the plan sees it (devices, torch.cuda), with apex built."""
    monkeypatch.setattr(devices, "detect", lambda: H100_BOX)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _install_fake_apex(monkeypatch)


@pytest.mark.usefixtures("h100")
def test_gpu_suite_runs_every_norm_eager_and_graphed_on_an_h100() -> None:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    plan = build_plan(_gpu_suite())
    assert {c.device for c in plan.cases} == {"cuda:0"}
    openelm = [c for c in plan.cases if c.model in OPENELM]
    olmo = [c for c in plan.cases if c.model == "olmo-1b"]
    for model in OPENELM:
        cases = [c for c in openelm if c.model == model]
        assert Counter(c.norm for c in cases) == {n: 4 for n in RMSNORMS}  # 2 modes x 2 batches
        assert {(c.compile, c.batch_size) for c in cases} == {
            (m, b) for m in ("none", "cudagraphs") for b in (1, 8)
        }
    # OLMo runs eager only (transformers' dynamic cache), with its own LayerNorm too.
    assert Counter(c.norm for c in olmo) == {n: 2 for n in ["native", *RMSNORMS]}
    assert {c.compile for c in olmo} == {"none"}
    assert len(plan.cases) == 4 * 5 * 2 * 2 + 6 * 2
    assert {(c.dtype, c.prompt_tokens, c.gen_tokens) for c in plan.cases} == {
        ("bfloat16", 512, 128)
    }


@pytest.mark.usefixtures("h100")
def test_without_apex_the_suite_leaves_it_out_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_apex(monkeypatch, extension=False)  # apex without fused_layer_norm_cuda
    plan = build_plan(_gpu_suite())
    assert "apex" not in {c.norm for c in plan.cases}
    assert any("apex" in n and "fused_layer_norm_cuda" in n for n in plan.notes)
    naming_it = _gpu_suite().with_overrides(norms=("naive", "apex"))
    with pytest.raises(UnavailableError, match=r"scripts/build_apex\.sh"):
        build_plan(naming_it)


def test_the_gpu_suite_needs_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(UnavailableError, match=r"CUDA GPU .* is not available here"):
        build_plan(_gpu_suite())
