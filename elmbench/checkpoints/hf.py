"""HF-layout folders: `config.json` plus `model.safetensors` or a sharded index."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from elmbench.checkpoints.layout import INDEX, SINGLE, expected_shapes, validate_state, weight_files
from elmbench.config import ElmConfig
from elmbench.errors import CheckpointError


def is_hf_folder(path: Path) -> bool:
    """A folder with a config.json (weights are checked when read)."""
    return path.is_dir() and (path / "config.json").is_file()


def read_hf(
    folder: str | Path, dtype: torch.dtype | None = None, name: str | None = None
) -> tuple[ElmConfig, dict[str, torch.Tensor]]:
    """Read and strictly validate an HF-layout folder; returns (config, state dict)."""
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(folder, "checkpoint folder does not exist")
    cfg = ElmConfig.from_hf(folder / "config.json", name=name or folder.name)
    files = weight_files(folder)
    by_file: dict[Path, list[str]] = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    state: dict[str, torch.Tensor] = {}
    for path, keys in by_file.items():
        try:
            with safe_open(str(path), framework="pt") as f:
                present = set(f.keys())
                for key in keys:
                    if key not in present:
                        raise CheckpointError(
                            path, f"key listed in {INDEX} is not in this shard", key=key
                        )
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(path, f"corrupt safetensors file ({exc})") from None
    validate_state(
        {k: tuple(v.shape) for k, v in state.items()},
        {k: str(v.dtype) for k, v in state.items()},
        expected_shapes(cfg),
        {k: str(p) for k, p in files.items()},
        str(folder / "config.json"),
    )
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    return cfg, state


def save_hf(
    cfg: ElmConfig,
    state: dict[str, torch.Tensor],
    folder: str | Path,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write `config.json` and safetensors (sharded with an index above `max_shard_bytes`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = cfg.to_hf()
    dtypes = {str(v.dtype).replace("torch.", "") for v in state.values()}
    hf["torch_dtype"] = dtypes.pop() if len(dtypes) == 1 else "float32"
    (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(tensors, str(folder / SINGLE), metadata=meta)
        return folder
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata=meta)
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return folder
