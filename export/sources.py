"""Which real images the export parity gate and the golden vectors use.

In order of preference:

1. ``split``: a split manifest (must be the one the run was trained with, by sha256): its test
   part (Dt), evenly spaced.
2. ``images``: files and/or folders given by the user, evenly spaced over the sorted list.
3. The run's data folder (``config["data_root"]``): its images under a ``test`` folder when there
   is one, else all of them, evenly spaced over the sorted list (deterministic).
4. Only when none of these exist: SYNTHETIC phantom images (``ddad_edge.phantom``), and the
   manifest says so.

Images go through the shared loader and preprocessing (``runtime.batch``), exactly as the
runtime sees them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.runtime.batch import load_inputs
from ddad_edge.runtime.io import IMAGE_EXTS
from ddad_edge.runtime.preprocess import preprocess


class SourceError(ValueError):
    """No usable parity images."""


@dataclass
class ParityImages:
    """x float32 [n, 1, 64, 64] in [-1, 1]; sources: one name per row; origin: where they came
    from (for the manifest); skipped: (path, reason) of files that failed to load."""

    x: np.ndarray
    sources: list[str]
    origin: str
    synthetic: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)


def evenly_spaced(items: list[Any], n: int) -> list[Any]:
    """n items spread evenly over a list (all of them when it is shorter)."""
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _load(paths: list[Path], origin: str) -> ParityImages:
    lb = load_inputs(paths)
    sources = [str(paths[i]) for i in lb.ok]
    return ParityImages(lb.x, sources, origin, skipped=[(p, r) for _, p, r in lb.errors])


def phantom_images(n: int, seed: int = 0) -> ParityImages:
    """n SYNTHETIC phantom images (alternating normal / with lesions), preprocessed."""
    from ddad_edge.phantom import phantom_image

    imgs = [
        preprocess(phantom_image(np.random.default_rng([seed, 9000 + i]), 128, abnormal=i % 2 == 1))
        for i in range(n)
    ]
    return ParityImages(
        np.stack(imgs).astype(np.float32),
        [f"phantom[{i}]" for i in range(n)],
        "SYNTHETIC phantom images (no real data found)",
        synthetic=True,
    )


def parity_images(
    config: dict[str, Any],
    n: int,
    *,
    images: list[Path] | None = None,
    split: Path | None = None,
) -> ParityImages:
    """Pick and load up to n parity images (see the module docstring).

    Args:
        config: the run's config.json (data_root, split_sha256).
        n: how many images.
        images: explicit files/folders.
        split: a split manifest whose test part to use.

    Raises:
        SourceError: the split does not match the run, or the given images are unusable.
    """
    if split is not None:
        try:
            manifest = json.loads(Path(split).read_text())
        except (OSError, ValueError) as e:
            raise SourceError(f"{split}: cannot read the split manifest: {e}") from e
        want = config.get("split_sha256")
        if want and manifest.get("sha256") and manifest["sha256"] != want:
            raise SourceError(
                f"{split}: not the split this run was trained on (sha256 "
                f"{str(manifest['sha256'])[:12]} vs the run's {str(want)[:12]})"
            )
        root = Path(manifest["root"])
        paths = evenly_spaced([root / p for p in manifest["test"]], n)
        out = _load(paths, f"test split (Dt) of {split}")
    elif images:
        files: list[Path] = []
        for p in images:
            files += _image_files(Path(p)) if Path(p).is_dir() else [Path(p)]
        if not files:
            raise SourceError(f"no image files in {', '.join(map(str, images))}")
        out = _load(evenly_spaced(sorted(files), n), "user-given images")
    else:
        root = Path(config.get("data_root") or "")
        files = _image_files(root) if str(root) and root.is_dir() else []
        test = [p for p in files if "test" in {s.lower() for s in p.relative_to(root).parts[:-1]}]
        if test:
            out = _load(evenly_spaced(test, n), f"test folder of the run's data {root}")
        elif files:
            out = _load(evenly_spaced(files, n), f"the run's data {root}")
        else:
            return phantom_images(n)
        if root.is_dir() and (root / "README.txt").is_file():
            head = (root / "README.txt").read_text(errors="ignore").lstrip()
            out.synthetic = head.startswith("SYNTHETIC")
    if len(out.x) < 2:
        reasons = "; ".join(f"{p}: {r}" for p, r in out.skipped[:3])
        raise SourceError(f"fewer than 2 parity images could be loaded ({out.origin}); {reasons}")
    return out
