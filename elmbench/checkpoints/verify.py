"""The check a checkpoint gets before any run starts: readable, complete, shapes that fit its
config, and every floating-point value finite. Safetensors values are scanned through a memory map
with numpy (no torch, no mlx); a CoreNet `.pt` is read by the torch-side reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elmbench.checkpoints.layout import validate_folder
from elmbench.config import ElmConfig
from elmbench.errors import CheckpointError, ElmbenchError

# Float dtypes of a safetensors header -> (the unsigned int of the same width, its exponent mask):
# a value is NaN or infinite exactly when every exponent bit is set, in every IEEE format and in
# bfloat16, so one integer test covers them all without converting anything.
_EXPONENT = {
    "F64": (np.uint64, 0x7FF0000000000000),
    "F32": (np.uint32, 0x7F800000),
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
}
_CHUNK = 1 << 24  # values per scanned slice: bounds the temporaries of a multi-GB tensor


@dataclass(frozen=True)
class CheckedCheckpoint:
    """A checkpoint that passed every check: its architecture and whether it is MLX-quantized."""

    cfg: ElmConfig
    quantized: bool = False
    folder: bool = True  # False for a CoreNet .pt (its architecture is the preset's)


def check_checkpoint(weights: str | Path, preset: ElmConfig | None = None) -> CheckedCheckpoint:
    """Validate a checkpoint without loading a model: every failure is one CheckpointError.

    A folder (HF or MLX-community layout) is checked from its config and safetensors headers, then
    its float values are scanned; a CoreNet `.pt` needs `preset` (its architecture) and is read.
    """
    path = Path(weights)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                path,
                "no config.json: a checkpoint folder holds config.json and model.safetensors "
                "(or a sharded index)",
            )
        layout = validate_folder(path)
        for file in sorted(set(layout.files.values())):
            wanted = {k for k, f in layout.files.items() if f == file}
            _check_finite_safetensors(file, wanted)
        return CheckedCheckpoint(layout.cfg, layout.quantized is not None)
    if path.suffix in (".pt", ".pth") and path.is_file():
        if preset is None:
            raise ElmbenchError(
                f"{path}: a CoreNet .pt file has no config; name its preset with --model "
                "(e.g. --model 270m)"
            )
        return CheckedCheckpoint(_check_corenet(path, preset), folder=False)
    if not path.exists():
        raise CheckpointError(path, "checkpoint path does not exist")
    raise CheckpointError(
        path, "not an HF folder (config.json + safetensors), an MLX folder or a CoreNet .pt file"
    )


def _tensors(path: Path) -> Iterator[tuple[str, str, int, int]]:
    """(key, dtype, start, end) of each tensor's bytes in a safetensors file (header validated)."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    base = 8 + size
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        yield key, info["dtype"], base + start, base + end


def _check_finite_safetensors(path: Path, keys: set[str]) -> None:
    """Raise CheckpointError for the first tensor of `keys` that holds a NaN or an infinity."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        for key, dtype, start, end in _tensors(path):
            if key not in keys or dtype not in _EXPONENT or end <= start:
                continue  # integer tensors (packed quantized weights) cannot be non-finite
            itype, mask = _EXPONENT[dtype]
            values = data[start:end].view(itype)
            bad = sum(
                int(np.count_nonzero((values[i : i + _CHUNK] & itype(mask)) == itype(mask)))
                for i in range(0, values.size, _CHUNK)
            )
            if bad:
                _raise_non_finite(path, key, bad, values.size)
    finally:
        del data  # closes the map


def _check_corenet(path: Path, preset: ElmConfig) -> ElmConfig:
    import torch

    from elmbench.checkpoints.corenet import read_corenet

    cfg, state = read_corenet(path, preset)
    for key, tensor in state.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                _raise_non_finite(path, key, bad, tensor.numel())
    return cfg


def _raise_non_finite(path: Path, key: str, bad: int, total: int) -> None:
    raise CheckpointError(
        path,
        "non-finite weights (NaN or infinity); they would give NaN logits: use an intact copy "
        "of the checkpoint",
        key=key,
        expected="finite values",
        found=f"{bad:,} of {total:,} non-finite",
    )
