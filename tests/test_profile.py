"""Profiling: traces the TensorBoard plugin loads, shares that add up, every part labelled,
labels off outside profiling, the naive norm's extra operators, OLMo hooks, MLX staged timing."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from elmbench.backends import ModelSpec
from elmbench.checkpoints.torch_load import load_model
from elmbench.errors import ConfigError, ElmbenchError, UnavailableError
from elmbench.models import comparison, openelm_torch
from elmbench.models.comparison import build_comparison, get_comparison
from elmbench.profile import PhaseProfile, ProfileResult
from elmbench.profile.categories import (
    BETWEEN,
    CATEGORIES,
    NORM_PARTS,
    PARTS,
    UNLABELLED,
    OpEvent,
    by_category,
    op_category,
)
from elmbench.profile.torch_profile import label_parts, module_part, profile_torch

TINY_LAYERS = 3
PROMPT, GEN = 8, 4


def _torch_profile(norm: str, phase: str = "decode", **kwargs: Any) -> ProfileResult:
    model, _ = load_model("tiny", norm=norm)
    kwargs = {"prompt_tokens": PROMPT, "gen_tokens": GEN, "schedule": (1, 1, 2), **kwargs}
    return profile_torch(model, phase=phase, **kwargs)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProfileResult, Path]:
    """tiny with the naive norm, both phases, traces written."""
    trace_dir = tmp_path_factory.mktemp("traces")
    return _torch_profile("naive", "both", trace_dir=trace_dir), trace_dir


@pytest.fixture(scope="module")
def fused() -> ProfileResult:
    """tiny decode with PyTorch's F.rms_norm."""
    return _torch_profile("fused")


# Longer runs for the timing comparison, so that one preemption on a shared core is diluted.
LONG: dict[str, Any] = {"gen_tokens": 8, "schedule": (1, 1, 4), "record_shapes": False}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a loaded machine a parallel kernel waits for a busy core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def naive_long(one_thread: None) -> ProfileResult:
    """tiny decode with the naive norm, for the timing comparison."""
    return _torch_profile("naive", **LONG)


@pytest.fixture(scope="module")
def single_kernel(one_thread: None) -> ProfileResult:
    """tiny decode with LayerNorm in the norm slots: one native kernel per call on CPU."""
    return _torch_profile("layernorm", **LONG)


def _shares_add_up(ph: PhaseProfile) -> None:
    assert [c["category"] for c in ph.categories] == list(CATEGORIES)
    assert math.isclose(sum(c["share_pct"] for c in ph.categories), 100.0, abs_tol=1e-6)
    assert math.isclose(sum(p["share_pct"] for p in ph.parts), 100.0, abs_tol=1e-6)
    cat_ms = sum(c["time_ms"] for c in ph.categories)
    assert math.isclose(sum(p["time_ms"] for p in ph.parts), cat_ms, rel_tol=1e-9)
    column = "self_device_ms" if ph.time_basis == "device_kernel_time" else "self_cpu_ms"
    assert math.isclose(sum(r[column] for r in ph.op_rows), cat_ms, rel_tol=1e-9)
    assert all(c["time_ms"] >= 0 for c in ph.categories)


# Categories ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "category"),
    [
        ("aten::addmm", "matmul"),
        ("aten::mm", "matmul"),
        ("aten::linear", "matmul"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::scaled_dot_product_attention", "attention"),
        ("aten::native_layer_norm", "norm"),
        ("aten::_fused_rms_norm", "norm"),
        ("aten::silu", "activation"),
        ("aten::embedding", "embedding/head"),
        ("aten::index_select", "embedding/head"),
        ("aten::index_copy_", "memory/copy"),
        ("aten::_to_copy", "memory/copy"),
        ("aten::to", "memory/copy"),
        ("aten::cat", "memory/copy"),
        ("aten::rsqrt", "other"),
        ("aten::mul", "other"),
        ("aten::add", "other"),
        ("aten::tanh", "activation"),
        ("aten::argmax", "other"),
    ],
)
def test_operator_names_map_to_categories(op: str, category: str) -> None:
    assert op_category(op) == category


def test_part_label_decides_before_the_operator_name() -> None:
    assert OpEvent("aten::mul", 1.0, part="attn_norm", chain=("aten::mul",)).category == "norm"
    assert OpEvent("aten::mm", 1.0, part="head", chain=("aten::linear", "aten::mm")).category == (
        "embedding/head"
    )
    # Without a label the outermost known operator decides: a mul inside SDPA is attention.
    inside_sdpa = OpEvent(
        "aten::mul", 1.0, chain=("aten::scaled_dot_product_attention", "aten::mul")
    )
    assert inside_sdpa.category == "attention"
    assert OpEvent("aten::rsqrt", 1.0, chain=("aten::rsqrt",)).category == "other"


def test_category_shares_are_exclusive_and_sum_to_100() -> None:
    events = [
        OpEvent("aten::mm", 300.0, part="qkv_proj", chain=("aten::mm",)),
        OpEvent("elm::attn_norm", 50.0, part="attn_norm", is_label=True),
        OpEvent("aten::pow", 150.0, part="attn_norm", chain=("aten::pow",)),
        OpEvent("aten::add", 500.0, chain=("aten::add",)),
    ]
    rows = {r["category"]: r for r in by_category(events)}
    assert rows["norm"]["share_pct"] == pytest.approx(20.0)
    assert rows["matmul"]["share_pct"] == pytest.approx(30.0)
    assert rows["other"]["share_pct"] == pytest.approx(50.0)
    assert rows["norm"]["time_ms"] == pytest.approx(0.2)
    assert sum(r["share_pct"] for r in rows.values()) == pytest.approx(100.0)


# Torch profiles --------------------------------------------------------------------------------


def test_tensorboard_plugin_loads_the_trace(traced: tuple[ProfileResult, Path]) -> None:
    from torch_tb_profiler import consts
    from torch_tb_profiler.io.cache import Cache
    from torch_tb_profiler.profiler.loader import RunLoader

    result, trace_dir = traced
    ph = result.phases["decode"]
    run_dir = Path(ph.traces["tensorboard_run_dir"])
    assert run_dir.parent == trace_dir and run_dir.name == "tiny-naive-decode"
    run = RunLoader(run_dir.name, str(run_dir), Cache()).load()
    assert len(run.profiles) == 1, "the plugin failed to parse the trace (see its log above)"
    profile = next(iter(run.profiles.values()))
    assert consts.OP_VIEW in profile.views and consts.TRACE_VIEW in profile.views
    assert len(profile.overview["steps"]["rows"]) == 2  # the two active profiler steps
    ops = {row["name"] for row in profile.operation_table_by_name["data"]}
    assert {"aten::mm", "aten::scaled_dot_product_attention"} <= ops
    # The same trace for Chrome/Perfetto, outside the run folder so the plugin sees one worker.
    chrome = Path(ph.traces["chrome"])
    assert chrome.parent == trace_dir and not consts.WORKER_PATTERN.match(chrome.name)
    names = {e.get("name") for e in json.loads(chrome.read_text())["traceEvents"]}
    assert {"elm::attn_norm", "elm::rope", "elm_phase::decode"} <= names
    assert any(str(n).startswith("ProfilerStep#") for n in names)
    assert Path(result.phases["prefill"].traces["tensorboard"]).parent.name == "tiny-naive-prefill"


def test_shares_sum_to_100_in_every_phase(traced: tuple[ProfileResult, Path]) -> None:
    result, _ = traced
    assert set(result.phases) == {"prefill", "decode"}
    for ph in result.phases.values():
        _shares_add_up(ph)
        assert ph.time_basis == "cpu_self_time"
        assert ph.norm_share_pct > 0


def test_every_part_is_labelled_once_per_call(traced: tuple[ProfileResult, Path]) -> None:
    result, _ = traced
    for name, ph in result.phases.items():
        parts = {p["part"]: p for p in ph.parts}
        assert set(parts) == (set(PARTS) - {"residual"}) | {BETWEEN, UNLABELLED}, name
        forwards = ph.forwards_per_step
        for part in ("embedding", "final_norm", "head"):
            assert parts[part]["calls_per_step"] == forwards
        for part in set(PARTS) - {"embedding", "final_norm", "head", "residual"}:
            assert parts[part]["calls_per_step"] == TINY_LAYERS * forwards, part
        # The unlabelled remainder (residual adds, views, argmax) stays small.
        assert parts[UNLABELLED]["share_pct"] < 25


def test_naive_norm_dispatches_eight_ops_per_call_fused_one(
    traced: tuple[ProfileResult, Path], fused: ProfileResult
) -> None:
    naive = traced[0].phases["decode"].norm
    fast = fused.phases["decode"].norm
    calls = (4 * TINY_LAYERS + 1) * GEN
    assert naive["calls_per_step"] == fast["calls_per_step"] == calls
    # x.float, pow, mean, add, rsqrt, mul, type_as, mul: one Python dispatch each.
    assert naive["ops_per_call"] == 8
    assert fast["ops_per_call"] == 1
    assert naive["ops_per_step"] == 8 * calls


def test_norm_time_and_share_grow_with_the_naive_norm(
    naive_long: ProfileResult, single_kernel: ProfileResult
) -> None:
    # On CPU, torch's F.rms_norm runs the same element-wise ops as the naive norm (a composite),
    # so the single-kernel comparison here is LayerNorm (one native kernel per call).
    naive = naive_long.phases["decode"]
    one = single_kernel.phases["decode"]
    assert one.norm["ops_per_call"] == 1 and naive.norm["ops_per_call"] == 8
    assert naive.norm["leaf_ops_per_step"] > 2 * one.norm["leaf_ops_per_step"]
    # Other processes load the machine differently from one run to the next, so each run's
    # time is compared with itself: the norm's share (median over steps, which shrugs off a
    # preemption) and a norm call's median time in units of the same run's qkv_proj call.
    assert len(naive.norm["share_pct_by_step"]) == naive.steps == 4
    assert naive.norm["share_pct_median_step"] > one.norm["share_pct_median_step"] + 4

    def norm_call_in_qkv_calls(ph: PhaseProfile) -> float:
        qkv = next(p for p in ph.parts if p["part"] == "qkv_proj")
        return float(ph.norm["median_call_us"]) / qkv["median_call_us"]

    assert norm_call_in_qkv_calls(naive) > 1.5 * norm_call_in_qkv_calls(one)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_norm_launches_one_kernel_per_call_on_cuda() -> None:
    results = {}
    for norm in ("naive", "fused"):
        model, _ = load_model("tiny", norm=norm, device="cuda")
        results[norm] = profile_torch(model, "decode", PROMPT, GEN, schedule=(1, 1, 2))
    naive, fast = (results[n].phases["decode"] for n in ("naive", "fused"))
    assert naive.time_basis == "device_kernel_time"
    assert fast.norm["kernels_per_step"] <= 2 * fast.norm["calls_per_step"]
    assert naive.norm["kernels_per_step"] >= 4 * naive.norm["calls_per_step"]
    assert naive.norm_share_pct > fast.norm_share_pct
    _shares_add_up(naive)


def test_labels_are_off_outside_profiling() -> None:
    model, _ = load_model("tiny", norm="naive")
    assert openelm_torch.part("rope") is openelm_torch.part("sdpa")  # the shared no-op

    def names_seen() -> set[str]:
        model.setup_cache(1, 8)
        cpu = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=cpu) as prof, torch.inference_mode():
            model.prefill(torch.zeros(1, 4, dtype=torch.long))
        return {e.name for e in prof.events()}

    assert not any(n.startswith("elm::") for n in names_seen())
    with label_parts(model) as hooked:
        assert hooked == 1 + 8 * TINY_LAYERS + 1  # embedding, 8 modules per layer, final norm
        assert {"elm::attn_norm", "elm::rope", "elm::head"} <= names_seen()
    assert not any(n.startswith("elm::") for n in names_seen())
    profile_torch(model, "prefill", prompt_tokens=4, gen_tokens=1, schedule=(0, 1, 1))
    assert not any(n.startswith("elm::") for n in names_seen())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_record_fields_are_json_safe_with_the_what_if(traced: tuple[ProfileResult, Path]) -> None:
    result, _ = traced
    phases = json.loads(json.dumps(result.phase_fields()))
    assert list(phases) == ["prefill", "decode"]
    for name, fields in phases.items():
        ph = result.phases[name]
        assert fields["norm_share"]["share_pct"] == pytest.approx(ph.norm_share_pct)
        assert len(fields["wall_ms_per_step"]) == ph.steps == 2
        per_token = ph.wall_ms_per_token
        assert per_token is not None
        assert fields["ms_per_token_without_norm"] == pytest.approx(
            per_token * (1 - ph.norm_share_pct / 100)
        )
        assert fields["max_speedup_from_norm"] > 1
        assert fields["settings"] == result.settings and fields["top_ops"][0]["rank"] == 1
        assert sum(c["ms_per_step"] for c in fields["categories"]) == pytest.approx(
            sum(c["time_ms"] for c in fields["categories"]) / ph.steps
        )
    ops = result.op_rows()
    assert {r["phase"] for r in ops} == {"prefill", "decode"} and "self_cpu_ms" in ops[0]


def test_hf_module_names_map_to_parts() -> None:
    assert module_part("hf.model.layers.3.input_layernorm") == "attn_norm"
    assert module_part("hf.model.layers.3.self_attn.v_proj") == "qkv_proj"
    assert module_part("hf.model.layers.3.mlp.down_proj") == "proj_2"
    assert module_part("hf.model.norm") == "final_norm"
    assert module_part("transformer.norm") == "final_norm"
    assert module_part("transformer.layers.0.attn.q_norm") == "q_norm"
    assert module_part("hf.model.layers.3.self_attn") is None


@pytest.fixture
def olmo_toy(monkeypatch: pytest.MonkeyPatch) -> str:
    """OLMo's architecture at toy size, registered under a test name."""
    cfg = dataclasses.replace(
        get_comparison("olmo-1b"),
        name="olmo-toy",
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=128,
        vocab_size=300,
    )
    monkeypatch.setitem(comparison.COMPARISON_MODELS, "olmo-toy", cfg)
    return cfg.name


def test_olmo_profiles_with_layernorm_and_with_naive_rmsnorm(olmo_toy: str) -> None:
    results = {}
    for norm in ("native", "naive"):
        model = build_comparison(olmo_toy, norm=norm)
        results[norm] = profile_torch(model, "decode", PROMPT, GEN, schedule=(0, 1, 1))
        assert all(not m._forward_hooks for m in model.modules())
    layers = 2
    for norm, result in results.items():
        ph = result.phases["decode"]
        _shares_add_up(ph)
        parts = {p["part"]: p for p in ph.parts}
        for part in ("embedding", "qkv_proj", "out_proj", "proj_1", "proj_2", "activation"):
            assert part in parts, (norm, part)
        assert parts["attn_norm"]["calls_per_step"] == layers * GEN
        assert parts["final_norm"]["calls_per_step"] == GEN
        assert ph.norm["calls_per_step"] == (2 * layers + 1) * GEN
        assert result.norm == norm
    assert results["naive"].phases["decode"].norm["ops_per_call"] == 8
    # OlmoLayerNorm: cast up, layer_norm, cast back.
    assert results["native"].phases["decode"].norm["ops_per_call"] == 3


# Errors ----------------------------------------------------------------------------------------


def test_clear_errors() -> None:
    with pytest.raises(ElmbenchError, match=r"unknown phase 'decod'.*prefill, decode, both"):
        profile_torch(ModelSpec(model="tiny"), phase="decod")
    with pytest.raises(UnavailableError, match=r"norm 'apex'.*not available"):
        profile_torch(ModelSpec(model="tiny", norm="apex"), prompt_tokens=4, gen_tokens=1)
    with pytest.raises(ConfigError, match="active >= 1"):
        profile_torch(ModelSpec(model="tiny"), schedule=(1, 1, 0))
    with pytest.raises(ConfigError, match="gen_tokens must be a positive integer"):
        profile_torch(ModelSpec(model="tiny"), gen_tokens=0)
    with pytest.raises(ElmbenchError, match="cannot profile a Linear"):
        profile_torch(torch.nn.Linear(2, 2))


# MLX -------------------------------------------------------------------------------------------


def test_mlx_staged_forward_equals_the_model() -> None:
    mx = pytest.importorskip("mlx.core")
    from elmbench.checkpoints.mlx_load import load_mlx_model
    from elmbench.profile.mlx_profile import staged_forward

    model, _ = load_mlx_model("tiny", norm="naive")
    tokens = mx.array([[5, 17, 3, 99, 42, 7]], dtype=mx.int32)
    model.setup_cache(1, 8)
    plain = [model(tokens[:, :5], 0), model(tokens[:, 5:], 5)]
    model.setup_cache(1, 8)
    staged = [staged_forward(model, tokens[:, :5], 0), staged_forward(model, tokens[:, 5:], 5)]
    for a, b in zip(plain, staged, strict=True):
        assert mx.allclose(a, b, atol=1e-5).item()
    greedy = staged_forward(model, tokens, None, last_only=True, greedy=True)
    assert greedy.tolist() == mx.argmax(model(tokens, None, last_only=True), axis=-1).tolist()


def test_mlx_breakdown_covers_every_part_and_reports_overhead() -> None:
    pytest.importorskip("mlx.core")
    from elmbench.profile.mlx_profile import profile_mlx

    result = profile_mlx(ModelSpec(model="tiny"), "both", PROMPT, GEN, repeats=2)
    assert result.backend == "mlx" and set(result.phases) == {"prefill", "decode"}
    for name, ph in result.phases.items():
        parts = {p["part"]: p for p in ph.parts}
        assert set(parts) == set(PARTS) | {BETWEEN}, name
        assert parts["residual"]["calls_per_step"] == 2 * TINY_LAYERS * ph.forwards_per_step
        assert parts["attn_norm"]["calls_per_step"] == TINY_LAYERS * ph.forwards_per_step
        assert [c["category"] for c in ph.categories] == list(CATEGORIES)
        assert math.isclose(sum(c["share_pct"] for c in ph.categories), 100.0, abs_tol=1e-6)
        # The parts (with the glue between them) add up to the staged step time.
        staged_ms = ph.instrumented_ms_per_step * ph.steps
        assert sum(p["time_ms"] for p in ph.parts) == pytest.approx(staged_ms, rel=1e-6)
        assert parts[BETWEEN]["share_pct"] < 50
        assert ph.norm["calls_per_step"] == (4 * TINY_LAYERS + 1) * ph.forwards_per_step
        assert {p for p in parts if parts[p]["category"] == "norm"} == set(NORM_PARTS)
        assert len(ph.wall_ms_per_step) == 2 and all(ms > 0 for ms in ph.wall_ms_per_step)
        assert isinstance(ph.overhead_pct, float)
        assert 0 < ph.norm_share_pct < 100
        assert "approximation" in ph.notes[0]
    json.dumps(result.phase_fields())


def test_mlx_errors() -> None:
    pytest.importorskip("mlx.core")
    from elmbench.profile.mlx_profile import profile_mlx

    with pytest.raises(ElmbenchError, match="unknown phase 'both-ways'"):
        profile_mlx(ModelSpec(model="tiny"), phase="both-ways")
    with pytest.raises(UnavailableError, match="Metal capture is not available"):
        profile_mlx(ModelSpec(model="tiny"), metal_capture=Path("x.gputrace"))
    with pytest.raises(ElmbenchError, match="needs the mlx backend"):
        from elmbench.backends import create_backend

        profile_mlx(create_backend("torch", ModelSpec(model="tiny")))
