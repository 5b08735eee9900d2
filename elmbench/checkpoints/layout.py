"""The HF checkpoint layout of an OpenELM config, and strict validation of a state against it.

Pure bookkeeping over names, shapes and safetensors headers (no tensor is read), shared by the
torch and MLX loaders and by the checks made before a run.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from elmbench.config import ElmConfig
from elmbench.errors import CheckpointError

PREFIX = "transformer."
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# MLX's affine quantization (mx.quantize) supports exactly these.
QUANT_BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)

# safetensors header dtypes under the names torch and numpy use, so messages read the same.
ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
}

Quantization = dict[str, Any]  # the config.json entry: {"group_size": 64, "bits": 4, ...}
QuantizedModules = dict[str, dict[str, int]]  # module path -> {"group_size": .., "bits": ..}


@dataclass(frozen=True)
class FolderLayout:
    """An HF or MLX-community folder whose headers passed validation: what loading needs."""

    cfg: ElmConfig
    files: dict[str, Path]  # tensor key -> the file that holds it
    dtypes: dict[str, str]  # tensor key -> dtype name (float32, bfloat16, uint32, ...)
    quantized: QuantizedModules | None  # None for an unquantized folder


def expected_shapes(cfg: ElmConfig) -> dict[str, tuple[int, ...]]:
    """Every HF key of the config (tied head: no `lm_head`) with its [out, in] shape."""
    d, h = cfg.model_dim, cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {f"{PREFIX}token_embeddings.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_layers):
        n_q, n_kv, f = cfg.num_query_heads[i], cfg.num_kv_heads[i], cfg.ffn_dims[i]
        p = f"{PREFIX}layers.{i}."
        shapes.update(
            {
                p + "attn_norm.weight": (d,),
                p + "attn.qkv_proj.weight": ((n_q + 2 * n_kv) * h, d),
                p + "attn.q_norm.weight": (h,),
                p + "attn.k_norm.weight": (h,),
                p + "attn.out_proj.weight": (d, n_q * h),
                p + "ffn_norm.weight": (d,),
                p + "ffn.proj_1.weight": (2 * f, d),
                p + "ffn.proj_2.weight": (d, f),
            }
        )
    shapes[f"{PREFIX}norm.weight"] = (d,)
    return shapes


def validate_state(
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, str],
    expected: Mapping[str, tuple[int, ...]],
    where: Mapping[str, str] | str,
    config_path: str,
) -> None:
    """Raise CheckpointError for the first missing/unexpected key, wrong shape or non-float dtype.

    `where` maps each key to the file that holds it (or is one file for all keys).
    """

    def file_of(key: str) -> str:
        return where if isinstance(where, str) else where.get(key, "checkpoint")

    default_file = where if isinstance(where, str) else next(iter(where.values()), "checkpoint")
    for key in expected:
        if key not in shapes:
            raise CheckpointError(
                default_file,
                f"missing key (required by {config_path})",
                key=key,
                expected=f"shape {list(expected[key])}",
                found="nothing",
            )
    for key in shapes:
        if key not in expected:
            raise CheckpointError(
                file_of(key),
                f"unexpected key (not in the OpenELM layout of {config_path})",
                key=key,
            )
    for key, want in expected.items():
        got = tuple(shapes[key])
        if got != want:
            raise CheckpointError(
                file_of(key),
                f"shape contradicts {config_path}",
                key=key,
                expected=list(want),
                found=list(got),
            )
        if not _is_float(dtypes[key]):
            raise CheckpointError(
                file_of(key),
                "wrong dtype",
                key=key,
                expected="a floating-point dtype",
                found=dtypes[key],
            )


def _is_float(dtype: Any) -> bool:
    name = str(dtype).lower().replace("torch.", "")
    return name.startswith(("float", "bfloat", "f16", "f32", "bf16", "f64"))


def weight_files(folder: Path) -> dict[str, Path]:
    """Map each tensor key to the file holding it, from the index or the single file."""
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(index, f"not a safetensors index ({exc!r})") from None
        files = {key: folder / name for key, name in weight_map.items()}
        for key, path in files.items():
            if not path.is_file():
                raise CheckpointError(path, f"shard listed in {INDEX} is missing", key=key)
        return files
    single = folder / SINGLE
    if not single.is_file():
        raise CheckpointError(folder, f"no {SINGLE} or {INDEX} in the folder")
    return {key: single for key in _keys(single)}


def _keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="numpy") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"corrupt safetensors file ({exc})") from None


def read_headers(files: Mapping[str, Path]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes and dtypes from the safetensors headers, without reading any tensor data."""
    by_file: dict[Path, list[str]] = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for path, keys in by_file.items():
        try:
            with safe_open(str(path), framework="numpy") as f:
                present = set(f.keys())
                for key in keys:
                    if key not in present:
                        raise CheckpointError(
                            path, f"key listed in {INDEX} is not in this shard", key=key
                        )
                    info = f.get_slice(key)
                    shapes[key] = tuple(info.get_shape())
                    raw = info.get_dtype()
                    dtypes[key] = ST_DTYPES.get(raw, raw.lower())
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(path, f"corrupt safetensors file ({exc})") from None
    return shapes, dtypes


def validate_folder(folder: str | Path, name: str | None = None) -> FolderLayout:
    """Check an HF or MLX-community folder from its config and headers: every key, shape, dtype.

    Raises CheckpointError naming the file and the key; reads no tensor data.
    """
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(folder, "checkpoint folder does not exist")
    config_path = folder / "config.json"
    cfg = ElmConfig.from_hf(config_path, name=name or folder.name)
    quantization = quantization_entry(json.loads(config_path.read_text()), config_path)
    files = weight_files(folder)
    shapes, dtypes = read_headers(files)
    where = {k: str(p) for k, p in files.items()}
    if quantization is None:
        validate_state(shapes, dtypes, expected_shapes(cfg), where, str(config_path))
        return FolderLayout(cfg, files, dtypes, None)
    expected, modules = quantized_layout(cfg, quantization, shapes.keys(), str(config_path))
    for key in sorted(shapes):
        module = key.removesuffix(".biases")
        if key.endswith(".biases") and module not in modules:
            raise CheckpointError(
                where[key],
                "quantized layer without its scales",
                key=f"{module}.scales",
                expected=f"shape {list(shapes[key])}",
                found="nothing",
            )
    packed = {f"{m}.weight" for m in modules}
    # validate_state wants floats everywhere; a packed weight passes it only as uint32.
    shown = {k: ("float32" if k in packed and d == "uint32" else d) for k, d in dtypes.items()}
    validate_state(shapes, shown, expected, where, str(config_path))
    for key in sorted(packed):
        if dtypes[key] != "uint32":
            raise CheckpointError(
                where[key],
                "wrong dtype for a quantized weight",
                key=key,
                expected="uint32 (packed)",
                found=dtypes[key],
            )
    return FolderLayout(cfg, files, dtypes, modules)


def quantization_entry(data: Any, config_path: Path) -> Quantization | None:
    """The `quantization` entry of a config.json, checked; None for an unquantized folder."""
    if not isinstance(data, dict) or data.get("quantization") is None:
        return None
    entry = data["quantization"]
    defaults = {k: entry.get(k) for k in ("group_size", "bits")} if isinstance(entry, dict) else {}
    ok = defaults.get("group_size") in GROUP_SIZES and defaults.get("bits") in QUANT_BITS
    if not ok:
        raise CheckpointError(
            config_path,
            "unsupported quantization entry",
            key="quantization",
            expected=f"group_size in {list(GROUP_SIZES)} and bits in {list(QUANT_BITS)}",
            found=json.dumps(defaults or entry)[:80],
        )
    mode = entry.get("mode", "affine")
    if mode != "affine":
        raise CheckpointError(
            config_path,
            "unsupported quantization mode",
            key="quantization.mode",
            expected="affine",
            found=mode,
        )
    return dict(entry)


def quantized_layout(
    cfg: ElmConfig, quantization: Quantization, present: Collection[str], config_path: str
) -> tuple[dict[str, tuple[int, ...]], QuantizedModules]:
    """Expected shapes of a quantized folder, and each quantized module's `to_quantized` params.

    As in mlx-lm's `load_model`: a per-module entry in `quantization` decides (False or params);
    otherwise a Linear or Embedding is quantized exactly when its `<name>.scales` is present.
    """
    defaults = {"group_size": quantization["group_size"], "bits": quantization["bits"]}
    shapes: dict[str, tuple[int, ...]] = {}
    modules: QuantizedModules = {}
    for key, shape in expected_shapes(cfg).items():
        module = key.removesuffix(".weight")
        override = quantization.get(module)
        quantized = f"{module}.scales" in present if override is None else bool(override)
        if len(shape) != 2 or not quantized:
            shapes[key] = shape
            continue
        params = {**defaults, **(override if isinstance(override, dict) else {})}
        params = {k: params[k] for k in ("group_size", "bits")}
        rows, cols = shape
        if cols % params["group_size"] or cols * params["bits"] % 32:
            raise CheckpointError(
                config_path,
                "quantization does not fit the layer",
                key=module,
                expected=f"input dim {cols} divisible by group_size",
                found=params["group_size"],
            )
        shapes[key] = (rows, cols * params["bits"] // 32)  # uint32 words of packed values
        groups = (rows, cols // params["group_size"])
        shapes[f"{module}.scales"] = shapes[f"{module}.biases"] = groups
        modules[module] = params
    return shapes, modules
