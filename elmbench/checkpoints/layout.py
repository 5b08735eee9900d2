"""The HF checkpoint layout of an OpenELM config, and strict validation of a state against it.

Pure bookkeeping over names and shapes, shared by the torch and MLX loaders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from elmbench.config import ElmConfig
from elmbench.errors import CheckpointError

PREFIX = "transformer."
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


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
