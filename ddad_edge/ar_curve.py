"""The anomaly-rate curve (the paper's Fig. 4): an image score's test AUC against the share of
abnormal images in Du, over runs trained at several anomaly rates (``split --ar ...``, then
``train --reuse-b``) and evaluated (``eval``).

Each run folder gives one point: its anomaly rate from its own ``config.json`` (the counts the
run was trained on: Du's abnormal images over |Du|), its seed from the same file, and the AUC
from ``eval/metrics.json``. Nothing is recomputed here.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


class ArCurveError(ValueError):
    """A run folder cannot give a point of the curve (the message names the folder)."""


@dataclass(frozen=True)
class ArPoint:
    """One run: anomaly rate of its Du (0-1), training seed, test AUC of the score."""

    run: Path
    ar: float
    seed: int
    auc: float


@dataclass(frozen=True)
class ArSummary:
    """The runs at one anomaly rate: their AUCs (by seed order), mean and sample sd (NaN for
    one run)."""

    ar: float
    aucs: tuple[float, ...]
    mean: float
    sd: float


def _json(path: Path, run: Path, hint: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArCurveError(f"{run}: no {path.relative_to(run)} ({hint})") from None
    except (OSError, ValueError) as e:
        raise ArCurveError(f"{run}: {path.relative_to(run)} is unreadable: {e}") from None


def read_point(run: Path, score: str = "inter") -> ArPoint:
    """The point of ``run`` for image score ``score`` (rec, intra, inter or asr).

    Raises:
        ArCurveError: no config or evaluation in the folder, no Du, or no AUC of ``score``.
    """
    run = Path(run)
    config = _json(run / "config.json", run, "not a run folder written by `train`")
    metrics = _json(run / "eval" / "metrics.json", run, "run `ddad-edge eval` on it first")
    counts = config.get("counts", {})
    du, abnormal = counts.get("Du"), counts.get("Du_abnormal")
    if not du or abnormal is None:
        raise ArCurveError(f"{run}: its config records no Du (a module A trained on D only?)")
    auc = metrics.get("metrics", {}).get(score, {}).get("auc")
    if auc is None:
        raise ArCurveError(f"{run}: eval/metrics.json has no AUC for {score!r}")
    return ArPoint(run, abnormal / du, int(config["train"]["seed"]), float(auc))


def summarize(points: list[ArPoint]) -> list[ArSummary]:
    """Group points by anomaly rate (rounded to 3 decimals), in increasing order."""
    groups: dict[float, list[ArPoint]] = defaultdict(list)
    for p in points:
        groups[round(p.ar, 3)].append(p)
    out = []
    for ar in sorted(groups):
        aucs = tuple(p.auc for p in sorted(groups[ar], key=lambda p: p.seed))
        mean = sum(aucs) / len(aucs)
        var = sum((a - mean) ** 2 for a in aucs) / (len(aucs) - 1) if len(aucs) > 1 else math.nan
        out.append(ArSummary(ar, aucs, mean, math.sqrt(var)))
    return out
