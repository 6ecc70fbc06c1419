"""Labelled image folders and the D / Du / Dt split manifest.

A dataset is a folder of images labelled either by a CSV (columns ``path,label`` and optionally
``split``; label 0 = normal, 1 = abnormal) or by folder name (a path component named ``NORMAL``,
``normal``, ``good`` or ``0`` means normal; everything else abnormal).

The split manifest (JSON) lists D (known normals), Du (unlabeled; its labels are stored for analysis
only and never reach training) and Dt (test, labelled), as paths relative to the data root.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.runtime.fileio import atomic_write_text
from ddad_edge.runtime.io import IMAGE_EXTS

NORMAL_NAMES = {"normal", "good", "0", "negative"}
MANIFEST_VERSION = 1


class SplitError(ValueError):
    """The data cannot satisfy the requested split (too few images, bad labels, overlaps)."""


@dataclass(frozen=True)
class Item:
    """One labelled image: path relative to the data root, label (0/1), CSV split or None."""

    path: str
    label: int
    split: str | None = None


def read_labels_csv(root: Path, csv_path: Path) -> list[Item]:
    """Read ``path,label[,split]`` rows; paths are relative to root."""
    items = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise SplitError(f"{csv_path}: needs at least the columns 'path' and 'label'")
        for n, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
            except ValueError as e:
                raise SplitError(
                    f"{csv_path} line {n}: label {row['label']!r} is not 0 or 1"
                ) from e
            if label not in (0, 1):
                raise SplitError(f"{csv_path} line {n}: label {label} is not 0 or 1")
            split = (row.get("split") or "").strip() or None
            items.append(Item(row["path"], label, split))
    missing = [it.path for it in items if not (root / it.path).is_file()]
    if missing:
        raise SplitError(
            f"{csv_path}: {len(missing)} listed file(s) not found under {root}, e.g. {missing[0]}"
        )
    return items


def scan_folder(root: Path) -> list[Item]:
    """Label every image under root by folder name (see module docstring). Splits from a
    ``train``/``test`` path component when present."""
    items = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTS or not p.is_file():
            continue
        rel = p.relative_to(root)
        parts = [s.lower() for s in rel.parts[:-1]]
        label = 0 if any(s in NORMAL_NAMES for s in parts) else 1
        split = "test" if "test" in parts else ("train" if "train" in parts else None)
        items.append(Item(rel.as_posix(), label, split))
    if not items:
        raise SplitError(f"{root}: no images found ({', '.join(sorted(IMAGE_EXTS))})")
    return items


def describe_data(root: Path) -> str:
    """A note on the data's origin that every figure and table carries."""
    readme = Path(root) / "README.txt"
    if readme.is_file() and readme.read_text(errors="ignore").lstrip().startswith("SYNTHETIC"):
        return "SYNTHETIC phantom data (not real patients)"
    if "kermany" in str(Path(root).resolve()).lower():
        return "Kermany et al. pediatric CXR (CC BY 4.0)"
    return f"data: {Path(root).name}"


def make_split(
    root: Path,
    items: list[Item],
    *,
    normal_train: int,
    unlabeled: int,
    ar: float,
    seed: int = 0,
    test_fraction: float = 0.2,
    calibration: int = 0,
) -> dict[str, Any]:
    """Draw D, Du, Dt and optionally a calibration set.

    Dt is the CSV's/folders' ``test`` split when present, else a stratified ``test_fraction`` of
    the data carved out first. From the rest: D = the first ``normal_train`` normals of a seeded
    shuffle; Du = the next round(unlabeled * (1 - ar)) normals of that shuffle plus the first
    round(unlabeled * ar) abnormals of a seeded shuffle of the abnormals. With ``calibration``
    > 0, the next ``calibration`` normals of the normal shuffle are held out of training for
    ``ddad-edge calibrate`` (D and Du are the same as without them; the manifest then has a
    ``calibration`` list and count, and only then).
    """
    if not 0.0 <= ar <= 1.0:
        raise SplitError(f"anomaly rate must lie in [0, 1], got {ar}")
    if normal_train < 1 or unlabeled < 0:
        raise SplitError("--normal-train must be >= 1 and --unlabeled >= 0")
    paths = [it.path for it in items]
    if len(set(paths)) != len(paths):
        raise SplitError("the label list names some file more than once")
    rng = np.random.default_rng(seed)
    test, pool, test_source = _test_and_pool(items, rng, test_fraction, seed)
    normals = [it for it in pool if it.label == 0]
    abnormals = [it for it in pool if it.label == 1]
    normals = [normals[i] for i in rng.permutation(len(normals))]
    abnormals = [abnormals[i] for i in rng.permutation(len(abnormals))]
    n_abn = int(round(unlabeled * ar))
    n_norm_u = unlabeled - n_abn
    _check_enough(len(normals), len(abnormals), normal_train, unlabeled, ar, calibration)
    d = normals[:normal_train]
    du = normals[normal_train : normal_train + n_norm_u] + abnormals[:n_abn]
    du = [du[i] for i in rng.permutation(len(du))]
    start = normal_train + n_norm_u
    cal = normals[start : start + calibration]
    if {it.path for it in d + du} & {it.path for it in test + cal}:
        raise SplitError("training and test/calibration sets overlap")
    if len(test) == 0 or len({it.label for it in test}) < 2:
        raise SplitError("the test set needs both normal and abnormal images")
    manifest = _manifest(root, seed, ar, test_source, d, (du, n_abn), test)
    if calibration:
        manifest["calibration"] = [it.path for it in cal]
        manifest["counts"]["calibration"] = len(cal)
    return manifest


def _test_and_pool(
    items: list[Item], rng: np.random.Generator, test_fraction: float, seed: int
) -> tuple[list[Item], list[Item], str]:
    """(Dt, the rest, how Dt was chosen): the items marked ``test``, else a stratified
    ``test_fraction`` of each class drawn with ``rng``."""
    if any(it.split == "test" for it in items):
        test = [it for it in items if it.split == "test"]
        pool = [it for it in items if it.split != "test"]
        return test, pool, "split column / test folder"
    test, pool = [], []
    for lab in (0, 1):
        group = [it for it in items if it.label == lab]
        perm = rng.permutation(len(group))
        n_test = int(round(test_fraction * len(group)))
        test += [group[i] for i in perm[:n_test]]
        pool += [group[i] for i in perm[n_test:]]
    return test, pool, f"carved out: {test_fraction:.0%} of each class (seed {seed})"


def _check_enough(
    n_normals: int, n_abnormals: int, normal_train: int, unlabeled: int, ar: float, calibration: int
) -> None:
    """SplitError unless the pool holds D's, Du's and the calibration set's images."""
    n_abn = int(round(unlabeled * ar))
    n_norm_u = unlabeled - n_abn
    if calibration < 0:
        raise SplitError("--calibration must be >= 0")
    if normal_train + n_norm_u + calibration > n_normals:
        raise SplitError(
            f"not enough normal training images: D needs {normal_train} and Du needs {n_norm_u} "
            f"(|Du|={unlabeled}, AR={ar})"
            + (f" and the calibration set {calibration}" if calibration else "")
            + f", but only {n_normals} are available; a sweep down to AR 0 allows "
            f"|Du| <= {max(0, n_normals - normal_train - calibration)}"
        )
    if n_abn > n_abnormals:
        raise SplitError(
            f"not enough abnormal training images for AR={ar}: Du needs {n_abn}, only "
            f"{n_abnormals} are available; lower --ar or --unlabeled"
        )


def _manifest(
    root: Path,
    seed: int,
    ar: float,
    test_source: str,
    d: list[Item],
    du_and_abnormal: tuple[list[Item], int],
    test: list[Item],
) -> dict[str, Any]:
    """The split manifest's fields and counts for D, (Du, its number of abnormals) and Dt."""
    du, n_abn = du_and_abnormal
    return {
        "version": MANIFEST_VERSION,
        "root": str(Path(root).resolve()),
        "data_note": describe_data(root),
        "seed": seed,
        "anomaly_rate": ar,
        "test_source": test_source,
        "normal_train": [it.path for it in d],
        "unlabeled": [it.path for it in du],
        "unlabeled_labels_for_analysis_only": [it.label for it in du],
        "test": [it.path for it in test],
        "test_labels": [it.label for it in test],
        "counts": {
            "D": len(d),
            "Du": len(du),
            "Du_abnormal": n_abn,
            "Dt": len(test),
            "Dt_abnormal": int(sum(it.label for it in test)),
        },
    }


def sweep_path(output: Path, ar: float) -> Path:
    """Where one manifest of an anomaly-rate sweep goes: split.json -> split-ar0.2.json."""
    output = Path(output)
    return output.with_name(f"{output.stem}-ar{ar:g}{output.suffix or '.json'}")


def read_items(root: Path, labels: Path | None = None) -> list[Item]:
    """The labelled images of a folder: from the labels CSV when given (a relative CSV path is
    looked up in ``root`` first, unless it exists only where it was given), else by folder
    name (:func:`scan_folder`)."""
    if labels is None:
        return scan_folder(root)
    if not labels.is_absolute() and not (labels.exists() and not (root / labels).exists()):
        labels = root / labels
    return read_labels_csv(root, labels)


def write_splits(
    root: Path, items: list[Item], ars: list[float], output: Path, **params: Any
) -> list[tuple[dict[str, Any], Path, str]]:
    """Draw one split per anomaly rate (:func:`make_split` with ``params``) and write them:
    ``output`` for one rate, :func:`sweep_path` names for a sweep. All are drawn before any is
    written, so a sweep that does not fit writes nothing.

    Returns:
        [(manifest, path written, its sha256)], one per rate.
    """
    manifests = [make_split(root, items, ar=a, **params) for a in ars]
    outputs = [sweep_path(output, a) for a in ars] if len(ars) > 1 else [output]
    return [(m, o, write_manifest(m, o)) for m, o in zip(manifests, outputs, strict=True)]


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's content (canonical JSON, without its own ``sha256`` field and
    without ``root``, so a moved data folder keeps its hash)."""
    body = {k: v for k, v in manifest.items() if k not in ("sha256", "root")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(manifest: dict[str, Any], out: Path) -> str:
    """Write the manifest (with its sha256) atomically; return the hash."""
    manifest = dict(manifest)
    manifest["sha256"] = manifest_hash(manifest)
    atomic_write_text(Path(out), json.dumps(manifest, indent=1))
    return manifest["sha256"]


def read_manifest(path: Path, root: Path | None = None) -> dict[str, Any]:
    """Read and check a split manifest; ``root`` overrides the data root it records."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SplitError(f"{path}: cannot read split manifest: {e}") from e
    if manifest.get("version") != MANIFEST_VERSION:
        raise SplitError(f"{path}: unsupported manifest version {manifest.get('version')}")
    if manifest.get("sha256") != manifest_hash(manifest):
        raise SplitError(f"{path}: content does not match its sha256 (edited by hand?)")
    if root is not None:
        manifest["root"] = str(Path(root).resolve())
    if not Path(manifest["root"]).is_dir():
        raise SplitError(f"{path}: data root {manifest['root']} does not exist (pass --data-root)")
    return manifest


def calibration_sets(
    manifest: dict[str, Any], *, from_test: bool = False, seed: int = 0
) -> dict[str, Any]:
    """Which images of a split may calibrate an operating point (never D or Du: trained on).

    Without ``from_test``: the manifest's ``calibration`` normals (``split --calibration N``);
    abnormals for the sensitivity: Dt's abnormals. With ``from_test``: Dt's normals are halved
    by a seeded shuffle; the first half calibrates, the second half is held out to measure the
    specificity the threshold really gives; abnormals: Dt's abnormals.

    Returns:
        {"normals", "abnormals", "held_out_normals": absolute paths (held_out empty without
        from_test), "description": one line saying where they came from}.

    Raises:
        SplitError: the manifest has no calibration part and from_test is False.
    """
    root = Path(manifest["root"])
    test = list(zip(manifest["test"], manifest["test_labels"], strict=True))
    abnormals = [str(root / p) for p, lab in test if lab == 1]
    if not from_test:
        if not manifest.get("calibration"):
            raise SplitError(
                "the split has no calibration part: draw one with `ddad-edge split --calibration "
                "N` (normals no training sees), pass --normals DIR of site normals, or use "
                "--from-test (half of the test normals; the other half measures specificity)"
            )
        return {
            "normals": [str(root / p) for p in manifest["calibration"]],
            "abnormals": abnormals,
            "held_out_normals": [],
            "part": "calibration",
            "description": f"split calibration part ({len(manifest['calibration'])} normals "
            "held out of D and Du); abnormals: test split",
        }
    normals = [p for p, lab in test if lab == 0]
    perm = np.random.default_rng(seed).permutation(len(normals))
    half = len(normals) // 2
    return {
        "normals": [str(root / normals[i]) for i in perm[:half]],
        "abnormals": abnormals,
        "held_out_normals": [str(root / normals[i]) for i in perm[half:]],
        "part": "test",
        "description": f"test split normals, seeded half (seed {seed}: {half} of "
        f"{len(normals)}); the other half is held out for specificity; abnormals: test split",
    }
