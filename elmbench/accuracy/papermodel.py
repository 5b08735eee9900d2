"""Which published OpenELM model a checkpoint is, so that the paper's values go beside it.

`--model` decides when the checkpoint has that preset's architecture; otherwise the architecture
does, and the name tells a base model from its -Instruct twin (the two share one architecture).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from elmbench.config import ElmConfig, architecture_difference, get_config, matching_presets
from elmbench.errors import ElmbenchError

BY_MODEL = "--model"
BY_ARCHITECTURE = "architecture"
BY_NAME = "architecture + name"
NO_MATCH = "no preset matches"


@dataclass(frozen=True)
class PaperModel:
    """The paper's name of the evaluated model ('' for none) and the rule that decided it."""

    name: str
    source: str


def paper_model(cfg: ElmConfig, model: str | None, names: Sequence[str] = ()) -> PaperModel:
    """The published model of `cfg`: the --model preset (checked), else by architecture and name.

    `names` are the strings that may say "instruct": the weights as given, the path they were
    read from, config.json's `_name_or_path`.
    """
    matches = matching_presets(cfg)
    if model is not None:
        preset = get_config(model)
        if preset in matches:
            return PaperModel(preset.official_name, BY_MODEL)
        raise ElmbenchError(
            f"--model {model}: the checkpoint is not {preset.official_name} "
            f"({architecture_difference(cfg, preset)}); its architecture matches "
            f"{_describe(matches)}"
        )
    if not matches:
        return PaperModel("", NO_MATCH)
    if any("instruct" in name.lower() for name in names):
        twins = [p for p in matches if p.instruct]
        if twins:
            return PaperModel(twins[0].official_name, BY_NAME)
    base = [p for p in matches if not p.instruct] or matches
    return PaperModel(base[0].official_name, BY_ARCHITECTURE)


def _describe(matches: list[ElmConfig]) -> str:
    if not matches:
        return "no OpenELM model (a custom architecture): leave out --model"
    names = " and ".join(p.official_name for p in matches)
    return f"{names} (--model {' or '.join(p.name for p in matches)})"


def checkpoint_names(*given: str | None) -> list[str]:
    """The given weights names and paths, plus `_name_or_path` of a folder's config.json."""
    names = [g for g in given if g]
    for name in list(names):
        config = Path(name) / "config.json"
        if not config.is_file():
            continue
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):  # the loader reports a broken config.json
            continue
        if isinstance(data, dict) and isinstance(data.get("_name_or_path"), str):
            names.append(data["_name_or_path"])
    return names


def checkpoint_config(weights: str | None) -> ElmConfig | None:
    """The config of a checkpoint folder, read without its weights (None for a file or none)."""
    if weights is None or not (Path(weights) / "config.json").is_file():
        return None
    return ElmConfig.from_hf(Path(weights) / "config.json", name=Path(weights).name)
