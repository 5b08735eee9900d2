"""The options of the measuring commands (`throughput`, `profile`): what to run, where, how long.

Each option can also come from a suite file (`--suite`); options given on the command line win.
List-valued options take comma-separated values or repeat (`-p 128,512` or `-p 128 -p 512`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from elmbench.errors import ConfigError
from elmbench.suites import SuiteSpec, check_spec, load_suite, parse_value, suite_path

F = TypeVar("F", bound=Callable[..., Any])

# option name -> SuiteSpec field (list-valued unless marked scalar)
LIST_OPTIONS = {
    "model": "models",
    "norm": "norms",
    "dtype": "dtypes",
    "prompt_tokens": "prompt_tokens",
    "gen_tokens": "gen_tokens",
    "batch_size": "batch_sizes",
    "compile_mode": "compile",
}
SCALAR_OPTIONS = {
    "weights": "weights",
    "device": "device",
    "backend": "backend",
    "warmup": "warmup",
    "repetitions": "repetitions",
    "min_seconds": "min_seconds",
    "seed": "seed",
    "quantize": "quantize",
    "group_size": "group_size",
}


def _split(values: tuple[str, ...]) -> list[str] | None:
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return items or None


def _ints(key: str, values: list[str], flag: str) -> list[Any]:
    try:
        return [int(v) for v in values]
    except ValueError:
        found = ",".join(values)
        raise ConfigError(f"option {flag}: expected integers, found {found}") from None


def spec_from_options(
    default: SuiteSpec, options: dict[str, Any], kinds: tuple[str, ...] = ("throughput", "norms")
) -> SuiteSpec:
    """The suite (or `default`) with every given command-line option applied and validated."""
    base = default
    if options.get("suite"):
        loaded = load_suite(suite_path(options["suite"]))
        if not isinstance(loaded, SuiteSpec) or loaded.kind not in kinds:
            found = getattr(loaded, "kind", "accuracy")
            raise ConfigError(
                f"suite '{options['suite']}' is of kind '{found}'; this command runs "
                f"{' or '.join(kinds)} suites"
            )
        base = loaded
    overrides: dict[str, Any] = {}
    for option, key in LIST_OPTIONS.items():
        values = _split(options.get(option) or ())
        if values is None:
            continue
        flag = "--" + option.replace("_", "-").replace("-mode", "")
        if key in ("prompt_tokens", "gen_tokens", "batch_sizes"):
            values = _ints(key, values, flag)
        overrides[key] = parse_value(key, values, f"option {flag}")
    for option, key in SCALAR_OPTIONS.items():
        value = options.get(option)
        if value is not None:
            overrides[key] = parse_value(key, value, f"option --{option.replace('_', '-')}")
    spec = base.with_overrides(**overrides)
    check_spec(spec)
    return spec


_MEASURE_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("--suite",),
        {"metavar": "NAME|FILE", "help": "Start from a suite (name or YAML file)."},
    ),
    (
        ("--model", "-m"),
        {
            "multiple": True,
            "metavar": "NAMES",
            "help": "Presets (270m, 450m, 1_1b, 3b, tiny, ...) or comparison models "
            "(olmo-1b, llama-270m).",
        },
    ),
    (
        ("--weights",),
        {
            "metavar": "PATH",
            "help": "Checkpoint (HF folder, CoreNet .pt, MLX folder); "
            "default: seeded random weights.",
        },
    ),
    (
        ("--device",),
        {
            "metavar": "NAME",
            "help": "auto, cpu, cuda[:N], mps, mlx-cpu, mlx-gpu or a profile (h100, m2max, ...).",
        },
    ),
    (
        ("--backend",),
        {
            "type": click.Choice(["torch", "mlx"]),
            "help": "Framework, when the device allows both (default: each present).",
        },
    ),
    (
        ("--norm",),
        {
            "multiple": True,
            "metavar": "NAMES",
            "help": "naive, fused, compiled, apex, layernorm (ablation), native, or all.",
        },
    ),
    (("--dtype",), {"multiple": True, "metavar": "NAMES", "help": "float32, bfloat16, float16."}),
    (
        ("-p", "--prompt-tokens", "prompt_tokens"),
        {"multiple": True, "metavar": "N[,N]", "help": "Prompt lengths."},
    ),
    (
        ("-n", "--gen-tokens", "gen_tokens"),
        {"multiple": True, "metavar": "N[,N]", "help": "New tokens (the first from prefill)."},
    ),
    (
        ("-b", "--batch-size", "batch_size"),
        {"multiple": True, "metavar": "N[,N]", "help": "Batch sizes."},
    ),
    (
        ("--compile", "compile_mode"),
        {
            "multiple": True,
            "metavar": "MODES",
            "help": "none, inductor, cudagraphs (torch, CUDA), aoti (torch, CPU), mx.compile (MLX)",
        },
    ),
    (("--warmup",), {"type": int, "help": "Warm-up runs per case (not measured)."}),
    (("--repetitions",), {"type": int, "help": "Minimum measured repetitions per case."}),
    (("--min-seconds", "min_seconds"), {"type": float, "help": "Minimum seconds per case."}),
    (("--seed",), {"type": int, "help": "Seed of the random weights and prompts."}),
    (("--quantize",), {"type": int, "metavar": "4|8", "help": "MLX: quantize weights on load."}),
    (("--group-size", "group_size"), {"type": int, "help": "MLX quantization group size (64)."}),
    (
        ("--out",),
        {"metavar": "DIR", "help": "Root of run folders (default: $ELMBENCH_REPORTS or reports/)."},
    ),
    (
        ("--resume",),
        {
            "metavar": "RUN",
            "help": "Finish an interrupted run (folder or id) with its own settings.",
        },
    ),
]


def measure_options(func: F) -> F:
    """Every option shared by the measuring commands, in the order help shows them."""
    for decls, kwargs in reversed(_MEASURE_OPTIONS):
        func = click.option(*decls, **kwargs)(func)
    return func
