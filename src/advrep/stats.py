"""The statistics of the reports and of ``advrep compare``, in plain Python (no scipy at run time;
the tests check each one against scipy).

- :func:`wilson_interval`: the 95% Wilson score interval of an accuracy (every report row);
- :func:`mcnemar_exact`: the exact McNemar test of two models on the same images, from their
  per-sample robust masks: under "equally robust" each discordant image (robust for one model,
  not the other) is a fair coin, so the p-value is the two-sided binomial test of ``b`` successes
  in ``b + c`` trials at 1/2;
- :func:`t_quantile` and :func:`seed_summary`: mean ± sd over runs that differ only in their
  seed, with the 95% Student-t interval of the mean.
"""

from __future__ import annotations

import math

Z95 = 1.959964  # the standard normal's 97.5% quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (stays inside [0, 1] at 0% and 100%)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` (first model robust, second
    not) and ``c`` (the reverse): ``min(1, 2 · P(Binomial(b + c, 1/2) <= min(b, c)))``, computed in
    exact integers (1 when there is no discordant image)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail, term = 0, 1  # term = C(n, i)
    for i in range(k + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, 2 * tail / 2 ** n)


def _t_two_sided(t: float, df: int) -> float:
    """``P(|T| <= t)`` of Student's t with integer ``df`` (the finite series of Abramowitz &
    Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 1.0, 1.0
        for j in range(1, (df - 1) // 2):  # terms 2/3 c², (2·4)/(3·5) c⁴, ...
            term *= c2 * (2 * j) / (2 * j + 1)
            total += term
        return (2 / math.pi) * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    total, term = 1.0, 1.0
    for j in range(1, df // 2):  # terms 1/2 c², (1·3)/(2·4) c⁴, ...
        term *= c2 * (2 * j - 1) / (2 * j)
        total += term
    return s * total


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (``q`` in (0.5, 1)) of Student's t with integer ``df`` >= 1, by
    bisection on its distribution function (to about 1e-12)."""
    if not 0.5 < q < 1 or not isinstance(df, int) or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < q < 1 and an integer df >= 1, got q={q}, df={df}")
    target, lo, hi = 2 * q - 1, 0.0, 1.0
    while _t_two_sided(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < target else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def seed_summary(values: list[float]) -> dict:
    """``{"n", "mean", "sd", "ci95"}`` of per-seed values: the sample standard deviation and the
    95% t interval of the mean (``mean ± t_{0.975, k−1} · sd / √k``); with one value, sd and the
    interval are None."""
    k = len(values)
    if k == 0:
        raise ValueError("no values")
    mean = sum(values) / k
    if k == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = t_quantile(0.975, k - 1) * sd / math.sqrt(k)
    return {"n": k, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}
