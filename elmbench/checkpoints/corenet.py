"""CoreNet `.pt` state dicts: keys without the `transformer.` prefix, a 32128-row embedding."""

from __future__ import annotations

from pathlib import Path

import torch

from elmbench.checkpoints.layout import PREFIX, expected_shapes, validate_state
from elmbench.config import HF_VOCAB_SIZE, ElmConfig
from elmbench.errors import CheckpointError

_WRAPPERS = ("model_state_dict", "state_dict", "model")


def read_corenet(
    path: str | Path, cfg: ElmConfig, crop_vocab: bool = True, dtype: torch.dtype | None = None
) -> tuple[ElmConfig, dict[str, torch.Tensor]]:
    """Load a CoreNet checkpoint for the architecture `cfg`; crop to 32000 rows for HF parity."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file does not exist")
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # on damaged bytes the unpickler raises IndexError, KeyError, ...
        raise CheckpointError(path, f"not a readable torch checkpoint ({_cause(exc)})") from None
    for wrapper in _WRAPPERS:
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(path, "not a state dict of tensors")
    state = {(k if k.startswith(PREFIX) else PREFIX + k): v for k, v in raw.items()}
    emb_key = f"{PREFIX}token_embeddings.weight"
    if emb_key in state:
        rows = state[emb_key].shape[0]
        if crop_vocab and rows > HF_VOCAB_SIZE:
            state[emb_key] = state[emb_key][:HF_VOCAB_SIZE].contiguous()
            rows = HF_VOCAB_SIZE
        cfg = cfg.with_vocab(rows)
    validate_state(
        {k: tuple(v.shape) for k, v in state.items()},
        {k: str(v.dtype) for k, v in state.items()},
        expected_shapes(cfg),
        str(path),
        f"the '{cfg.name}' preset",
    )
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    return cfg, state


def _cause(exc: BaseException) -> str:
    """torch.load's multi-line message cut to one line, without its `weights_only=False` advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    marker = "WeightsUnpickler error:"
    for i, line in enumerate(lines):
        if marker in line:  # the weights-only unpickler states the cause after this marker
            rest = line.partition(marker)[2].strip()
            if not rest and i + 1 < len(lines):
                rest = lines[i + 1]
            return f"not a tensor-only pickle: {rest}" if rest else "not a tensor-only pickle"
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0] if len(lines[0]) > 160 else lines[0]
