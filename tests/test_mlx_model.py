"""MLX OpenELM: the mirror of the torch model (names, classes, weights), logits equal to PyTorch's
and to mlx-lm's, cached decode equal to the full forward, low precision, and strict loading."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import few_layer_270m
from safetensors.numpy import load_file, save_file

from elmbench.checkpoints import WeightsSource
from elmbench.checkpoints.layout import PREFIX, SINGLE, expected_shapes
from elmbench.checkpoints.torch_load import load_model, load_state
from elmbench.config import ElmConfig, get_config
from elmbench.errors import CheckpointError, ConfigError, ElmbenchError

mx = pytest.importorskip("mlx.core")

from elmbench.checkpoints.mlx_load import load_mlx_model, load_mlx_state, mlx_dtype  # noqa: E402
from elmbench.models import openelm_mlx, openelm_torch  # noqa: E402
from elmbench.models.openelm_mlx import OpenELM, flat_parameters  # noqa: E402

BATCH, SEQ, PREFILL = 2, 12, 5
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11}


@dataclass
class Setup:
    """Seeded weights in HF layout, the MLX model read from them, and torch's fp32 logits."""

    cfg: ElmConfig
    folder: Path
    model: OpenELM
    tokens: np.ndarray  # (B, T) int32
    torch_logits: np.ndarray  # (B, T, V) fp32, from the torch model on the same folder
    logits: np.ndarray  # (B, T, V) fp32, from the MLX model


@pytest.fixture(scope="module", params=["tiny", "270m-3l"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """tiny, and three layers (first, middle, last) of OpenELM-270M at full width."""
    from elmbench.checkpoints.hf import save_hf

    cfg = get_config("tiny") if request.param == "tiny" else few_layer_270m(3)
    cfg, state, _ = load_state(cfg, seed=0)
    folder = save_hf(cfg, state, tmp_path_factory.mktemp(request.param) / "ckpt")
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (BATCH, SEQ)).astype(np.int32)
    torch_model, _ = load_model(weights=folder)
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(tokens).long()).numpy()
    del torch_model, state
    model, source = load_mlx_model(weights=folder)
    assert source == WeightsSource("hf", str(folder))
    logits = np.array(model(mx.array(tokens)))
    return Setup(cfg, folder, model, tokens, torch_logits, logits)


# Parity with PyTorch and mlx-lm ----------------------------------------------------------------


def test_fp32_logits_equal_torch(setup: Setup) -> None:
    assert setup.logits.shape == (BATCH, SEQ, setup.cfg.vocab_size)
    # Both fp32 on the same weights; only kernels and summation orders differ. Logits are ~5 in
    # magnitude, so fp32 ulps are ~5e-7 and grow through 3 layers: observed max 1.7e-5 (270M
    # widths), 4e-6 (tiny). 1e-4 keeps a 5x margin; any real mismatch (head order, RoPE
    # layout, a missing norm weight) is O(1).
    np.testing.assert_allclose(setup.logits, setup.torch_logits, rtol=0, atol=1e-4)


def test_logits_equal_mlx_lm(setup: Setup) -> None:
    from mlx_lm.utils import load_model as mlx_lm_load

    reference, _ = mlx_lm_load(setup.folder, strict=True)
    want = np.array(reference(mx.array(setup.tokens)))
    # Same framework, independent code (nn.RMSNorm, nn.RoPE): fp32 roundoff only, as above.
    np.testing.assert_allclose(setup.logits, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_close_to_fp32(setup: Setup, dtype: str) -> None:
    if setup.cfg.name != "tiny" and dtype == "float16":
        pytest.skip("full-width model checked in bf16, the paper's dtype; fp16 on tiny")
    model, _ = load_mlx_model(weights=setup.folder, dtype=dtype)
    out = model(mx.array(setup.tokens))
    assert out.dtype == mlx_dtype(dtype)
    logits = np.array(out.astype(mx.float32))
    assert np.isfinite(logits).all()
    # Same bound and reasoning as the torch side: ~16 roundings to the dtype on each path to a
    # logit, adding in quadrature, give ~4u (observed 3.7u tiny, 4.2u at 270M widths, both
    # dtypes); 8u is the margin. Norm or RoPE computed in low precision, or an overflow, gives
    # tens of u or non-finite values.
    ref = setup.torch_logits
    rel = np.linalg.norm(logits - ref) / np.linalg.norm(ref)
    assert rel < 8 * UNIT_ROUNDOFF[dtype]


# Cache --------------------------------------------------------------------------------------------


def test_cached_decode_equals_full_forward(setup: Setup) -> None:
    model, tokens = setup.model, mx.array(setup.tokens)
    model.setup_cache(BATCH, SEQ + 4)
    steps = [model.prefill(tokens[:, :PREFILL], last_only=False)]
    for i in range(PREFILL, SEQ):
        steps.append(model.decode(tokens[:, i : i + 1], i))
    cached = np.array(mx.concatenate(steps, axis=1))
    assert cached.shape == setup.logits.shape
    # Same fp32 values, attention over a shorter key range: reduction order may differ (on the
    # CPU they are bit-identical), so the fp32 bound of the torch side's cache test.
    np.testing.assert_allclose(cached, setup.logits, rtol=0, atol=1e-4)


def test_prefill_last_only_and_chunked_prefill() -> None:
    model, _ = load_mlx_model("tiny", seed=1)
    tokens = mx.array(np.random.default_rng(2).integers(0, 512, (BATCH, SEQ)).astype(np.int32))
    full = np.array(model(tokens))
    model.setup_cache(BATCH, SEQ)
    last = np.array(model.prefill(tokens[:, :PREFILL]))
    assert last.shape == (BATCH, 1, 512)
    np.testing.assert_allclose(last[:, 0], full[:, PREFILL - 1], rtol=0, atol=1e-5)
    # A second chunk of several tokens at an offset: its causal mask aligns with the cache.
    chunk = np.array(model(tokens[:, PREFILL:], PREFILL))
    np.testing.assert_allclose(chunk, full[:, PREFILL:], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        np.array(model(tokens, last_only=True)), full[:, -1:], rtol=0, atol=1e-5
    )


def test_prefix_logits_do_not_see_the_future() -> None:
    model, _ = load_mlx_model("tiny", seed=1)
    tokens = np.random.default_rng(3).integers(0, 512, (1, 8)).astype(np.int32)
    before = np.array(model(mx.array(tokens)))
    tokens[:, -1] = (tokens[:, -1] + 1) % 512
    after = np.array(model(mx.array(tokens)))
    np.testing.assert_allclose(after[:, :-1], before[:, :-1], rtol=0, atol=1e-6)
    assert np.abs(after[:, -1] - before[:, -1]).max() > 1e-3


def test_cache_misuse_is_a_clear_error() -> None:
    model, _ = load_mlx_model("tiny", seed=0)
    token = mx.array([[3]])
    with pytest.raises(RuntimeError, match="setup_cache"):
        model.decode(token, 0)
    model.setup_cache(1, 4)
    with pytest.raises(ConfigError, match="KV cache holds 4 positions"):
        model.decode(token, 4)


# Mirror image of the torch model ------------------------------------------------------------------


def _classes(module: object) -> list[str]:
    name = module.__name__  # type: ignore[attr-defined]
    return [n for n, c in vars(module).items() if inspect.isclass(c) and c.__module__ == name]


def test_same_classes_in_the_same_order() -> None:
    want = [
        "KVCache",
        "OpenELMMultiHeadCausalAttention",
        "OpenELMFeedForwardNetwork",
        "OpenELMDecoderLayer",
        "OpenELMModel",
        "OpenELM",
    ]
    assert _classes(openelm_torch) == want
    assert _classes(openelm_mlx) == want


@pytest.mark.parametrize("name", ["tiny", "270m-3l"])
def test_parameter_names_equal_layout_and_torch(name: str) -> None:
    cfg = get_config("tiny") if name == "tiny" else few_layer_270m(3)
    model = OpenELM(cfg)  # parameters stay lazy: nothing is computed
    shapes = {k: tuple(v.shape) for k, v in flat_parameters(model).items()}
    assert shapes == expected_shapes(cfg)
    with torch.device("meta"):
        torch_model = openelm_torch.OpenELM(cfg)
    assert set(shapes) == set(torch_model.state_dict())
    # Module tree: same paths holding same-named classes (Linear, Embedding, NaiveRMSNorm, ...).
    mlx_tree = {p: type(m).__name__ for p, m in model.named_modules() if p}
    torch_tree = {p: type(m).__name__ for p, m in torch_model.named_modules() if p}
    torch_tree = {p: c for p, c in torch_tree.items() if not p.endswith("layers")}  # ModuleList
    assert mlx_tree == torch_tree
    model.setup_cache(1, 8)  # caches are not parameters
    assert set(flat_parameters(model)) == set(shapes)
    assert model.num_parameters() == cfg.num_params


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_random_init_equals_torch_bit_for_bit(tiny_cfg: ElmConfig, dtype: str) -> None:
    model, source = load_mlx_model(tiny_cfg, seed=7, dtype=dtype)
    assert source == WeightsSource("random", seed=7)
    _, state, _ = load_state(tiny_cfg, seed=7, dtype=dtype)
    params = flat_parameters(model)
    assert params.keys() == state.keys()
    for key, value in state.items():
        assert params[key].dtype == mlx_dtype(dtype), key
        # Widening to fp32 is exact, so equal fp32 values mean equal bits in the dtype.
        got = np.array(params[key].astype(mx.float32))
        np.testing.assert_array_equal(got, value.float().numpy(), err_msg=key)
    other, _ = load_mlx_model(tiny_cfg, seed=8)
    key = f"{PREFIX}layers.0.attn.qkv_proj.weight"
    assert not np.array_equal(np.array(flat_parameters(other)[key]), state[key].float().numpy())


@pytest.mark.parametrize("norm", ["fused", "compiled"])
def test_model_with_other_norms_equals_naive(norm: str) -> None:
    tokens = mx.array(np.random.default_rng(4).integers(0, 512, (2, 7)).astype(np.int32))
    naive, _ = load_mlx_model("tiny", seed=2)
    other, _ = load_mlx_model("tiny", seed=2, norm=norm)
    assert flat_parameters(other).keys() == expected_shapes(other.config).keys()
    # fp32, same formula; only the reduction order inside the norm kernel may differ.
    np.testing.assert_allclose(
        np.array(other(tokens)), np.array(naive(tokens)), rtol=1e-5, atol=1e-5
    )


def test_dtype_names() -> None:
    assert mlx_dtype("bf16") == mx.bfloat16 and mlx_dtype("FP16") == mx.float16
    assert mlx_dtype("float32") == mx.float32
    with pytest.raises(ElmbenchError, match=r"unknown dtype 'int8'\. Valid dtypes: float32"):
        mlx_dtype("int8")


# CoreNet .pt ----------------------------------------------------------------------------------


def test_corenet_file_loads_like_torch(tmp_path: Path) -> None:
    cfg = dataclasses.replace(get_config("tiny"), vocab_size=32000)
    _, state, _ = load_state(cfg, seed=0)
    raw = {k.removeprefix(PREFIX): v for k, v in state.items()}
    raw["token_embeddings.weight"] = torch.randn(
        32128, cfg.model_dim, generator=torch.Generator().manual_seed(1)
    ).to(torch.bfloat16)  # CoreNet's padded vocabulary, stored in bf16
    path = tmp_path / "checkpoint.pt"
    torch.save(raw, path)
    for crop, rows in ((True, 32000), (False, 32128)):
        model, source = load_mlx_model(cfg, path, dtype="bf16", crop_vocab=crop)
        assert source == WeightsSource("corenet", str(path))
        assert model.config.vocab_size == rows
        _, want, _ = load_state(cfg, path, dtype="bf16", crop_vocab=crop)
        params = flat_parameters(model)
        for key, value in want.items():
            assert params[key].dtype == mx.bfloat16
            got = np.array(params[key].astype(mx.float32))
            np.testing.assert_array_equal(got, value.float().numpy(), err_msg=key)
    with pytest.raises(ElmbenchError, match="no config; name its preset"):
        load_mlx_model(None, path)


# Bad checkpoints ----------------------------------------------------------------------------------

KEY = f"{PREFIX}layers.1.ffn.proj_2.weight"  # tiny: (64, 128)


def _rewrite(folder: Path, edit: Callable[[dict[str, np.ndarray]], object]) -> None:
    tensors = load_file(folder / SINGLE)
    edit(tensors)
    save_file(tensors, folder / SINGLE)


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


# (corrupt the folder, key, expected, found): the same messages as the torch loader's.
BAD_CASES: dict[str, tuple[Callable[[Path], object], str | None, str | None, str | None]] = {
    "missing_key": (lambda f: _rewrite(f, lambda t: t.pop(KEY)), KEY, "[64, 128]", "nothing"),
    "unexpected_key": (
        lambda f: _rewrite(f, lambda t: t.__setitem__("lm_head.weight", np.zeros((512, 64)))),
        "lm_head.weight",
        None,
        None,
    ),
    "wrong_shape": (
        lambda f: _rewrite(f, lambda t: t.__setitem__(KEY, np.zeros((64, 127), np.float32))),
        KEY,
        "[64, 128]",
        "[64, 127]",
    ),
    "wrong_dtype": (
        lambda f: _rewrite(f, lambda t: t.__setitem__(KEY, np.zeros((64, 128), np.int32))),
        KEY,
        "floating-point",
        "int32",
    ),
    "truncated": (_truncate, None, None, None),
    "garbled_header": (_garble_header, None, None, None),
    "contradicting_config": (
        _contradicting_config,
        f"{PREFIX}layers.1.attn.qkv_proj.weight",
        "[96, 64]",
        "[128, 64]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_checkpoint_gives_the_torch_sides_error(
    tiny_cfg: ElmConfig, write_checkpoint: Callable[..., Path], case: str
) -> None:
    corrupt, key, expected, found = BAD_CASES[case]
    folder = write_checkpoint(tiny_cfg)
    corrupt(folder)
    with pytest.raises(CheckpointError) as info:
        load_mlx_model("tiny", weights=folder)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(folder / SINGLE))
    assert info.value.key == key
    for fragment in (key, expected, found):
        if fragment is not None:
            assert fragment in message, (fragment, message)
    if case == "contradicting_config":
        assert "config.json" in message
    with pytest.raises(CheckpointError) as torch_info:
        load_state("tiny", weights=folder)
    # The same file, key, problem and expectation as the torch loader's (the parser's own words
    # in parentheses, and torch's "torch.int32" spelling, may differ).
    ours, theirs = info.value, torch_info.value
    assert (ours.path, ours.key, ours.expected) == (theirs.path, theirs.key, theirs.expected)
    assert ours.problem.split(" (")[0] == theirs.problem.split(" (")[0]


def test_sharded_folder_loads_like_the_single_file(
    tiny_cfg: ElmConfig, write_checkpoint: Callable[..., Path]
) -> None:
    single = write_checkpoint(tiny_cfg, seed=5, name="single")
    sharded = write_checkpoint(tiny_cfg, seed=5, name="sharded", max_shard_bytes=40_000)
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    want = flat_parameters(load_mlx_model(weights=single)[0])
    got = flat_parameters(load_mlx_model(weights=sharded)[0])
    assert got.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_array_equal(np.array(got[key]), np.array(value), err_msg=key)


def test_missing_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_mlx_model(weights=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        load_mlx_state(weights=tmp_path / "empty")
    with pytest.raises(ElmbenchError, match="give a model preset"):
        load_mlx_model()
