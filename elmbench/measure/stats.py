"""The one statistics helper: median, spread and a distribution-free interval of the median;
the ratio of two runs' medians with its interval and a rank test, for `compare`.

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
from typing import Any

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


@dataclass(frozen=True)
class RatioTest:
    """Two independent samples of a figure: the ratio of medians (new / base), its interval, and
    a Mann-Whitney U test of whether the two come from the same distribution."""

    n_base: int
    n_new: int
    ratio: float  # median(new) / median(base)
    ci_low: float | None  # bootstrap percentile interval of the ratio (None below 2 values each)
    ci_high: float | None
    ci_level: float
    p_value: float | None  # two-sided Mann-Whitney U (None below 2 values each)
    min_p_value: float | None  # the smallest p-value these sample sizes can give at all

    @property
    def ci_half_width_pct(self) -> float | None:
        """The interval's larger distance from the ratio, in % of the ratio (log scale)."""
        if self.ci_low is None or self.ci_high is None or self.ratio <= 0 or self.ci_low <= 0:
            return None
        wider = max(math.log(self.ci_high / self.ratio), math.log(self.ratio / self.ci_low))
        return 100.0 * math.expm1(wider)


BOOTSTRAP_RESAMPLES = 4999
BOOTSTRAP_SEED = 0  # fixed: the same two runs always give the same interval


def ratio_test(base: Sequence[float], new: Sequence[float], level: float = LEVEL) -> RatioTest:
    """Ratio of medians with a bootstrap interval, and the two-sided Mann-Whitney U p-value.

    The repetitions of each run are resampled independently (the runs are not paired); the
    interval is the percentile interval of the resampled ratios, seeded so that it is
    reproducible. The test uses the exact U distribution where it can (small samples, no ties).
    """
    import numpy as np
    from scipy.stats import bootstrap, mannwhitneyu

    if not base or not new:
        raise ValueError("a ratio test needs at least one value on each side")
    ratio = float(statistics.median(new)) / float(statistics.median(base))
    if len(base) < 2 or len(new) < 2:
        return RatioTest(len(base), len(new), ratio, None, None, level, None, None)

    def median_ratio(y: Any, x: Any, axis: int = -1) -> Any:
        return np.median(y, axis=axis) / np.median(x, axis=axis)

    boot = bootstrap(
        (np.asarray(new, dtype=float), np.asarray(base, dtype=float)),
        median_ratio,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        paired=False,
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    p_value = float(mannwhitneyu(new, base, alternative="two-sided").pvalue)
    return RatioTest(
        len(base), len(new), ratio, low, high, level, p_value, min_p_value(len(base), len(new))
    )


def min_p_value(n_base: int, n_new: int) -> float:
    """The smallest two-sided Mann-Whitney p-value two samples of these sizes can reach.

    All of one sample above all of the other is the most extreme ordering: 2 / C(n + m, n).
    """
    return min(1.0, 2.0 / math.comb(n_base + n_new, n_base))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None): a family of tests at one level."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    count = len(ranked)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(ranked):
        running = max(running, min(1.0, (count - rank) * p))
        adjusted[index] = running
    return adjusted
