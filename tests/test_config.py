"""Config: layer-wise scaling against the published per-layer values, derived totals, presets, HF
config.json round trips and their errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from elmbench.config import (
    PRESETS,
    ElmConfig,
    architecture,
    architecture_difference,
    get_config,
    make_divisible,
    matching_presets,
    preset_names,
)
from elmbench.errors import CheckpointError, ConfigError, UnknownNameError


def runs(*pairs: tuple[int, int]) -> list[int]:
    """Expand run-length pairs (value, count) as the reference writes them (12×5, 16×7, ...)."""
    return [value for value, count in pairs for _ in range(count)]


# Transcribed from reference/OPENELM.md §1.1-1.2 (derived from the released CoreNet code; the
# 1.1B lists equal mlx-community's config.json; the CoreNet 1.1B count is confirmed by a
# third-party import note). Kept literal here so the test does not share code with the formula.
PUBLISHED: dict[str, dict[str, Any]] = {
    "270m": {
        "layers": 16,
        "model_dim": 1280,
        "head_dim": 64,
        "n_q": runs((12, 5), (16, 7), (20, 4)),
        "n_kv": runs((3, 5), (4, 7), (5, 4)),
        "ffn": [768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352,
                4608, 4864, 5120],
        "params_hf": 271_527_168,
        "params_corenet": 271_691_008,
        "tensors": 130,
        "norms": 65,
        "kv_bytes_bf16": 16_128,
    },
    "450m": {
        "layers": 20,
        "model_dim": 1536,
        "head_dim": 64,
        "n_q": runs((12, 3), (16, 7), (20, 6), (24, 4)),
        "n_kv": runs((3, 3), (4, 7), (5, 6), (6, 4)),
        "ffn": [768, 1024, 1280, 1536, 1792, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096,
                4352, 4608, 5120, 5376, 5632, 5888, 6144],
        "params_hf": 457_179_136,
        "params_corenet": 457_375_744,
        "tensors": 162,
        "norms": 81,
        "kv_bytes_bf16": 23_296,
    },
    "1_1b": {
        "layers": 28,
        "model_dim": 2048,
        "head_dim": 64,
        "n_q": runs((16, 3), (20, 7), (24, 8), (28, 6), (32, 4)),
        "n_kv": runs((4, 3), (5, 7), (6, 8), (7, 6), (8, 4)),
        "ffn": [1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096,
                4608, 4608, 5120, 5376, 5632, 5888, 6144, 6400, 6656, 6912, 7168, 7424, 7680,
                7936, 8192],
        "params_hf": 1_079_891_456,
        "params_corenet": 1_080_153_600,
        "tensors": 226,
        "norms": 113,
        "kv_bytes_bf16": 43_264,
    },
    "3b": {
        "layers": 36,
        "model_dim": 3072,
        "head_dim": 128,
        "n_q": runs((12, 4), (16, 14), (20, 12), (24, 6)),
        "n_kv": runs((3, 4), (4, 14), (5, 12), (6, 6)),
        "ffn": [1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 4096, 4352, 4608, 4864, 5120,
                5632, 5888, 6144, 6400, 6656, 7168, 7424, 7680, 7936, 8192, 8704, 8960, 9216,
                9472, 9728, 10240, 10496, 10752, 11008, 11264, 11776, 12032, 12288],
        "params_hf": 3_036_647_424,
        "params_corenet": 3_037_040_640,
        "tensors": 290,
        "norms": 145,
        "kv_bytes_bf16": 83_968,
    },
}  # fmt: skip

# mlx-community/OpenELM-1_1B config.json `ffn_multipliers`.
PUBLISHED_1_1B_FFN_MULTIPLIERS = [
    0.5, 0.63, 0.76, 0.89, 1.02, 1.15, 1.28, 1.41, 1.54, 1.67, 1.8, 1.93, 2.06, 2.19, 2.31, 2.44,
    2.57, 2.7, 2.83, 2.96, 3.09, 3.22, 3.35, 3.48, 3.61, 3.74, 3.87, 4.0,
]  # fmt: skip

SIZES = list(PUBLISHED)


@pytest.mark.parametrize("size", SIZES)
def test_per_layer_heads_and_ffn_equal_published(size: str) -> None:
    cfg, pub = get_config(size), PUBLISHED[size]
    assert (cfg.num_layers, cfg.model_dim, cfg.head_dim) == (
        pub["layers"],
        pub["model_dim"],
        pub["head_dim"],
    )
    assert list(cfg.num_query_heads) == pub["n_q"]
    assert list(cfg.num_kv_heads) == pub["n_kv"]
    assert list(cfg.ffn_dims) == pub["ffn"]
    # num_gqa_groups is query heads per KV head in every layer (reference §1.2 step 3).
    assert all(q == 4 * kv for q, kv in zip(cfg.num_query_heads, cfg.num_kv_heads, strict=True))


@pytest.mark.parametrize("size", SIZES)
def test_derived_totals_equal_published(size: str) -> None:
    cfg, pub = get_config(size), PUBLISHED[size]
    assert cfg.vocab_size == 32000
    assert cfg.num_params == pub["params_hf"]
    assert cfg.with_vocab(32128).num_params == pub["params_corenet"]
    assert cfg.num_norms == pub["norms"]
    assert cfg.kv_cache_bytes_per_token() == pub["kv_bytes_bf16"]
    assert cfg.kv_cache_bytes_per_token(4) == 2 * pub["kv_bytes_bf16"]


@pytest.mark.parametrize("size", SIZES)
def test_layout_and_meta_model_agree_with_published_counts(size: str) -> None:
    """The checkpoint layout and an actually built model (on `meta`: no memory) give the counts."""
    import torch

    from elmbench.checkpoints.layout import expected_shapes
    from elmbench.models.openelm_torch import OpenELM
    from elmbench.norms.torch_norms import NaiveRMSNorm

    cfg, pub = get_config(size), PUBLISHED[size]
    shapes = expected_shapes(cfg)
    assert len(shapes) == pub["tensors"]
    assert sum(_numel(s) for s in shapes.values()) == pub["params_hf"]
    with torch.device("meta"):
        model = OpenELM(cfg)
    assert model.num_parameters() == pub["params_hf"]
    assert len(model.state_dict()) == pub["tensors"]
    assert sum(isinstance(m, NaiveRMSNorm) for m in model.modules()) == pub["norms"]


def test_tiny_model_parameter_count_equals_config(tiny_cfg: ElmConfig) -> None:
    from elmbench.models.openelm_torch import OpenELM

    model = OpenELM(tiny_cfg)
    counted = sum(p.numel() for p in model.parameters())
    assert counted == tiny_cfg.num_params == model.num_parameters()
    # The head is tied: counting the embedding twice would add vocab * dim.
    assert counted == sum(_numel(tuple(t.shape)) for t in model.state_dict().values())


def test_1_1b_ffn_multipliers_equal_published() -> None:
    assert list(get_config("1_1b").ffn_multipliers) == PUBLISHED_1_1B_FFN_MULTIPLIERS
    assert get_config("1_1b").to_hf()["ffn_multipliers"] == PUBLISHED_1_1B_FFN_MULTIPLIERS


@pytest.mark.parametrize(
    ("value", "divisor", "expected"),
    [
        (0, 8, 8),  # never below the divisor
        (3, 8, 8),
        (64, 64, 64),  # an exact multiple stays
        (70, 64, 64),  # rounds down when that keeps >= 90%
        (96, 64, 128),  # half a divisor rounds up
        (95, 64, 128),  # 64 < 0.9 * 95: the 10% rule adds a divisor
        (1280 * 0.53, 256, 768),  # 270M layer 1: 12 query heads
        (1280 * 0.67, 256, 1024),  # 270M layer 5: 768 < 0.9 * 857.6, so 16 heads
        (2.19 * 2048, 256, 4608),  # 1.1B layers 13 and 14 both round to 4608
        (2.31 * 2048, 256, 4608),
    ],
)
def test_make_divisible(value: float, divisor: int, expected: int) -> None:
    result = make_divisible(value, divisor)
    assert result == expected
    assert isinstance(result, int)


# Presets ------------------------------------------------------------------------------------


def _architecture(cfg: ElmConfig) -> ElmConfig:
    return dataclasses.replace(cfg, name="", instruct=False)


@pytest.mark.parametrize("size", SIZES)
def test_instruct_twin_has_same_architecture(size: str) -> None:
    base, twin = get_config(size), get_config(f"{size}-instruct")
    assert twin.instruct and not base.instruct
    assert _architecture(twin) == _architecture(base)
    assert twin.official_name == base.official_name + "-Instruct"


@pytest.mark.parametrize(
    ("typed", "key"),
    [
        ("OpenELM-1_1B", "1_1b"),
        ("apple/OpenELM-1_1B-Instruct", "1_1b-instruct"),
        ("openelm-270m", "270m"),
        ("OPENELM-3B-INSTRUCT", "3b-instruct"),
        ("apple/openelm-450m", "450m"),
        (" 270M ", "270m"),
        ("tiny", "tiny"),
    ],
)
def test_names_are_case_insensitive(typed: str, key: str) -> None:
    assert get_config(typed) is PRESETS[key]


def test_preset_names_cover_sizes_twins_and_tiny() -> None:
    assert set(preset_names()) == {s + t for s in SIZES for t in ("", "-instruct")} | {"tiny"}


@pytest.mark.parametrize(("typed", "suggestion"), [("1.1b", "1_1b"), ("270", "270m")])
def test_unknown_name_lists_valid_and_suggests(typed: str, suggestion: str) -> None:
    with pytest.raises(UnknownNameError) as info:
        get_config(typed)
    message = str(info.value)
    assert f"Did you mean '{suggestion}'?" in message
    for name in preset_names():
        assert name in message
    assert "\n" not in message


def test_unknown_name_without_close_match_has_no_suggestion() -> None:
    with pytest.raises(UnknownNameError, match="Valid models") as info:
        get_config("gpt2-xl-chat")
    assert "Did you mean" not in str(info.value)


def test_config_rejects_inconsistent_lists() -> None:
    tiny = get_config("tiny")
    with pytest.raises(ConfigError, match="num_kv_heads"):
        dataclasses.replace(tiny, num_kv_heads=(1, 2))
    with pytest.raises(ConfigError, match="layer 1"):
        dataclasses.replace(tiny, num_kv_heads=(1, 3, 1))


# HF config.json --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", preset_names())
def test_to_hf_from_hf_round_trip(name: str) -> None:
    cfg = get_config(name)
    hf = cfg.to_hf()
    back = ElmConfig.from_hf(json.loads(json.dumps(hf)))  # through JSON: lists, not tuples
    assert back.num_query_heads == cfg.num_query_heads
    assert back.num_kv_heads == cfg.num_kv_heads
    assert back.ffn_dims == cfg.ffn_dims
    assert dataclasses.replace(back, instruct=cfg.instruct) == cfg
    # The keys mlx-lm's ModelArgs reads directly.
    assert hf["num_query_heads"] == list(cfg.num_query_heads)
    assert hf["num_kv_heads"] == list(cfg.num_kv_heads)
    assert len(hf["ffn_multipliers"]) == cfg.num_layers


def test_round_trip_keeps_non_default_eps_and_context(tiny_cfg: ElmConfig, tmp_path: Path) -> None:
    cfg = dataclasses.replace(tiny_cfg, norm_eps=1e-5, max_context_length=128)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_hf()))
    assert ElmConfig.from_hf(path) == cfg


@pytest.mark.parametrize("size", SIZES)
def test_from_hf_with_two_entry_multipliers_computes_lists(size: str) -> None:
    """A CoreNet-style config (α, β ranges only, no expanded lists) gives the released lists."""
    cfg = get_config(size)
    data = {
        "model_type": "openelm",
        "num_transformer_layers": cfg.num_layers,
        "model_dim": cfg.model_dim,
        "head_dim": cfg.head_dim,
        "num_gqa_groups": 4,
        "qkv_multipliers": [0.5, 1.0],
        "ffn_multipliers": [0.5, 4.0],
        "ffn_dim_divisor": 256,
        "vocab_size": 32000,
    }
    back = ElmConfig.from_hf(data)
    assert list(back.num_query_heads) == PUBLISHED[size]["n_q"]
    assert list(back.num_kv_heads) == PUBLISHED[size]["n_kv"]
    assert list(back.ffn_dims) == PUBLISHED[size]["ffn"]
    assert back.num_params == PUBLISHED[size]["params_hf"]


def _released_config_json(size: str, two_entry: bool) -> dict[str, Any]:
    """A config.json as a release writes it: no elmbench name, transformers' keys, through JSON;
    `two_entry`: CoreNet-style multiplier ranges instead of the expanded per-layer lists."""
    data = get_config(size).to_hf()
    del data["elmbench_name"]
    data.update(transformers_version="4.39.3", use_cache=True, torch_dtype="bfloat16")
    if two_entry:
        data["ffn_multipliers"] = [0.5, 4.0]
        del data["num_query_heads"], data["num_kv_heads"]
    return dict(json.loads(json.dumps(data)))


@pytest.mark.parametrize("two_entry", [False, True], ids=["per-layer", "two-entry"])
@pytest.mark.parametrize("size", SIZES)
def test_a_checkpoint_config_matches_its_model_and_instruct_twin(
    size: str, two_entry: bool
) -> None:
    cfg = ElmConfig.from_hf(_released_config_json(size, two_entry), name="OpenELM-folder")
    assert cfg.official_name == ""  # a checkpoint carries no paper name: matching supplies it
    assert [p.name for p in matching_presets(cfg)] == [size, f"{size}-instruct"]
    assert architecture_difference(cfg, get_config(size)) == ""


def test_architecture_is_every_field_but_the_names() -> None:
    base = get_config("1_1b")
    renamed = dataclasses.replace(base, name="mine", official_name="", instruct=True)
    assert architecture(renamed) == architecture(base)
    assert "name" not in architecture(base) and "num_layers" in architecture(base)
    wider = dataclasses.replace(base, ffn_dims=(1280, *base.ffn_dims[1:]))
    assert matching_presets(wider) == []
    assert architecture_difference(wider, base).startswith("ffn_dims 1280,1280,1536,")
    longer = dataclasses.replace(base, max_context_length=4096)
    assert matching_presets(longer) == []
    assert architecture_difference(longer, base) == "max_context_length 4096, not 2048"
    corenet_vocab = base.with_vocab(32128)
    assert architecture_difference(corenet_vocab, base) == "vocab_size 32128, not 32000"
    assert [p.name for p in matching_presets(get_config("tiny"))] == ["tiny"]


def _write_config(tmp_path: Path, edit: Any) -> Path:
    data = get_config("tiny").to_hf()
    edit(data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def _drop(key: str) -> Any:
    return lambda d: d.pop(key)


def _set(key: str, value: Any) -> Any:
    return lambda d: d.__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "key", "fragments"),
    [
        (_drop("model_dim"), "model_dim", ["missing config entry"]),
        (_drop("num_transformer_layers"), "num_transformer_layers", ["missing"]),
        (_set("model_type", "llama"), "model_type", ["expected openelm", "found llama"]),
        (_set("num_query_heads", [2, 4]), "num_query_heads", ["expected 3", "found 2"]),
        (_set("num_kv_heads", [1, 2, 1, 1]), "num_kv_heads", ["expected 3", "found 4"]),
        (_set("ffn_multipliers", [1.0, 2.0, 3.0, 4.0, 5.0]), "ffn_multipliers", ["found 5"]),
        (_set("share_input_output_layers", False), "share_input_output_layers", ["untied"]),
        (_set("model_dim", "64"), "model_dim", ["a positive integer", 'found "64"']),
        (_set("head_dim", None), "head_dim", ["found null"]),
        (_set("num_kv_heads", [1, "2", 1]), "num_kv_heads", ["a list of positive integers"]),
        (_set("ffn_multipliers", None), "ffn_multipliers", ["a number or a list of numbers"]),
    ],
)
def test_from_hf_errors_name_file_and_key(
    tmp_path: Path, edit: Any, key: str, fragments: list[str]
) -> None:
    path = _write_config(tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        ElmConfig.from_hf(path)
    message = str(info.value)
    assert info.value.key == key
    assert str(path) in message and f"'{key}'" in message
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_from_hf_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "config.json"
    with pytest.raises(CheckpointError, match="not found") as info:
        ElmConfig.from_hf(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [('{"model_type": "openelm",', "not valid JSON"), ("[1, 2]", "expected a JSON object")],
)
def test_from_hf_invalid_json(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(CheckpointError, match=fragment) as info:
        ElmConfig.from_hf(path)
    assert str(path) in str(info.value)


def test_from_hf_folder_in_place_of_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.mkdir()
    with pytest.raises(CheckpointError, match="cannot read") as info:
        ElmConfig.from_hf(path)
    assert str(path) in str(info.value)


def test_from_hf_inconsistent_heads_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = _write_config(tmp_path, _set("num_kv_heads", [1, 3, 1]))
    with pytest.raises(CheckpointError, match="query heads must be a positive multiple") as info:
        ElmConfig.from_hf(path)
    assert str(path) in str(info.value)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
