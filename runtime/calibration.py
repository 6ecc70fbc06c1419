"""Operating points: a threshold on one image score at a stated specificity (numpy only).

A DDAD score has no meaning on its own scale; a site turns it into a decision by choosing the
specificity it can live with on ITS OWN known-normal images (never images the model trained on):
the threshold is the score below which that fraction of those normals fall. Everything above the
threshold is flagged ``abnormal``. The sensitivity that threshold gives is known only where
labelled abnormal images are available; it is reported with the calibration when they are.

Threshold at specificity q on n normal scores s: the order statistic s_(ceil(q n)) (1-based), the
smallest value with at least q of the normals at or below it; ``score > threshold`` is abnormal,
so the specificity on the calibration normals is ceil(q n) / n >= q.

Intervals: percentile bootstrap (normals and abnormals resampled with replacement, each
separately, ``n_boot`` times, seeded): the threshold's interval from the resampled normals, the
sensitivity's from the resampled abnormals scored against each resample's threshold, so it
carries the threshold's uncertainty too.

A calibration file is bound to one bundle by the bundle's digest (:func:`bundle_digest`) and to
one score; :func:`load_calibration` refuses it for another bundle.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ddad_edge.runtime.fileio import atomic_write_text
from ddad_edge.runtime.scores import ASR_SCORE

FORMAT = "ddad-edge-calibration"
FORMAT_VERSION = 1
DEFAULT_SPECIFICITIES = (0.90, 0.95, 0.99)
DEFAULT_SCORE = "inter"
"""The primary image score: inter for AE; for AE-U the runtime's inter is already the refined
one (inter / sigma, ``runtime/scores.py``)."""


class CalibrationError(ValueError):
    """A calibration cannot be computed or used (too few normals, another bundle, bad file)."""


@dataclass(frozen=True)
class OperatingPoint:
    """One decision rule: ``score > threshold`` is abnormal.

    specificity: the target specificity on the calibration normals (0-1).
    score: the image score it applies to ("inter", ...).
    threshold: in that score's units.
    """

    specificity: float
    score: str
    threshold: float

    def flag(self, scores: dict[str, float]) -> str:
        """ "abnormal" or "normal" for one input's image scores."""
        return "abnormal" if scores[self.score] > self.threshold else "normal"

    def to_json(self) -> dict[str, Any]:
        return {"specificity": self.specificity, "score": self.score, "threshold": self.threshold}


def bundle_digest(manifest: dict[str, Any]) -> str:
    """The bundle's identity: its ``manifest_sha256`` (the manifest's digest of itself, which
    covers every file's sha256; ``runtime/manifest.py``). Older bundles without one: the sha256
    of their file list (name -> sha256, canonical JSON), which also changes with any file."""
    if manifest.get("manifest_sha256"):
        return str(manifest["manifest_sha256"])
    files = {name: entry["sha256"] for name, entry in sorted(manifest.get("files", {}).items())}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def threshold_at(normals: np.ndarray, specificity: float) -> np.ndarray:
    """Threshold(s) at a specificity: the ceil(q n)-th smallest normal score.

    Args:
        normals: float [n] or [B, n] (one row per bootstrap resample).
        specificity: q in (0, 1).

    Returns:
        float64 scalar array or [B].
    """
    s = np.sort(np.asarray(normals, dtype=np.float64), axis=-1)
    n = s.shape[-1]
    k = min(n, max(1, math.ceil(specificity * n - 1e-9)))
    return s[..., k - 1]


def _interval(values: np.ndarray, level: float) -> list[float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [a, 1.0 - a])
    return [float(lo), float(hi)]


def _point(
    normals: np.ndarray,
    abnormals: np.ndarray | None,
    q: float,
    boot_n: np.ndarray,
    boot_a: np.ndarray | None,
    level: float,
) -> dict[str, Any]:
    """One operating point's threshold, achieved specificity, sensitivity and intervals."""
    t = float(threshold_at(normals, q))
    t_boot = threshold_at(boot_n, q)
    out: dict[str, Any] = {
        "specificity": q,
        "threshold": t,
        "threshold_interval": _interval(t_boot, level),
        "specificity_on_normals": float(np.mean(normals <= t)),
    }
    if abnormals is not None and boot_a is not None:
        sens_boot = np.mean(boot_a > t_boot[:, None], axis=1)
        out["sensitivity"] = float(np.mean(abnormals > t))
        out["sensitivity_interval"] = _interval(sens_boot, level)
    return out


def calibrate(
    normals: np.ndarray,
    abnormals: np.ndarray | None = None,
    *,
    specificities: tuple[float, ...] = DEFAULT_SPECIFICITIES,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    held_out: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Operating points from image scores of known normals (and labelled abnormals).

    Args:
        normals: float [n] scores of known-normal images not used for training (n >= 20).
        abnormals: float [m] scores of labelled abnormal images, or None.
        specificities: target specificities, each in (0, 1).
        n_boot: bootstrap resamples.
        level: interval coverage (0.95 = 2.5th-97.5th percentiles).
        seed: bootstrap RNG seed.
        held_out: float [k] scores of other known normals, not used to set the threshold.

    Returns:
        One dict per specificity: specificity, threshold, threshold_interval [lo, hi],
        specificity_on_normals; sensitivity, sensitivity_interval when abnormals are given;
        specificity_held_out (the share of ``held_out`` at or below the threshold) when given.
    """
    s0 = np.asarray(normals, dtype=np.float64).ravel()
    s1 = None if abnormals is None else np.asarray(abnormals, dtype=np.float64).ravel()
    if len(s0) < 20:
        raise CalibrationError(f"{len(s0)} normal images: at least 20 are needed")
    if not np.all(np.isfinite(s0)) or (s1 is not None and not np.all(np.isfinite(s1))):
        raise CalibrationError("scores contain NaN or infinite values")
    if s1 is not None and len(s1) == 0:
        s1 = None
    for q in specificities:
        if not 0.0 < q < 1.0:
            raise CalibrationError(f"specificity must lie in (0, 1), got {q}")
    rng = np.random.default_rng(seed)
    boot_n = s0[rng.integers(0, len(s0), (n_boot, len(s0)))]
    boot_a = None if s1 is None else s1[rng.integers(0, len(s1), (n_boot, len(s1)))]
    points = [_point(s0, s1, float(q), boot_n, boot_a, level) for q in specificities]
    if held_out is not None and len(held_out):
        h = np.asarray(held_out, dtype=np.float64).ravel()
        for p in points:
            p["specificity_held_out"] = float(np.mean(h <= p["threshold"]))
    return points


def calibration_record(
    manifest: dict[str, Any],
    points: list[dict[str, Any]],
    *,
    score: str,
    normals: dict[str, Any],
    abnormals: dict[str, Any] | None,
    bootstrap: dict[str, Any],
    default_specificity: float | None = None,
    normal_scores: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The calibration file's content for a bundle (see :func:`write_calibration`).

    normals / abnormals: where the scores came from, e.g. {"source": "...", "n": 117}.
    bootstrap: {"n", "level", "seed"}.
    normal_scores: the normals' image scores, {score name: [float, ...]}; kept in the file as
        the drift watch's reference (``runtime/drift.py``, ``ddad-edge drift``).
    """
    specs = [p["specificity"] for p in points]
    default = default_specificity if default_specificity is not None else _nearest(specs, 0.95)
    if default not in specs:
        raise CalibrationError(f"default specificity {default} is not one of {specs}")
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle_digest": bundle_digest(manifest),
        "model_kind": manifest.get("model", {}).get("kind"),
        "source_run": manifest.get("model", {}).get("source_run"),
        "split_sha256": manifest.get("split_sha256"),
        "score": score,
        "rule": "score > threshold is abnormal",
        "default_specificity": default,
        "normals": normals,
        "abnormals": abnormals,
        "bootstrap": bootstrap,
        "operating_points": points,
        **(
            {"normal_scores": {k: [float(v) for v in a] for k, a in normal_scores.items()}}
            if normal_scores
            else {}
        ),
    }
    return record


def score_for_calibration(
    scorer: Any, paths: list[str]
) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """Score files with a Scorer for calibration.

    Returns:
        ({score name: float64 [n_scored]} for every image score, excluded inputs as {"path",
        "status", "why"} -- abstained by the gate or unreadable; they take no part).
    """
    rows, excluded = [], []
    for r in scorer.score(paths):
        if r.status == "scored":
            rows.append(r.scores)
        else:
            excluded.append({"path": r.source, "status": r.status, "why": r.reason or r.error})
    names = list(rows[0]) if rows else []
    return {n: np.asarray([row[n] for row in rows], np.float64) for n in names}, excluded


Scored = tuple[dict[str, np.ndarray], list[dict[str, str]]]
"""One image set scored by :func:`score_for_calibration`: (scores per name, excluded inputs)."""


def calibrate_scored(
    manifest: dict[str, Any],
    normals: Scored,
    abnormals: Scored,
    held_out: Scored,
    *,
    score: str,
    source: str,
    specificities: tuple[float, ...] = DEFAULT_SPECIFICITIES,
    n_boot: int = 2000,
    seed: int = 0,
    default_specificity: float | None = None,
    split_sha256: str | None = None,
    split_part: str | None = None,
) -> dict[str, Any]:
    """The calibration record of a bundle from its scored image sets: operating points on
    ``score`` (:func:`calibrate`, 95% bootstrap intervals) in :func:`calibration_record`'s
    format, plus the held-out normals and the split used when there are any.

    Args:
        manifest: the bundle's manifest (the record is bound to its digest).
        normals, abnormals, held_out: the three sets as scored (either of the last two may be
            empty); only ``score`` is used, all of the normals' scores are kept for the drift
            watch.
        source: where the normals came from, in words.
        split_sha256: the split manifest the sets were drawn from, when one was, and
            split_part the part its normals came from ("calibration" or "test").

    Raises:
        CalibrationError: too few normals, bad scores, bad specificities or default; or asr
            calibrated on the normals its network was trained on (its scores there are
            lower than on new normals: the threshold would be too low).
    """
    trained_on = (manifest.get("asr") or {}).get("trained_on") or {}
    if (
        score == ASR_SCORE
        and split_sha256 is not None
        and (split_part, split_sha256) == (trained_on.get("part"), trained_on.get("split_sha256"))
    ):
        raise CalibrationError(
            "the bundle's ASR network was trained on these normals (train-asr --held-out): "
            "calibrate asr on others (--from-test, or --normals DIR of site normals)"
        )
    empty = np.zeros(0)
    (all0, ex0), (all1, ex1), (all2, ex2) = normals, abnormals, held_out
    s0, s1, held = (a.get(score, empty) for a in (all0, all1, all2))
    points = calibrate(
        s0,
        s1 if len(s1) else None,
        specificities=specificities,
        n_boot=n_boot,
        seed=seed,
        held_out=held,
    )
    record = calibration_record(
        manifest,
        points,
        score=score,
        normals={"source": source, "n": len(s0), "excluded": ex0},
        abnormals={"n": len(s1), "excluded": ex1} if len(s1) else None,
        bootstrap={"n": n_boot, "level": 0.95, "seed": seed},
        default_specificity=default_specificity,
        normal_scores=all0,
    )
    if len(held):
        record["held_out_normals"] = {"n": len(held), "excluded": ex2}
    if split_sha256 is not None:
        record["split_sha256_used"] = split_sha256
    return record


def _nearest(values: list[float], target: float) -> float:
    return min(values, key=lambda v: abs(v - target))


def write_calibration(record: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a calibration record as JSON (atomic)."""
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


@dataclass(frozen=True)
class Calibration:
    """A loaded calibration: its record and the operating point in use."""

    record: dict[str, Any]
    point: OperatingPoint

    def to_json(self) -> dict[str, Any]:
        """The operating point plus its threshold interval, for result records."""
        out = self.point.to_json()
        for p in self.record["operating_points"]:
            if p["specificity"] == self.point.specificity:
                out["threshold_interval"] = p.get("threshold_interval")
        out["bundle_digest"] = self.record["bundle_digest"]
        return out


def read_calibration(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A calibration file's record, unchecked against any bundle (for reports on a run).

    Raises:
        CalibrationError: unreadable, or not a calibration file.
    """
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{p}: cannot read calibration: {e}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CalibrationError(f"{p}: not a ddad-edge calibration file")
    return record


def load_calibration(
    path: str | os.PathLike[str],
    manifest: dict[str, Any],
    specificity: float | None = None,
) -> Calibration:
    """Read a calibration file for a bundle and pick an operating point.

    Args:
        path: the JSON written by ``ddad-edge calibrate``.
        manifest: the bundle's manifest (``Bundle.manifest``): its digest must match.
        specificity: which operating point (None: the file's default).

    Raises:
        CalibrationError: unreadable file, another bundle, or no such operating point.
    """
    p = os.fspath(path)
    record = read_calibration(p)
    want = bundle_digest(manifest)
    if record.get("bundle_digest") != want:
        raise CalibrationError(
            f"{p}: calibrated for another bundle (digest {str(record.get('bundle_digest'))[:12]}"
            f"..., this bundle {want[:12]}...); calibrate this bundle on your normals"
        )
    q = record["default_specificity"] if specificity is None else float(specificity)
    for pt in record.get("operating_points", []):
        if abs(pt["specificity"] - q) < 1e-9:
            point = OperatingPoint(pt["specificity"], record["score"], pt["threshold"])
            return Calibration(record, point)
    have = [pt["specificity"] for pt in record.get("operating_points", [])]
    raise CalibrationError(f"{p}: no operating point at specificity {q} (the file has {have})")


__all__ = [
    "DEFAULT_SCORE",
    "DEFAULT_SPECIFICITIES",
    "Calibration",
    "CalibrationError",
    "OperatingPoint",
    "bundle_digest",
    "calibrate",
    "calibration_record",
    "load_calibration",
    "read_calibration",
    "score_for_calibration",
    "threshold_at",
    "write_calibration",
]
