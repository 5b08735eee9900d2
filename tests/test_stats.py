"""The ratio test behind `compare`: ratio of medians, its bootstrap interval, Mann-Whitney, Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from elmbench.measure.stats import holm, min_p_value, ratio_test


def test_a_clear_shift_is_found_with_an_interval_around_the_ratio() -> None:
    rng = np.random.default_rng(3)
    base = list(100 + rng.normal(0, 2, 12))
    new = list(90 + rng.normal(0, 2, 12))
    test = ratio_test(base, new)
    assert test.ratio == pytest.approx(float(np.median(new) / np.median(base)))
    assert test.ci_low is not None and test.ci_high is not None
    assert test.ci_low < test.ratio < test.ci_high < 1.0
    assert test.p_value is not None and test.p_value < 0.001
    assert test.ci_half_width_pct is not None and 0 < test.ci_half_width_pct < 5


def test_identical_samples_are_no_difference() -> None:
    values = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02]
    test = ratio_test(values, values)
    assert test.ratio == 1.0
    assert test.p_value == pytest.approx(1.0)
    assert test.ci_low is not None and test.ci_high is not None
    assert test.ci_low < 1.0 < test.ci_high


def test_the_interval_is_reproducible() -> None:
    base, new = [1.0, 1.2, 0.9, 1.1, 1.0], [1.1, 1.3, 1.0, 1.2, 1.25]
    assert ratio_test(base, new) == ratio_test(base, new)


def test_one_value_on_a_side_has_no_test_and_few_values_cannot_be_significant() -> None:
    single = ratio_test([1.0], [2.0, 2.1])
    assert single.ratio == pytest.approx(2.05)
    assert single.p_value is None and single.ci_low is None and single.ci_half_width_pct is None
    # three against three: even a total separation cannot go below 2 / C(6, 3) = 0.1
    assert min_p_value(3, 3) == pytest.approx(0.1)
    three = ratio_test([1.0, 1.01, 1.02], [2.0, 2.01, 2.02])
    assert three.p_value is not None and three.p_value >= 0.1 - 1e-12
    assert min_p_value(10, 10) == pytest.approx(2 / math.comb(20, 10))


def test_holm_adjusts_in_rank_order_and_keeps_missing_values() -> None:
    assert holm([0.01, None, 0.04, 0.03]) == [
        pytest.approx(0.03),
        None,
        pytest.approx(0.06),
        pytest.approx(0.06),
    ]
    assert holm([0.5, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert holm([]) == []
