"""Image-level ranking metrics in numpy (AUC, AP, ROC curve), shared by evaluation and parity."""

from __future__ import annotations

import numpy as np


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("AUC needs both normal and abnormal samples")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    return y, s


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of values [N], ties get the mean of their ranks. Returns float64 [N]."""
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    _, first, counts = np.unique(v[order], return_index=True, return_counts=True)
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors [N] (Pearson correlation of average ranks).

    Returns NaN when either vector is constant (the correlation is undefined).
    """
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.shape != rb.shape:
        raise ValueError(f"score vectors differ in length: {ra.shape} vs {rb.shape}")
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), via the Mann-Whitney U statistic."""
    y, s = _check(labels, scores)
    ranks = average_ranks(s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, (0,0) to (1,1)."""
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (len(y) - y.sum())]
    return fpr, tpr


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n (no interpolation)."""
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def rates_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false positive rate, true positive rate) of the rule ``score > threshold`` = abnormal."""
    y, s = _check(labels, scores)
    flagged = s > threshold
    return float(flagged[y == 0].mean()), float(flagged[y == 1].mean())
