"""MLX loading: OpenELM from an HF folder, a CoreNet `.pt`, an MLX-community (quantized) folder, or
seeded random init; quantization on load; and saving in the MLX-community layout.

Validation reuses `layout`, so a bad checkpoint gives the same error as on the torch side.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import mlx.core as mx
from mlx import nn

from elmbench.checkpoints import WeightsSource
from elmbench.checkpoints.layout import (
    GROUP_SIZES,
    QUANT_BITS,
    SINGLE,
    Quantization,
    QuantizedModules,
    validate_folder,
)
from elmbench.config import ElmConfig, get_config
from elmbench.dtypes import mlx_dtype
from elmbench.errors import CheckpointError, ConfigError, ElmbenchError
from elmbench.models.openelm_mlx import OpenELM, flat_parameters


def dtype_name(dtype: mx.Dtype) -> str:
    """`mlx.core.bfloat16` -> `bfloat16`."""
    return str(dtype).rpartition(".")[2]


# Reading ----------------------------------------------------------------------------------------


def load_mlx_state(
    model: str | ElmConfig | None = None,
    weights: str | Path | None = None,
    seed: int = 0,
    dtype: str | mx.Dtype = "float32",
    crop_vocab: bool = True,
) -> tuple[ElmConfig, dict[str, mx.array], WeightsSource, QuantizedModules | None]:
    """Resolve (config, arrays, source, quantized modules) from a preset and/or a weights path."""
    dt = mlx_dtype(dtype)
    cfg = get_config(model) if isinstance(model, str) else model
    if weights is None:
        if cfg is None:
            raise ElmbenchError("give a model preset (--model) or a checkpoint (--weights)")
        from elmbench.checkpoints.init import random_arrays

        state = random_arrays(cfg, seed)
        # Pop as we go, so the float32 numpy copy is freed key by key.
        arrays = {k: mx.array(state.pop(k)).astype(dt) for k in list(state)}
        return cfg, arrays, WeightsSource("random", seed=seed), None
    path = Path(weights)
    if path.is_dir():
        hf_cfg, arrays, quantized = read_folder(path, dt)
        kind = "hf" if quantized is None else "mlx"
        return hf_cfg, arrays, WeightsSource(kind, str(path)), quantized
    if path.suffix in (".pt", ".pth"):
        if cfg is None:
            raise ElmbenchError(
                f"{path}: a CoreNet .pt file has no config; name its preset "
                "with --model (e.g. --model 270m)"
            )
        pt_cfg, arrays = read_corenet_mlx(path, cfg, crop_vocab, dt)
        return pt_cfg, arrays, WeightsSource("corenet", str(path)), None
    if not path.exists():
        raise CheckpointError(path, "checkpoint path does not exist")
    raise CheckpointError(
        path, "not an HF folder (config.json + safetensors) or a CoreNet .pt file"
    )


def read_folder(
    folder: str | Path, dtype: mx.Dtype | None = None, name: str | None = None
) -> tuple[ElmConfig, dict[str, mx.array], QuantizedModules | None]:
    """Read and strictly validate an HF or MLX-community folder; floats are cast to `dtype`.

    Returns the config, the arrays and, for a quantized folder, each quantized module's params.
    """
    layout = validate_folder(folder, name)
    files = layout.files
    arrays = _load_arrays(files)
    if dtype is not None:
        arrays = {k: v if v.dtype == mx.uint32 else v.astype(dtype) for k, v in arrays.items()}
    return layout.cfg, arrays, layout.quantized


def _load_arrays(files: Mapping[str, Path]) -> dict[str, mx.array]:
    """The tensors through `mx.load` (bfloat16 included), from the files that hold them."""
    arrays: dict[str, mx.array] = {}
    for path in sorted(set(files.values())):
        try:
            loaded = mx.load(str(path))
        except (RuntimeError, ValueError, OSError) as exc:
            raise CheckpointError(path, f"corrupt safetensors file ({exc})") from None
        if not isinstance(loaded, dict):  # mx.load returns a dict for .safetensors files
            raise CheckpointError(path, "not a safetensors file of named tensors")
        arrays.update({k: v for k, v in loaded.items() if files.get(k) == path})
    return arrays


def read_corenet_mlx(
    path: str | Path, cfg: ElmConfig, crop_vocab: bool = True, dtype: mx.Dtype | None = None
) -> tuple[ElmConfig, dict[str, mx.array]]:
    """A CoreNet `.pt` read by the torch-side reader, converted to MLX arrays."""
    import torch

    from elmbench.checkpoints.corenet import read_corenet

    pt_cfg, state = read_corenet(path, cfg, crop_vocab)
    arrays = {}
    for key in list(state):
        # Through float32 numpy: numpy has no bfloat16, and widening to float32 is exact.
        value = mx.array(state.pop(key).to(torch.float32).numpy())
        arrays[key] = value if dtype is None else value.astype(dtype)
    return pt_cfg, arrays


# Quantization -----------------------------------------------------------------------------------


def _is_quantizable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Embedding))


def check_quantization(model: OpenELM, bits: int, group_size: int) -> None:
    """Refuse bits or a group size MLX cannot use, or one that does not divide every layer."""
    if bits not in QUANT_BITS:
        raise ConfigError(f"cannot quantize to {bits} bits; MLX supports {list(QUANT_BITS)}")
    if group_size not in GROUP_SIZES:
        raise ConfigError(
            f"cannot quantize with group size {group_size}; MLX supports {list(GROUP_SIZES)}"
        )
    dims = {
        name: int(m.weight.shape[-1]) for name, m in model.named_modules() if _is_quantizable(m)
    }
    for name, dim in sorted(dims.items()):
        if dim % group_size:
            fitting = [g for g in GROUP_SIZES if all(d % g == 0 for d in dims.values())]
            raise ConfigError(
                f"cannot quantize with group size {group_size}: layer '{name}' has input dim "
                f"{dim}, not a multiple of it. Group sizes that fit this model: "
                f"{', '.join(map(str, fitting)) or 'none'}"
            )


def quantize_model(model: OpenELM, bits: int, group_size: int = 64) -> OpenELM:
    """Quantize every Linear and the embedding (hence the tied head) in place, as mlx-lm does."""
    check_quantization(model, bits, group_size)
    nn.quantize(model, group_size, bits, class_predicate=lambda _, m: _is_quantizable(m))
    return model


def model_quantization(model: OpenELM) -> Quantization | None:
    """The config.json entry describing the model's quantized layers (None if it has none)."""
    params = {
        name: {"group_size": m.group_size, "bits": m.bits}
        for name, m in model.named_modules()
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    }
    if not params:
        return None
    counts = Counter((p["group_size"], p["bits"]) for p in params.values())
    (group_size, bits), _ = counts.most_common(1)[0]
    entry: Quantization = {"group_size": group_size, "bits": bits}
    # Layers that differ from the default get their own entry, as mlx-lm writes them.
    default = {"group_size": group_size, "bits": bits}
    entry.update({n: p for n, p in sorted(params.items()) if p != default})
    return entry


# Building and saving ----------------------------------------------------------------------------


def build_mlx_model(
    cfg: ElmConfig,
    state: Mapping[str, mx.array],
    norm: str = "naive",
    quantized: QuantizedModules | None = None,
) -> OpenELM:
    """Construct OpenELM, quantize the modules `quantized` names, load the validated state."""
    model = OpenELM(cfg, norm)
    if quantized:
        # Params are copied: nn.quantize may pop keys from the dict it is given.
        nn.quantize(model, class_predicate=lambda path, _: dict(quantized.get(path, {})) or False)
    try:
        model.load_weights(list(state.items()), strict=True)
    except ValueError as exc:  # validated earlier; this guards the model's own names
        raise CheckpointError("model", f"state does not match the model ({exc})") from None
    model.eval()
    return model


def load_mlx_model(
    model: str | ElmConfig | None = None,
    weights: str | Path | None = None,
    norm: str = "naive",
    dtype: str | mx.Dtype = "float32",
    seed: int = 0,
    crop_vocab: bool = True,
    quantize: int | None = None,
    group_size: int = 64,
) -> tuple[OpenELM, WeightsSource]:
    """One call from user options to a ready (evaluated) MLX model and its weights identity."""
    cfg, state, source, quantized = load_mlx_state(model, weights, seed, dtype, crop_vocab)
    if quantize is not None and quantized:
        bits = sorted({p["bits"] for p in quantized.values()})
        raise ElmbenchError(
            f"{weights}: the checkpoint is already quantized "
            f"({'/'.join(map(str, bits))}-bit); drop --quantize"
        )
    built = build_mlx_model(cfg, state, norm, quantized)
    if quantize is not None:
        quantize_model(built, quantize, group_size)
    mx.eval(built.parameters())  # load now, once, not inside the first timed step
    return built, source


def save_mlx(
    model: OpenELM, cfg: ElmConfig, folder: str | Path, quantization: Quantization | None = None
) -> Path:
    """Write an MLX-community-style folder (config.json + model.safetensors) of the model.

    The `quantization` entry is read from the model's layers; one passed in must agree with it.
    The folder loads here, in mlx-lm's `load_model`, and (unquantized) on the torch side.
    """
    entry = model_quantization(model)
    if quantization is not None:
        wanted = (quantization.get("group_size"), quantization.get("bits"))
        if entry is None or (entry["group_size"], entry["bits"]) != wanted:
            have = "not quantized" if entry is None else f"{entry['bits']}-bit, group "
            have += "" if entry is None else str(entry["group_size"])
            raise ConfigError(
                f"quantization entry {json.dumps(quantization)} does not describe the model "
                f"({have}); quantize the model first or pass quantization=None"
            )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = cfg.to_hf()
    config["torch_dtype"] = dtype_name(model.dtype)
    if entry is not None:
        config["quantization"] = entry
        config["quantization_config"] = entry  # the HF spelling mlx-lm also writes
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    mx.save_safetensors(str(folder / SINGLE), flat_parameters(model), metadata={"format": "mlx"})
    return folder
