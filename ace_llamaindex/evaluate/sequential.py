"""A test that may be read after every query: the mixture sequential probability ratio test (mSPRT).

An online experiment's status is read again and again; a fixed-sample test read that way promotes wrong models far
more often than its alpha says. The mSPRT (Robbins, 1970; Johari, Pekelis & Walsh, "Always valid inference", 2017 —
what Optimizely's stats engine runs) mixes the likelihood ratio of a normal estimate over effects
``N(0, tau^2)``: under "no difference" the ratio is a martingale, so by Ville's inequality it ever reaches ``1/alpha``
with probability at most ``alpha``, however often it is looked at. Inverting it gives an always-valid confidence
interval (a confidence sequence). ``tau`` is the smallest effect worth detecting: the test is valid for any ``tau``,
which only decides how fast it ends for effects of that size.

Hand-written because the formula is three lines and the libraries that carry it (e.g. ``expan``, ``spotify-confidence``)
bring a dataframe stack for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .stats import Verdict

VARIANCE_FLOOR = 1e-9  # a sample whose values are all equal still has an interval of some width


@dataclass(frozen=True)
class SequentialDelta:
    """The estimated difference (challenger - champion), its always-valid interval, and the mixture likelihood ratio."""

    delta: float
    ci_low: float
    ci_high: float
    ratio: float  # the mSPRT statistic: >= 1/alpha rejects "no difference"
    alpha: float

    @property
    def decided(self) -> bool:
        return self.ratio >= 1 / self.alpha

    @property
    def verdict(self) -> Verdict:
        if not self.decided:
            return Verdict.NO_CLEAR_DIFFERENCE
        return Verdict.BETTER if self.delta > 0 else Verdict.WORSE


def msprt(delta: float, variance: float, tau: float, alpha: float = 0.05) -> SequentialDelta:
    """The mSPRT for an estimate ``delta`` whose variance is ``variance`` (e.g. ``s^2 / n``), mixing over ``N(0, tau^2)``."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if tau <= 0:
        raise ValueError(f"tau (the smallest effect worth detecting) must be positive, got {tau}")
    v, t2 = max(variance, VARIANCE_FLOOR), tau * tau
    log_ratio = 0.5 * math.log(v / (v + t2)) + delta * delta * t2 / (2 * v * (v + t2))
    half = half_width(v, tau, alpha)
    return SequentialDelta(float(delta), float(delta - half), float(delta + half), float(math.exp(min(log_ratio, 700.0))),
                           alpha)


def half_width(variance: float, tau: float, alpha: float) -> float:
    """Half the width of the always-valid interval: the set of effects the mSPRT does not reject."""
    v, t2 = max(variance, VARIANCE_FLOOR), tau * tau
    return math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))


def queries_needed(unit_variance: float, effect: float, tau: float, alpha: float, limit: int = 10**7) -> int:
    """How many units (queries) make the interval narrower than ``effect`` on each side, when one unit's variance is
    ``unit_variance``: when an effect of that size is expected to be declared."""
    effect = abs(effect)
    if effect <= 0:
        return limit
    low, high = 1, 1
    while half_width(unit_variance / high, tau, alpha) > effect:
        if high >= limit:
            return limit
        low, high = high, high * 2
    while low < high:  # the smallest n whose half width is <= effect
        mid = (low + high) // 2
        if half_width(unit_variance / mid, tau, alpha) <= effect:
            high = mid
        else:
            low = mid + 1
    return high


def one_sample(values: np.ndarray, tau: float, alpha: float = 0.05) -> SequentialDelta:
    """The mean of per-query outcomes (e.g. interleaving credit in {-1, 0, 1}) against 0."""
    values = np.asarray(values, dtype=float)
    n = values.size
    if n == 0:
        return SequentialDelta(0.0, -math.inf, math.inf, 1.0, alpha)
    return msprt(float(values.mean()), float(values.var(ddof=1) if n > 1 else 1.0) / n, tau, alpha)


def two_sample(champion: np.ndarray, challenger: np.ndarray, tau: float, alpha: float = 0.05) -> SequentialDelta:
    """The difference of means of two independent groups (a traffic split), challenger - champion."""
    a, b = np.asarray(champion, dtype=float), np.asarray(challenger, dtype=float)
    if a.size == 0 or b.size == 0:
        return SequentialDelta(0.0, -math.inf, math.inf, 1.0, alpha)
    var = (a.var(ddof=1) if a.size > 1 else 1.0) / a.size + (b.var(ddof=1) if b.size > 1 else 1.0) / b.size
    return msprt(float(b.mean() - a.mean()), float(var), tau, alpha)
