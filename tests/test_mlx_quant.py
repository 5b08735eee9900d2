"""MLX quantization: 8- and 4-bit quantize-on-load stay within the error the quantization step
predicts, MLX-community-style folders round-trip exactly and load in mlx-lm, bad settings and bad
quantized folders give one clear error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import few_layer_270m
from safetensors.numpy import load_file, save_file

from elmbench.checkpoints import WeightsSource
from elmbench.checkpoints.layout import PREFIX, SINGLE
from elmbench.config import ElmConfig, get_config
from elmbench.errors import CheckpointError, ConfigError, ElmbenchError

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

from elmbench.checkpoints.mlx_load import (  # noqa: E402
    build_mlx_model,
    load_mlx_model,
    load_mlx_state,
    model_quantization,
    quantize_model,
    save_mlx,
)
from elmbench.models.openelm_mlx import OpenELM, flat_parameters  # noqa: E402

QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding)


@dataclass
class Quantized:
    """Three layers of OpenELM-270M: fp32 state and logits, and the model at 8 and 4 bits."""

    cfg: ElmConfig
    state: dict[str, object]
    tokens: object  # (B, T) int32 mx.array
    logits: np.ndarray  # (B, T, V) fp32, unquantized
    models: dict[int, OpenELM]
    quantized_logits: dict[int, np.ndarray]


@pytest.fixture(scope="module")
def quantized() -> Quantized:
    cfg, state, _, _ = load_mlx_state(few_layer_270m(3), seed=0)
    tokens = mx.array(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12)).astype("i4"))
    logits = np.array(build_mlx_model(cfg, state)(tokens))
    models = {bits: quantize_model(build_mlx_model(cfg, state), bits, 64) for bits in (8, 4)}
    quantized_logits = {bits: np.array(m(tokens)) for bits, m in models.items()}
    return Quantized(cfg, state, tokens, logits, models, quantized_logits)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _step_error(model: OpenELM, state: dict[str, object]) -> float:
    """Relative RMS weight error that the quantization steps predict: rounding to a grid of step
    s leaves an error uniform on [-s/2, s/2], RMS s / sqrt(12), for every weight of its group."""
    err2 = ref2 = 0.0
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZED):
            steps = np.array(module.scales, dtype=np.float64)  # (rows, in / group_size)
            err2 += float((steps**2).sum()) * module.group_size / 12
            ref2 += float((np.array(state[f"{name}.weight"], dtype=np.float64) ** 2).sum())
    return (err2 / ref2) ** 0.5


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_on_load_stays_within_the_step_error(quantized: Quantized, bits: int) -> None:
    model = quantized.models[bits]
    kinds = {type(m).__name__ for _, m in model.named_modules() if isinstance(m, QUANTIZED)}
    assert kinds == {"QuantizedLinear", "QuantizedEmbedding"}  # tied head quantized with it
    count = sum(isinstance(m, QUANTIZED) for _, m in model.named_modules())
    assert (
        count == 4 * quantized.cfg.num_layers + 1
    )  # qkv, out, proj_1, proj_2 per layer; embedding
    assert all(
        m.bits == bits and m.group_size == 64
        for _, m in model.named_modules()
        if isinstance(m, QUANTIZED)
    )
    assert model.num_parameters() == quantized.cfg.num_params
    error = _relative(quantized.quantized_logits[bits], quantized.logits)
    predicted = _step_error(model, quantized.state)  # 0.0054 at 8 bits, 0.092 at 4 (group 64)
    # Each logit passes through ~14 quantized matrices (4 per layer, the embedding twice), whose
    # independent errors add in quadrature (sqrt(14) = 3.7) and grow a little through the random
    # network: observed 4.5-5.1x the weight error, at both widths and two seeds. 10x is the
    # margin; wrong scales or biases, a transposed packing or a wrong group size give O(1)
    # errors, and a no-op quantization gives less than the lower bound.
    assert 0.5 * predicted < error < 10 * predicted


def test_four_bits_err_as_much_more_as_their_step(quantized: Quantized) -> None:
    """The 4-bit grid is (2^8 - 1) / (2^4 - 1) = 17 times coarser than the 8-bit one."""
    errors = {b: _relative(q, quantized.logits) for b, q in quantized.quantized_logits.items()}
    assert 8 < errors[4] / errors[8] < 32  # observed 15.7 and 16.5 on two seeds


def test_mlx_community_folder_round_trips(quantized: Quantized, tmp_path: Path) -> None:
    """4-bit, group 64: the form mlx-community publishes OpenELM in."""
    model = quantized.models[4]
    folder = save_mlx(
        model, quantized.cfg, tmp_path / "OpenELM-4bit", {"group_size": 64, "bits": 4}
    )
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", SINGLE]
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4}
    tensors = load_file(folder / SINGLE)
    emb = f"{PREFIX}token_embeddings"
    assert tensors[f"{emb}.weight"].dtype == np.uint32
    assert {f"{emb}.scales", f"{emb}.biases"} <= set(tensors)
    loaded, source = load_mlx_model(weights=folder)
    assert source == WeightsSource("mlx", str(folder))
    want = dict(flat_parameters(model))
    got = flat_parameters(loaded)
    assert got.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_array_equal(np.array(got[key]), np.array(value), err_msg=key)
    logits = quantized.quantized_logits[4]
    # Same packed weights, same ops: identical logits.
    np.testing.assert_array_equal(np.array(loaded(quantized.tokens)), logits)

    from mlx_lm.utils import load_model as mlx_lm_load

    reference, _ = mlx_lm_load(folder, strict=True)
    # Same quantized matmuls; only the norm and RoPE kernels differ: fp32 roundoff of ~5.
    np.testing.assert_allclose(np.array(reference(quantized.tokens)), logits, rtol=0, atol=1e-4)


def _mixed_tiny() -> OpenELM:
    """tiny with FFNs at 8 bits and everything else at 4, group 32 (layer 0's out_proj has 32
    inputs), as mlx-lm's mixed recipes write it."""
    model, _ = load_mlx_model("tiny", seed=3)

    def predicate(path: str, module: nn.Module) -> bool | dict[str, int]:
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            return False
        return {"group_size": 32, "bits": 8 if ".ffn." in path else 4}

    nn.quantize(model, class_predicate=predicate)
    return model


def test_mixed_quantization_round_trips_here_and_in_mlx_lm(tmp_path: Path) -> None:
    model = _mixed_tiny()
    entry = model_quantization(model)
    assert entry is not None and (entry["group_size"], entry["bits"]) == (32, 4)
    assert entry[f"{PREFIX}layers.2.ffn.proj_1"] == {"group_size": 32, "bits": 8}
    folder = save_mlx(model, model.config, tmp_path / "mixed")
    tokens = mx.array(np.random.default_rng(5).integers(0, 512, (2, 9)).astype("i4"))
    logits = np.array(model(tokens))
    loaded, _ = load_mlx_model(weights=folder)
    np.testing.assert_array_equal(np.array(loaded(tokens)), logits)
    from mlx_lm.utils import load_model as mlx_lm_load

    reference, _ = mlx_lm_load(folder, strict=True)
    np.testing.assert_allclose(np.array(reference(tokens)), logits, rtol=0, atol=1e-4)


def test_unquantized_save_is_an_hf_folder(tmp_path: Path) -> None:
    model, _ = load_mlx_model("tiny", seed=4, dtype="bf16")
    folder = save_mlx(model, model.config, tmp_path / "plain")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization" not in config and config["torch_dtype"] == "bfloat16"
    loaded, source = load_mlx_model(weights=folder, dtype="bf16")
    assert source.kind == "hf"
    for key, value in flat_parameters(model).items():
        assert np.array_equal(
            np.array(flat_parameters(loaded)[key].astype(mx.float32)),
            np.array(value.astype(mx.float32)),
        ), key


# Clear errors ---------------------------------------------------------------------------------


def test_group_size_that_does_not_divide_a_layer() -> None:
    with pytest.raises(ConfigError) as info:
        load_mlx_model("tiny", quantize=4, group_size=64)
    message = str(info.value)
    assert "layer 'transformer.layers.0.attn.out_proj' has input dim 32" in message
    assert message.endswith("Group sizes that fit this model: 32")


@pytest.mark.parametrize(
    ("bits", "group_size", "allowed"),
    [
        (4, 48, "[32, 64, 128]"),
        (7, 32, "[2, 3, 4, 5, 6, 8]"),
        (4, 0, "[32, 64, 128]"),
    ],
)
def test_unsupported_bits_or_group_size(bits: int, group_size: int, allowed: str) -> None:
    with pytest.raises(ConfigError, match=f"MLX supports {allowed}".replace("[", r"\[")):
        load_mlx_model("tiny", quantize=bits, group_size=group_size)


@pytest.fixture
def tiny_4bit(tmp_path: Path) -> Path:
    """A tiny 4-bit, group-32 MLX-community-style folder."""
    model, _ = load_mlx_model("tiny", seed=0, quantize=4, group_size=32)
    return save_mlx(model, get_config("tiny"), tmp_path / "tiny-4bit")


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["quantization"].update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _edit_tensors(folder: Path, key: str, value: np.ndarray | None) -> None:
    tensors = load_file(folder / SINGLE)
    if value is None:
        tensors.pop(key)
    else:
        tensors[key] = value
    save_file(tensors, folder / SINGLE)


QKV = f"{PREFIX}layers.1.attn.qkv_proj"  # tiny layer 1: (128, 64) -> packed (128, 8)


@pytest.mark.parametrize("case", ["bits", "scales", "dtype", "entry"])
def test_bad_quantized_folder_gives_one_clear_error(tiny_4bit: Path, case: str) -> None:
    file = str(tiny_4bit / SINGLE)
    if case == "bits":  # the config says 8 bits; the packed words hold 4-bit values
        _edit_config(tiny_4bit, bits=8)
        want = (file, f"{PREFIX}token_embeddings.weight", [512, 16], [512, 8])
    elif case == "scales":  # without its scales the layer is read as unquantized
        _edit_tensors(tiny_4bit, f"{QKV}.scales", None)
        want = (file, f"{QKV}.scales", "shape [128, 2]", "nothing")
    elif case == "dtype":
        _edit_tensors(tiny_4bit, f"{QKV}.weight", np.zeros((128, 8), np.float32))
        want = (file, f"{QKV}.weight", "uint32 (packed)", "float32")
    else:
        _edit_config(tiny_4bit, group_size=48)
        want = (str(tiny_4bit / "config.json"), "quantization", None, None)
    with pytest.raises(CheckpointError) as info:
        load_mlx_model(weights=tiny_4bit)
    error = info.value
    assert (error.path, error.key) == want[:2]
    if want[2] is not None:
        assert (error.expected, error.found) == want[2:]
    assert "\n" not in str(error)


def test_quantizing_a_quantized_folder_is_refused(tiny_4bit: Path) -> None:
    with pytest.raises(ElmbenchError, match=r"already quantized \(4-bit\); drop --quantize"):
        load_mlx_model(weights=tiny_4bit, quantize=8, group_size=32)


def test_save_refuses_an_entry_that_contradicts_the_model(tmp_path: Path) -> None:
    model, _ = load_mlx_model("tiny", seed=0, quantize=8, group_size=32)
    with pytest.raises(ConfigError, match=r"does not describe the model \(8-bit, group 32\)"):
        save_mlx(model, model.config, tmp_path / "x", {"group_size": 64, "bits": 4})
    plain, _ = load_mlx_model("tiny", seed=0)
    with pytest.raises(ConfigError, match="not quantized"):
        save_mlx(plain, plain.config, tmp_path / "y", {"group_size": 32, "bits": 4})
