"""The one statistics helper: median, spread and a distribution-free interval of the median.

Benchmark repetitions are few and not normal (a shared machine adds long tails), so the interval
of the median comes from order statistics: [x_(k), x_(n+1-k)] covers the true median with
probability 1 - 2 P(Binomial(n, 1/2) < k), whatever the distribution. With fewer than six values
no pair of order statistics reaches 95%; the interval is then [min, max] and says its own level.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95


def median_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(low, high, achieved level) of the order-statistic interval of the median.

    The narrowest interval whose coverage is at least `level`; where none reaches it, the widest
    one ([min, max]) with the coverage it has.
    """
    from scipy.stats import binom

    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("the interval of the median needs at least one value")
    if n == 1:
        return ordered[0], ordered[0], 0.0
    best = (ordered[0], ordered[-1], 1.0 - 2.0 * float(binom.cdf(0, n, 0.5)))
    for k in range(2, n // 2 + 1):
        coverage = 1.0 - 2.0 * float(binom.cdf(k - 1, n, 0.5))
        if coverage < level:
            break
        best = (ordered[k - 1], ordered[n - k], coverage)
    return best


@dataclass(frozen=True)
class Summary:
    """Statistics of one set of raw values (any unit), with the interval of the median."""

    n: int
    median: float
    mean: float
    stdev: float | None  # sample standard deviation; None below two values
    min: float
    max: float
    ci_low: float
    ci_high: float
    ci_level: float  # the coverage the interval reaches (see median_interval)

    @classmethod
    def of(cls, values: Sequence[float], level: float = LEVEL) -> Summary:
        """Statistics of a non-empty sequence of finite values."""
        if not values:
            raise ValueError("statistics need at least one value")
        low, high, reached = median_interval(values, level)
        stdev = statistics.stdev(values) if len(values) > 1 else None
        return cls(
            n=len(values),
            median=statistics.median(values),
            mean=statistics.fmean(values),
            stdev=stdev,
            min=min(values),
            max=max(values),
            ci_low=low,
            ci_high=high,
            ci_level=reached,
        )

    @property
    def cv(self) -> float | None:
        """Coefficient of variation (stdev / mean); None without a stdev or with a zero mean."""
        if self.stdev is None or self.mean == 0:
            return None
        return self.stdev / abs(self.mean)

    @property
    def ci_half_width_pct(self) -> float | None:
        """Half the interval's width as a share of the median (the precision reached), in %."""
        if self.ci_level == 0.0 or self.median == 0 or not math.isfinite(self.median):
            return None
        return 50.0 * (self.ci_high - self.ci_low) / abs(self.median)
