"""`benchmarks.asr_ceiling`: the supervised ceiling over the [inter, intra] maps and the
per-pixel standardisation, on maps with a planted signal."""

from __future__ import annotations

import numpy as np

from ddad_edge.benchmarks.asr_ceiling import (
    cv_auc,
    fit_logistic,
    grid_features,
    standardised_means,
)
from ddad_edge.runtime.metrics import roc_auc


def _planted(n: int = 240, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Maps whose means do not tell the classes apart, but where they are high does: abnormal
    images have inter raised in the top-left 8 x 8 cell and lowered as much in the
    bottom-right one."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    shape = (n, 1, 64, 64)
    maps = {k: rng.lognormal(0.0, 0.3, shape).astype(np.float32) for k in ("inter", "intra")}
    maps["inter"][y == 1, :, :8, :8] *= 1.5
    maps["inter"][y == 1, :, -8:, -8:] *= 0.5
    return maps, y


def test_grid_features_are_log_cell_means() -> None:
    maps, _ = _planted(4)
    f = grid_features(maps, 8)
    assert f.shape == (4, 128)
    want = np.log(maps["intra"][2, 0, 8:16, 0:8].astype(np.float64).mean() + 1e-8)
    assert np.isclose(f[2, 64 + 8], want)  # intra's cell (row 1, column 0)


def test_supervised_ceiling_finds_where_the_map_is_high() -> None:
    maps, y = _planted()
    mean_auc = roc_auc(y, maps["inter"].mean(axis=(1, 2, 3)))
    assert abs(mean_auc - 0.5) < 0.12  # the mean hides it
    assert cv_auc(grid_features(maps, 8), y, lam=0.01) > 0.95
    assert cv_auc(grid_features(maps, 1), y, lam=0.01) < 0.7  # one cell: the mean again


def test_logistic_fit_is_a_stationary_point_of_its_loss() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + 0.5 * rng.normal(size=200) > 0).astype(np.float64)
    w = fit_logistic(x, y, lam=0.1)
    a = np.c_[x, np.ones(200)]
    p = 1 / (1 + np.exp(-(a @ w)))
    grad = a.T @ (p - y) / 200 + 0.2 * np.r_[w[:-1], 0.0]
    assert np.abs(grad).max() < 1e-8 and w[0] > 0.5


def test_standardised_means_are_mean_z_scores() -> None:
    rng = np.random.default_rng(2)
    ref = {k: rng.normal(5.0, 1.0, (500, 1, 8, 8)).astype(np.float32) for k in ("inter", "intra")}
    mu = {k: v.astype(np.float64).mean(0) for k, v in ref.items()}
    sd = {k: v.astype(np.float64).std(0) for k, v in ref.items()}
    maps = {k: (mu[k] + 2 * sd[k])[None].astype(np.float32) for k in ref}
    z = standardised_means(ref, maps)
    assert np.allclose(z["inter"], 2.0, atol=1e-3) and np.allclose(z["intra"], 2.0, atol=1e-3)
