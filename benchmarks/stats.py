"""Pure-numpy statistics: timing summaries, rank correlation, paired bootstrap (deterministic;
the bootstrap takes an explicit seed)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ddad_edge.benchmarks.schema import TimeSummary
from ddad_edge.runtime.metrics import roc_auc

PERCENTILES: tuple[int, ...] = (50, 95, 99)


def summarize_times(samples_s: np.ndarray | list[float]) -> TimeSummary:
    """Summary (ms) of R >= 1 timed durations ``samples_s`` (float [R], seconds); percentiles
    interpolate linearly between order statistics, so with few repetitions p99 ~ the maximum."""
    s = np.asarray(samples_s, dtype=np.float64).ravel() * 1e3
    if s.size == 0:
        raise ValueError("no timing samples")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("timing samples must be finite and >= 0")
    out = {
        "n": int(s.size),
        "mean_ms": float(s.mean()),
        "std_ms": float(s.std()),
        "min_ms": float(s.min()),
        "max_ms": float(s.max()),
    }
    for p in PERCENTILES:
        out[f"p{p}_ms"] = float(np.percentile(s, p))
    return out


def paired_bootstrap_delta(
    labels: np.ndarray,
    scores_ref: np.ndarray,
    scores_new: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    metric: Callable[[np.ndarray, np.ndarray], float] = roc_auc,
) -> dict[str, float]:
    """Paired bootstrap of metric(labels, new) - metric(labels, ref) over N images (labels int
    [N], scores float [N]): each of ``n_boot`` resamples draws N image indices with replacement
    (seeded) and evaluates BOTH score vectors on them, so the interval reflects the difference
    between the two scorers, not each one's sampling noise; single-class resamples are redrawn.
    Returns {"delta" (on all images), "lo", "hi" (two-sided ``level`` percentile interval),
    "n_boot"}."""
    y = np.asarray(labels).astype(np.int64).ravel()
    a = np.asarray(scores_ref, dtype=np.float64).ravel()
    b = np.asarray(scores_new, dtype=np.float64).ravel()
    if not (y.shape == a.shape == b.shape):
        raise ValueError("labels and both score vectors must have the same length")
    rng = np.random.default_rng(seed)
    n = y.size
    deltas = np.empty(n_boot, dtype=np.float64)
    i = 0
    while i < n_boot:
        idx = rng.integers(0, n, n)
        yi = y[idx]
        if yi.min() == yi.max():
            continue
        deltas[i] = metric(yi, b[idx]) - metric(yi, a[idx])
        i += 1
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(deltas, [alpha, 1.0 - alpha])
    return {
        "delta": float(metric(y, b) - metric(y, a)),
        "lo": float(lo),
        "hi": float(hi),
        "n_boot": int(n_boot),
    }
