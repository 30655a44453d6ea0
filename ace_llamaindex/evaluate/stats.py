"""Is a difference real? Paired bootstrap over queries (Efron & Tibshirani; as used in IR by Sakai, 2006)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..records.verdict import Verdict


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
