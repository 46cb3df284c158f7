"""Confidence intervals over users and paired differences between methods (bootstrap, numpy only).

Values come per row (a user's accuracy 0/1, or a cold-start row's reciprocal rank); resampling *users*
keeps a user's rows together. A metric is the plain mean over rows, as the jobs report it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RESAMPLES = 10_000


@lru_cache(maxsize=8)
def _resamples(n: int, seed: int, resamples: int) -> np.ndarray:
    """(resamples, n) user indices, each row one bootstrap sample of the n users (cached: every method of a
    table is resampled alike)."""
    return np.random.default_rng(seed).integers(0, n, (resamples, n), dtype=np.int32)


def _per_user(values: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, inverse = np.unique(users, return_inverse=True)
    return np.bincount(inverse, weights=values), np.bincount(inverse).astype(np.float64)


def _boot(sums: np.ndarray, counts: np.ndarray, seed: int, resamples: int) -> np.ndarray:
    picks = _resamples(len(sums), seed, resamples)
    return sums[picks].sum(axis=1) / counts[picks].sum(axis=1)


def bootstrap_ci(values, users, seed: int = 0, level: float = 0.95, resamples: int = RESAMPLES) -> dict:
    """{value, lo, hi, users}: the row mean and its percentile CI from resampling users."""
    sums, counts = _per_user(np.asarray(values, dtype=np.float64), np.asarray(users))
    lo, hi = np.quantile(_boot(sums, counts, seed, resamples), [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(sums.sum() / counts.sum()), "lo": float(lo), "hi": float(hi), "users": len(sums)}


def paired_difference(a, b, users, seed: int = 0, level: float = 0.95, resamples: int = RESAMPLES) -> dict:
    """a - b on the same rows: {diff, lo, hi, p, significant}; significant when the CI excludes 0; p is
    the two-sided bootstrap p-value (twice the share of resamples on the far side of 0)."""
    d, counts = _per_user(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), np.asarray(users))
    stats = _boot(d, counts, seed, resamples)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(float(np.mean(stats <= 0)), float(np.mean(stats >= 0))))
    return {"diff": float(d.sum() / counts.sum()), "lo": float(lo), "hi": float(hi), "p": p,
            "significant": bool(lo > 0 or hi < 0)}


def format_ci(r: dict, digits: int = 3) -> str:
    return f"{r['value']:.{digits}f} [{r['lo']:.{digits}f}, {r['hi']:.{digits}f}]"


def format_diff(r: dict, digits: int = 3) -> str:
    mark = "*" if r["significant"] else ""
    return f"{r['diff']:+.{digits}f} [{r['lo']:+.{digits}f}, {r['hi']:+.{digits}f}]{mark}"
