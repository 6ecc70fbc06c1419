"""Drift watch: have the inputs moved away from the images the model was calibrated on?

Compares recent image scores with a reference sample of scores on known-normal images (the
calibration normals) with two numpy-only statistics:

- Population stability index (PSI): the reference is cut into ``bins`` equal-count bins at its
  quantiles; PSI = sum over bins of (c - r) * ln(c / r), r and c the reference and recent shares
  (floored at ``PSI_FLOOR`` so an empty bin stays finite). Credit-risk practice, which coined it,
  reads < 0.1 as stable, 0.1-0.25 as a moderate shift and > 0.25 as a major shift.
- Two-sample Kolmogorov-Smirnov test: D = the largest gap between the two empirical CDFs; the
  p-value from the asymptotic Kolmogorov distribution with Stephens' small-sample correction
  (Stephens 1970, as in Press et al., Numerical Recipes, 14.3).

PSI alone over-reads small samples: with n reference and m recent scores from the same
distribution, n_eff * PSI (n_eff = nm / (n + m)) is close to chi-square with bins - 1 degrees of
freedom, so PSI's noise floor is about (bins - 1) / n_eff (0.09 for 200 vs 200 at 10 bins). A
shift is therefore called only when it is both large (PSI) and unlikely under no change (the PSI
chi-square p-value or the KS p-value below ``ALPHA``).

A shift says the recent inputs do not score like the calibration normals: a new scanner or
protocol, another population, another decoding path, or simply more abnormal cases. It does not
say which; the report names the direction (scores higher or lower) and the sizes.

:func:`compare_files` compares the scores of result records with a calibration file's.
:class:`ScoreWindow` keeps the most recent image scores of a running scorer (bounded memory).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ddad_edge.runtime.score_records import (
    ScoreRecordError,
    read_reference_scores,
    read_score_records,
)

PSI_FLOOR = 1e-4
"""Smallest bin share used in the PSI (keeps ln finite when a bin is empty)."""
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
ALPHA = 0.01
"""Significance level of the KS and PSI tests."""
MIN_SAMPLES = 30
"""Fewer recent (or reference) scores than this give no verdict: the statistics are too noisy."""


def _finite_1d(values: Iterable[float] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, np.float64)
    a = a.reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} scores contain NaN or infinite values")
    return a


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (1-D float arrays).

    Bins are the reference's quantiles (ties merged, so fewer bins when the reference repeats
    values); the outer bins are open-ended.
    """
    ref = _finite_1d(reference, "reference")
    cur = _finite_1d(current, "current")
    if ref.size == 0 or cur.size == 0:
        raise ValueError("PSI needs at least one reference and one current score")
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1)
    rs = np.maximum(r / ref.size, PSI_FLOOR)
    cs = np.maximum(c / cur.size, PSI_FLOOR)
    return float(np.sum((cs - rs) * np.log(cs / rs)))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution: 2 * sum_k (-1)^(k-1) exp(-2 k^2 x^2)."""
    if x <= 0.0:
        return 1.0
    if x < 0.2:  # the alternating series converges slowly there, and the value is 1 to 1e-20
        return 1.0
    k = np.arange(1, 101, dtype=np.float64)
    terms = (-1.0) ** (k - 1) * np.exp(-2.0 * k * k * x * x)
    return float(min(1.0, max(0.0, 2.0 * terms.sum())))


def ks_2samp(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS test: (D, asymptotic two-sided p-value with Stephens' correction)."""
    ref = np.sort(_finite_1d(reference, "reference"))
    cur = np.sort(_finite_1d(current, "current"))
    if ref.size == 0 or cur.size == 0:
        raise ValueError("the KS test needs at least one reference and one current score")
    grid = np.concatenate([ref, cur])
    cdf_r = np.searchsorted(ref, grid, side="right") / ref.size
    cdf_c = np.searchsorted(cur, grid, side="right") / cur.size
    d = float(np.max(np.abs(cdf_r - cdf_c)))
    en = math.sqrt(ref.size * cur.size / (ref.size + cur.size))
    return d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for chi-square with ``dof`` degrees of freedom (Wilson-Hilferty approximation)."""
    if x <= 0.0:
        return 1.0
    v = 2.0 / (9.0 * dof)
    z = ((x / dof) ** (1.0 / 3.0) - (1.0 - v)) / math.sqrt(v)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def psi_pvalue(value: float, n_reference: int, n_current: int, bins: int = 10) -> float:
    """P-value of a PSI under no change: n_eff * PSI ~ chi-square(bins - 1), n_eff = nm/(n+m)."""
    n_eff = n_reference * n_current / (n_reference + n_current)
    return chi2_sf(value * n_eff, max(1, bins - 1))


@dataclass
class DriftReport:
    """The comparison of one score's recent values with its reference.

    verdict: "stable", "moderate shift", "inputs moved" or "too few scores".
    direction: "higher" / "lower" (recent median vs reference median) or "" when stable.
    """

    score: str
    n_reference: int
    n_current: int
    psi: float
    psi_p: float
    ks_d: float
    ks_p: float
    median_reference: float
    median_current: float
    verdict: str
    direction: str
    message: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _verdict(p: float, psi_p: float, ks_p: float, n_ref: int, n_cur: int) -> str:
    if min(n_ref, n_cur) < MIN_SAMPLES:
        return "too few scores"
    if min(psi_p, ks_p) >= ALPHA or p <= PSI_MODERATE:
        return "stable"
    return "inputs moved" if p > PSI_MAJOR else "moderate shift"


def compare(
    reference: np.ndarray, current: np.ndarray, score: str = "inter", bins: int = 10
) -> DriftReport:
    """Compare recent scores with reference (calibration-normal) scores of the same image score.

    Verdict: when the change is significant (PSI chi-square p or KS p < ``ALPHA``), "inputs
    moved" for PSI > 0.25 and "moderate shift" for PSI > 0.1; "stable" otherwise; "too few
    scores" under ``MIN_SAMPLES`` on either side (the statistics are still reported).
    """
    ref = _finite_1d(reference, "reference")
    cur = _finite_1d(current, "current")
    p = psi(ref, cur, bins)
    d, ks_p = ks_2samp(ref, cur)
    p_p = psi_pvalue(p, ref.size, cur.size, bins)
    med_r, med_c = float(np.median(ref)), float(np.median(cur))
    verdict = _verdict(p, p_p, ks_p, ref.size, cur.size)
    direction = "" if verdict == "stable" else ("higher" if med_c > med_r else "lower")
    if verdict == "too few scores":
        message = (
            f"{score}: only {cur.size} recent and {ref.size} reference scores "
            f"(need {MIN_SAMPLES} each); no verdict"
        )
    elif verdict == "stable":
        message = f"{score}: recent scores look like the calibration normals"
    else:
        message = (
            f"{score}: {verdict}: recent scores run {direction} than the calibration normals "
            f"(median {med_c:.4g} vs {med_r:.4g}); check the source of the images "
            "(scanner, protocol, population, decoding) before trusting decisions"
        )
    return DriftReport(
        score,
        int(ref.size),
        int(cur.size),
        p,
        p_p,
        d,
        ks_p,
        med_r,
        med_c,
        verdict,
        direction,
        message,
    )


def compare_files(
    results: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    scores: Sequence[str] | None = None,
    last: int = 0,
) -> list[DriftReport]:
    """:func:`compare` per image score, between result records (``score --json`` lines, or a
    folder of them; ``runtime.score_records``) and a reference file (a calibration file's
    normal scores, or the normals' own result records).

    Args:
        scores: the image scores to compare; default every score both files have.
        last: > 0: only the last ``last`` scored records of ``results``.

    Raises:
        ScoreRecordError: a file cannot be read, or a score is not in both.
    """
    recent = read_score_records(results)
    ref = read_reference_scores(reference)
    names = list(scores or [n for n in ref if n in recent])
    missing = [n for n in names if n not in recent or n not in ref]
    if missing or not names:
        raise ScoreRecordError(
            f"score(s) {', '.join(missing) or 'in common'} not found in both {results} "
            f"(has {', '.join(recent)}) and {reference} (has {', '.join(ref)})"
        )
    return [compare(ref[n], recent[n][-last:] if last else recent[n], n) for n in names]


class ScoreWindow:
    """The most recent image scores of a scorer, per score name (a bounded FIFO).

    Args:
        size: how many recent scores to keep per name (older ones are dropped).
    """

    def __init__(self, size: int = 5000) -> None:
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self._values: dict[str, deque[float]] = {}

    def add(self, scores: Mapping[str, float]) -> None:
        """Record one image's scores ({name: value}); non-finite values are ignored."""
        for name, v in scores.items():
            if v is not None and math.isfinite(v):
                self._values.setdefault(name, deque(maxlen=self.size)).append(float(v))

    def values(self, name: str) -> np.ndarray:
        """float64 [n] of the kept scores of ``name``, oldest first (empty if none)."""
        return np.asarray(self._values.get(name, ()), dtype=np.float64)

    def __len__(self) -> int:
        return max((len(v) for v in self._values.values()), default=0)
