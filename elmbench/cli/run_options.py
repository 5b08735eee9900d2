"""The options of the run commands (`throughput`, `profile`, `accuracy`), each defined once.

The same option has the same name, short flag and value form in every command: list options take
comma-separated values or repeat (`-m 270m,450m` or `-m 270m -m 450m`). Measurement options can
also come from a suite file (`--suite`); options given on the command line win. With `--resume`,
options given again must equal the run's own: anything else is refused with what differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from elmbench.errors import ConfigError
from elmbench.suites import SuiteSpec, check_spec, load_suite, parse_value, suite_path

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "markdown", "csv", "json")

# Options that steer where and how a run is kept or shown, not what it measures.
SESSION = ("resume", "out", "retry_failed", "quiet", "fmt", "report")

# option name -> SuiteSpec field, for the measuring commands (list-valued unless marked scalar)
LIST_FIELDS = {
    "model": "models",
    "kernels": "kernels",
    "norm": "norms",
    "dtype": "dtypes",
    "prompt_tokens": "prompt_tokens",
    "gen_tokens": "gen_tokens",
    "batch_size": "batch_sizes",
    "compile_mode": "compile",
}
SCALAR_FIELDS = {
    "weights": "weights",
    "device": "device",
    "backend": "backend",
    "warmup": "warmup",
    "repetitions": "repetitions",
    "min_seconds": "min_seconds",
    "precision": "precision_pct",
    "max_seconds": "max_seconds",
    "order": "order",
    "threads": "threads",
    "seed": "seed",
    "quantize": "quantize",
    "group_size": "group_size",
}
FLAGS = {  # option name -> how users type it, for messages
    "model": "--model",
    "compile_mode": "--compile",
    "fmt": "--format",
    "prompt_tokens": "-p/--prompt-tokens",
    "gen_tokens": "-n/--gen-tokens",
    "batch_size": "-b/--batch-size",
}


def flag(name: str) -> str:
    """How users type an option, from its parameter name."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


_LIST = {"multiple": True}
OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "suite": (("--suite",), {"metavar": "NAME|FILE", "help": "Start from a suite (name or file)."}),
    "model": (
        ("-m", "--model"),
        {
            **_LIST,
            "metavar": "NAMES",
            "help": "Presets (270m, 450m, 1_1b, 3b, tiny, ...) or "
            "comparison models (olmo-1b, llama-270m).",
        },
    ),
    "weights": (
        ("--weights",),
        {
            "metavar": "PATH",
            "help": "Checkpoint: HF folder, CoreNet .pt, MLX folder (accuracy: "
            "also a Hugging Face id); default: seeded random weights.",
        },
    ),
    "device": (
        ("--device",),
        {
            "metavar": "NAME",
            "help": "auto, cpu, cuda[:N], mps, mlx-cpu, mlx-gpu or a device "
            "profile (h100, m2max, ...; `elmbench devices`).",
        },
    ),
    "backend": (
        ("--backend",),
        {
            "type": click.Choice(["torch", "mlx"]),
            "help": "Framework, where the device has both (default: each present).",
        },
    ),
    "kernels": (
        ("--kernels",),
        {
            **_LIST,
            "metavar": "NAMES",
            "help": "stock (the framework as users run it; default) "
            "and/or elmbench (elmbench's CPU engine, torch on the CPU).",
        },
    ),
    "norm": (
        ("--norm",),
        {
            **_LIST,
            "metavar": "NAMES",
            "help": "naive, fused, compiled, triton, apex, layernorm "
            "(ablation), native, or all (`elmbench norms`).",
        },
    ),
    "dtype": (
        ("--dtype",),
        {**_LIST, "metavar": "NAMES", "help": "float32, bfloat16, float16 (or fp32, bf16, fp16)."},
    ),
    "prompt_tokens": (
        ("-p", "--prompt-tokens", "prompt_tokens"),
        {**_LIST, "metavar": "N[,N]", "help": "Prompt lengths."},
    ),
    "gen_tokens": (
        ("-n", "--gen-tokens", "gen_tokens"),
        {**_LIST, "metavar": "N[,N]", "help": "New tokens (the first comes from prefill)."},
    ),
    "batch_size": (
        ("-b", "--batch-size", "batch_size"),
        {**_LIST, "metavar": "N[,N]", "help": "Sequences generated together."},
    ),
    "compile_mode": (
        ("--compile", "compile_mode"),
        {
            **_LIST,
            "metavar": "MODES",
            "help": "none, inductor, cudagraphs (torch, CUDA), aoti "
            "(torch, CPU), mx.compile (MLX).",
        },
    ),
    "warmup": (("--warmup",), {"type": int, "metavar": "N", "help": "Warm-up runs (not timed)."}),
    "repetitions": (
        ("--repetitions",),
        {"type": int, "metavar": "N", "help": "Timed repetitions (at least)."},
    ),
    "min_seconds": (
        ("--min-seconds", "min_seconds"),
        {"type": float, "metavar": "S", "help": "Measured seconds per case (at least)."},
    ),
    "precision": (
        ("--precision",),
        {
            "metavar": "PCT",
            "help": "Repeat until each median's 95% interval is within +-PCT "
            "(e.g. 3%), up to --max-seconds.",
        },
    ),
    "max_seconds": (
        ("--max-seconds", "max_seconds"),
        {"type": float, "metavar": "S", "help": "Time cap per case with --precision."},
    ),
    "order": (
        ("--order",),
        {
            "type": click.Choice(["sequential", "interleaved"]),
            "help": "interleaved: repetition r of every case before r + 1 of any, so drift hits "
            "all cases alike; sequential: one case after another (measures peak memory).",
        },
    ),
    "threads": (
        ("--threads",),
        {"type": int, "metavar": "N", "help": "CPU threads of each worker (OMP_NUM_THREADS)."},
    ),
    "seed": (("--seed",), {"type": int, "help": "Seed of the random weights and prompts (0)."}),
    "quantize": (
        ("--quantize",),
        {"type": int, "metavar": "4|8", "help": "MLX: quantize weights on load."},
    ),
    "group_size": (
        ("--group-size", "group_size"),
        {"type": int, "metavar": "N", "help": "MLX quantization group size (64)."},
    ),
    "out": (
        ("--out",),
        {
            "metavar": "DIR",
            "help": "Folder for run folders (default: $ELMBENCH_REPORTS, else runs/).",
        },
    ),
    "resume": (
        ("--resume",),
        {
            "metavar": "RUN",
            "help": "Finish an interrupted run (its folder or id) with its own settings.",
        },
    ),
    "retry_failed": (
        ("--retry-failed", "retry_failed"),
        {"is_flag": True, "help": "With --resume: measure the run's failed cases again."},
    ),
    "report": (
        ("--report",),
        {"is_flag": True, "help": "Write the run's report (tables, figures, HTML) at the end."},
    ),
    "quiet": (("-q", "--quiet"), {"is_flag": True, "help": "No progress display."}),
    "fmt": (
        ("--format", "fmt"),
        {
            "type": click.Choice(FORMATS, case_sensitive=False),
            "default": "table",
            "show_default": True,
            "help": "table for people; markdown, csv or json for files.",
        },
    ),
}
MEASURE = (
    "suite", "model", "weights", "device", "backend", "kernels", "norm", "dtype",
    "prompt_tokens", "gen_tokens", "batch_size", "compile_mode", "warmup", "repetitions",
)  # fmt: skip
SESSION_OPTIONS = ("seed", "quantize", "group_size", "out", "resume", "retry_failed", "report")
OUTPUT = ("quiet", "fmt")


def run_options(*names: str) -> Callable[[F], F]:
    """The named options, in the order given (which is the order help shows them)."""

    def decorate(func: F) -> F:
        for name in reversed(names):
            decls, kwargs = OPTIONS[name]
            func = click.option(*decls, **kwargs)(func)
        return func

    return decorate


def after_run(path: Path, report: bool) -> None:
    """End of a run: make its report (`--report`), or say how to (on stderr, beside progress)."""
    if not report:
        click.echo(f"report: elmbench report {path}", err=True)
        return
    from elmbench.report import make_report

    for line in make_report([path]).summary:
        click.echo(line, err=True)


def split(values: Iterable[str] | None) -> list[str] | None:
    """`("a,b", "c")` -> `["a", "b", "c"]`; None when nothing was given."""
    items = [v.strip() for value in values or () for v in value.split(",") if v.strip()]
    return items or None


def parse_precision(text: str | None) -> float | None:
    """`3%` or `3` -> 3.0 (percent); a clear error for anything else."""
    if text is None:
        return None
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise ConfigError(f"--precision: expected a percentage such as 3%, found {text}") from None
    if not value > 0:
        raise ConfigError(f"--precision: must be more than 0%, found {text}")
    return value


def given(ctx: click.Context, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options typed on the command line (or set in the environment), without session ones."""
    sources = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {
        name: value
        for name, value in options.items()
        if name not in SESSION and ctx.get_parameter_source(name) in sources
    }


def check_session(options: Mapping[str, Any]) -> None:
    """Options that only make sense together."""
    if options.get("retry_failed") and not options.get("resume"):
        raise ConfigError("--retry-failed measures a run's failed cases again: add --resume RUN")


def _ints(values: list[str], name: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        found = ",".join(values)
        raise ConfigError(f"option {flag(name)}: expected integers, found {found}") from None


def spec_from_options(
    default: SuiteSpec, options: Mapping[str, Any], kinds: tuple[str, ...] = ("throughput", "norms")
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
    for option, key in LIST_FIELDS.items():
        values: list[Any] | None = split(options.get(option))
        if values is None:
            continue
        if key in ("prompt_tokens", "gen_tokens", "batch_sizes"):
            values = _ints(values, option)
        overrides[key] = parse_value(key, values, f"option {flag(option)}")
    for option, key in SCALAR_FIELDS.items():
        value = options.get(option)
        if option == "precision":
            value = parse_precision(value)
        if value is not None:
            overrides[key] = parse_value(key, value, f"option {flag(option)}")
    spec = base.with_overrides(**overrides)
    check_spec(spec)
    return spec


def resumed_spec(stored: SuiteSpec, typed: Mapping[str, Any]) -> SuiteSpec:
    """The run's own spec, after checking that the options typed again equal it."""
    again = spec_from_options(stored, typed, kinds=(stored.kind,))
    stored_values, again_values = stored.to_dict(), again.to_dict()
    differing = [k for k in stored_values if stored_values[k] != again_values[k]]
    if differing:
        fields = {**LIST_FIELDS, **SCALAR_FIELDS}
        names = {field: flag(option) for option, field in fields.items()}
        shown = ", ".join(
            f"{names.get(k, k)} (run: {_show(stored_values[k])}, given: {_show(again_values[k])})"
            for k in differing
        )
        raise ConfigError(
            f"--resume continues a run with its own settings; these differ: {shown}. Drop them, "
            "or start a new run"
        )
    return stored


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)
