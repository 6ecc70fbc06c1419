"""Tests for the SYNTHETIC phantom data set generator (ddad_edge.phantom)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddad_edge.phantom import (
    LABELS_COLUMNS,
    LESION_SUBTYPE,
    make_phantom_dataset,
    phantom_image,
    phantom_with_lesions,
)

SMALL = dict(n_train_normal=4, n_train_abnormal=3, n_test_normal=2, n_test_abnormal=2, size=64)


def _read_labels(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _png_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_dataset_layout_labels_and_readme(tmp_path: Path) -> None:
    labels = make_phantom_dataset(tmp_path, seed=3, **SMALL)
    assert labels == tmp_path / "labels.csv"
    header, rows = _read_labels(labels)
    assert (
        tuple(header) == LABELS_COLUMNS == ("path", "label", "cls", "subtype", "split", "patient")
    )
    assert len(rows) == 11

    def count(split: str, cls: str) -> int:
        return sum(r["split"] == split and r["cls"] == cls for r in rows)

    assert count("train", "NORMAL") == 4
    assert count("train", "ABNORMAL") == 3
    assert count("test", "NORMAL") == 2
    assert count("test", "ABNORMAL") == 2
    for r in rows:
        abnormal = r["cls"] == "ABNORMAL"
        assert r["label"] == ("1" if abnormal else "0")
        assert r["subtype"] == (LESION_SUBTYPE if abnormal else "")
        assert r["path"].startswith(f"{r['split']}/{r['cls']}/phantom-")
        assert r["patient"].startswith("P") and len(r["patient"]) == 6
        img = Image.open(tmp_path / r["path"])
        assert img.mode == "L" and img.size == (64, 64)
    assert len({r["patient"] for r in rows}) == len(rows)
    assert rows[0]["path"] == "train/NORMAL/phantom-00001.png" and rows[0]["patient"] == "P00001"
    for sub in ("train/NORMAL", "train/ABNORMAL", "test/NORMAL", "test/ABNORMAL"):
        assert (tmp_path / sub).is_dir()
    readme = (tmp_path / "README.txt").read_text(encoding="utf-8")
    assert "SYNTHETIC" in readme and "seed 3" in readme and "Not real patients" in readme


def test_dataset_is_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_phantom_dataset(a, seed=7, **SMALL)
    make_phantom_dataset(b, seed=7, **SMALL)
    make_phantom_dataset(c, seed=8, **SMALL)
    pa, pb, pc = _png_bytes(a), _png_bytes(b), _png_bytes(c)
    assert pa == pb
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    assert pa.keys() == pc.keys()
    assert all(pa[k] != pc[k] for k in pa)


def test_phantom_image_dtype_shape_and_variety() -> None:
    imgs = [phantom_image(np.random.default_rng(i), size=96) for i in range(4)]
    for img in imgs:
        assert img.dtype == np.uint8 and img.shape == (96, 96)
        assert img.min() < 40 and img.max() > 150  # air background and bright bone both present
    assert not np.array_equal(imgs[0], imgs[1])
    again = phantom_image(np.random.default_rng(0), size=96)
    np.testing.assert_array_equal(again, imgs[0])


def test_phantom_image_rejects_tiny_size() -> None:
    with pytest.raises(ValueError):
        phantom_image(np.random.default_rng(0), size=8)
    with pytest.raises(ValueError):
        make_phantom_dataset(Path("unused"), n_train_normal=-1)


@pytest.mark.parametrize(("kind", "sign"), [("lucent", -1.0), ("opaque", 1.0)])
def test_lesions_darken_or_brighten_the_lungs(kind: str, sign: float) -> None:
    # Lung fields sit in two fixed-ish boxes (image-left and image-right of the spine, mid-height).
    size = 64
    rows = slice(int(0.30 * size), int(0.70 * size))
    lung_cols = np.r_[int(0.15 * size) : int(0.38 * size), int(0.62 * size) : int(0.85 * size)]

    def lung_mean(abnormal: bool) -> float:
        means = []
        for i in range(50):
            rng = np.random.default_rng([99, i])
            img = phantom_image(rng, size=size, abnormal=abnormal, kind=kind)
            means.append(img[rows][:, lung_cols].astype(np.float64).mean())
        return float(np.mean(means))

    assert sign * (lung_mean(True) - lung_mean(False)) > 3.0  # grey levels (0..255)


@pytest.mark.parametrize("kind", ["lucent", "opaque"])
def test_lesions_exactly_in_abnormal_images(kind: str) -> None:
    # Same rng state with and without lesions: the same synthetic patient, exposure and noise, so
    # the two images differ only where the lesions were drawn.
    sign = 1.0 if kind == "opaque" else -1.0
    for i in range(6):
        img_n, les_n = phantom_with_lesions(np.random.default_rng([4, i]), 64, False, kind)
        img_a, les_a = phantom_with_lesions(np.random.default_rng([4, i]), 64, True, kind)
        assert les_n.dtype == np.float32 and les_n.shape == (64, 64) and not les_n.any()
        signed = sign * les_a  # the attenuation added (opaque) or removed (lucent), >= 0
        assert signed.min() >= 0.0 and signed.max() > 0.1
        diff = sign * (img_a.astype(np.int16) - img_n.astype(np.int16))
        # Away from the lesions only rounding may differ (one grey level; 0.001 of attenuation
        # stays under half a level through contrast and gamma).
        assert np.abs(diff[signed < 0.001]).max() <= 1
        dense = signed > 0.1
        assert dense.sum() >= 20 and diff[dense].mean() > 8.0  # brighter, or darker
        np.testing.assert_array_equal(img_n, phantom_image(np.random.default_rng([4, i]), 64))
    with pytest.raises(ValueError, match="lesion kind"):
        phantom_with_lesions(np.random.default_rng(0), 64, True, "cavitary")


def test_dataset_images_carry_lesions_exactly_when_labelled_abnormal(tmp_path: Path) -> None:
    make_phantom_dataset(tmp_path, seed=5, **SMALL)
    _, rows = _read_labels(tmp_path / "labels.csv")
    for k, row in enumerate(rows, start=1):  # image k is drawn from default_rng([seed, k])
        abnormal = row["label"] == "1"
        img, lesions = phantom_with_lesions(np.random.default_rng([5, k]), 64, abnormal=abnormal)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / row["path"])), img)
        assert lesions.any() == abnormal
