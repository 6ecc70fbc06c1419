"""Load many images into one network batch, keeping per-item errors instead of failing the batch."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ddad_edge.runtime.cpu import physical_cores
from ddad_edge.runtime.io import ImageLoadError, load_input
from ddad_edge.runtime.preprocess import IMAGE_SIZE


@dataclass
class LoadedBatch:
    """x: float32 [n_ok, 1, size, size] in [-1, 1]; ok: indices into the input list of the rows
    of x; errors: (index, path, reason) for every input that could not be loaded."""

    x: np.ndarray
    ok: list[int]
    errors: list[tuple[int, str, str]] = field(default_factory=list)


def load_inputs(
    paths: Sequence[str | os.PathLike],
    *,
    size: int = IMAGE_SIZE,
    workers: int | None = None,
    on_item: Callable[[int], None] | None = None,
) -> LoadedBatch:
    """Decode and preprocess every path; unreadable files become errors, the rest are loaded.

    ``workers``: decoding threads (Pillow and the DICOM codecs release the GIL); default the
    number of physical cores. A single path is decoded in the calling thread.
    ``on_item(i)`` is called after each item (for progress bars).
    """

    def one(i: int) -> np.ndarray | ImageLoadError:
        try:
            return load_input(paths[i], size=size)
        except ImageLoadError as e:
            return e
        finally:
            if on_item is not None:
                on_item(i)

    workers = physical_cores() if workers is None else workers
    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(min(workers, len(paths))) as pool:
            results = list(pool.map(one, range(len(paths))))
    else:
        results = [one(i) for i in range(len(paths))]
    ok = [i for i, r in enumerate(results) if not isinstance(r, ImageLoadError)]
    errors = [
        (i, str(paths[i]), r.reason) for i, r in enumerate(results) if isinstance(r, ImageLoadError)
    ]
    if ok:
        x = np.stack([results[i] for i in ok]).astype(np.float32, copy=False)
    else:
        x = np.zeros((0, 1, size, size), np.float32)
    return LoadedBatch(x, ok, errors)
