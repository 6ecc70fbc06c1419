"""Decision SRs from templates (runtime/sr_templates.py): for generated sources (present, empty
and absent patient, study, equipment and image attributes, CR/DX/SC), scores and decisions, the
SR spliced from a template equals the SR highdicom builds for the same source and record,
attribute by attribute, except the generated UIDs and the creation date and time; dciodvfy
finds no error in it; its bytes equal pydicom's encoding of the template read back with the
same values set attribute by attribute (:func:`_attribute_fill`, the oracle of the byte
splice); abstained records are built by highdicom."""

from __future__ import annotations

import datetime
import io
import string
from pathlib import Path
from unittest import mock

import pydicom
import pytest
from conftest import SR_ALGORITHM, SR_OPERATING_POINT, dciodvfy_errors, require_dicom_cxr
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DS, DT, TM

from ddad_edge.runtime import sr_templates
from ddad_edge.runtime.dicom_results import _finding, _identified, build_sr, encode
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
_latin1 = st.from_regex(r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6]{1,10}", fullmatch=True)
_latin1_name = st.tuples(_latin1, _latin1).map(lambda p: f"{p[0]}^{p[1]}")
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
# a scanner that says when it acquired the image: highdicom's acquisition Contributing Equipment
# has its Contribution DateTime (few random sets of keys hold both)
ACQUISITION = {"Manufacturer", "AcquisitionDateTime"}


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
    if fixed.get("SpecificCharacterSet"):  # text beyond ASCII, as it declares (PN and LO)
        ds.PatientName, ds.StudyDescription = draw(_latin1_name), draw(_latin1)
    return ds


@st.composite
def same_shape_sources(draw: st.DrawFn) -> tuple[Dataset, Dataset, Dataset]:
    """Three sources of one shape: same attributes present and empty, same equipment (one
    scanner), other values."""
    sop = draw(st.sampled_from(sorted(CLASSES)))
    keys = draw(st.sets(st.sampled_from(sorted(VALUES))))
    keys |= ACQUISITION if draw(st.booleans()) else set()
    present = {k: k not in NEVER_EMPTY and draw(st.booleans()) for k in sorted(keys)}
    fixed = {"PatientSex": draw(st.sampled_from(["", "M", "F", "O"]))}
    for kw in EQUIPMENT & set(present):
        fixed[kw] = "" if present.pop(kw) else draw(VALUES[kw])
    if draw(st.booleans()):
        fixed["SpecificCharacterSet"] = draw(st.sampled_from(["ISO_IR 100", "ISO_IR 192"]))
    seq = draw(st.booleans())
    return tuple(_source(draw, sop, present, fixed, seq) for _ in range(3))  # type: ignore[return-value]


def _record(draw: st.DrawFn, flag: str | None, names: list[str]) -> ScoreResult:
    value = st.floats(-1e6, 1e6, allow_nan=False) | st.floats(0, 1e-3)
    scores = {n: draw(value) for n in names}
    op = SR_OPERATING_POINT if flag else None
    return ScoreResult("x.dcm", scores=scores, flag=flag, operating_point=op)


def _comparable(data: bytes) -> tuple[dict, dict]:
    """The encoded SR ``data`` as read back by a receiver, without the generated UIDs and the
    creation date and time (SOP Instance UID, Tracking Unique Identifier, highdicom's
    Contribution DateTime)."""
    ds = pydicom.dcmread(io.BytesIO(data))
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


def _no_highdicom() -> mock._patch:
    """A context in which building an SR with highdicom fails the test (it must come from the
    template)."""
    return mock.patch.object(sr_templates, "build_sr", side_effect=AssertionError("not a template"))


def _only_template(srs: DecisionSRs) -> sr_templates._Template:
    (template,) = [t for t in srs._templates.values() if t is not None]
    return template


def _attribute_fill(
    data: bytes,
    template: sr_templates._Template,
    source: Dataset,
    record: ScoreResult,
    stamp: sr_templates._Stamp,
) -> Dataset:
    """The oracle of the byte splice: the template SR ``data`` read back by pydicom, with every
    per-image attribute of ``source`` (identified) and ``record`` set, the UIDs and time from
    ``stamp``."""
    sr = pydicom.dcmread(io.BytesIO(data))
    where = template.where
    for tag in where.copied:
        sr[tag] = source[tag]
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = stamp.sop_instance_uid
    sr.SeriesInstanceUID = stamp.series_instance_uid
    sr.InstanceCreationDate = sr.ContentDate = DA(stamp.now.date())
    sr.InstanceCreationTime = sr.ContentTime = TM(stamp.now.time())
    *acquisition, software = sr.ContributingEquipmentSequence
    software.ContributionDateTime = DT(stamp.now)
    acquired = sr_templates._acquisition_datetime(source)
    for item in acquisition:
        if acquired is not None:
            item.ContributionDateTime = DT(acquired)
    study, series, instance = sr_templates._evidence_ref(sr)
    study.StudyInstanceUID = source.StudyInstanceUID
    series.SeriesInstanceUID = source.SeriesInstanceUID
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    (ref,) = sr_templates._at(sr, where.image).ReferencedSOPSequence
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sr_templates._at(sr, where.tracking).UID = stamp.tracking_uid
    for name, path in where.scores.items():
        value = float((record.scores or {})[name])
        measured = sr_templates._at(sr, path).MeasuredValueSequence[0]
        measured.NumericValue = DS(value, auto_format=True)
        measured.FloatingPointValue = value
    code, _ = _finding(record)
    concept = sr_templates._at(sr, where.assessment).ConceptCodeSequence[0]
    concept.CodeValue, concept.CodeMeaning = code.value, code.meaning
    concept.CodingSchemeDesignator = code.scheme_designator
    return sr


def _assert_splice_is_pydicoms(
    srs: DecisionSRs, data: bytes, source: Dataset, record: ScoreResult, now: datetime.datetime
) -> None:
    """``srs`` (holding the one template, whose SR is ``data``) gives, for ``source`` and
    ``record`` at ``now``, the bytes pydicom writes for the attribute-level fill."""
    stamp = sr_templates._Stamp(generate_uid(), generate_uid(), generate_uid(), now)
    with _no_highdicom(), mock.patch.object(sr_templates, "_stamp", return_value=stamp):
        got = srs.build_encoded(source, record, series_instance_uid=stamp.series_instance_uid)
    template = _only_template(srs)
    want = encode(_attribute_fill(data, template, _identified(source), record, stamp))
    assert got == (want, stamp.sop_instance_uid, template.sop_class_uid)


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
    srs.build_encoded(first, _record(data.draw, flag, names))  # built by highdicom: the template
    assert srs.templates() == 1
    for source in (second, third):
        rec = _record(data.draw, flag, names)
        series = generate_uid()
        with _no_highdicom():
            fast, uid, sop_class = srs.build_encoded(source, rec, series_instance_uid=series)
        slow = build_sr(source, rec, SR_ALGORITHM, series_instance_uid=series)
        assert _comparable(fast) == _comparable(encode(slow))
        read = pydicom.dcmread(io.BytesIO(fast))
        assert (read.SOPInstanceUID, read.SOPClassUID) == (uid, sop_class)
        assert uid != slow.SOPInstanceUID != source.SOPInstanceUID
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    path.write_bytes(fast)
    assert dciodvfy_errors(path) == []
    # another shape (one attribute fewer or more) gets its own template
    other = second.copy()
    if "StudyDescription" in other:
        del other.StudyDescription
    else:
        other.StudyDescription = "other"
    srs.build_encoded(other, _record(data.draw, flag, names))
    assert srs.templates() == 2


@settings(
    max_examples=60,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sources=same_shape_sources(), data=st.data(), now=st.datetimes(**_years))
def test_spliced_bytes_equal_pydicom_encoding(sources, data, now) -> None:
    """Byte for byte, with the same UIDs and time, for generated sources, scores (any float,
    tiny ones), decisions and moments (with and without microseconds)."""
    first, *others = sources
    flag = data.draw(st.sampled_from(["abnormal", "normal", None]))
    names = data.draw(st.sampled_from([["rec", "intra", "inter"], ["inter"], ["asr", "inter"]]))
    srs = DecisionSRs(SR_ALGORITHM)
    template, _, _ = srs.build_encoded(first, _record(data.draw, flag, names))
    for source in others:
        _assert_splice_is_pydicoms(srs, template, source, _record(data.draw, flag, names), now)


def test_tags_are_pydicoms() -> None:
    from pydicom.datadict import tag_for_keyword

    assert {k: tag_for_keyword(k) for k in sr_templates._TAG} == sr_templates._TAG


def test_abstained_and_dicom_cxr_sources(tmp_path: Path) -> None:
    """Abstained records are built by highdicom; every real film of dicom-cxr, sent again as
    a new instance, gets the template SR highdicom would build, byte for byte pydicom's
    encoding of the attribute-level fill."""
    for path in sorted((require_dicom_cxr() / "original").glob("*.dcm")):
        srs = DecisionSRs(SR_ALGORITHM)
        src = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        abstained = ScoreResult(str(path), reason="view LATERAL is not PA/AP")
        with mock.patch.object(sr_templates, "build_sr", wraps=build_sr) as built:
            srs.build_encoded(src, abstained)
        built.assert_called_once()
        assert srs.templates() == 0
        rec = ScoreResult(
            str(path), scores={"inter": 0.05}, flag="abnormal", operating_point=SR_OPERATING_POINT
        )
        template, _, _ = srs.build_encoded(src, rec)
        again = src.copy()
        again.SOPInstanceUID, again.StudyInstanceUID = generate_uid(), generate_uid()
        series = generate_uid()
        with _no_highdicom():
            fast, _, _ = srs.build_encoded(again, rec, series_instance_uid=series)
        slow = build_sr(again, rec, SR_ALGORITHM, series_instance_uid=series)
        assert _comparable(fast) == _comparable(encode(slow)), path.name
        out = tmp_path / f"{path.stem}.dcm"
        out.write_bytes(fast)
        assert dciodvfy_errors(out) == [], path.name
        _assert_splice_is_pydicoms(srs, template, again, rec, datetime.datetime.now())
