"""Where the benchmark's input files come from.

- A folder given by the user: its image files, evenly spaced over the sorted list.
- Otherwise the shared real data beside the repository (``../shared/data/kermany-cxr/test``,
  224x224 JPEGs; Kermany et al., CC BY 4.0), when present.
- Otherwise SYNTHETIC phantom images (``ddad_edge.phantom``) written as PNG into a scratch
  folder, and every report says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddad_edge.benchmarks.latency import list_files

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``<repo>/../shared/data`` when it exists (developer machines and CI), else None."""
    p = REPO.parent / "shared" / "data"
    return p if p.is_dir() else None


def shared_folder(name: str) -> Path | None:
    """A folder of the shared data (e.g. "kermany-fullres"), or None when absent."""
    root = shared_data_dir()
    return root / name if root is not None and (root / name).is_dir() else None


def evenly_spaced(items: list[Path], n: int) -> list[Path]:
    """n items spread evenly over the list (all of them when it is shorter)."""
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def is_kermany(path: Path) -> bool:
    """Whether files under ``path`` are the Kermany et al. images (for the attribution)."""
    return "kermany" in str(Path(path).resolve()).lower()


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
    return (
        paths,
        f"{len(paths)} files evenly spaced over {len(files)} in {source}",
        is_kermany(Path(source)),
    )
