"""Measurement building blocks: the timing protocol, statistics, bandwidth probes, figures.

Nothing here prints or imports torch/mlx at import time; results are records.
"""
