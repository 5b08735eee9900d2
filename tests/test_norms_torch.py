"""Torch norm variants: each equals the naive RMSNorm within a dtype-aware bound, the LayerNorm
ablation is marked and differs, apex fails clearly here and is wired right (with a stand-in)."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from elmbench.checkpoints.layout import expected_shapes
from elmbench.checkpoints.torch_load import build_model, load_model, load_state
from elmbench.config import get_config
from elmbench.errors import UnavailableError, UnknownNameError
from elmbench.models.openelm_torch import OpenELM
from elmbench.norms import get_norm, parse_norms, variants
from elmbench.norms.torch_norms import NaiveRMSNorm, apex_available

EPS = 1e-6
SHAPES = {"BTd": (2, 7, 64), "BHTh": (2, 3, 7, 16)}  # hidden states; per-head q/k

# Tolerances against naive, as (rtol, atol). fp32: only the reduction order differs (~1e-7
# relative). bf16 keeps 8 significand bits, so one rounding costs up to 2^-8 relative; naive
# rounds twice (cast, then times weight) where a fused kernel may round once, and the mean of
# squares may be reduced in another order, so allow ~2 ulps: 2 * 2^-7 = 1.6e-2. fp16 keeps 11
# bits: 2 * 2^-10 = 2e-3. atol covers outputs that are near zero after the weight multiply.
TOLERANCES = {
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (2e-3, 1e-3),
}
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _inputs(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Random activations with a nonzero mean and scale, and a non-trivial weight."""
    gen = torch.Generator().manual_seed(len(shape))
    x = 3 * torch.randn(shape, generator=gen) + 0.5
    weight = 1 + 0.5 * torch.randn(shape[-1], generator=gen)
    return x.to(dtype), weight


def _build(name: str, dim: int, weight: torch.Tensor, dtype: torch.dtype) -> nn.Module:
    module: nn.Module = get_norm(name).build(dim, EPS)
    with torch.no_grad():
        module.get_parameter("weight").copy_(weight)
    return module.to(dtype).requires_grad_(False)  # as build_model leaves it: inference only


def _available_rmsnorms() -> list[str]:
    names = [n for n, v in variants("torch").items() if n != "naive" and not v.changes_numerics]
    return [n for n in names if get_norm(n).available().ok]


def _cases() -> list[tuple[str, str, torch.dtype]]:
    # torch.compile recompiles per dtype and rank (seconds each): compiled checks both ranks in
    # fp32 (the graphs the model test also uses) and the 16-bit dtypes on hidden states only.
    return [
        (name, shape, dtype)
        for name in _available_rmsnorms()
        for shape in SHAPES
        for dtype in TOLERANCES
        if not (name == "compiled" and shape != "BTd" and dtype is not torch.float32)
    ]


@pytest.mark.parametrize(
    ("name", "shape", "dtype"),
    _cases(),
    ids=lambda v: DTYPE_IDS.get(v, str(v)) if isinstance(v, torch.dtype) else str(v),
)
def test_variant_matches_naive(name: str, shape: str, dtype: torch.dtype) -> None:
    x, weight = _inputs(SHAPES[shape], dtype)
    dim = x.shape[-1]
    want = _build("naive", dim, weight, dtype)(x)
    got = _build(name, dim, weight, dtype)(x)
    assert got.dtype == want.dtype == dtype and got.shape == x.shape
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def test_naive_is_the_released_formula() -> None:
    """x * rsqrt(mean(x^2) + eps) in fp32, cast to the input dtype, then times the weight."""
    x, weight = _inputs(SHAPES["BTd"], torch.float32)
    x64, w64 = x.double(), weight.double()
    want = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + EPS) * w64
    got = _build("naive", 64, weight, torch.float32)(x)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_naive_upcasts_to_fp32_in_bf16() -> None:
    """bf16 input: the normalized value is rounded once to bf16, then multiplied by the weight."""
    x, weight = _inputs(SHAPES["BTd"], torch.bfloat16)
    x64 = x.double()
    normed = (x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + EPS)).to(torch.bfloat16)
    want = normed * weight.to(torch.bfloat16)
    got = _build("naive", 64, weight, torch.bfloat16)(x)
    # fp32 then one rounding matches the exact value rounded except at rare ties; squaring and
    # averaging in bf16 (no upcast) would round several times and differ in many elements.
    assert (got == want).float().mean().item() > 0.99


def test_expected_variants_are_registered_and_available_here() -> None:
    assert {"naive", "fused", "compiled", "apex", "layernorm"} <= set(variants("torch"))
    assert "fused" in _available_rmsnorms()  # torch >= 2.4 always has F.rms_norm


def test_layernorm_is_a_marked_ablation_that_changes_numerics() -> None:
    variant = get_norm("layernorm")
    assert variant.changes_numerics and "ablation" in variant.label
    assert all(not get_norm(n).changes_numerics for n in ("naive", "fused", "compiled", "apex"))
    x, weight = _inputs(SHAPES["BTd"], torch.float32)
    layernorm = _build("layernorm", 64, weight, torch.float32)
    naive = _build("naive", 64, weight, torch.float32)
    assert set(dict(layernorm.named_parameters())) == {"weight"}  # fits the checkpoint keys
    # It is LayerNorm: mean removed, then scaled by the standard deviation.
    centred = x - x.mean(-1, keepdim=True)
    want = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + EPS) * weight
    torch.testing.assert_close(layernorm(x), want, rtol=1e-5, atol=1e-5)
    # So it differs from RMSNorm on inputs with a nonzero mean (here 0.5 on a scale of 3) ...
    assert (layernorm(x) - naive(x)).abs().max() > 0.05
    # ... and agrees with it only on zero-mean rows.
    torch.testing.assert_close(layernorm(centred), naive(centred), rtol=1e-5, atol=1e-5)


# Registry ---------------------------------------------------------------------------------------


def test_unknown_norm_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'naive'") as info:
        get_norm("naiv")
    assert "fused" in str(info.value) and "layernorm" in str(info.value)
    with pytest.raises(UnknownNameError, match="Did you mean 'fused'"):
        parse_norms("naive,fusd")


def test_parse_norms_lists_and_all() -> None:
    assert [v.name for v in parse_norms("naive, fused")] == ["naive", "fused"]
    everything = parse_norms("all")
    assert [v.name for v in everything] == [
        n for n, v in variants("torch").items() if v.available().ok
    ]
    assert "naive" in [v.name for v in everything]
    if not apex_available().ok:
        assert "apex" not in [v.name for v in everything]


# apex: unavailable here --------------------------------------------------------------------------


@pytest.fixture
def no_apex() -> None:
    if apex_available().ok:
        pytest.skip("NVIDIA apex is really available on this machine")


@pytest.mark.usefixtures("no_apex")
def test_apex_is_unavailable_with_reason_and_hint() -> None:
    status = get_norm("apex").available()
    assert not status.ok and status.reason
    assert "scripts/build_apex.sh" in status.hint  # builds the extension from apex source
    assert "never 'pip install apex'" in status.hint  # the PyPI 'apex' is an unrelated package


@pytest.mark.usefixtures("no_apex")
def test_building_apex_raises_with_the_hint() -> None:
    hint = get_norm("apex").available().hint
    with pytest.raises(UnavailableError) as info:
        get_norm("apex").build(64, 1e-6)
    assert info.value.hint == hint and hint in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(UnavailableError, match="pip install apex"):
        OpenELM(get_config("tiny"), norm="apex")
    with pytest.raises(UnavailableError, match="pip install apex"):
        load_model("tiny", norm="apex")


# apex: wiring, with a stand-in for a real CUDA build ---------------------------------------------


class StandInFusedRMSNorm(nn.Module):
    """apex.normalization.FusedRMSNorm's constructor, `weight` and CPU path (manual_rms_norm)."""

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        importlib.import_module("fused_layer_norm_cuda")  # as apex's constructor does
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape = torch.Size(shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.weight = nn.Parameter(torch.ones(*self.normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(-1, -len(self.normalized_shape) - 1, -1))
        variance = x.to(torch.float32).pow(2).mean(dims, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def _install_fake_apex(
    monkeypatch: pytest.MonkeyPatch, *, rms_norm: bool = True, extension: bool = True
) -> None:
    apex = types.ModuleType("apex")
    normalization = types.ModuleType("apex.normalization")
    if rms_norm:
        normalization.FusedRMSNorm = StandInFusedRMSNorm  # type: ignore[attr-defined]
    apex.normalization = normalization  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "apex", apex)
    monkeypatch.setitem(sys.modules, "apex.normalization", normalization)
    if extension:
        monkeypatch.setitem(sys.modules, "fused_layer_norm_cuda", types.ModuleType("fused"))
    else:
        monkeypatch.setitem(sys.modules, "fused_layer_norm_cuda", None)  # import fails


@pytest.fixture
def fake_apex(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    _install_fake_apex(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    yield


@pytest.mark.usefixtures("fake_apex")
def test_apex_wiring_with_stand_in(tmp_path: Path) -> None:
    assert apex_available().ok
    assert "apex" in [v.name for v in parse_norms("all")]
    module = get_norm("apex").build(64, 1e-6)
    assert type(module) is StandInFusedRMSNorm
    assert module.eps == 1e-6 and module.normalized_shape == (64,)

    from elmbench.checkpoints.hf import save_hf

    cfg = get_config("tiny")
    cfg, state, _ = load_state(cfg, seed=4)
    folder = save_hf(cfg, state, tmp_path / "ckpt")
    apex_model, _ = load_model(weights=folder, norm="apex")  # strict: the keys are unchanged
    assert apex_model.state_dict().keys() == expected_shapes(cfg).keys()
    norms = [m for m in apex_model.modules() if isinstance(m, StandInFusedRMSNorm)]
    assert len(norms) == cfg.num_norms and all(m.eps == cfg.norm_eps for m in norms)
    naive_model, _ = load_model(weights=folder, norm="naive")
    assert not any(isinstance(m, StandInFusedRMSNorm) for m in naive_model.modules())
    tokens = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    # fp32: apex's CPU path is the same formula with the weight multiplied on the other side.
    torch.testing.assert_close(apex_model(tokens), naive_model(tokens), rtol=1e-6, atol=1e-6)
    bf16 = build_model(cfg, {k: v.bfloat16() for k, v in state.items()}, norm="apex")
    assert isinstance(bf16.transformer.norm, StandInFusedRMSNorm)
    assert bf16(tokens).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("rms_norm", "extension", "cuda", "reason"),
    [
        (False, True, True, "not NVIDIA apex"),
        (True, False, True, "fused_layer_norm_cuda"),
        (True, True, False, "CUDA device"),
    ],
)
def test_apex_availability_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, rms_norm: bool, extension: bool, cuda: bool, reason: str
) -> None:
    _install_fake_apex(monkeypatch, rms_norm=rms_norm, extension=extension)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    status = apex_available()
    assert not status.ok and reason in status.reason and status.hint
    with pytest.raises(UnavailableError, match=reason):
        get_norm("apex").build(64, 1e-6)


def test_naive_weight_is_ones_and_named_weight() -> None:
    module = NaiveRMSNorm(32)
    assert [name for name, _ in module.named_parameters()] == ["weight"]
    assert torch.equal(module.weight.detach(), torch.ones(32))
