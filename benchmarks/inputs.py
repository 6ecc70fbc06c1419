"""Where the benchmark's input files come from: a folder given by the user (its image files,
evenly spaced), else the shared real data beside the repository (``../shared/data/kermany-cxr/
test``; Kermany et al., CC BY 4.0), else SYNTHETIC phantom PNGs in a scratch folder (the report
says so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddad_edge.benchmarks.latency import list_files
from ddad_edge.export.sources import evenly_spaced

REPO = Path(__file__).resolve().parents[1]


def shared_folder(name: str) -> Path | None:
    """A folder of the shared data beside the repository (e.g. "kermany-fullres"), or None."""
    folder = REPO.parent / "shared" / "data" / name
    return folder if folder.is_dir() else None


def write_phantoms(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n SYNTHETIC phantom PNGs (128x128, alternating normal / abnormal) in ``folder``."""
    from PIL import Image

    from ddad_edge.phantom import phantom_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = phantom_image(np.random.default_rng([seed, i]), 128, abnormal=i % 2 == 1)
        p = folder / f"phantom_{i:04d}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def image_pool(source: Path | None, n: int, scratch: Path) -> tuple[list[Path], str, bool]:
    """Up to n input files for the batch sweep.

    Returns (paths, note for the report, whether they are Kermany images).

    Raises:
        ValueError: ``source`` is given but holds no image files.
    """
    if source is None:
        source = shared_folder("kermany-cxr")
        if source is not None and (source / "test").is_dir():
            source = source / "test"
    if source is None:
        paths = write_phantoms(Path(scratch) / "phantoms", min(n, 64))
        return paths, f"{len(paths)} SYNTHETIC phantom images (no real data found)", False
    files = list_files(Path(source))
    if not files:
        raise ValueError(f"{source}: no image files")
    paths = evenly_spaced(files, n)
    note = f"{len(paths)} files evenly spaced over {len(files)} in {source}"
    # the attribution is due when the files are Kermany et al.'s
    return paths, note, "kermany" in str(Path(source).resolve()).lower()
