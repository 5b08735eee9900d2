"""Checkpoints: HF layout write/read (single and sharded), mlx-lm compatibility, one clear error per
bad checkpoint, CoreNet `.pt` files, and the seeded random initializer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from elmbench.checkpoints import WeightsSource
from elmbench.checkpoints.hf import read_hf
from elmbench.checkpoints.init import random_arrays
from elmbench.checkpoints.layout import INDEX, PREFIX, SINGLE, expected_shapes
from elmbench.checkpoints.torch_load import build_model, load_state, torch_dtype
from elmbench.config import ElmConfig
from elmbench.errors import CheckpointError, ElmbenchError

WriteCheckpoint = Callable[..., Path]


def _reference_state(cfg: ElmConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights the fixture wrote, drawn again straight from the numpy initializer."""
    return {k: torch.from_numpy(v) for k, v in random_arrays(cfg, seed).items()}


def _assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


# HF layout ------------------------------------------------------------------------------------


def test_hf_round_trip_is_exact(tiny_cfg: ElmConfig, write_checkpoint: WriteCheckpoint) -> None:
    folder = write_checkpoint(tiny_cfg, seed=3)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", SINGLE]
    cfg, state = read_hf(folder)
    assert dataclasses.replace(cfg, name="tiny") == tiny_cfg
    _assert_same_state(state, _reference_state(tiny_cfg, seed=3))
    cfg2, state2, source = load_state(weights=folder)
    assert source == WeightsSource("hf", str(folder)) and cfg2 == cfg
    _assert_same_state(state2, state)


def test_sharded_checkpoint_loads_identically(
    tiny_cfg: ElmConfig, write_checkpoint: WriteCheckpoint
) -> None:
    limit = 40_000
    folder = write_checkpoint(tiny_cfg, max_shard_bytes=limit, name="sharded")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (folder / SINGLE).exists()
    index = json.loads((folder / INDEX).read_text())
    assert set(index["weight_map"]) == set(expected_shapes(tiny_cfg))
    assert {folder / n for n in index["weight_map"].values()} == set(shards)
    want = _reference_state(tiny_cfg)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in want.values())
    for shard in shards:
        tensors = load_file(shard)
        # A shard only passes the limit when it holds one tensor that is larger on its own.
        assert len(tensors) == 1 or sum(t.numel() * 4 for t in tensors.values()) <= limit
    _, state = read_hf(folder)
    _assert_same_state(state, want)


@pytest.mark.parametrize("shard", [None, 40_000], ids=["single", "sharded"])
def test_saved_folder_loads_strictly_in_mlx_lm(
    tiny_cfg: ElmConfig, write_checkpoint: WriteCheckpoint, shard: int | None
) -> None:
    mx = pytest.importorskip("mlx.core")
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model

    folder = write_checkpoint(tiny_cfg, max_shard_bytes=shard)
    model, config = load_model(Path(folder), strict=True)
    assert config["model_type"] == "openelm"
    params = dict(tree_flatten(model.parameters()))
    want = _reference_state(tiny_cfg)
    assert set(params) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(np.array(params[key].astype(mx.float32)), value.numpy())


# Bad checkpoints --------------------------------------------------------------------------------

KEY = f"{PREFIX}layers.1.ffn.proj_2.weight"  # tiny: (64, 128)


def _rewrite_single(folder: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    path = folder / SINGLE
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def _missing_key(folder: Path) -> None:
    _rewrite_single(folder, lambda t: t.pop(KEY))


def _unexpected_key(folder: Path) -> None:
    _rewrite_single(folder, lambda t: t.__setitem__("lm_head.weight", torch.zeros(512, 64)))


def _wrong_shape(folder: Path) -> None:
    _rewrite_single(folder, lambda t: t.__setitem__(KEY, torch.zeros(64, 127)))


def _wrong_dtype(folder: Path) -> None:
    _rewrite_single(folder, lambda t: t.__setitem__(KEY, torch.zeros(64, 128, dtype=torch.int32)))


def _truncate(folder: Path) -> None:
    data = (folder / SINGLE).read_bytes()
    (folder / SINGLE).write_bytes(data[: len(data) // 2])


def _garble_header(folder: Path) -> None:
    data = bytearray((folder / SINGLE).read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header starts after its 8-byte length
    (folder / SINGLE).write_bytes(bytes(data))


def _contradicting_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["num_kv_heads"][1] = 1  # layer 1 really has 2 KV heads
    (folder / "config.json").write_text(json.dumps(config))


def _no_weights(folder: Path) -> None:
    (folder / SINGLE).unlink()


# (corrupt the folder, file named in the message, key, expected, found)
BAD_CASES = {
    "missing_key": (_missing_key, SINGLE, KEY, "[64, 128]", "nothing"),
    "unexpected_key": (_unexpected_key, SINGLE, "lm_head.weight", None, None),
    "wrong_shape": (_wrong_shape, SINGLE, KEY, "[64, 128]", "[64, 127]"),
    "wrong_dtype": (_wrong_dtype, SINGLE, KEY, "floating-point", "int32"),
    "truncated": (_truncate, SINGLE, None, None, None),
    "garbled_header": (_garble_header, SINGLE, None, None, None),
    "contradicting_config": (
        _contradicting_config,
        SINGLE,
        f"{PREFIX}layers.1.attn.qkv_proj.weight",
        "[96, 64]",  # (4 + 2*1) * 16 rows, as the edited config says
        "[128, 64]",  # (4 + 2*2) * 16 rows in the file
    ),
    "no_weights": (_no_weights, "ckpt", None, SINGLE, None),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_checkpoint_gives_one_clear_error(
    tiny_cfg: ElmConfig, write_checkpoint: WriteCheckpoint, case: str
) -> None:
    corrupt, file_name, key, expected, found = BAD_CASES[case]
    folder = write_checkpoint(tiny_cfg)
    corrupt(folder)
    with pytest.raises(CheckpointError) as info:
        load_state("tiny", weights=folder)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(folder)) and file_name in message
    assert info.value.key == key
    for fragment in (key, expected, found):
        if fragment is not None:
            assert fragment in message, (fragment, message)
    if case == "contradicting_config":
        assert "config.json" in message


def test_missing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "absent"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        read_hf(folder)
    assert str(folder) in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state("tiny", weights=folder)


def test_missing_config_json(tiny_cfg: ElmConfig, write_checkpoint: WriteCheckpoint) -> None:
    folder = write_checkpoint(tiny_cfg)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json not found") as info:
        read_hf(folder)
    assert str(folder / "config.json") in str(info.value)


def test_index_pointing_at_missing_shard(
    tiny_cfg: ElmConfig, write_checkpoint: WriteCheckpoint
) -> None:
    folder = write_checkpoint(tiny_cfg, max_shard_bytes=40_000)
    index = json.loads((folder / INDEX).read_text())
    victim = sorted(folder.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match="missing") as info:
        read_hf(folder)
    assert str(victim) in str(info.value) and INDEX in str(info.value)
    assert info.value.key is not None and index["weight_map"][info.value.key] == victim.name


def test_index_listing_a_key_its_shard_lacks(
    tiny_cfg: ElmConfig, write_checkpoint: WriteCheckpoint
) -> None:
    folder = write_checkpoint(tiny_cfg, max_shard_bytes=40_000)
    index = json.loads((folder / INDEX).read_text())
    first = sorted(folder.glob("model-*.safetensors"))[0].name
    moved = next(k for k, v in index["weight_map"].items() if v != first)
    index["weight_map"][moved] = first
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not in this shard") as info:
        read_hf(folder)
    assert info.value.key == moved and first in str(info.value)


def test_weights_path_that_is_neither_folder_nor_pt(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 8)
    with pytest.raises(CheckpointError, match="not an HF folder") as info:
        load_state("tiny", weights=path)
    assert str(path) in str(info.value)


def test_dtype_names() -> None:
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("Float16") is torch.float16
    assert torch_dtype(torch.float32) is torch.float32
    with pytest.raises(ElmbenchError, match="Valid dtypes"):
        torch_dtype("int8")


def test_build_model_refuses_a_state_it_does_not_hold(tiny_cfg: ElmConfig) -> None:
    _, state, _ = load_state(tiny_cfg)
    state["transformer.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"transformer\.extra\.weight"):
        build_model(tiny_cfg, state)


# CoreNet .pt ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corenet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[ElmConfig, Path, torch.Tensor]:
    """A CoreNet-style `.pt`: no `transformer.` prefix, a 32128-row embedding, tiny dimensions."""
    from elmbench.config import get_config

    cfg = dataclasses.replace(get_config("tiny"), vocab_size=32000)
    raw = {k.removeprefix(PREFIX): v for k, v in _reference_state(cfg).items()}
    embedding = torch.randn(32128, cfg.model_dim, generator=torch.Generator().manual_seed(1))
    raw["token_embeddings.weight"] = embedding
    path = tmp_path_factory.mktemp("corenet") / "checkpoint.pt"
    torch.save(raw, path)
    return cfg, path, embedding


def test_corenet_crop_vocab(corenet_file: tuple[ElmConfig, Path, torch.Tensor]) -> None:
    cfg, path, embedding = corenet_file
    got_cfg, state, source = load_state(cfg, weights=path, crop_vocab=True)
    assert source == WeightsSource("corenet", str(path))
    assert got_cfg.vocab_size == 32000
    emb = state[f"{PREFIX}token_embeddings.weight"]
    assert emb.shape == (32000, cfg.model_dim)
    assert torch.equal(emb, embedding[:32000])
    assert state.keys() == expected_shapes(cfg).keys()
    reference = _reference_state(cfg)
    key = f"{PREFIX}layers.2.attn.qkv_proj.weight"
    assert torch.equal(state[key], reference[key])


def test_corenet_keep_vocab(corenet_file: tuple[ElmConfig, Path, torch.Tensor]) -> None:
    cfg, path, embedding = corenet_file
    got_cfg, state, _ = load_state(cfg, weights=path, crop_vocab=False, dtype="bf16")
    assert got_cfg.vocab_size == 32128
    assert got_cfg.num_params == cfg.num_params + 128 * cfg.model_dim
    emb = state[f"{PREFIX}token_embeddings.weight"]
    assert emb.dtype == torch.bfloat16
    assert torch.equal(emb, embedding.to(torch.bfloat16))
    model = build_model(got_cfg, state)
    assert model(torch.tensor([[1, 32127]])).shape == (1, 2, 32128)


def test_corenet_wrapped_state_dict(
    corenet_file: tuple[ElmConfig, Path, torch.Tensor], tmp_path: Path
) -> None:
    cfg, path, _ = corenet_file
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model_state_dict": torch.load(path, weights_only=True), "epoch": 3}, wrapped)
    _, state, _ = load_state(cfg, weights=wrapped)
    _, plain, _ = load_state(cfg, weights=path)
    _assert_same_state(state, plain)


def test_corenet_without_preset_is_a_clear_error(
    corenet_file: tuple[ElmConfig, Path, torch.Tensor],
) -> None:
    _, path, _ = corenet_file
    with pytest.raises(ElmbenchError, match="no config; name its preset") as info:
        load_state(None, weights=path)
    assert str(path) in str(info.value)


def test_corenet_with_the_wrong_preset_names_the_preset(
    corenet_file: tuple[ElmConfig, Path, torch.Tensor],
) -> None:
    _, path, _ = corenet_file
    with pytest.raises(CheckpointError, match="'270m' preset") as info:
        load_state("270m", weights=path)
    assert str(path) in str(info.value) and info.value.key is not None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_a_state_dict"])
def test_corrupt_corenet_file_is_a_clear_error(
    corenet_file: tuple[ElmConfig, Path, torch.Tensor], tmp_path: Path, damage: str
) -> None:
    cfg, path, _ = corenet_file
    bad = tmp_path / "bad.pt"
    if damage == "truncate":
        data = path.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"this is not a pickle" * 10)
    else:
        torch.save([1, 2, 3], bad)
    with pytest.raises(CheckpointError) as info:
        load_state(cfg, weights=bad)
    message = str(info.value)
    assert message.startswith(str(bad))
    assert "\n" not in message
    # torch's own advice to retry with weights_only=False must not reach the user.
    assert "weights_only" not in message


# Random init ------------------------------------------------------------------------------------


def test_random_init_is_seeded(tiny_cfg: ElmConfig) -> None:
    a, b, c = (load_state(tiny_cfg, seed=s)[1] for s in (7, 7, 8))
    _assert_same_state(a, b)
    for key, tensor in a.items():
        if tensor.dim() == 2:
            assert not torch.equal(tensor, c[key]), key


def test_random_init_dtype_is_a_cast_of_fp32(tiny_cfg: ElmConfig) -> None:
    fp32 = load_state(tiny_cfg, seed=1)[1]
    bf16 = load_state(tiny_cfg, seed=1, dtype="bfloat16")[1]
    for key in fp32:
        assert torch.equal(bf16[key], fp32[key].to(torch.bfloat16)), key


def test_random_init_matches_released_initializer(tiny_cfg: ElmConfig) -> None:
    cfg = tiny_cfg
    d, layers = cfg.model_dim, cfg.num_layers
    state = random_arrays(cfg, seed=0)
    depth_scaled = d**-0.5 * (2 * layers) ** -0.5
    for key, value in state.items():
        if value.ndim == 1:
            np.testing.assert_array_equal(value, np.ones_like(value))
            continue
        if key.endswith("token_embeddings.weight"):
            want = d**-0.5
        elif key.endswith(("out_proj.weight", "proj_2.weight")):
            want = depth_scaled
        else:
            want = value.shape[1] ** -0.5
        n = value.size
        # Sample std of n normals has relative standard error 1/sqrt(2n); allow 5 of them.
        assert abs(value.std() / want - 1) < 5 / np.sqrt(2 * n), key
        assert abs(value.mean()) < 5 * want / np.sqrt(n), key
    # The depth scaling is not a no-op here: it differs from the generic in_features^-0.5.
    assert depth_scaled < 0.5 * (cfg.num_query_heads[0] * cfg.head_dim) ** -0.5
