"""Torch loading: OpenELM weights from an HF folder, a CoreNet `.pt`, or seeded random init."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from elmbench.checkpoints import WeightsSource
from elmbench.config import ElmConfig, get_config
from elmbench.dtypes import torch_dtype
from elmbench.errors import CheckpointError, ElmbenchError

if TYPE_CHECKING:
    from elmbench.models.openelm_torch import OpenELM


def load_state(
    model: str | ElmConfig | None = None,
    weights: str | Path | None = None,
    seed: int = 0,
    dtype: str | torch.dtype = "float32",
    crop_vocab: bool = True,
) -> tuple[ElmConfig, dict[str, torch.Tensor], WeightsSource]:
    """Resolve (config, state dict, source) from a preset and/or a weights path."""
    from elmbench.checkpoints.corenet import read_corenet
    from elmbench.checkpoints.hf import read_hf
    from elmbench.checkpoints.init import random_arrays

    dt = torch_dtype(dtype)
    cfg = get_config(model) if isinstance(model, str) else model
    if weights is None:
        if cfg is None:
            raise ElmbenchError("give a model preset (--model) or a checkpoint (--weights)")
        state = {k: torch.from_numpy(v).to(dt) for k, v in random_arrays(cfg, seed).items()}
        return cfg, state, WeightsSource("random", seed=seed)
    path = Path(weights)
    if path.is_dir():
        hf_cfg, state = read_hf(path, dt)
        return hf_cfg, state, WeightsSource("hf", str(path))
    if path.suffix in (".pt", ".pth"):
        if cfg is None:
            raise ElmbenchError(
                f"{path}: a CoreNet .pt file has no config; name its preset "
                "with --model (e.g. --model 270m)"
            )
        pt_cfg, state = read_corenet(path, cfg, crop_vocab, dt)
        return pt_cfg, state, WeightsSource("corenet", str(path))
    if not path.exists():
        raise CheckpointError(path, "checkpoint path does not exist")
    raise CheckpointError(
        path, "not an HF folder (config.json + safetensors) or a CoreNet .pt file"
    )


def build_model(
    cfg: ElmConfig,
    state: dict[str, torch.Tensor],
    norm: str = "naive",
    device: str | torch.device = "cpu",
) -> OpenELM:
    """Construct OpenELM on `meta` and assign the validated state (no double initialisation)."""
    from elmbench.models.openelm_torch import OpenELM

    with torch.device("meta"):
        model = OpenELM(cfg, norm)
    missing, unexpected = model.load_state_dict(
        {k: v.to(device) for k, v in state.items()}, strict=False, assign=True
    )
    if missing or unexpected:  # validated earlier; this guards the model's own names
        raise CheckpointError(
            "model", "state does not match the model", key=(missing or unexpected)[0]
        )
    model.reset_buffers(device)
    model.requires_grad_(False)
    return model.eval()


def load_model(
    model: str | ElmConfig | None = None,
    weights: str | Path | None = None,
    norm: str = "naive",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    seed: int = 0,
    crop_vocab: bool = True,
) -> tuple[OpenELM, WeightsSource]:
    """One call from user options to a ready torch model and the identity of its weights."""
    cfg, state, source = load_state(model, weights, seed, dtype, crop_vocab)
    return build_model(cfg, state, norm, device), source
