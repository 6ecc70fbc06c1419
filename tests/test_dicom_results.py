"""DICOM results: the TID 1500 SR and the heat-map Secondary Capture pass dciodvfy (dicom3tools)
with no errors, keep the source's patient/study identification and study, and read back through
pydicom and highdicom's SR API with the values that went in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import SR_ALGORITHM, SR_OPERATING_POINT, dciodvfy_errors, require_dicom_cxr

from ddad_edge.runtime.dicom_results import (
    NOT_FOR_DIAGNOSIS,
    build_heatmap_sc,
    build_sr,
)
from ddad_edge.runtime.scorer import ScoreResult

hd = pytest.importorskip("highdicom", reason="the report extra (highdicom) is not installed")

SCORES = {"rec": 0.101, "intra": 0.0213, "inter": 0.0537}


def source(name: str) -> Path:
    return next(p for p in sorted((require_dicom_cxr() / "original").iterdir()) if name in p.name)


def save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def group_of(path: Path):  # noqa: ANN201 - highdicom's group type
    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    return sr, groups[0]


def all_text(ds: pydicom.Dataset) -> str:
    """Every element value of a data set, nested ones included, as one string."""
    return "\n".join(str(e.value) for e in ds.iterall() if e.VR != "SQ")


def check_identity(out: pydicom.Dataset, src: pydicom.Dataset) -> None:
    assert out.StudyInstanceUID == src.StudyInstanceUID
    assert out.SeriesInstanceUID != src.SeriesInstanceUID
    assert out.SOPInstanceUID != src.SOPInstanceUID
    from pydicom import config
    from pydicom.valuerep import validate_value

    for kw in ("PatientID", "PatientName", "PatientSex", "AccessionNumber", "StudyID", "StudyDate"):
        value = src.get(kw, "")
        try:  # copied, or blanked when invalid for its VR (an anonymiser's hash in a date)
            validate_value(src[kw].VR, value, config.RAISE) if kw in src else None
        except ValueError:
            value = ""
        assert str(out.get(kw, "")) == str(value), kw


def _values(ds: pydicom.Dataset) -> list[tuple]:
    """(concept, value) of every content item, in order: what an SR says, UIDs aside."""
    out = []
    for item in ds.get("ContentSequence", []):
        name = item.get("ConceptNameCodeSequence")
        concept = (name[0].CodingSchemeDesignator, name[0].CodeValue) if name else ()
        value = None
        if "MeasuredValueSequence" in item:
            m = item.MeasuredValueSequence[0]
            value = (str(m.NumericValue), m.get("FloatingPointValue"))
        elif "ConceptCodeSequence" in item:
            c = item.ConceptCodeSequence[0]
            value = (c.CodingSchemeDesignator, c.CodeValue, c.CodeMeaning)
        elif "TextValue" in item:
            value = item.TextValue
        out += [(concept, value), *_values(item)]
    return out


@pytest.mark.parametrize("name", ["CR-MONO1-10-chest", "966_fixed", "nccid"])
def test_sr_scored_roundtrip_and_dciodvfy(tmp_path: Path, name: str) -> None:
    src_path = source(name)
    src = pydicom.dcmread(src_path, force=True)
    rec = ScoreResult(
        str(src_path), scores=dict(SCORES), flag="abnormal", operating_point=SR_OPERATING_POINT
    )
    path = save(build_sr(src, rec, SR_ALGORITHM), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    check_identity(back, src)
    sr, g = group_of(path)
    got = {m.name.value: m.value for m in g.get_measurements()}
    assert got["inter"] == pytest.approx(SCORES["inter"])
    assert got["rec"] == pytest.approx(SCORES["rec"])
    assert got["122411"] == pytest.approx(SR_OPERATING_POINT["threshold"])  # DCM Threshold Value
    (ev,) = g.get_qualitative_evaluations()
    assert ev.value.value == "263654008"  # SCT Abnormal
    ref = g.source_images[0].referenced_sop_instance_uid
    assert ref == src.SOPInstanceUID
    text = all_text(back)
    assert "ab" * 32 in text  # bundle digest in the algorithm identification


def test_sr_normal_abstained_and_error(tmp_path: Path) -> None:
    src_path = source("CR-MONO1-10-chest")
    src = pydicom.dcmread(src_path, force=True)
    cases = {
        "normal": (
            ScoreResult(
                "a", scores=dict(SCORES), flag="normal", operating_point=SR_OPERATING_POINT
            ),
            "17621005",
        ),
        "abstained": (ScoreResult("a", reason="view position LL is not PA or AP"), "373121007"),
        "error": (ScoreResult("a", error="pixel data could not be decoded"), "373121007"),
    }
    for case, (rec, code) in cases.items():
        path = save(build_sr(src, rec, SR_ALGORITHM), tmp_path / f"{case}.dcm")
        assert dciodvfy_errors(path) == [], case
        _, g = group_of(path)
        (ev,) = g.get_qualitative_evaluations()
        assert ev.value.value == code, case
        text = all_text(pydicom.dcmread(path))
        if case == "abstained":
            assert "abstained: view position LL is not PA or AP" in text
            assert g.get_measurements() == []
        if case == "error":
            assert "error: pixel data could not be decoded" in text


@pytest.mark.parametrize("name", ["966_fixed", "nccid"])  # nccid: no body part, no laterality
def test_heatmap_sc(tmp_path: Path, name: str) -> None:
    from ddad_edge.runtime.io import load_image

    src_path = source(name)
    src = pydicom.dcmread(src_path, force=True)
    image = load_image(src_path, target_size=256)
    heat = np.zeros((64, 64), np.float32)
    heat[20:40, 30:50] = 1.0
    sc = build_heatmap_sc(src, image, heat, caption="inter map; abnormal at specificity 0.95")
    path = save(sc, tmp_path / "sc.dcm")
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    check_identity(back, src)
    assert back.BurnedInAnnotation == "YES"
    assert back.ImageComments == NOT_FOR_DIAGNOSIS
    (ref,) = back.SourceImageSequence  # the image it was derived from (dciodvfy checks it)
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == src.SOPClassUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    px = back.pixel_array
    h, w = px.shape[:2]
    assert max(h, w) == 1024 and px.shape[2] == 3 and px.dtype == np.uint8
    assert abs(h / w - image.shape[0] / image.shape[1]) < 0.01
    hot = px[int(h * 0.47), int(w * 0.62)].astype(int)
    cold = px[int(h * 0.9), int(w * 0.1)].astype(int)
    assert hot[0] - hot[2] > cold[0] - cold[2]  # the hot region is coloured
    band = px[: h // 20]
    assert band.max() > 200 and band.min() == 0  # the burned-in label's band at the top
