"""Heat-map overlay PNGs for scored inputs (torch-free; needs matplotlib for the colour map).

Each overlay is the input image (decoded again, at most ``max_side`` pixels on its longer side)
with one anomaly map (default ``inter``) blended over it by ``ddad_edge.plots.overlay_heatmap``.
The colour scale is fixed (``vmax``; the bundle's calibrated value by default) so overlays from
different calls are comparable.

File names come from the inputs: ``<stem>.<score>.png`` in the output folder; a second input
with the same stem gets ``<stem>-<index>.<score>.png``. An overlay is never written over one of
the inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ddad_edge.runtime.fileio import atomic_write
from ddad_edge.runtime.io import ImageLoadError, load_image
from ddad_edge.runtime.preprocess import to_unit_grey


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
    from ddad_edge.plots import overlay_heatmap

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


__all__ = ["ImageLoadError", "overlay_paths", "write_overlays"]
