"""A spec's checkpoint, checked before its run starts: readable, complete, finite, and of the
architecture its records will name (the model is taken from the checkpoint when none was given).
"""

from __future__ import annotations

from elmbench.errors import ConfigError, ElmbenchError
from elmbench.suites import SuiteSpec


def checked_weights(spec: SuiteSpec, models_given: bool) -> SuiteSpec:
    """`spec` with its `--weights` checked and its model set to the checkpoint's preset.

    `models_given`: the models were chosen (by --model, a suite or the resumed run) rather than
    defaulted; a chosen model must be the checkpoint's architecture.
    """
    if spec.weights is None:
        return spec
    from elmbench.accuracy.papermodel import checkpoint_names, paper_model
    from elmbench.checkpoints.verify import check_checkpoint
    from elmbench.config import get_config, matching_presets
    from elmbench.models.comparison import COMPARISON_MODELS

    comparison = [m for m in spec.models if m in COMPARISON_MODELS]
    if comparison:
        raise ConfigError(
            f"--weights does not apply to {comparison[0]}: comparison models use seeded random "
            "weights; give an OpenELM preset with --model, or drop --weights"
        )
    if len(spec.models) > 1:
        raise ConfigError(
            f"--weights is one checkpoint, --model names {len(spec.models)} models "
            f"({', '.join(spec.models)}): give at most one --model with it"
        )
    model = spec.models[0] if models_given else None
    checked = check_checkpoint(spec.weights, None if model is None else get_config(model))
    if checked.quantized and spec.backend != "mlx":
        raise ConfigError(
            f"{spec.weights} is an MLX-quantized folder, which only the MLX backend reads: add "
            "--backend mlx (with --device mlx-cpu or mlx-gpu)"
        )
    if checked.quantized and spec.quantize is not None:
        raise ConfigError(f"{spec.weights}: the checkpoint is already quantized; drop --quantize")
    if not checked.folder:  # a CoreNet .pt was read as the preset's architecture
        return spec
    if model is not None:
        paper_model(checked.cfg, model)  # a model that is not the checkpoint's is refused here
        return spec
    matches = matching_presets(checked.cfg)
    if not matches:
        raise ElmbenchError(
            f"{spec.weights}: the checkpoint's architecture matches no OpenELM preset "
            "(`elmbench models`); throughput and profile measure the presets' architectures"
        )
    official = paper_model(checked.cfg, None, checkpoint_names(spec.weights)).name
    name = next(p.name for p in matches if p.official_name == official)
    return spec.with_overrides(models=(name,))
