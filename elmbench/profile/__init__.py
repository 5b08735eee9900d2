"""Where the time goes: the throughput loop under `torch.profiler` (or staged MLX timing),
broken down by category and model part, with the norm share as the headline.

This module holds the framework-free result types; `torch_profile` and `mlx_profile` fill them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from elmbench.errors import ConfigError, ElmbenchError

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

    def record_fields(self) -> dict[str, Any]:
        """The fields of this phase's `ProfileRecord` (all but the case and its context), as JSON.

        Times per step are the profiled totals over `steps`; the what-if is the decode time with
        the norms' measured share removed.
        """
        steps = max(self.steps, 1)
        norm_keys = (
            "share_pct", "time_ms", "calls_per_step", "share_pct_median_step", "ops_per_step",
            "leaf_ops_per_step", "ops_per_call", "kernels_per_step", "median_call_us",
            "median_framework_us",
        )  # fmt: skip

        def timed(rows: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
            return [{**row, "ms_per_step": row["time_ms"] / steps} for row in rows or []]

        return {
            "steps": self.steps,
            "forwards_per_step": self.forwards_per_step,
            "tokens_per_step": self.tokens_per_step,
            "time_basis": self.time_basis,
            "norm_share": {k: self.norm.get(k) for k in norm_keys},
            "categories": timed(self.categories),
            "categories_cpu": timed(self.categories_cpu),
            "parts": timed(self.parts),
            "wall_ms_per_step": list(self.wall_ms_per_step),
            "instrumented_ms_per_step": self.instrumented_ms_per_step,
            "ms_per_token_without_norm": self.what_if["ms_per_token_without_norm"],
            "max_speedup_from_norm": self.what_if["max_speedup_from_norm"],
            "top_ops": [{"rank": i + 1, **op} for i, op in enumerate(self.top_ops)],
            "traces": dict(self.traces),
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

    def phase_fields(self) -> dict[str, dict[str, Any]]:
        """Each phase's record fields (see `PhaseProfile.record_fields`), with the settings."""
        return {
            name: {
                **ph.record_fields(),
                "settings": dict(self.settings),
                "framework_device": self.device,
            }
            for name, ph in self.phases.items()
        }

    def op_rows(self) -> list[dict[str, Any]]:
        """Every phase's raw operator rows (part, operator, calls, times), for the CSV."""
        return [{"phase": name, **row} for name, ph in self.phases.items() for row in ph.op_rows]
