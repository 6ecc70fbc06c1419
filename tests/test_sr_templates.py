"""Decision SRs from templates (runtime/sr_templates.py): for generated sources (present, empty
and absent patient, study, equipment and image attributes, CR/DX/SC), scores and decisions, the
SR filled from a template equals the SR highdicom builds for the same source and record,
attribute by attribute, except the generated UIDs and the creation date and time; dciodvfy
finds no error in it; abstained records are built by highdicom."""

from __future__ import annotations

import datetime
import io
import string
from pathlib import Path

import pydicom
import pytest
from conftest import SR_ALGORITHM, SR_OPERATING_POINT, dciodvfy_errors, require_dicom_cxr
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ddad_edge.runtime.dicom_results import build_sr, encode
from ddad_edge.runtime.scorer import ScoreResult
from ddad_edge.runtime.sr_templates import DecisionSRs

hd = pytest.importorskip("highdicom", reason="the report extra (highdicom) is not installed")

CLASSES = {  # SOP class -> Modality
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.7": "OT",
}

_text = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9 .-]{0,10}[A-Za-z0-9])?", fullmatch=True)
_code = st.text(string.ascii_uppercase + string.digits + "_", min_size=1, max_size=10)
_years = {"min_value": datetime.datetime(1900, 1, 1), "max_value": datetime.datetime(2099, 12, 31)}
_date = st.datetimes(**_years).map(lambda d: d.strftime("%Y%m%d"))
_time = st.times().map(lambda t: t.strftime("%H%M%S"))
_name = st.tuples(_text, _text).map(lambda p: f"{p[0]}^{p[1]}")
_int = st.integers(1, 9999).map(str)
_ds = st.floats(0.1, 300).map(lambda v: f"{v:.3f}")
VALUES = {  # keyword -> strategy for a valid value (strings, as a file holds them)
    # patient and study (highdicom copies these)
    "PatientName": _name, "PatientID": _text, "PatientBirthDate": _date,
    "PatientAge": st.integers(0, 120).map(lambda a: f"{a:03d}Y"), "PatientSize": _ds,
    "PatientWeight": _ds, "IssuerOfPatientID": _text, "EthnicGroup": _text,
    "PatientComments": _text, "StudyDate": _date, "StudyTime": _time,
    "AccessionNumber": _text, "StudyID": _text, "ReferringPhysicianName": _name,
    "StudyDescription": _text, "PhysiciansOfRecord": _name,
    "NameOfPhysiciansReadingStudy": _name, "AdmittingDiagnosesDescription": _text,
    # equipment (highdicom's Contributing Equipment), image and series (the SR's own)
    "Manufacturer": _text, "ManufacturerModelName": _text, "DeviceSerialNumber": _text,
    "SoftwareVersions": _text, "InstitutionName": _text, "InstitutionAddress": _text,
    "InstitutionalDepartmentName": _text, "StationName": _text,
    "AcquisitionDateTime": st.datetimes(**_years).map(lambda t: t.strftime("%Y%m%d%H%M%S")),
    "AcquisitionDate": _date, "AcquisitionTime": _time, "ContentDate": _date,
    "ContentTime": _time, "SeriesDate": _date, "SeriesTime": _time,
    "InstanceCreationDate": _date, "InstanceCreationTime": _time, "InstanceNumber": _int,
    "SeriesNumber": _int, "SeriesDescription": _text, "ImageComments": _text,
    "BodyPartExamined": st.sampled_from(["CHEST", "THORAX"]), "ViewPosition": _code,
}  # fmt: skip
EQUIPMENT = {
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber",
    "InstitutionName", "InstitutionalDepartmentName", "InstitutionAddress", "StationName",
}  # fmt: skip
NEVER_EMPTY = {"AcquisitionDateTime", "InstanceNumber", "SeriesNumber"}


def _source(
    draw: st.DrawFn, sop: str, present: dict[str, bool], fixed: dict[str, str], seq: bool
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.Modality = sop, CLASSES[sop]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 64
    for kw, empty in present.items():
        setattr(ds, kw, "" if empty else draw(VALUES[kw]))
    if seq:  # a sequence the Study module copies
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = draw(_code), "99LOCAL"
        item.CodeMeaning = draw(_text)
        ds.ProcedureCodeSequence = [item]
    for kw, value in fixed.items():
        setattr(ds, kw, value)
    return ds


@st.composite
def same_shape_sources(draw: st.DrawFn) -> tuple[Dataset, Dataset, Dataset]:
    """Three sources of one shape: same attributes present and empty, same equipment (one
    scanner), other values."""
    sop = draw(st.sampled_from(sorted(CLASSES)))
    keys = draw(st.sets(st.sampled_from(sorted(VALUES))))
    present = {k: k not in NEVER_EMPTY and draw(st.booleans()) for k in sorted(keys)}
    fixed = {"PatientSex": draw(st.sampled_from(["", "M", "F", "O"]))}
    for kw in EQUIPMENT & set(present):
        fixed[kw] = "" if present.pop(kw) else draw(VALUES[kw])
    if draw(st.booleans()):
        fixed["SpecificCharacterSet"] = "ISO_IR 100"
    seq = draw(st.booleans())
    return tuple(_source(draw, sop, present, fixed, seq) for _ in range(3))  # type: ignore[return-value]


def _record(draw: st.DrawFn, flag: str | None, names: list[str]) -> ScoreResult:
    value = st.floats(-1e6, 1e6, allow_nan=False) | st.floats(0, 1e-3)
    scores = {n: draw(value) for n in names}
    op = SR_OPERATING_POINT if flag else None
    return ScoreResult("x.dcm", scores=scores, flag=flag, operating_point=op)


def _comparable(sr: Dataset) -> tuple[dict, dict]:
    """The SR as read back by a receiver, without the generated UIDs and the creation date and
    time (SOP Instance UID, Tracking Unique Identifier, highdicom's Contribution DateTime)."""
    ds = pydicom.dcmread(io.BytesIO(encode(sr)))
    for kw in ("SOPInstanceUID", "InstanceCreationDate", "InstanceCreationTime"):
        del ds[kw]
    for kw in ("ContentDate", "ContentTime"):
        del ds[kw]
    del ds.file_meta.MediaStorageSOPInstanceUID
    del ds.file_meta.FileMetaInformationGroupLength  # the UIDs' lengths differ
    software = ds.ContributingEquipmentSequence[-1]
    assert software.ManufacturerModelName == "highdicom"
    del software.ContributionDateTime
    items = [ds]
    while items:
        item = items.pop()
        name = item.get("ConceptNameCodeSequence")
        if name and (name[0].CodingSchemeDesignator, name[0].CodeValue) == ("DCM", "112040"):
            del item.UID
        items += list(item.get("ContentSequence", []))
    return ds.to_json_dict(), ds.file_meta.to_json_dict()


@settings(
    max_examples=25,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sources=same_shape_sources(), data=st.data())
def test_template_sr_equals_highdicom_sr(sources, data, tmp_path_factory) -> None:
    first, second, third = sources
    flag = data.draw(st.sampled_from(["abnormal", "normal", None]))
    names = data.draw(st.sampled_from([["rec", "intra", "inter"], ["inter"], ["asr", "inter"]]))
    srs = DecisionSRs(SR_ALGORITHM)
    srs.build(first, _record(data.draw, flag, names))  # built by highdicom: the template
    assert srs.templates() == 1
    for source in (second, third):
        rec = _record(data.draw, flag, names)
        series = generate_uid()
        fast = srs.build(source, rec, series_instance_uid=series)
        assert not isinstance(fast, hd.sr.Comprehensive3DSR)  # it did come from the template
        slow = build_sr(source, rec, SR_ALGORITHM, series_instance_uid=series)
        assert _comparable(fast) == _comparable(slow)
        assert fast.SOPInstanceUID != slow.SOPInstanceUID != source.SOPInstanceUID
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    path.write_bytes(encode(fast))
    assert dciodvfy_errors(path) == []
    # another shape (one attribute fewer or more) gets its own template
    other = second.copy()
    if "StudyDescription" in other:
        del other.StudyDescription
    else:
        other.StudyDescription = "other"
    srs.build(other, _record(data.draw, flag, names))
    assert srs.templates() == 2


def test_abstained_and_dicom_cxr_sources(tmp_path: Path) -> None:
    """Abstained records are built by highdicom; every real film of dicom-cxr, sent again as
    a new instance, gets the template SR highdicom would build."""
    srs = DecisionSRs(SR_ALGORITHM)
    for path in sorted((require_dicom_cxr() / "original").glob("*.dcm")):
        src = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        abstained = ScoreResult(str(path), reason="view LATERAL is not PA/AP")
        assert isinstance(srs.build(src, abstained), hd.sr.Comprehensive3DSR)
        rec = ScoreResult(
            str(path), scores={"inter": 0.05}, flag="abnormal", operating_point=SR_OPERATING_POINT
        )
        srs.build(src, rec)
        again = src.copy()
        again.SOPInstanceUID, again.StudyInstanceUID = generate_uid(), generate_uid()
        series = generate_uid()
        fast = srs.build(again, rec, series_instance_uid=series)
        slow = build_sr(again, rec, SR_ALGORITHM, series_instance_uid=series)
        assert _comparable(fast) == _comparable(slow), path.name
        out = tmp_path / f"{path.stem}.dcm"
        out.write_bytes(encode(fast))
        assert dciodvfy_errors(out) == [], path.name
