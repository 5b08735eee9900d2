"""Suite files (`suites/*.yaml`): validated specs of what a measurement runs.

Every key is checked; a mistake is one line naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from elmbench import dtypes
from elmbench.engine import KERNELS
from elmbench.errors import ElmbenchError, UnknownNameError

if TYPE_CHECKING:
    from elmbench.accuracy.suites import AccuracySuite

SUITES_DIR = Path(__file__).resolve().parent  # the shipped suite files sit beside this module
KINDS = ("throughput", "norms")
COMPILE_MODES = ("none", "inductor", "cudagraphs", "aoti", "mx.compile")
ORDERS = ("sequential", "interleaved")  # how a throughput run orders its cases' repetitions


class SuiteError(ElmbenchError):
    """A suite file that does not validate."""


@dataclass(frozen=True)
class SuiteSpec:
    """One suite: the product of its list-valued fields is the set of cases."""

    name: str
    kind: str = "throughput"
    description: str = ""
    models: tuple[str, ...] = ("270m",)
    weights: str | None = None
    backend: str | None = None  # None: every backend the device allows
    device: str = "auto"
    norms: tuple[str, ...] = ("all",)
    dtypes: tuple[str, ...] = ("float32",)
    prompt_tokens: tuple[int, ...] = (512,)
    gen_tokens: tuple[int, ...] = (128,)
    batch_sizes: tuple[int, ...] = (1,)
    compile: tuple[str, ...] = ("none",)
    kernels: tuple[str, ...] = ("stock",)  # stock, and/or elmbench (elmbench's CPU engine)
    warmup: int = 1
    repetitions: int = 3
    min_seconds: float = 2.0
    precision_pct: float | None = None  # repeat until the median's 95% interval is within +-this %
    max_seconds: float | None = None  # the time cap per case that goes with precision_pct
    order: str = "sequential"  # or interleaved: repetition r of every case before r + 1 of any
    threads: int | None = None  # CPU threads of each worker (OMP_NUM_THREADS); None: as set
    seed: int = 0
    norm_tokens: tuple[int, ...] = (1, 512)  # kind 'norms': rows per call of the micro-benchmark
    quantize: int | None = None  # MLX: quantize weights on load to 4 or 8 bits
    group_size: int = 64  # MLX quantization group size
    source: str = "<command line>"

    def with_overrides(self, **overrides: Any) -> SuiteSpec:
        """The spec with the given (already parsed) values replacing the suite's."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for run.json."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _positive_ints(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items
    ):
        raise ValueError("a positive integer or a list of them")
    return tuple(items)


def _names(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else str(value).split(",")
    names = tuple(str(v).strip() for v in items if str(v).strip())
    if not names:
        raise ValueError("a name or a list of names")
    return names


def _dtypes(value: Any) -> tuple[str, ...]:
    out = []
    for name in _names(value):
        key = dtypes.ALIASES.get(name.lower(), name.lower())
        if key not in dtypes.NAMES:
            raise ValueError(f"dtypes from {', '.join(dtypes.NAMES)} (or fp32, bf16, fp16)")
        out.append(key)
    return tuple(out)


def _compile(value: Any) -> tuple[str, ...]:
    modes = _names(value)
    for mode in modes:
        if mode not in COMPILE_MODES:
            raise ValueError(f"modes from {', '.join(COMPILE_MODES)}")
    return modes


def _kernels(value: Any) -> tuple[str, ...]:
    names = _names(value)
    for name in names:
        if name not in KERNELS:
            raise ValueError(f"kernels from {', '.join(KERNELS)}")
    return tuple(dict.fromkeys(names))


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"one of {', '.join(options)}")
        return str(value)

    return parse


def _choice_int(options: tuple[int, ...]) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if value not in options or isinstance(value, bool):
            raise ValueError(f"one of {', '.join(map(str, options))}")
        return int(value)

    return parse


def _int_at_least(low: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"an integer >= {low}")
        return value

    return parse


def _non_negative_float(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError("a number >= 0")
    return float(value)


def _positive_float(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError("a number > 0")
    return float(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


PARSERS: dict[str, Callable[[Any], Any]] = {
    "name": str,
    "kind": _choice(KINDS),
    "description": str,
    "models": _names,
    "weights": _optional_str,
    "backend": lambda v: None if v is None else _choice(("torch", "mlx"))(v),
    "device": str,
    "norms": _names,
    "dtypes": _dtypes,
    "prompt_tokens": _positive_ints,
    "gen_tokens": _positive_ints,
    "batch_sizes": _positive_ints,
    "compile": _compile,
    "kernels": _kernels,
    "warmup": _int_at_least(0),
    "repetitions": _int_at_least(1),
    "min_seconds": _non_negative_float,
    "precision_pct": lambda v: None if v is None else _positive_float(v),
    "max_seconds": lambda v: None if v is None else _positive_float(v),
    "order": _choice(ORDERS),
    "threads": lambda v: None if v is None else _int_at_least(1)(v),
    "seed": _int_at_least(0),
    "norm_tokens": _positive_ints,
    "quantize": lambda v: None if v is None else _choice_int((4, 8))(v),
    "group_size": lambda v: _choice_int((32, 64, 128))(v),
}


def parse_value(key: str, value: Any, where: str) -> Any:
    """Parse one field; errors name where, the key, the value and what is allowed."""
    try:
        return PARSERS[key](value)
    except ValueError as exc:
        raise SuiteError(f"{where}: key '{key}' must be {exc}; found {value!r}") from None


def load_suite(path: str | Path) -> SuiteSpec | AccuracySuite:
    """Read and validate a suite file (names are checked too: models, norms, devices)."""
    path = Path(path)
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SuiteError(f"{where}: suite file not found") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{where}: a suite is a mapping of keys to values")
    if data.get("kind") == "accuracy":
        from elmbench.accuracy.suites import parse_accuracy_suite

        return parse_accuracy_suite(path.stem, data, where)
    values: dict[str, Any] = {"name": path.stem, "source": where}
    for key, value in data.items():
        if key not in PARSERS:
            close = difflib.get_close_matches(str(key), PARSERS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SuiteError(
                f"{where}: unknown key '{key}'{hint}; allowed keys: {', '.join(PARSERS)}"
            )
        values[key] = parse_value(key, value, where)
    spec = SuiteSpec(**values)
    check_spec(spec)
    return spec


def check_spec(spec: SuiteSpec) -> None:
    """What a spec names must exist: models and norms in their registries, the weights on disk
    (whether they run on this machine is checked at run)."""
    if spec.kind == "norms" and spec.order != "sequential":
        raise SuiteError(
            f"{spec.source}: key 'order': the norm micro-benchmark runs its cases one after "
            "another (order: sequential); interleaving applies to throughput suites"
        )
    if spec.weights is not None and not Path(spec.weights).exists():
        raise SuiteError(
            f"{spec.source}: key 'weights': {spec.weights}: no such file or folder "
            "(a checkpoint: HF folder, CoreNet .pt or MLX folder)"
        )
    from elmbench.config import get_config
    from elmbench.models.comparison import COMPARISON_MODELS
    from elmbench.norms import NORMS

    for model in spec.models:
        if model not in COMPARISON_MODELS:
            try:
                get_config(model, also=COMPARISON_MODELS)
            except UnknownNameError as exc:
                raise SuiteError(f"{spec.source}: key 'models': {exc}") from None
    known = {n for table in NORMS.values() for n in table} | {"all", "native"}
    for norm in spec.norms:
        if norm not in known:
            raise SuiteError(
                f"{spec.source}: key 'norms': {UnknownNameError('norm', norm, sorted(known))}"
            )


def suite_path(name: str) -> Path:
    """A suite by name (`smoke`) from suites/, or a path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    path = SUITES_DIR / f"{name}.yaml"
    if not path.exists():
        raise UnknownNameError("suite", name, [p.stem for p in list_suites()])
    return path


def list_suites() -> list[Path]:
    """The suite files shipped in suites/."""
    return sorted(SUITES_DIR.glob("*.yaml"))
