"""The report's and compare's statistics against scipy (a test-only dependency): Wilson
intervals, the exact McNemar test, Student-t quantiles and the seed summary."""

import math

import pytest
from scipy import stats as sp

from advrep import stats


@pytest.mark.parametrize("correct,n", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (437, 1000), (9999, 10000),
                                       (1, 200), (50, 100)])
def test_wilson_interval_equals_scipys(correct, n):
    lo, hi = sp.binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    ours = stats.wilson_interval(correct, n)
    assert ours == pytest.approx((lo, hi), abs=1e-7)


def test_wilson_interval_by_hand():
    # 5 of 10: centre 0.5, half-width z·sqrt(0.025 + z²/400)/(1 + z²/10)
    z = stats.Z95
    half = z * math.sqrt(0.025 + z * z / 400) / (1 + z * z / 10)
    assert stats.wilson_interval(5, 10) == pytest.approx((0.5 - half, 0.5 + half))
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (1, 0), (3, 3), (2, 9), (15, 4), (0, 25), (120, 95),
                                 (400, 460), (1, 2000)])
def test_mcnemar_exact_equals_scipys_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else sp.binomtest(b, b + c, 0.5).pvalue
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_by_hand():
    # 0 vs 3 discordant: 2 · (1/2)^3 = 0.25; 1 vs 4: 2 · (1 + 5)/32 = 0.375
    assert stats.mcnemar_exact(0, 3) == 0.25
    assert stats.mcnemar_exact(4, 1) == 0.375
    assert stats.mcnemar_exact(5, 5) == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 29, 30, 100])
def test_t_quantile_equals_scipys(df):
    for q in (0.9, 0.975, 0.995):
        assert stats.t_quantile(q, df) == pytest.approx(sp.t.ppf(q, df), rel=1e-9)


def test_seed_summary():
    values = [0.40, 0.44, 0.45]
    s = stats.seed_summary(values)
    mean, sd = sum(values) / 3, math.sqrt(sum((v - sum(values) / 3) ** 2 for v in values) / 2)
    lo, hi = sp.t.interval(0.95, 2, loc=mean, scale=sd / math.sqrt(3))
    assert s["n"] == 3 and s["mean"] == pytest.approx(mean) and s["sd"] == pytest.approx(sd)
    assert s["ci95"] == pytest.approx([lo, hi], rel=1e-9)
    assert stats.seed_summary([0.5]) == {"n": 1, "mean": 0.5, "sd": None, "ci95": None}
