"""Heat-map overlays: the runtime's numpy colour map and blending (no matplotlib needed)."""

from __future__ import annotations

import numpy as np
import pytest

from ddad_edge.runtime.heatmaps import inferno, overlay_heatmap


def test_overlay_heatmap_shape_and_hotness() -> None:
    image = np.full((64, 64), 0.5)
    amap = np.zeros((16, 16))
    amap[:, 8:] = 1.0  # right half hot
    out = overlay_heatmap(image, amap)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    left, right = out[:, :24].astype(float), out[:, 40:].astype(float)
    assert right.sum(axis=-1).mean() > left.sum(axis=-1).mean() + 100
    assert right[..., 0].mean() > left[..., 0].mean()  # inferno: hot = bright red/yellow
    # alpha 0 returns the grey image unchanged; explicit vmax caps the scale.
    grey = overlay_heatmap(image, amap, alpha=0.0)
    assert np.all(grey == 128)
    capped = overlay_heatmap(image, amap * 10.0, vmax=10.0)
    np.testing.assert_array_equal(capped, out)
    # alpha 1 is the colour map alone: cold = inferno(0) (near black), hot = inferno(1)
    full = overlay_heatmap(image, amap, alpha=1.0)
    np.testing.assert_array_equal(full[0, 0], np.rint(inferno(np.float64(0.0)) * 255))
    np.testing.assert_array_equal(full[0, -1], np.rint(inferno(np.float64(1.0)) * 255))
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(image, amap, alpha=1.5)


def test_inferno_matches_matplotlib() -> None:
    """The 33-point table, interpolated, stays within matplotlib's own 256-step quantisation."""
    matplotlib = pytest.importorskip("matplotlib", reason="the reference colour map")
    t = np.linspace(0.0, 1.0, 2001)
    ref = matplotlib.colormaps["inferno"](t)[:, :3]
    assert np.abs(inferno(t) - ref).max() * 255 <= 5.0
    assert np.all(np.diff(inferno(t).sum(-1)) >= -1e-12)  # brightness rises monotonically
