"""Turn a split manifest into network-ready arrays (via the shared runtime preprocessing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddad_edge.runtime.batch import LoadedBatch, load_inputs

PARTS = ("normal_train", "unlabeled", "test", "calibration")


def load_part(
    manifest: dict[str, Any],
    part: str,
    *,
    workers: int | None = None,
    on_item: Callable[[int], None] | None = None,
) -> LoadedBatch:
    """Load one part of the split ("normal_train", "unlabeled", "test" or, when the split has
    one, "calibration").

    Returns a LoadedBatch: x float32 [n_ok, 1, 64, 64] in [-1, 1], the indices of the loaded
    items within the part, and (index, path, reason) for files that could not be read.
    """
    if part not in PARTS or part not in manifest:
        raise ValueError(f"the split has no part {part!r}")
    root = Path(manifest["root"])
    paths = [root / p for p in manifest[part]]
    return load_inputs(paths, workers=workers, on_item=on_item)
