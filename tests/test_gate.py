"""The input gate on real DICOM chest radiographs and on variants of them (view, modality, body
part, photometry, size, age, for-processing), and its place in the Scorer's results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import require_dicom_cxr

from ddad_edge.runtime.gate import (
    ARRAY_NOTE,
    NOT_DICOM_NOTE,
    GateLimits,
    check_dataset,
    check_file,
    patient_age_years,
)
from ddad_edge.runtime.io import ImageLoadError


def real_dicoms() -> list[Path]:
    return sorted((require_dicom_cxr() / "original").iterdir())


def header(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(
        next(p for p in real_dicoms() if name in p.name), force=True, stop_before_pixels=True
    )


def test_every_real_chest_file_passes() -> None:
    for path in real_dicoms():
        g = check_file(path)
        assert g.accepted, (path.name, g.reason)
        assert g.reason is None


def test_absent_body_part_and_view_are_accepted_with_notes() -> None:
    g = check_file(next(p for p in real_dicoms() if p.name.startswith("nccid")))
    assert g.accepted
    assert any("Body Part Examined absent" in n for n in g.notes)
    assert any("View Position absent" in n for n in g.notes)


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("ViewPosition", "LL", "view position LL is not PA or AP"),
        ("ViewPosition", "RL", "view position RL"),
        ("Modality", "CT", "modality CT is not CR or DX"),
        ("Modality", "MG", "modality MG"),
        ("BodyPartExamined", "ABDOMEN", "body part ABDOMEN is not CHEST"),
        ("PhotometricInterpretation", "RGB", "photometric interpretation RGB"),
        ("Rows", 32, "below 64 pixels"),
        ("PresentationIntentType", "FOR PROCESSING", "for processing"),
    ],
)
def test_variants_abstain_with_reason(keyword: str, value: object, expected: str) -> None:
    ds = header("CR-MONO1-10-chest")
    assert check_dataset(ds).accepted
    setattr(ds, keyword, value)
    g = check_dataset(ds)
    assert not g.accepted
    assert expected in g.reason


def test_view_ap_and_missing_modality() -> None:
    ds = header("966_fixed")
    ds.ViewPosition = "AP"
    assert check_dataset(ds).accepted
    del ds.Modality
    assert "modality (missing)" in check_dataset(ds).reason


def test_size_limits() -> None:
    ds = header("CR-MONO1-10-chest")  # 440 x 440
    assert "below 441 pixels" in check_dataset(ds, limits=GateLimits(min_side=441)).reason
    assert check_dataset(ds, limits=GateLimits(min_side=440)).accepted


def test_patient_age_against_population() -> None:
    assert patient_age_years("062Y") == 62
    assert patient_age_years("006M") == pytest.approx(0.5)
    assert patient_age_years("62") == 62  # bare digits: years
    assert patient_age_years("6Y") is None
    ds = header("siim")  # PatientAge 62
    assert check_dataset(ds, age_years=(18, 90)).accepted
    g = check_dataset(ds, age_years=(0, 10))
    assert not g.accepted and "outside the training population" in g.reason
    ds.PatientAge = "004Y"
    assert check_dataset(ds, age_years=(0, 10)).accepted
    del ds.PatientAge
    g = check_dataset(ds, age_years=(0, 10))
    assert g.accepted and any("Patient Age absent" in n for n in g.notes)


def test_variant_files_and_non_dicom(tmp_path: Path) -> None:
    src = next(p for p in real_dicoms() if "siim" in p.name)
    ds = pydicom.dcmread(src)
    ds.ViewPosition = "LL"
    lateral = tmp_path / "lateral.dcm"
    ds.save_as(lateral)
    assert check_file(lateral).reason == "view position LL is not PA or AP (frontal views only)"
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((70, 70), np.uint8)).save(png)
    g = check_file(png)
    assert g.accepted and g.notes == [NOT_DICOM_NOTE]
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    with pytest.raises(ImageLoadError):
        check_file(bad)
    assert ARRAY_NOTE.startswith("array input")
