"""Where the time goes: the throughput loop under `torch.profiler` (or staged MLX timing),
broken down by category and model part, with the norm share as the headline.

This module holds the framework-free result types; `torch_profile` and `mlx_profile` fill them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from elmbench.errors import ConfigError, ElmbenchError
from elmbench.profile.categories import NORM

PHASES = ("prefill", "decode")
PHASE_CHOICES = (*PHASES, "both")


def parse_phase(phase: str) -> tuple[str, ...]:
    """'prefill' | 'decode' | 'both' -> the phases to profile, each in its own loop."""
    if phase == "both":
        return PHASES
    if phase in PHASES:
        return (phase,)
    raise ElmbenchError(f"unknown phase '{phase}'. Valid phases: {', '.join(PHASE_CHOICES)}")


def check_sizes(prompt_tokens: int, gen_tokens: int, batch_size: int) -> None:
    """Positive prompt, generation and batch sizes, or a ConfigError naming the bad one."""
    for key, value in (
        ("prompt_tokens", prompt_tokens),
        ("gen_tokens", gen_tokens),
        ("batch_size", batch_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")


@dataclass
class PhaseProfile:
    """The breakdown of one phase (prefill or decode), measured in its own loop."""

    phase: str
    steps: int  # measured iterations (profiler steps, or MLX repetitions)
    forwards_per_step: int  # 1 for prefill; gen_tokens decode steps for decode
    tokens_per_step: int  # tokens processed per step: batch x prompt, or batch x gen_tokens
    time_basis: str  # what the shares are shares of (cpu_self_time, device_kernel_time, ...)
    categories: list[dict[str, Any]]
    parts: list[dict[str, Any]]
    norm: dict[str, Any]
    what_if: dict[str, Any]
    wall_ms_per_step: list[float]  # raw uninstrumented repetitions of the same loop
    instrumented_ms_per_step: float  # the same step as measured with instrumentation on
    top_ops: list[dict[str, Any]] = field(default_factory=list)
    op_rows: list[dict[str, Any]] = field(default_factory=list)
    categories_cpu: list[dict[str, Any]] | None = None  # CPU view beside a device-time headline
    traces: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def norm_share_pct(self) -> float:
        """The headline: the norms' share of this phase's time."""
        return float(self.norm["share_pct"])

    @property
    def wall_ms_per_token(self) -> float | None:
        """Median uninstrumented step time per processed token."""
        if not self.wall_ms_per_step:
            return None
        ordered = sorted(self.wall_ms_per_step)
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        return median / self.tokens_per_step

    @property
    def overhead_pct(self) -> float | None:
        """How much slower the instrumented step ran than the plain one."""
        per_token = self.wall_ms_per_token
        if per_token is None or per_token <= 0:
            return None
        plain = per_token * self.tokens_per_step
        return 100.0 * (self.instrumented_ms_per_step - plain) / plain

    def summary(self) -> dict[str, Any]:
        """One flat JSON-safe record of the headline figures."""
        norm_cat = next(c for c in self.categories if c["category"] == NORM)
        return {
            "phase": self.phase,
            "steps": self.steps,
            "forwards_per_step": self.forwards_per_step,
            "tokens_per_step": self.tokens_per_step,
            "time_basis": self.time_basis,
            "norm_share_pct": self.norm_share_pct,
            "norm_share_pct_median_step": self.norm.get("share_pct_median_step"),
            "norm_time_ms": norm_cat["time_ms"],
            "norm_calls_per_step": self.norm["calls_per_step"],
            "norm_ops_per_step": self.norm["ops_per_step"],
            "norm_ops_per_call": self.norm["ops_per_call"],
            "norm_median_call_us": self.norm.get("median_call_us"),
            "norm_median_framework_us": self.norm.get("median_framework_us"),
            "norm_kernels_per_step": self.norm["kernels_per_step"],
            "wall_ms_per_step": list(self.wall_ms_per_step),
            "wall_ms_per_token": self.wall_ms_per_token,
            "instrumented_ms_per_step": self.instrumented_ms_per_step,
            "overhead_pct": self.overhead_pct,
            "ms_per_token_without_norm": self.what_if["ms_per_token_without_norm"],
            "max_speedup_from_norm": self.what_if["max_speedup_from_norm"],
            "what_if_meaning": self.what_if["meaning"],
            **{
                f"{c['category'].replace('/', '_')}_share_pct": c["share_pct"]
                for c in self.categories
            },
            **{f"{k}_trace": v for k, v in self.traces.items()},
            "notes": list(self.notes),
        }


@dataclass
class ProfileResult:
    """A profile of one model, norm and backend: one `PhaseProfile` per phase."""

    backend: str
    model: str
    norm: str
    device: str
    batch_size: int
    prompt_tokens: int
    gen_tokens: int
    settings: dict[str, Any]
    phases: dict[str, PhaseProfile]

    def norm_share_pct(self, phase: str = "decode") -> float:
        """The headline norm share of one phase."""
        if phase not in self.phases:
            raise ElmbenchError(
                f"phase '{phase}' was not profiled; profiled: {', '.join(self.phases)}"
            )
        return self.phases[phase].norm_share_pct

    def to_records(self, ops: bool = True) -> list[dict[str, Any]]:
        """Flat JSON-safe records: a summary, categories, parts, top operators (and op rows)."""
        common = {
            "backend": self.backend,
            "model": self.model,
            "norm": self.norm,
            "device": self.device,
            "batch_size": self.batch_size,
            "prompt_tokens": self.prompt_tokens,
            "gen_tokens": self.gen_tokens,
        }
        records: list[dict[str, Any]] = []
        for name, ph in self.phases.items():
            head = {**common, "phase": name}
            records.append({"record": "profile_summary", **common, **ph.summary(), **self.settings})
            records += [{"record": "profile_category", **head, **c} for c in ph.categories]
            records += [{"record": "profile_part", **head, **p} for p in ph.parts]
            records += [
                {"record": "profile_top_op", **head, "rank": i + 1, **o}
                for i, o in enumerate(ph.top_ops)
            ]
            if ops:
                records += [{"record": "profile_op", **head, **r} for r in ph.op_rows]
        return records
