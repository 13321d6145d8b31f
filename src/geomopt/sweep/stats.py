"""Statistics over seeds: the mean and its 95% Student-t interval.

For values ``x_1..x_n`` (one per seed) the interval is ``mean +- t_{(1+c)/2, n-1} s / sqrt(n)``
with ``s`` the sample standard deviation (``n - 1`` in the denominator) and ``t`` the Student-t
quantile with ``n - 1`` degrees of freedom. The quantile is computed here from the closed-form
CDF of Student's t for an integer number of degrees of freedom (Abramowitz & Stegun 26.7.3-4)
and inverted by bisection, so that geomopt needs no scipy; it is tested against
``scipy.stats.t.ppf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SeedStats", "band", "seed_stats", "t_quantile"]


def _t_two_sided(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with ``df`` (integer >= 1) degrees of freedom, ``t >= 0``.

    A&S 26.7.3 (odd df) and 26.7.4 (even df) with ``theta = atan(t / sqrt(df))``.
    """
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) [1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... up to c^(df-2)]
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    # (2/pi) [theta + sin(theta) cos(theta) (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ... up to c^(df-3))]
    term, total = 1.0, 1.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * math.sqrt(c2) * total)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``0.5 <= p < 1``, integer ``df >= 1``).

    Raises:
        ValueError: ``p`` outside ``[0.5, 1)`` or ``df`` not a positive integer.
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"t_quantile: df must be a positive integer, got {df!r}")
    if not 0.5 <= p < 1:
        raise ValueError(f"t_quantile: p must lie in [0.5, 1), got {p!r}")
    target = 2 * p - 1  # P(|T| <= t)
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_two_sided(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class SeedStats:
    """Mean of one quantity over seeds with its confidence interval ``[low, high]``.

    ``n = 1`` gives ``low = high = mean`` and ``std = nan`` (no interval from one seed); a non-finite
    value (a diverged run's infinite loss) gives the non-finite mean and the interval ``(-inf, inf)``.
    """

    mean: float
    low: float
    high: float
    std: float
    n: int
    values: tuple[float, ...]
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        return 0.5 * (self.high - self.low)

    def fmt(self, scale: float = 1.0, digits: int = 3, bounds: tuple[float, float] | None = None) -> str:
        """``"mean [low, high]"`` (each times ``scale``), e.g. ``"2.31 [1.9, 2.72]"``; one seed: ``"2.31 (1 seed)"``.
        ``bounds``: the quantity's range (e.g. ``(0, 1)`` for an error rate); the interval is clipped to it."""
        def g(v: float) -> str:
            return f"{v * scale:.{digits}g}"
        if self.n == 1:
            return f"{g(self.mean)} (1 seed)"
        low, high = (self.low, self.high) if bounds is None else (max(self.low, bounds[0]), min(self.high, bounds[1]))
        return f"{g(self.mean)} [{g(low)}, {g(high)}]"

    def to_dict(self) -> dict[str, float | int | list[float]]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "std": self.std, "n": self.n,
                "confidence": self.confidence, "values": list(self.values)}


def seed_stats(values: Sequence[float], confidence: float = 0.95) -> SeedStats:
    """Mean and ``confidence`` Student-t interval of ``values`` (one per seed).

    Raises:
        ValueError: no values, a NaN, or ``confidence`` outside ``(0, 1)``.
    """
    xs = tuple(float(v) for v in values)
    if not xs:
        raise ValueError("seed_stats: no values (one per seed expected)")
    if any(math.isnan(x) for x in xs):
        raise ValueError(f"seed_stats: NaN among the values {list(xs)}; record a diverged run as inf, not NaN")
    if not 0 < confidence < 1:
        raise ValueError(f"seed_stats: confidence must lie in (0, 1), got {confidence!r}")
    n = len(xs)
    if not all(math.isfinite(x) for x in xs):
        mean = sum(xs) / n if len({math.copysign(1, x) for x in xs if math.isinf(x)}) == 1 else math.nan
        return SeedStats(mean, -math.inf, math.inf, math.nan, n, xs, confidence)
    mean = math.fsum(xs) / n
    if n == 1:
        return SeedStats(mean, mean, mean, math.nan, 1, xs, confidence)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return SeedStats(mean, mean - half, mean + half, std, n, xs, confidence)


def band(curves: Sequence[Sequence[float]], confidence: float = 0.95) -> tuple[list[float], list[float], list[float]]:
    """Pointwise mean, low and high of several curves of equal length (one per seed), for a figure's band.

    Raises:
        ValueError: no curves, or curves of different lengths.
    """
    if not curves:
        raise ValueError("band: no curves")
    lengths = {len(c) for c in curves}
    if len(lengths) != 1:
        raise ValueError(f"band: the curves have different lengths {sorted(lengths)}; cut them to a common length")
    stats = [seed_stats(col, confidence) for col in zip(*curves)]
    return [s.mean for s in stats], [s.low for s in stats], [s.high for s in stats]
