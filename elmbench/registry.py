"""Lazy name -> "module:attr" resolution, so registries never import torch or mlx up front."""

from __future__ import annotations

import importlib
from typing import Any


def resolve(target: str) -> Any:
    """Import `module:attr` and return the attribute."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
