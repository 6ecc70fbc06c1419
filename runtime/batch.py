"""Load many images into one network batch, keeping per-item errors instead of failing the batch."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ddad_edge.runtime.cpu import physical_cores
from ddad_edge.runtime.io import DEFAULT_MAX_PIXELS, Decoded, ImageLoadError, read_input
from ddad_edge.runtime.preprocess import IMAGE_SIZE, PreprocessError


@dataclass
class LoadedBatch:
    """x: float32 [n_ok, 1, size, size] in [-1, 1]; ok: indices into the input list of the rows
    of x; errors: (index, source, reason) for every input that could not be loaded; warnings:
    index -> what the caller should know about an input that was loaded (e.g. only its first
    frame was used)."""

    x: np.ndarray
    ok: list[int]
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    warnings: dict[int, list[str]] = field(default_factory=dict)


def item_error(exc: BaseException) -> str:
    """One-line reason for an input that failed (an ImageLoadError's own reason, else the
    exception type and its first 200 characters)."""
    if isinstance(exc, ImageLoadError):
        return exc.reason
    if isinstance(exc, PreprocessError):
        return str(exc)
    text = " ".join(str(exc).split())
    element = re.search(r"while trying to parse \((\w{4}),(\w{4})\)", text)
    if element:  # pydicom names the element only at the end of a long message: lead with it
        tag = f"({element[1]},{element[2]})".upper()
        return f"DICOM element {tag} is malformed: {type(exc).__name__}"
    text = text[:197] + "..." if len(text) > 200 else text
    return f"could not be loaded: {type(exc).__name__}" + (f": {text}" if text else "")


def load_path(
    path: str | os.PathLike[str],
    size: int = IMAGE_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Decoded | ImageLoadError:
    """Decode one file into a network input, or the error that says why not (never raises for a
    bad file: whatever the file holds, the failure is that item's). ``max_pixels``: the pixel
    budget checked from the file's header before decoding (None: no limit)."""
    try:
        p = os.fsdecode(path)  # str, bytes or os.PathLike
    except Exception:  # noqa: BLE001 - not a path, or an os.PathLike whose __fspath__ fails
        return ImageLoadError(f"<{type(path).__name__}>", "not a file path")
    try:
        return read_input(p, size=size, max_pixels=max_pixels)
    except Exception as e:  # noqa: BLE001 - per-item isolation: one bad file never stops a batch
        return e if isinstance(e, ImageLoadError) else ImageLoadError(p, item_error(e))


def load_inputs(
    paths: Sequence[str | os.PathLike],
    *,
    size: int = IMAGE_SIZE,
    workers: int | None = None,
    on_item: Callable[[int], None] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> LoadedBatch:
    """Decode and preprocess every path; unreadable files become errors, the rest are loaded.

    ``workers``: decoding threads (Pillow and the DICOM codecs release the GIL); default the
    number of physical cores. A single path is decoded in the calling thread.
    ``on_item(i)`` is called after each item (for progress bars).
    ``max_pixels``: largest image a file may declare (see :func:`load_path`).
    """

    def one(i: int) -> Decoded | ImageLoadError:
        try:
            return load_path(paths[i], size, max_pixels)
        finally:
            if on_item is not None:
                on_item(i)

    workers = physical_cores() if workers is None else workers
    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(min(workers, len(paths))) as pool:
            results = list(pool.map(one, range(len(paths))))
    else:
        results = [one(i) for i in range(len(paths))]
    ok = [i for i, r in enumerate(results) if isinstance(r, Decoded)]
    errors = [(i, r.path, r.reason) for i, r in enumerate(results) if isinstance(r, ImageLoadError)]
    notes = {i: r.warnings for i, r in enumerate(results) if isinstance(r, Decoded) and r.warnings}
    if ok:
        x = np.stack([results[i].image for i in ok]).astype(np.float32, copy=False)
    else:
        x = np.zeros((0, 1, size, size), np.float32)
    return LoadedBatch(x, ok, errors, notes)
