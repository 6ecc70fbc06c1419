"""Evaluation of a trained run on the split's test set: image-level AUC / AP per score, figures.

Scores come from ``ddad_edge.runtime.scores`` (the one implementation); member statistics from
the PyTorch reference (``ddad_edge.reference``). Nothing here selects anything on the test set.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.asr import asr_probability, has_asr, load_asr
from ddad_edge.checkpoint import load_module
from ddad_edge.reference import dual_stats
from ddad_edge.runtime.fileio import atomic_write_text
from ddad_edge.runtime.metrics import average_precision, rates_at, roc_auc, roc_curve
from ddad_edge.runtime.preprocess import to_display
from ddad_edge.runtime.scores import ASR_SCORE, maps_from_stats, scores_from_stats


def metrics_table(scores: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict[str, float]]:
    """{score name: {"auc", "ap"}} for image scores float [N] and labels 0/1 [N]."""
    return {
        name: {"auc": roc_auc(labels, s), "ap": average_precision(labels, s)}
        for name, s in scores.items()
    }


def evaluate_arrays(
    run_dir: Path, x: np.ndarray, labels: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Score x [N, 1, 64, 64] with the run's PyTorch modules (and its ASR network when the run
    has one: ``asr`` in stats, scores and metrics).

    Returns (stats, image scores {name: float32 [N]}, metrics {name: {auc, ap}}).
    """
    model_a = load_module(run_dir, "A")
    model_b = load_module(run_dir, "B")
    stats = dual_stats(model_a, model_b, x)
    if has_asr(run_dir):
        stats[ASR_SCORE] = asr_probability(*load_asr(run_dir), maps_from_stats(x, stats))
    scores = scores_from_stats(x, stats)
    return stats, scores, metrics_table(scores, labels)


def _example_rows(
    x: np.ndarray,
    stats: dict[str, np.ndarray],
    maps: dict[str, np.ndarray],
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    per_class: int = 3,
) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Pick evenly spaced examples of each class (by index, not by score) for the heatmap grid."""
    rows, titles = [], []
    for lab, name in ((0, "normal"), (1, "abnormal")):
        idx = np.flatnonzero(labels == lab)
        for i in idx[np.linspace(0, len(idx) - 1, min(per_class, len(idx))).astype(int)]:
            rows.append(
                {
                    "input": to_display(x[i, 0]),
                    "mu_A": to_display(stats["mean_a"][i, 0]),
                    "mu_B": to_display(stats["mean_b"][i, 0]),
                    "intra": maps["intra"][i, 0],
                    "inter": maps["inter"][i, 0],
                    **({ASR_SCORE: maps[ASR_SCORE][i, 0]} if ASR_SCORE in maps else {}),
                }
            )
            titles.append(f"{name} #{i} (inter {scores['inter'][i]:.4f})")
    return rows, titles


def _on_test(
    point: dict[str, Any], labels: np.ndarray, scores: dict[str, np.ndarray]
) -> dict[str, Any]:
    """An operating point with its specificity and sensitivity on the test set."""
    fpr, tpr = rates_at(labels, scores[point["score"]], point["threshold"])
    return {**point, "test_specificity": 1.0 - fpr, "test_sensitivity": tpr}


def write_report(
    out_dir: Path,
    *,
    x: np.ndarray,
    labels: np.ndarray,
    paths: list[str],
    stats: dict[str, np.ndarray],
    scores: dict[str, np.ndarray],
    metrics: dict[str, dict[str, float]],
    meta: dict[str, Any],
    title_note: str = "",
    operating_points: list[dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write metrics.json, scores.csv, roc.png, histograms.png and heatmaps.png into out_dir.

    operating_points: calibrated points ({"score", "threshold", "specificity"}, from a
    calibration file); each gets its test-set specificity and sensitivity in metrics.json and
    a marker on the ROC plot.
    """
    from ddad_edge import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out_dir / "metrics.json", "scores": out_dir / "scores.csv"}
    points = [_on_test(p, labels, scores) for p in operating_points or []]
    body = {**meta, "metrics": metrics, **({"operating_points": points} if points else {})}
    atomic_write_text(files["metrics"], json.dumps(body, indent=1))
    buf = io.StringIO()
    w = csv.writer(buf)
    names = list(scores)
    w.writerow(["path", "label", *names])
    for i, p in enumerate(paths):
        w.writerow([p, int(labels[i]), *(f"{scores[s][i]:.8g}" for s in names)])
    atomic_write_text(files["scores"], buf.getvalue())
    curves = {}
    for s in names:
        fpr, tpr = roc_curve(labels, scores[s])
        curves[s] = (fpr, tpr, metrics[s]["auc"])
    marks = [
        (
            p["score"],
            1.0 - p["test_specificity"],
            p["test_sensitivity"],
            f"calibrated, specificity {p['specificity']:g}",
        )
        for p in points
    ]
    files["roc"] = plots.plot_roc_curves(curves, out_dir / "roc.png", title_note, points=marks)
    files["histograms"] = plots.plot_score_histograms(
        scores, labels, out_dir / "histograms.png", title_note
    )
    maps = maps_from_stats(x, stats)
    rows, titles = _example_rows(x, stats, maps, labels, scores)
    files["heatmaps"] = plots.plot_heatmap_grid(rows, titles, out_dir / "heatmaps.png", title_note)
    return files
