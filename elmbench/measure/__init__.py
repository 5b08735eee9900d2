"""Measurement building blocks: the timing protocol, the CPU bandwidth probe, derived figures.

Nothing here prints or imports torch/mlx at import time; results are records.
"""

from elmbench.measure.membw import BandwidthResult, measure_read_bandwidth, measure_roofline
from elmbench.measure.protocol import TOTAL, Protocol, Stats, Timer, Timing, run_protocol

__all__ = [
    "TOTAL",
    "BandwidthResult",
    "Protocol",
    "Stats",
    "Timer",
    "Timing",
    "measure_read_bandwidth",
    "measure_roofline",
    "run_protocol",
]
