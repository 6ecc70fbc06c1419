"""AUC parity and speed of reduced-resolution JPEG 2000 decoding (``runtime/dicom.py``), run as
``python -m ddad_edge.benchmarks.j2k_reduce`` (benchmarks/README.md):

- ``encode SPLIT.json OUT/ [--upsample F] [--fullres]``: each test image of a split (or of a
  ``labels.csv`` folder) as a grey 8-bit DX DICOM, JPEG 2000 Lossless (pixels exact: the arms
  differ only in the decoded resolution), optionally upsampled F x (bicubic) first;
- ``compare BUNDLE OUT/ [-o result.json]``: every file decoded at full resolution and at the
  scorer's reduced level, both scored (FP32): each score's AUC from both, |ΔAUC| against the
  reduced-precision tolerance, the largest relative change of an image score, decode times.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.benchmarks.lanes import REDUCED_TOLERANCE


def _dicom(grey: np.ndarray, uid_seed: str) -> Any:
    """A minimal DX data set holding ``grey`` (uint8 [H, W]), JPEG 2000 Lossless."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation as DX
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DX, generate_uid(entropy_srcs=[uid_seed])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.compress(JPEG2000Lossless, np.ascontiguousarray(grey))
    return ds


def encode(items: list[tuple[Path, int]], out: Path, upsample: int) -> int:
    """Write one JPEG 2000 DICOM per (image, label) and ``out/labels.csv``; returns the count."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (src, label) in enumerate(items):
        with Image.open(src) as im:
            g = im.convert("L")
            if upsample > 1:
                g = g.resize((g.width * upsample, g.height * upsample), Image.BICUBIC)
            grey = np.asarray(g, np.uint8)
        name = f"{i:04d}.dcm"
        _dicom(grey, str(src)).save_as(out / name, enforce_file_format=True)
        rows.append((name, label, str(src)))
    with open(out / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "label", "source"), *rows])
    return len(rows)


def _split_items(split: Path) -> list[tuple[Path, int]]:
    m = json.loads(split.read_text())
    root = Path(m["root"])
    return [(root / p, int(y)) for p, y in zip(m["test"], m["test_labels"], strict=True)]


def _fullres_items(folder: Path) -> list[tuple[Path, int]]:
    with open(folder / "labels.csv", newline="") as fh:
        return [(folder / r["path"], int(r["label"])) for r in csv.DictReader(fh)]


def _decoded(path: Path, arm: str) -> tuple[np.ndarray, float, tuple[int, ...]]:
    """(preprocessed input, decode ms, decoded shape) of ``path``, at full resolution (``arm``
    "full") or at the reduced level the scorer uses ("reduced")."""
    from ddad_edge.runtime.io import read_image
    from ddad_edge.runtime.preprocess import preprocess

    kw = {"target_size": None} if arm == "full" else {}
    t = time.perf_counter()
    image = read_image(path, **kw).image
    ms = (time.perf_counter() - t) * 1e3
    return preprocess(image), ms, tuple(int(d) for d in image.shape[:2])


def compare(bundle: Path, folder: Path) -> dict[str, Any]:
    """Score every file of ``folder`` (``labels.csv``) from both decodes; the parity result."""
    from ddad_edge.runtime.metrics import roc_auc
    from ddad_edge.runtime.scorer import Scorer

    with open(folder / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([int(r["label"]) for r in rows])
    # each file decoded full then reduced, as before
    decoded = [[_decoded(folder / r["file"], arm) for arm in ("full", "reduced")] for r in rows]
    arms = {arm: [d[i] for d in decoded] for i, arm in enumerate(("full", "reduced"))}
    times = {arm: np.array([t for _, t, _ in ds]) for arm, ds in arms.items()}
    scorer = Scorer.from_bundle(bundle, backend="ort-cpu", max_batch=32)
    scores = {}
    for arm, ds in arms.items():
        x = np.stack([x for x, _, _ in ds])
        scores[arm] = scorer.scores(x, scorer.infer(x)).image
    full, reduced = scores["full"], scores["reduced"]
    aucs = {
        n: {"full": roc_auc(labels, full[n]), "reduced": roc_auc(labels, reduced[n])} for n in full
    }
    for a in aucs.values():
        a["delta"] = a["reduced"] - a["full"]
    return {
        "files": len(rows),
        "abnormal": int(labels.sum()),
        "reduced_shapes": sorted({shape for _, _, shape in arms["reduced"]})[:5],
        "auc": aucs,
        "tolerance": REDUCED_TOLERANCE,
        "passed": all(abs(a["delta"]) <= REDUCED_TOLERANCE for a in aucs.values()),
        "max_relative_score_change": {
            n: float(np.max(np.abs(reduced[n] / full[n] - 1))) for n in full
        },
        "decode_ms_median": {arm: float(np.median(t)) for arm, t in times.items()},
        "speedup_median": float(np.median(times["full"] / times["reduced"])),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ddad_edge.benchmarks.j2k_reduce")
    sub = ap.add_subparsers(dest="cmd", required=True)
    enc = sub.add_parser("encode")
    enc.add_argument("split", type=Path, help="split manifest (its test images), or a folder")
    enc.add_argument("out", type=Path)
    enc.add_argument("--upsample", type=int, default=1)
    enc.add_argument("--fullres", action="store_true", help="SPLIT is a labels.csv folder")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("bundle", type=Path)
    cmp_.add_argument("folder", type=Path)
    cmp_.add_argument("-o", "--output", type=Path)
    cmp_.add_argument("--margin", type=int, help="override runtime.dicom.J2K_MARGIN (a trial)")
    a = ap.parse_args(argv)
    if a.cmd == "encode":
        items = _fullres_items(a.split) if a.fullres else _split_items(a.split)
        print(f"{encode(items, a.out, a.upsample)} files written to {a.out}")
        return
    if a.margin:
        from ddad_edge.runtime import dicom

        dicom.J2K_MARGIN = a.margin
    result = compare(a.bundle, a.folder)
    from ddad_edge.runtime.dicom import J2K_MARGIN

    result["margin"] = a.margin or J2K_MARGIN
    text = json.dumps(result, indent=2)
    if a.output:
        a.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
