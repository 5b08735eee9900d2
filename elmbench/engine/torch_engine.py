"""The engine applied to a loaded torch model: what it can serve, what it did, and why not.

`--kernels elmbench` asks for it. On the CPU it moves the weights into transparent huge pages and
routes decode's few-row linears (every bias-free `nn.Linear`, and OpenELM's tied head) through the
streaming GEMV where a timed probe finds it faster; OpenELM's cached attention goes through the
attention kernel. A comparison model gets the GEMV and huge pages; its attention stays
transformers' own, and the record says so. Anything that does not apply is named with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from elmbench.engine import ENGINE, KERNELS, STOCK, unsupported

__all__ = ["ENGINE", "KERNELS", "STOCK", "TorchEngine", "unsupported"]


@dataclass
class TorchEngine:
    """The engine's state on one model: the layout (None where it did not apply) and notes."""

    huge_pages: dict[str, Any]
    layout: Any = None  # engine.cpu_layout.CpuLayout
    notes: list[str] = field(default_factory=list)

    @classmethod
    def apply(cls, model: nn.Module, comparison: bool) -> TorchEngine:
        """Apply every part of the engine that serves `model` (on the CPU); record the rest."""
        from elmbench.engine import cpu_kernels, cpu_layout, hugepages

        huge = hugepages.move_parameters(model)
        engine = cls(huge)
        reason = cpu_layout.applies(model)
        if reason is not None:
            engine.notes.append(f"GEMV and attention kernels not applied: {reason}")
            return engine
        try:
            engine.layout = cpu_layout.apply_cpu_layout(model)
        except cpu_kernels.KernelUnavailable as exc:
            engine.notes.append(
                f"GEMV and attention kernels not applied: they did not build ({exc})"
            )
            return engine
        if comparison:
            engine.notes.append(
                "attention: transformers' own (the attention kernel serves OpenELM's static cache)"
            )
        return engine

    def prepare(self, batch_size: int) -> None:
        """Probe the GEMV against `F.linear` for this batch size (once per size)."""
        if self.layout is not None:
            self.layout.prepare(batch_size)

    def describe(self) -> dict[str, Any]:
        """What the engine did, for records."""
        return {
            "huge_pages": self.huge_pages,
            "cpu_layout": None if self.layout is None else self.layout.describe(),
            "notes": list(self.notes),
        }
