"""What the [inter, intra] maps hold for image-level detection beyond their means: the ceiling
that any refinement of these maps (the ASR network) works under, and one label-free check.

``python -m ddad_edge.benchmarks.asr_ceiling RUN --split split.json``

1. **Supervised ceiling** (uses the test labels; a diagnostic, never a recipe, and nothing is
   chosen with it): logistic regression on the log of the maps' cell means over a ``grid`` x
   ``grid`` partition (inter and intra: 2 grid^2 features), L2 penalty ``lam``, scored by
   ``folds``-fold cross-validation on the test images. Far above mean inter: the maps hold
   more than their means, in where they are high.
2. **Per-pixel standardisation** (label-free, checked on Du with the split's analysis-only
   labels, never on the test set): each map's per-pixel z-score against D's per-pixel mean and
   standard deviation, averaged over the image, against the map's plain mean. The simplest
   label-free way to weight places by how much they vary among normals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ddad_edge.runtime.metrics import roc_auc

MAPS = ("inter", "intra")


def grid_features(maps: dict[str, np.ndarray], grid: int) -> np.ndarray:
    """log of each map's cell means over a ``grid`` x ``grid`` partition: float64
    [N, len(MAPS) * grid^2] from maps float32 [N, 1, H, W] (H, W divisible by ``grid``)."""
    out = []
    for name in MAPS:
        m = np.asarray(maps[name], np.float64)[:, 0]
        n, h, w = m.shape
        cells = m.reshape(n, grid, h // grid, grid, w // grid).mean(axis=(2, 4))
        out.append(np.log(cells.reshape(n, -1) + 1e-8))
    return np.concatenate(out, axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, lam: float, iters: int = 50) -> np.ndarray:
    """L2-penalised logistic regression by Newton's method: weights float64 [F + 1] (the last
    is the intercept, not penalised) minimising mean log-loss + ``lam`` |w|^2 over x [N, F]
    (standardised) and labels y 0/1 [N]."""
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    w = np.zeros(a.shape[1])
    penalty = np.full(a.shape[1], 2.0 * lam)
    penalty[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        grad = a.T @ (p - y) / len(y) + penalty * w
        hess = (a * (p * (1 - p))[:, None]).T @ a / len(y) + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def cv_auc(x: np.ndarray, y: np.ndarray, lam: float, folds: int = 5, seed: int = 0) -> float:
    """ROC AUC of out-of-fold logistic-regression scores (:func:`fit_logistic`; features
    standardised on each training fold) over x float [N, F], labels 0/1 [N]."""
    order = np.random.default_rng(seed).permutation(len(y))
    parts = np.array_split(order, folds)
    out = np.zeros(len(y))
    for k, held in enumerate(parts):
        fit = np.concatenate([p for j, p in enumerate(parts) if j != k])
        mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-12
        w = fit_logistic((x[fit] - mu) / sd, y[fit].astype(np.float64), lam)
        out[held] = (x[held] - mu) / sd @ w[:-1]
    return roc_auc(y, out)


def standardised_means(
    reference: dict[str, np.ndarray], maps: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per map, the image mean of its per-pixel z-score against ``reference`` (normals' maps,
    float32 [M, 1, H, W]): float64 [N] from maps float32 [N, 1, H, W]."""
    out = {}
    for name in MAPS:
        ref = np.asarray(reference[name], np.float64)
        z = (np.asarray(maps[name], np.float64) - ref.mean(0)) / (ref.std(0) + 1e-6)
        out[name] = z.mean(axis=(1, 2, 3))
    return out


def _maps(models: tuple[Any, Any], x: np.ndarray) -> dict[str, np.ndarray]:
    """The score maps of x float32 [N, 1, 64, 64] under modules (A, B)."""
    from ddad_edge.reference import dual_stats
    from ddad_edge.runtime.scores import maps_from_stats

    return maps_from_stats(x, dual_stats(models[0], models[1], x))


def ceiling(
    run: Path, split: Path, grid: int = 8, lam: float = 0.01, folds: int = 5
) -> dict[str, Any]:
    """Both checks of the module docstring for one run: {"test_auc": {map: AUC of its mean},
    "supervised_cv_auc", "supervised": settings, "du_auc", "du_auc_standardised"}; the two Du
    entries are None, with "du_note", where Du's analysis labels hold one class only."""
    from ddad_edge.checkpoint import load_module
    from ddad_edge.data import read_manifest
    from ddad_edge.dataset import load_part

    manifest = read_manifest(split)
    models = (load_module(run, "A"), load_module(run, "B"))
    test = load_part(manifest, "test")
    y = np.asarray(manifest["test_labels"])[test.ok]
    maps = _maps(models, test.x)
    out: dict[str, Any] = {"run": str(run), "n_test": len(y)}
    out["test_auc"] = {n: roc_auc(y, maps[n].mean(axis=(1, 2, 3))) for n in MAPS}
    out["supervised_cv_auc"] = cv_auc(grid_features(maps, grid), y, lam, folds)
    out["supervised"] = {"grid": grid, "lam": lam, "folds": folds}
    du = load_part(manifest, "unlabeled")
    y_du = np.asarray(manifest["unlabeled_labels_for_analysis_only"])[du.ok]
    if y_du.min(initial=1) == y_du.max(initial=0):
        note = f"Du's analysis labels are all {int(y_du[0]) if len(y_du) else '-'}: no AUC"
        return out | {"du_auc": None, "du_auc_standardised": None, "du_note": note}
    maps_du = _maps(models, du.x)
    z = standardised_means(_maps(models, load_part(manifest, "normal_train").x), maps_du)
    out["du_auc"] = {n: roc_auc(y_du, maps_du[n].mean(axis=(1, 2, 3))) for n in MAPS}
    out["du_auc_standardised"] = {n: roc_auc(y_du, z[n]) for n in MAPS}
    return out


def main(
    run: Annotated[Path, typer.Argument(help="Finished run folder written by `train`.")],
    split: Annotated[Path, typer.Option(help="The run's split manifest.")],
    grid: Annotated[int, typer.Option(help="Cells per side (64 divisible by it).")] = 8,
    lam: Annotated[float, typer.Option(help="L2 penalty of the logistic regression.")] = 0.01,
    folds: Annotated[int, typer.Option(help="Cross-validation folds.")] = 5,
) -> None:
    """Print :func:`ceiling` of RUN as JSON."""
    typer.echo(json.dumps(ceiling(run, split, grid, lam, folds), indent=1))


if __name__ == "__main__":
    typer.run(main)
