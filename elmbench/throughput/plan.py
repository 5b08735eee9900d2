"""Expand a suite spec into cases: devices and backends resolved, norm and compile names checked.

Everything a user can get wrong is found here, before anything is loaded or timed.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

from elmbench.backends import COMPILE_MODES
from elmbench.devices import ResolvedDevice, resolve_device
from elmbench.engine import ENGINE, STOCK, unsupported
from elmbench.errors import ConfigError, ElmbenchError, UnavailableError
from elmbench.records.types import NormBenchRecord, ThroughputRecord, case_id
from elmbench.suites import SuiteSpec

NATIVE = "native"  # a model's own normalization (OpenELM: naive RMSNorm; OLMo: LayerNorm)


@dataclass(frozen=True)
class Case:
    """One measurement: a model on a backend and device, with its kernels, norm, dtype, compile
    mode and shape (a throughput shape, or a norm micro-benchmark shape)."""

    model: str
    backend: str
    device: str  # the detected device key: cpu | mlx-cpu | cuda:0 | mps | mlx-gpu
    norm: str
    dtype: str
    compile: str
    batch_size: int = 1
    prompt_tokens: int = 0  # kind 'throughput'
    gen_tokens: int = 0
    tokens: int = 0  # kind 'norms': rows per call
    where: str = ""  # kind 'norms': 'hidden' (model_dim) or 'head' (q/k norm, head_dim)
    kernels: str = STOCK  # stock, or elmbench's engine

    @property
    def record_kind(self) -> type[ThroughputRecord] | type[NormBenchRecord]:
        """The record kind this case produces."""
        return NormBenchRecord if self.where else ThroughputRecord

    def params(self) -> dict[str, Any]:
        """The case's fields as its records name them (its id and the axes compare matches)."""
        values = asdict(self)
        return {name: values[name] for name in self.record_kind.CASE}

    @property
    def case_id(self) -> str:
        """The id of the case's record."""
        return case_id(self.params())


@dataclass
class Plan:
    """The cases of a run, the devices they run on, and what was left out and why."""

    spec: SuiteSpec
    devices: dict[str, ResolvedDevice]  # by backend
    cases: list[Case]
    notes: list[str] = field(default_factory=list)


def resolve_devices(spec: SuiteSpec) -> dict[str, ResolvedDevice]:
    """The device for each backend the spec runs on (`backend: null` means every one allowed)."""
    if spec.backend is not None or spec.device.strip().lower() == "auto":
        device = resolve_device(spec.device, spec.backend)
        return {device.backend: device}
    found: dict[str, ResolvedDevice] = {}
    errors: list[ElmbenchError] = []
    for backend in ("torch", "mlx"):
        try:
            device = resolve_device(spec.device, backend)
        except (ConfigError, UnavailableError) as exc:
            errors.append(exc)
            continue
        found[device.backend] = device
    if not found:
        # The backend that owns the device says why it is not here ("MLX on Apple silicon is not
        # available"); the other one only says it cannot use such a device.
        raise next((e for e in errors if isinstance(e, UnavailableError)), errors[0])
    return found


def model_norms(
    model: str, backend: str, requested: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """The norm names to run for a model on a backend, and notes on the variants left out."""
    from elmbench.models.comparison import COMPARISON_MODELS
    from elmbench.norms import get_norm, variants

    comparison = model in COMPARISON_MODELS
    if comparison and backend != "torch":
        raise UnavailableError(
            f"model '{model}' on {backend}", "comparison models run on the torch backend only",
            "Use --backend torch",
        )  # fmt: skip
    names: list[str] = []
    notes: list[str] = []
    for name in requested:
        if name == "all":
            if comparison:
                names.append(NATIVE)
            for variant in variants(backend).values():
                status = variant.available()
                if variant.changes_numerics:
                    continue  # ablations run only when named
                if status.ok:
                    names.append(variant.name)
                else:
                    notes.append(f"norm '{variant.name}' ({backend}) left out: {status.reason}")
            continue
        if name == NATIVE:
            names.append(NATIVE if comparison else "naive")
            continue
        variant = get_norm(name, backend)
        status = variant.available()
        if not status.ok:
            raise UnavailableError(f"norm '{name}' ({backend})", status.reason, status.hint)
        names.append(name)
    return list(dict.fromkeys(names)), notes


def _compile_modes(spec: SuiteSpec, devices: dict[str, ResolvedDevice]) -> dict[str, list[str]]:
    modes = {b: [m for m in spec.compile if m in COMPILE_MODES[b]] for b in devices}
    for mode in spec.compile:
        if not any(mode in modes[b] for b in devices):
            allowed = sorted({m for b in devices for m in COMPILE_MODES[b]})
            raise ConfigError(
                f"compile mode '{mode}' does not apply to backend {', '.join(devices)}; "
                f"allowed here: {', '.join(allowed)}"
            )
    if "cudagraphs" in modes.get("torch", []) and devices["torch"].profile.kind != "cuda":
        raise UnavailableError(
            "compile mode 'cudagraphs'", "CUDA graphs need a CUDA device",
            "Use --compile none or inductor on this device",
        )  # fmt: skip
    return modes


def _check_shapes(spec: SuiteSpec) -> None:
    from elmbench.config import get_config
    from elmbench.models.comparison import COMPARISON_MODELS

    longest = max(spec.prompt_tokens) + max(spec.gen_tokens)
    for model in spec.models:
        if model in COMPARISON_MODELS:
            continue
        limit = get_config(model).max_context_length
        if spec.kind == "throughput" and longest > limit:
            raise ConfigError(
                f"prompt_tokens + gen_tokens = {longest} exceeds {model}'s context of {limit} "
                "tokens; use shorter prompts or fewer new tokens"
            )


def _model_modes(model: str, modes: list[str], notes: list[str]) -> list[str]:
    """The compile modes a model runs in: comparison models run eager only (HF's dynamic cache)."""
    from elmbench.models.comparison import COMPARISON_MODELS

    if model not in COMPARISON_MODELS or modes == ["none"]:
        return modes
    if "none" not in modes:
        raise UnavailableError(
            f"--compile {', '.join(modes)} for {model}",
            "comparison models run eager only, through transformers' dynamic KV cache",
            "Add --compile none",
        )
    dropped = [m for m in modes if m != "none"]
    notes.append(
        f"{model}: compile {', '.join(dropped)} left out (comparison models run eager, "
        "through transformers' dynamic KV cache)"
    )
    return [m for m in modes if m == "none"]


def _kernels(
    spec: SuiteSpec, devices: dict[str, ResolvedDevice], notes: list[str]
) -> dict[str, list[str]]:
    """The kernels each backend runs: elmbench's engine only where it can serve the device."""
    out: dict[str, list[str]] = {}
    for backend, device in devices.items():
        reason = unsupported(device.framework_device, backend)
        if reason is None or ENGINE not in spec.kernels:
            out[backend] = list(spec.kernels)
        elif spec.kernels == (ENGINE,) and len(devices) == 1:
            raise UnavailableError("--kernels elmbench", reason, "Use --kernels stock")
        else:
            out[backend] = [k for k in spec.kernels if k != ENGINE]
            notes.append(f"{backend}: kernels elmbench left out ({reason})")
    return out


def build_plan(spec: SuiteSpec) -> Plan:
    """Resolve devices, norms and compile modes and expand the cases (their product), in order."""
    devices = resolve_devices(spec)
    notes: list[str] = []
    if spec.quantize is not None:
        if "mlx" not in devices:
            raise ConfigError(
                f"--quantize {spec.quantize} quantizes MLX weights; the backend here is "
                f"{', '.join(devices)}: use --backend mlx (with --device mlx-cpu or mlx-gpu)"
            )
        if len(devices) > 1:
            notes.append("torch left out: --quantize applies to MLX only")
            devices = {"mlx": devices["mlx"]}
    modes = _compile_modes(spec, devices)
    _check_shapes(spec)
    kernels = _kernels(spec, devices, notes)
    cases: list[Case] = []
    for device in devices.values():
        if device.mismatch:
            notes.append(device.mismatch)
    for model, backend in itertools.product(spec.models, devices):
        norms, left_out = model_norms(model, backend, spec.norms)
        notes.extend(n for n in left_out if n not in notes)
        key = devices[backend].detected.key
        model_modes = _model_modes(model, modes[backend], notes)
        if spec.kind == "norms":
            for dtype, norm in itertools.product(spec.dtypes, norms):
                if norm == NATIVE:
                    continue
                for where, tokens in itertools.product(("hidden", "head"), spec.norm_tokens):
                    cases.append(
                        Case(model, backend, key, norm, dtype, "none", tokens=tokens, where=where)
                    )
            continue
        for kern, dtype, mode, norm in itertools.product(
            kernels[backend], spec.dtypes, model_modes, norms
        ):
            for batch, prompt, gen in itertools.product(
                spec.batch_sizes, spec.prompt_tokens, spec.gen_tokens
            ):
                cases.append(
                    Case(model, backend, key, norm, dtype, mode, batch, prompt, gen, kernels=kern)
                )
    if not cases:
        raise ConfigError("the spec expands to no cases; check its models, norms and shapes")
    return Plan(spec, devices, cases, notes)
