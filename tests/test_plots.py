"""Tests for ddad_edge.plots (figures are written to tmp_path and checked with Pillow)."""

from __future__ import annotations

from pathlib import Path

import matplotlib  # noqa: F401  (the train extra; without it conftest skips this module)
import numpy as np
import pytest
from PIL import Image

from ddad_edge.plots import (
    plot_heatmap_grid,
    plot_roc_curves,
    plot_score_histograms,
    plot_training_curves,
)


def _check_png(path: Path, min_w: int = 200, min_h: int = 150) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width >= min_w and img.height >= min_h
    leftovers = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_training_curves(tmp_path: Path) -> None:
    history = {
        "A/member0": [1.0, 0.5, 0.3, 0.2],
        "A/member1": [1.1, 0.6, 0.35, 0.25],
        "B/member0": [0.9, 0.4, 0.2],
    }
    out = plot_training_curves(history, tmp_path / "sub" / "curves.png", title_note="SYNTHETIC")
    assert out == tmp_path / "sub" / "curves.png"
    _check_png(out)
    # Non-positive values switch off the log scale rather than failing.
    _check_png(plot_training_curves({"A": [0.0, -1.0, float("nan")]}, tmp_path / "lin.png"))
    with pytest.raises(ValueError):
        plot_training_curves({}, tmp_path / "empty.png")


def test_roc_curves(tmp_path: Path) -> None:
    t = np.linspace(0, 1, 50)
    curves = {
        "rec": (t, np.sqrt(t), 0.667),
        "intra": (t, t**0.4, 0.714),
        "inter": (t, t**0.2, 0.833),
    }
    _check_png(plot_roc_curves(curves, tmp_path / "roc.png", title_note="SYNTHETIC phantom data"))
    plain = (tmp_path / "roc.png").read_bytes()
    marked = plot_roc_curves(
        curves, tmp_path / "roc-op.png", points=[("inter", 0.05, 0.6, "calibrated, spec 0.95")]
    )
    _check_png(marked)
    assert marked.read_bytes() != plain  # the operating point is drawn


def test_score_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(60, int), np.ones(40, int)]
    scores = {
        "rec": rng.normal(0, 1, 100) + labels,
        "intra": rng.normal(0, 1, 100) + 2 * labels,
        "inter": np.full(100, 0.5),  # degenerate: constant scores
    }
    out = plot_score_histograms(scores, labels, tmp_path / "hist.png", title_note="x")
    _check_png(out, min_w=600)
    with pytest.raises(ValueError):
        plot_score_histograms({"rec": np.zeros(3)}, np.zeros(4), tmp_path / "bad.png")


def test_heatmap_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(3):
        x = rng.random((64, 64))
        rows.append(
            {
                "input": x,
                "mu_A": x * 0.9,
                "mu_B": x * 0.8,
                "intra": rng.random((64, 64)) * (i + 1),
                "inter": rng.random((64, 64)) * 0.1,
            }
        )
    titles = [f"normal #{i} (inter 0.0{i})" for i in range(3)]
    _check_png(plot_heatmap_grid(rows, titles, tmp_path / "grid.png", title_note="SYNTHETIC"))
    with pytest.raises(ValueError):
        plot_heatmap_grid(rows, titles[:2], tmp_path / "bad.png")
