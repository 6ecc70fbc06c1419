"""Heat-map overlay PNGs for scored inputs (numpy and Pillow only).

Each overlay is the input image (decoded again, at most ``max_side`` pixels on its longer side)
with one anomaly map (default ``inter``) blended over it by :func:`overlay_heatmap`, coloured
with the perceptually uniform "inferno" map (van der Walt and Smith, the matplotlib colormaps,
CC0) sampled at 33 points and interpolated linearly.
The colour scale is fixed (``vmax``; the bundle's calibrated value by default) so overlays from
different calls are comparable.

File names come from the inputs: ``<stem>.<score>.png`` in the output folder; a second input
with the same stem gets ``<stem>-<index>.<score>.png``. An overlay is never written over one of
the inputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ddad_edge.runtime.fileio import atomic_write
from ddad_edge.runtime.io import ImageLoadError, load_image
from ddad_edge.runtime.preprocess import to_unit_grey

INFERNO_33 = np.array(
    [
        [0, 0, 4], [4, 3, 18], [11, 7, 36], [21, 11, 55], [33, 12, 74], [47, 10, 91],
        [61, 9, 101], [74, 12, 107], [87, 16, 110], [100, 21, 110], [113, 25, 110],
        [125, 30, 109], [138, 34, 106], [151, 39, 102], [163, 44, 97], [176, 49, 91],
        [188, 55, 84], [199, 62, 76], [210, 70, 68], [219, 80, 59], [228, 90, 49],
        [235, 102, 40], [241, 115, 29], [246, 128, 19], [249, 142, 9], [251, 157, 7],
        [252, 172, 17], [251, 188, 33], [249, 203, 53], [245, 219, 76], [242, 234, 105],
        [243, 246, 138], [252, 255, 164],
    ],
    np.float64,
) / 255.0  # fmt: skip
"""Inferno at 0, 1/32, ..., 1: RGB in [0, 1], [33, 3]."""


def inferno(t: np.ndarray) -> np.ndarray:
    """The inferno colour map: t float [...] in [0, 1] (clipped) -> RGB float64 [..., 3]."""
    t = np.clip(np.asarray(t, np.float64), 0.0, 1.0)
    grid = np.linspace(0.0, 1.0, len(INFERNO_33))
    return np.stack([np.interp(t, grid, INFERNO_33[:, c]) for c in range(3)], axis=-1)


def resize_bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D float array to [height, width] (half-pixel centres, edge clamp,
    the convention of ``torch.nn.functional.interpolate(..., align_corners=False)``)."""
    h, w = a.shape
    if (h, w) == (height, width):
        return a

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        c = np.clip(c, 0.0, n_in - 1)
        i0 = np.floor(c).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, c - i0

    y0, y1, fy = coords(height, h)
    x0, x1, fx = coords(width, w)
    top = a[y0][:, x0] * (1.0 - fx) + a[y0][:, x1] * fx
    bot = a[y1][:, x0] * (1.0 - fx) + a[y1][:, x1] * fx
    return top * (1.0 - fy)[:, None] + bot * fy[:, None]


def overlay_heatmap(
    image01: np.ndarray, amap: np.ndarray, vmax: float | None = None, alpha: float = 0.5
) -> np.ndarray:
    """Blend the inferno-coloured anomaly map over a grey image.

    Args:
        image01: grey image, float array [H, W] with values in [0, 1] (clipped).
        amap: anomaly map, float array [h, w] (any size; bilinearly resized to [H, W]). Values
            are mapped linearly from [0, vmax] onto the colour map (clipped; non-finite -> 0).
        vmax: top of the colour scale in map units; ``None`` uses the map's finite maximum
            (1.0 when that is <= 0). Pass a shared value to make several overlays comparable.
        alpha: weight of the colour layer in [0, 1] (0 = grey image only, 1 = map only).

    Returns:
        uint8 RGB array [H, W, 3]: ``(1 - alpha) * grey + alpha * inferno(map / vmax)``.
    """
    img = np.asarray(image01, dtype=np.float64)
    m = np.asarray(amap, dtype=np.float64)
    if img.ndim != 2 or m.ndim != 2:
        raise ValueError(f"expected 2-D image and map, got {img.shape} and {m.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0)
    m = np.where(np.isfinite(m), m, 0.0)
    m = resize_bilinear(m, img.shape[0], img.shape[1])
    if vmax is None:
        vmax = float(m.max()) if m.size else 1.0
    if not (math.isfinite(vmax) and vmax > 0):
        vmax = 1.0
    out = (1.0 - alpha) * img[..., None] + alpha * inferno(m / vmax)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def overlay_paths(sources: Sequence[str], out_dir: Path, score: str) -> list[Path]:
    """One output path per source (see the module docstring for the naming rule)."""
    out_dir = Path(out_dir)
    inputs = set()
    for s in sources:
        try:
            inputs.add(Path(s).resolve())
        except OSError:
            continue
    used: set[Path] = set()
    paths = []
    for i, s in enumerate(sources):
        stem = Path(s).stem if not s.startswith("array[") else f"array-{i}"
        cand = out_dir / f"{stem}.{score}.png"
        if cand.resolve() in used or cand.resolve() in inputs:
            cand = out_dir / f"{stem}-{i}.{score}.png"
        n = 0
        while cand.resolve() in used or cand.resolve() in inputs:
            n += 1
            cand = out_dir / f"{stem}-{i}-{n}.{score}.png"
        used.add(cand.resolve())
        paths.append(cand)
    return paths


def _base_image(source: str, array: np.ndarray | None, max_side: int) -> np.ndarray:
    """Grey float32 [H, W] in [0, 1] for the overlay background."""
    img = (
        to_unit_grey(array) if array is not None else load_image(source, target_size=max_side // 2)
    )
    h, w = img.shape
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        size = (max(2, round(w * f)), max(2, round(h * f)))
        img = np.asarray(Image.fromarray(img, mode="F").resize(size, Image.BILINEAR), np.float32)
    return np.clip(img, 0.0, 1.0)


def write_overlays(
    sources: Sequence[str],
    maps: Sequence[np.ndarray | None],
    out_dir: str | os.PathLike[str],
    *,
    score: str = "inter",
    vmax: float | None = None,
    arrays: Sequence[np.ndarray | None] | None = None,
    max_side: int = 512,
) -> list[Path | None]:
    """Write one overlay PNG per input that has a map.

    Args:
        sources: input paths (or ``"array[i]"`` names, then ``arrays[i]`` is the image).
        maps: per input, the anomaly map float32 [64, 64] to draw, or None (input failed: no
            file is written).
        out_dir: folder for the PNGs (created).
        score: map name used in the file names.
        vmax: top of the colour scale in map units (None: each map's own maximum).
        arrays: the input arrays for array inputs.
        max_side: longer side of the written PNGs, pixels (smaller images keep their size).

    Returns:
        Per input, the PNG written or None.

    Raises:
        ImageLoadError: an input file could not be decoded again.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = overlay_paths(sources, out, score)
    written: list[Path | None] = []
    for i, (src, amap) in enumerate(zip(sources, maps, strict=True)):
        if amap is None:
            written.append(None)
            continue
        arr = arrays[i] if arrays is not None else None
        base = _base_image(src, arr, max_side)
        rgb = overlay_heatmap(base, np.asarray(amap, np.float32), vmax=vmax)
        png = Image.fromarray(rgb, mode="RGB")
        atomic_write(names[i], lambda f, png=png: png.save(f, format="PNG"))
        written.append(names[i])
    return written


__all__ = ["ImageLoadError", "inferno", "overlay_heatmap", "overlay_paths", "write_overlays"]
