"""AUC parity of every lane against the PyTorch FP32 eager reference, on the same images.

The split's test images are loaded ONCE with the runtime's loader, so every lane scores the very
same x float32 [N, 1, 64, 64]; only the inference backend and precision differ. Per lane and per
score (rec, intra, inter, and asr when the run and bundle have ASR):

- AUC and AP (image level, ``ddad_edge.runtime.metrics``),
- ΔAUC = AUC(lane) - AUC(reference), with a paired bootstrap 95% interval (same resampled images
  for both; :func:`ddad_edge.benchmarks.stats.paired_bootstrap_delta`),
- Spearman rank correlation of the image scores with the reference's,
- max and mean absolute error of the pixel score maps against the reference's maps.

A lane passes when |ΔAUC| <= its tolerance for every score: 0.001 for FP32 lanes, 0.003 for FP16,
INT8 and FP16-weight lanes (``TOLERANCES``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ddad_edge.benchmarks.lanes import Lane
from ddad_edge.benchmarks.stats import paired_bootstrap_delta, spearman
from ddad_edge.runtime.metrics import average_precision, roc_auc

TOLERANCES: dict[str, float] = {"fp32": 0.001, "fp16": 0.003, "int8": 0.003, "fp16w": 0.003}
"""Largest allowed |ΔAUC| against the PyTorch FP32 reference, by lane precision."""


def tolerance_for(precision: str) -> float:
    """|ΔAUC| tolerance of a lane precision (unknown precisions get the reduced one, 0.003)."""
    return TOLERANCES.get(precision, 0.003)


def lane_outputs(
    lane: Lane, x: np.ndarray, chunk: int = 64
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Score maps {name: float32 [N, 1, 64, 64]} and image scores {name: float32 [N]} of x."""
    maps: dict[str, list[np.ndarray]] = {}
    scores: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        stats = lane.infer(xb)
        for k, v in lane.maps(xb, stats).items():
            maps.setdefault(k, []).append(np.asarray(v, np.float32))
        for k, v in lane.scores(xb, stats).items():
            scores.setdefault(k, []).append(np.asarray(v, np.float32))
    return (
        {k: np.concatenate(v) for k, v in maps.items()},
        {k: np.concatenate(v) for k, v in scores.items()},
    )


def compare_scores(
    labels: np.ndarray,
    ref: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
    new: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per score name: the lane's metrics and its agreement with the reference (see module
    docstring). ``ref`` and ``new`` are (maps, scores) as returned by :func:`lane_outputs`."""
    out: dict[str, dict[str, Any]] = {}
    for name in [n for n in ref[1] if n in new[1]]:
        rs, ns = ref[1][name], new[1][name]
        rm, nm = ref[0][name], new[0][name]
        finite = bool(np.all(np.isfinite(ns)))
        err = np.abs(nm.astype(np.float64) - rm.astype(np.float64))
        row: dict[str, Any] = {
            "auc_ref": roc_auc(labels, rs),
            "ap_ref": average_precision(labels, rs),
            "finite": finite,
            "map_max_abs_err": float(err.max()) if finite else float("inf"),
            "map_mean_abs_err": float(err.mean()) if finite else float("inf"),
            "map_ref_range": float(rm.max() - rm.min()),
        }
        if finite:
            boot = paired_bootstrap_delta(labels, rs, ns, n_boot=n_boot, seed=seed)
            row.update(
                auc=roc_auc(labels, ns),
                ap=average_precision(labels, ns),
                delta_auc=boot["delta"],
                delta_auc_ci95=[boot["lo"], boot["hi"]],
                delta_ap=average_precision(labels, ns) - row["ap_ref"],
                spearman=spearman(rs, ns),
            )
        else:
            row.update(
                auc=float("nan"),
                ap=float("nan"),
                delta_auc=float("inf"),
                delta_auc_ci95=[float("nan"), float("nan")],
                delta_ap=float("nan"),
                spearman=float("nan"),
            )
        out[name] = row
    return out


def run_parity(
    x: np.ndarray,
    labels: np.ndarray,
    reference: Lane,
    lanes: list[Lane],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    on_lane: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Parity of each lane in ``lanes`` against ``reference`` on x [N, 1, 64, 64], labels [N].

    Returns {"reference": {score: {"auc", "ap"}}, "lanes": {name: {"precision", "tolerance",
    "scores": compare_scores(...), "max_abs_delta_auc", "passed"}}, "passed": all lanes passed,
    "violations": [one line per failing lane]}.
    """
    labels = np.asarray(labels).astype(np.int64)
    if on_lane is not None:
        on_lane(reference.name)
    ref = lane_outputs(reference, x)
    result: dict[str, Any] = {
        "n_images": int(len(labels)),
        "n_abnormal": int(labels.sum()),
        "n_boot": n_boot,
        "reference": {
            "lane": reference.name,
            "scores": {
                n: {"auc": roc_auc(labels, ref[1][n]), "ap": average_precision(labels, ref[1][n])}
                for n in ref[1]
            },
        },
        "lanes": {},
        "violations": [],
    }
    for lane in lanes:
        if on_lane is not None:
            on_lane(lane.name)
        rows = compare_scores(labels, ref, lane_outputs(lane, x), n_boot=n_boot, seed=seed)
        tol = tolerance_for(lane.spec.precision)
        worst = max(abs(r["delta_auc"]) for r in rows.values())
        passed = bool(worst <= tol)
        result["lanes"][lane.name] = {
            "precision": lane.spec.precision,
            "backend": lane.spec.backend,
            "tolerance": tol,
            "scores": rows,
            "max_abs_delta_auc": worst,
            "passed": passed,
        }
        if not passed:
            bad = max(rows, key=lambda n: abs(rows[n]["delta_auc"]))
            result["violations"].append(
                f"{lane.name}: |ΔAUC| {worst:.4f} ({bad}) exceeds the {lane.spec.precision} "
                f"tolerance {tol:.3f}"
            )
    result["passed"] = not result["violations"]
    return result
