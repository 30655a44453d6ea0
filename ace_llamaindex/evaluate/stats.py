"""Is a difference real? Paired bootstrap over queries (Efron & Tibshirani; as used in IR by Sakai, 2006)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Verdict(StrEnum):
    """What a comparison says about a candidate against a baseline. A ``str``: cards and JSON hold the plain words,
    and a card written before this enum compares equal."""

    BETTER = "better"
    WORSE = "worse"
    NO_CLEAR_DIFFERENCE = "no clear difference"
    CANT_TELL = "can't tell"  # too few queries of the kind that decides
    NOT_MEASURED = "not measured"  # no validation queries

    @classmethod
    def allows(cls, verdict: str | None) -> bool:
        """Whether a recorded verdict lets a model replace its baseline: measured better, or trained without
        validation on purpose (``not measured ...``)."""
        return verdict == cls.BETTER or str(verdict).startswith(cls.NOT_MEASURED)


def interval(delta: float, ci: Sequence[float]) -> str:
    """``+0.123 [+0.045, +0.201]``: a difference and its interval, as every report writes it."""
    return f"{delta:+.3f} {ci_text(ci)}"


def ci_text(ci: Sequence[float]) -> str:
    """``[+0.045, +0.201]``: an interval alone (a table's own column), as :func:`interval` writes it."""
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


@dataclass
class PairedDelta:
    """Mean difference candidate - baseline over the same queries, its 95% interval and a one-sided p-value."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # fraction of resamples where the candidate is not better

    @property
    def verdict(self) -> Verdict:
        if self.ci_low > 0:
            return Verdict.BETTER
        if self.ci_high < 0:
            return Verdict.WORSE
        return Verdict.NO_CLEAR_DIFFERENCE


def paired_bootstrap(baseline: np.ndarray, candidate: np.ndarray, resamples: int = 5000, seed: int = 0,
                     confidence: float = 0.95) -> PairedDelta:
    """Resample queries with replacement; the percentile interval of the mean per-query difference."""
    diff = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    if diff.size == 0:
        return PairedDelta(0.0, 0.0, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return PairedDelta(
        delta=float(diff.mean()),
        ci_low=float(np.quantile(means, alpha)),
        ci_high=float(np.quantile(means, 1 - alpha)),
        p_value=float((means <= 0).mean()),
    )


def weighted_paired_bootstrap(strata: list[tuple[float, np.ndarray, np.ndarray]], resamples: int = 5000, seed: int = 0,
                              confidence: float = 0.95) -> PairedDelta:
    """The difference of a weighted mean over strata ``(weight, baseline, candidate)``, each stratum resampled on
    its own (a stratified bootstrap): what a mix of query kinds in those proportions would gain."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    point = 0.0
    for weight, baseline, candidate in strata:
        diff = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
        point += weight * float(diff.mean())
        total += weight * diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return PairedDelta(point, float(np.quantile(total, alpha)), float(np.quantile(total, 1 - alpha)), float((total <= 0).mean()))
