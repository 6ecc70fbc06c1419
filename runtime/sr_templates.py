"""Decision SRs from templates: the encoded SR of a scored image without per-image highdicom or
pydicom work on the whole data set.

Building the TID 1500 SR with highdicom (:func:`~ddad_edge.runtime.dicom_results.build_sr`) and
encoding it with pydicom is pure Python that costs several times an image's decode and score;
so does reading an encoded SR back and writing it again. For one bundle and operating point,
the SRs of two scored images whose headers have the same *shape* (below) differ only in values
that come from the image or from the moment: so highdicom builds the SR once per shape, its
encoded bytes are kept as a template, and each image's SR is those bytes with every per-image
element replaced (:func:`_values` lists them, :func:`_splice` writes them):

- top level: the source's Patient and Study attributes that highdicom copied (every attribute
  of the template that the source also has, except those the SR sets itself, ``_OWN``);
- SOP Instance UID (and the file meta's), Series Instance UID, Instance Creation and Content
  Date and Time;
- Contributing Equipment Sequence: the acquisition equipment's Contribution DateTime (the
  source's acquisition date-time, as highdicom takes it) and highdicom's (the creation time);
- Current Requested Procedure Evidence Sequence: the source's study, series, SOP class and
  instance;
- content tree: the source image reference, the Tracking Unique Identifier, the image scores
  and the decision (Abnormal / Normal).

The template is the encoded file (explicit VR little endian) cut into parts (:func:`_layout`):
unchanged bytes, *slots* (one per-image element each, addressed by its :data:`ElementPath`)
and *containers* (the file meta group, and each sequence and item holding a slot) whose length
field is written again from what they hold, since pydicom writes sequences and items with
explicit lengths and a replaced value may change its length. A slot's element is encoded here
(tag, VR, length, value padded to even length) or, for an attribute copied from the source (any
VR, sequences included), by pydicom's writer for that one element.

The shape (the cache key) is everything else the SR depends on: the record's score names,
operating point and whether it has a decision; the source's attributes after
``dicom_results._identified`` (each tag, VR and whether it is empty), its SOP Class UID,
Specific Character Set, Patient's Sex (highdicom checks it) and equipment (manufacturer, model,
serial number, software, institution, station: highdicom's Contributing Equipment). A template
is only kept when building it shows that the copied attributes and the source's UIDs sit
exactly where :func:`_values` puts them (:func:`_locate`), that the encoded SR holds each of
those elements, with defined lengths, and that each value fits its element's VR
(:func:`_plan`); otherwise that shape is always built by highdicom.
``tests/test_sr_templates.py`` checks, over generated sources, scores and decisions, that the
SR from a template equals the SR highdicom builds, attribute by attribute, except the generated
UIDs and the creation date and time, that dciodvfy finds no error in it, and that its bytes
equal pydicom's encoding of the template data set with the same values set attribute by
attribute.
"""

from __future__ import annotations

import datetime
import json
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ddad_edge.runtime.dicom_results import (
    SCHEME,
    AlgorithmInfo,
    _finding,
    _identified,
    build_sr,
    encode,
)

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

    from ddad_edge.runtime.scorer import ScoreResult

MAX_TEMPLATES = 64
"""Templates kept per bundle (least recently used dropped first)."""

# Top-level attributes the SR sets itself (highdicom and build_sr): never copied from the source
# even when the source has them too.
_OWN = frozenset(
    {
        "SpecificCharacterSet", "InstanceCreationDate", "InstanceCreationTime", "SOPClassUID",
        "SOPInstanceUID", "ContentDate", "ContentTime", "Modality", "Manufacturer",
        "CodingSchemeIdentificationSequence", "SeriesDescription",
        "ReferencedPerformedProcedureStepSequence", "ContributingEquipmentSequence",
        "SeriesInstanceUID", "SeriesNumber", "InstanceNumber", "ValueType",
        "ConceptNameCodeSequence", "ContinuityOfContent", "PerformedProcedureCodeSequence",
        "CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence",
        "CompletionFlag", "VerificationFlag", "PreliminaryFlag", "ContentTemplateSequence",
        "ContentSequence", "SeriesDate", "SeriesTime",
    }
)  # fmt: skip
_TRACKING_UID = ("DCM", "112040")  # Tracking Unique Identifier (TID 4108)
# What highdicom's ContributingEquipment.for_image_acquisition reads besides the date-time
_EQUIPMENT = (
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber",
    "InstitutionName", "InstitutionalDepartmentName", "InstitutionAddress", "StationName",
)  # fmt: skip

Path = tuple[int, ...]  # indices through nested Content Sequences

ElementPath = tuple[int, ...]
"""An element of the encoded SR: the tag of each sequence leading to it followed by the index of
the item, then its own tag, e.g. ``(ContentSequence, 2, UID)``; ``(tag,)`` at the top level."""

# Tags of the per-image elements and of the sequences leading to them
# (tests/test_sr_templates.py checks them against pydicom's dictionary)
_TAG = {
    "MediaStorageSOPInstanceUID": 0x00020003, "SOPInstanceUID": 0x00080018,
    "SeriesInstanceUID": 0x0020000E, "StudyInstanceUID": 0x0020000D,
    "InstanceCreationDate": 0x00080012, "ContentDate": 0x00080023,
    "InstanceCreationTime": 0x00080013, "ContentTime": 0x00080033,
    "ContributingEquipmentSequence": 0x0018A001, "ContributionDateTime": 0x0018A002,
    "CurrentRequestedProcedureEvidenceSequence": 0x0040A375,
    "ReferencedSeriesSequence": 0x00081115, "ReferencedSOPSequence": 0x00081199,
    "ReferencedSOPClassUID": 0x00081150, "ReferencedSOPInstanceUID": 0x00081155,
    "ContentSequence": 0x0040A730, "UID": 0x0040A124, "MeasuredValueSequence": 0x0040A300,
    "NumericValue": 0x0040A30A, "FloatingPointValue": 0x0040A161,
    "ConceptCodeSequence": 0x0040A168, "CodeValue": 0x00080100,
    "CodingSchemeDesignator": 0x00080102, "CodeMeaning": 0x00080104,
}  # fmt: skip
_EVIDENCE = (_TAG["CurrentRequestedProcedureEvidenceSequence"], 0)  # the one study's item
_EVIDENCE_SERIES = (*_EVIDENCE, _TAG["ReferencedSeriesSequence"], 0)
_EVIDENCE_INSTANCE = (*_EVIDENCE_SERIES, _TAG["ReferencedSOPSequence"], 0)

# Encoding (PS3.5 7.1.2, 7.5): explicit VR little endian
_GROUP_LENGTH = (0x00020000, "UL", 4)  # File Meta Information Group Length: tag, VR, length
_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_META_START = 132  # after the 128-byte preamble and "DICM"
_ITEM = 0xFFFEE000
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
# VRs of the per-image values written here (as text, or FD as a binary double)
_TEXT_VRS = frozenset({"CS", "DA", "DS", "DT", "LO", "SH", "TM", "UI"})


@dataclass(frozen=True)
class _Where:
    """Where the per-image values are in the SR data set."""

    copied: tuple[int, ...]  # top-level tags copied from the source
    acquisitions: int  # acquisition equipment items before highdicom's (0 or 1)
    image: Path  # the IMAGE content item referencing the source
    tracking: Path  # the Tracking Unique Identifier
    scores: dict[str, Path]  # score name -> its NUM content item
    assessment: Path  # the decision's CODE content item


@dataclass(frozen=True)
class _Slot:
    """A per-image element of the encoded template."""

    path: ElementPath
    vr: str
    head: bytes  # its tag and VR as encoded


@dataclass(frozen=True)
class _Container:
    """The file meta group, a sequence or an item holding a slot: ``head``, then a 4-byte
    length field counting the bytes of ``parts``, then ``parts``."""

    head: bytes
    parts: tuple[bytes | _Slot | _Container, ...]


Part = bytes | _Slot | _Container
"""Of a template: bytes written as they are, a slot, or a container."""


@dataclass(frozen=True)
class _Template:
    """An encoded SR cut into parts, and where its per-image values are."""

    where: _Where
    parts: tuple[Part, ...]
    slots: dict[ElementPath, _Slot]
    charset: Any  # the SR's Specific Character Set (how copied text values are encoded)
    sop_class_uid: str


@dataclass(frozen=True)
class _Stamp:
    """What is new in each SR: its UIDs and the moment it is made (local time, naive)."""

    sop_instance_uid: str
    series_instance_uid: str
    tracking_uid: str
    now: datetime.datetime


def _stamp(series_instance_uid: str) -> _Stamp:
    """New UIDs and the present moment for one SR in ``series_instance_uid``."""
    from pydicom.uid import generate_uid

    return _Stamp(generate_uid(), series_instance_uid, generate_uid(), datetime.datetime.now())


def _shape(source: Dataset, record: ScoreResult) -> tuple:
    """The cache key: what the SR depends on besides the values :func:`_values` gives."""
    op = json.dumps(record.operating_point, sort_keys=True)
    header = tuple((int(e.tag), e.VR, e.is_empty) for e in source)
    charset = source.get("SpecificCharacterSet")
    charset = tuple(charset) if isinstance(charset, list | tuple) else charset
    fixed = (str(source.SOPClassUID), str(charset), str(source.get("PatientSex", "")))
    equipment = tuple(str(source.get(k)) for k in _EQUIPMENT)
    acquired = _acquisition_datetime(source) is None
    return (tuple(record.scores or {}), op, record.flag is None, fixed, equipment, acquired, header)


def _acquisition_datetime(source: Dataset) -> Any:
    """The acquisition date-time highdicom gives the source's acquisition equipment (as
    ``ContributingEquipment.for_image_acquisition`` takes it), or None."""
    value = source.get("AcquisitionDateTime")
    if value is None:
        date, time = source.get("AcquisitionDate"), source.get("AcquisitionTime")
        if isinstance(date, datetime.date) and isinstance(time, datetime.time):
            value = datetime.datetime.combine(date, time)
    return value


def _items(ds: Dataset, path: Path = ()) -> list[tuple[Path, Dataset]]:
    """Every content item under ``ds`` with its path (depth first)."""
    out = []
    for i, item in enumerate(ds.get("ContentSequence", [])):
        out += [(path + (i,), item), *_items(item, path + (i,))]
    return out


def _at(ds: Dataset, path: Path) -> Dataset:
    for i in path:
        ds = ds.ContentSequence[i]
    return ds


def _concept(item: Dataset) -> tuple[str, str]:
    name = item.get("ConceptNameCodeSequence")
    return (str(name[0].CodingSchemeDesignator), str(name[0].CodeValue)) if name else ("", "")


def _only(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        raise ValueError(f"the SR has {len(paths)} {what}, not one")
    return paths[0]


def _evidence_ref(sr: Dataset) -> tuple[Dataset, Dataset, Dataset]:
    """(study, series, instance) items of the SR's one evidence reference."""
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    return study, series, instance


def _locate(sr: Dataset, source: Dataset, record: ScoreResult) -> _Where:
    """Where the per-image values are in ``sr`` (built by highdicom from ``source`` and
    ``record``).

    Raises:
        ValueError: the per-image values are not (only) where :func:`_values` puts them.
    """
    copied = tuple(
        int(e.tag) for e in sr if e.keyword not in _OWN and e.tag in source and e.tag.group != 2
    )
    for tag in copied:
        if sr[tag].VR != source[tag].VR or sr[tag].value != source[tag].value:
            raise ValueError(f"{sr[tag].keyword} is not a copy of the source's")
    *acquisition, software = sr.ContributingEquipmentSequence
    if software.ManufacturerModelName != "highdicom" or len(acquisition) > 1:
        raise ValueError("the SR's contributing equipment is not the source's and highdicom's")
    items = _items(sr)
    image = _only([p for p, it in items if it.get("ValueType") == "IMAGE"], "image references")
    _check_references(sr, _at(sr, image), source)
    scores = {
        name: _only(
            [p for p, it in items if _concept(it) == (SCHEME, name) and it.ValueType == "NUM"],
            f"'{name}' scores",
        )
        for name in record.scores or {}
    }
    assessment = _only(
        [p for p, it in items if _concept(it) == (SCHEME, "assessment")], "decisions"
    )
    tracking = _only([p for p, it in items if _concept(it) == _TRACKING_UID], "tracking UIDs")
    return _Where(copied, len(acquisition), image, tracking, scores, assessment)


def _check_references(sr: Dataset, image: Dataset, source: Dataset) -> None:
    """Raise ValueError unless the SR's evidence and its IMAGE content item ``image`` reference
    ``source`` (its study, series, SOP class and instance), each once."""
    study, series, instance = _evidence_ref(sr)
    (ref,) = image.ReferencedSOPSequence
    want = (source.StudyInstanceUID, source.SeriesInstanceUID)
    want += (source.SOPClassUID, source.SOPInstanceUID) * 2
    got = (study.StudyInstanceUID, series.SeriesInstanceUID)
    got += (instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID)
    got += (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
    if tuple(map(str, got)) != tuple(map(str, want)):
        raise ValueError("the source's UIDs are not where the template expects them")


def _content(path: Path) -> ElementPath:
    """The element path of the content item at ``path``."""
    out: ElementPath = ()
    for i in path:
        out += (_TAG["ContentSequence"], i)
    return out


def _values(
    where: _Where, source: Dataset, record: ScoreResult, stamp: _Stamp
) -> dict[ElementPath, Any]:
    """Every per-image element of the SR of ``source`` and ``record`` (the module docstring's
    list) by path, its value as :func:`_encode_slot` takes it: the source's data element for a
    copied attribute, the text of a text VR (as pydicom writes it), the float of an FD."""
    from pydicom.filewriter import _format_DA, _format_DT, _format_TM  # as dcmwrite writes them
    from pydicom.valuerep import DA, DT, TM

    values: dict[ElementPath, Any] = {(tag,): source[tag] for tag in where.copied}
    for keyword in ("MediaStorageSOPInstanceUID", "SOPInstanceUID"):
        values[(_TAG[keyword],)] = stamp.sop_instance_uid
    values[(_TAG["SeriesInstanceUID"],)] = stamp.series_instance_uid
    for keyword in ("InstanceCreationDate", "ContentDate"):
        values[(_TAG[keyword],)] = _format_DA(DA(stamp.now.date()))
    for keyword in ("InstanceCreationTime", "ContentTime"):
        values[(_TAG[keyword],)] = _format_TM(TM(stamp.now.time()))
    equipment, when = _TAG["ContributingEquipmentSequence"], _TAG["ContributionDateTime"]
    values[(equipment, where.acquisitions, when)] = _format_DT(DT(stamp.now))  # highdicom's
    acquired = _acquisition_datetime(source)
    for i in range(where.acquisitions if acquired is not None else 0):
        values[(equipment, i, when)] = _format_DT(DT(acquired))
    values.update(_references(where, source))
    values[(*_content(where.tracking), _TAG["UID"])] = stamp.tracking_uid
    values.update(_results(where, record))
    return values


def _references(where: _Where, source: Dataset) -> dict[ElementPath, str]:
    """The source's UIDs in the evidence and in the IMAGE content item (by element path)."""
    sop_class, instance = _TAG["ReferencedSOPClassUID"], _TAG["ReferencedSOPInstanceUID"]
    image = (*_content(where.image), _TAG["ReferencedSOPSequence"], 0)
    return {
        (*_EVIDENCE, _TAG["StudyInstanceUID"]): str(source.StudyInstanceUID),
        (*_EVIDENCE_SERIES, _TAG["SeriesInstanceUID"]): str(source.SeriesInstanceUID),
        (*_EVIDENCE_INSTANCE, sop_class): str(source.SOPClassUID),
        (*_EVIDENCE_INSTANCE, instance): str(source.SOPInstanceUID),
        (*image, sop_class): str(source.SOPClassUID),
        (*image, instance): str(source.SOPInstanceUID),
    }


def _results(where: _Where, record: ScoreResult) -> dict[ElementPath, Any]:
    """The record's scores (Numeric Value as pydicom's auto-formatted DS, and Floating Point
    Value) and decision code (by element path)."""
    from pydicom.valuerep import DS

    out: dict[ElementPath, Any] = {}
    for name, path in where.scores.items():
        value = float((record.scores or {})[name])
        measured = (*_content(path), _TAG["MeasuredValueSequence"], 0)
        out[(*measured, _TAG["NumericValue"])] = str(DS(value, auto_format=True))
        out[(*measured, _TAG["FloatingPointValue"])] = value
    code, _ = _finding(record)
    concept = (*_content(where.assessment), _TAG["ConceptCodeSequence"], 0)
    out[(*concept, _TAG["CodeValue"])] = code.value
    out[(*concept, _TAG["CodingSchemeDesignator"])] = code.scheme_designator
    out[(*concept, _TAG["CodeMeaning"])] = code.meaning
    return out


def _header(data: bytes, pos: int) -> tuple[int, str, int, int]:
    """(tag, VR, value length, value offset) of the explicit VR little endian element at byte
    ``pos`` of ``data``."""
    group, element = struct.unpack_from("<HH", data, pos)
    vr = data[pos + 4 : pos + 6].decode("ascii")
    if vr in _LONG_VRS:  # 2 reserved bytes, then a 4-byte length
        return group << 16 | element, vr, struct.unpack_from("<I", data, pos + 8)[0], pos + 12
    return group << 16 | element, vr, struct.unpack_from("<H", data, pos + 6)[0], pos + 8


def _merged(parts: list[Part]) -> tuple[Part, ...]:
    """``parts`` with each run of bytes joined into one."""
    out: list[Part] = []
    for part in parts:
        if isinstance(part, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += part
        else:
            out.append(part)
    return tuple(out)


class _Cutter:
    """Cuts an encoded file into parts: the elements at ``paths`` become slots, the sequences
    and items holding one containers, the rest stays bytes."""

    def __init__(self, data: bytes, paths: frozenset[ElementPath]) -> None:
        self.data = data
        self.paths = paths
        self.holders = {p[:i] for p in paths for i in range(1, len(p))}
        self.slots: dict[ElementPath, _Slot] = {}

    def elements(self, start: int, end: int, path: ElementPath) -> tuple[Part, ...]:
        """The parts of the data set (or item) from byte ``start`` to ``end`` at ``path``."""
        parts, pos = [], start
        while pos < end:
            tag, vr, length, value = _header(self.data, pos)
            if length == 0xFFFFFFFF:
                raise ValueError(f"({tag:08X}) has an undefined length")
            here, stop = (*path, tag), value + length
            if here in self.paths:
                self.slots[here] = _Slot(here, vr, self.data[pos : pos + 6])
                parts.append(self.slots[here])
            elif here in self.holders and vr == "SQ":
                parts.append(_Container(self.data[pos : value - 4], self.items(value, stop, here)))
            else:
                parts.append(self.data[pos:stop])
            pos = stop
        if pos != end:
            raise ValueError("an element runs past the end of its data set")
        return _merged(parts)

    def items(self, start: int, end: int, path: ElementPath) -> tuple[Part, ...]:
        """The parts of the items of the sequence at ``path`` (its value: ``start`` to ``end``)."""
        parts, pos, index = [], start, 0
        while pos < end:
            group, element, length = struct.unpack_from("<HHI", self.data, pos)
            if group << 16 | element != _ITEM or length == 0xFFFFFFFF:
                raise ValueError("a sequence item has an undefined length")
            here, stop = (*path, index), pos + 8 + length
            if here in self.holders:
                parts.append(
                    _Container(self.data[pos : pos + 4], self.elements(pos + 8, stop, here))
                )
            else:
                parts.append(self.data[pos:stop])
            pos, index = stop, index + 1
        if pos != end:
            raise ValueError("an item runs past the end of its sequence")
        return _merged(parts)


def _layout(
    data: bytes, paths: frozenset[ElementPath]
) -> tuple[tuple[Part, ...], dict[ElementPath, _Slot]]:
    """``data`` (an encoded file as pydicom writes it: explicit VR little endian, defined
    lengths) cut into parts, the elements at ``paths`` as slots, and those slots by path.

    Raises:
        ValueError: an element of ``paths`` is not in ``data``, or ``data`` is not as expected.
    """
    tag, vr, length, value = _header(data, _META_START)
    if data[_META_START - 4 : _META_START] != b"DICM" or (tag, vr, length) != _GROUP_LENGTH:
        raise ValueError("no file meta information group length")
    end = value + 4 + struct.unpack_from("<I", data, value)[0]
    cutter = _Cutter(data, paths)
    meta = _Container(data[:value], cutter.elements(value + 4, end, ()))
    parts = (meta, *cutter.elements(end, len(data), ()))
    if cutter.slots.keys() != paths:
        raise ValueError(f"{len(paths) - len(cutter.slots)} per-image elements are not in the SR")
    return parts, cutter.slots


def _encode_slot(slot: _Slot, value: Any, charset: Any) -> bytes:
    """The element of ``slot`` holding ``value`` (as :func:`_values` gives it), explicit VR
    little endian: a copied data element as pydicom writes it in a data set of Specific
    Character Set ``charset``; text padded to even length (UI with NUL, others with a space);
    a float as a little-endian double.

    Raises:
        ValueError: the value does not fit the slot's VR.
    """
    if not isinstance(value, str | float):
        return _write_element(value, charset)
    if slot.vr == "FD" and isinstance(value, float):
        raw = struct.pack("<d", value)
    elif slot.vr in _TEXT_VRS and isinstance(value, str):
        raw = value.encode("ascii")
        if len(raw) % 2:
            raw += b"\0" if slot.vr == "UI" else b" "
    else:
        raise ValueError(f"a {type(value).__name__} cannot be written as {slot.vr}")
    return slot.head + struct.pack("<H", len(raw)) + raw


def _write_element(elem: Any, charset: Any) -> bytes:
    """One data element as pydicom's dcmwrite writes it in an explicit VR little endian data set
    of Specific Character Set ``charset``."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, charset)
    return fp.getvalue()


def _render(parts: tuple[Part, ...], encoded: dict[ElementPath, bytes]) -> bytes:
    """``parts`` as bytes: each slot's element from ``encoded``, each container's length field
    counting what it holds."""
    out = []
    for part in parts:
        if isinstance(part, bytes):
            out.append(part)
        elif isinstance(part, _Slot):
            out.append(encoded[part.path])
        else:
            body = _render(part.parts, encoded)
            out += (part.head, struct.pack("<I", len(body)), body)
    return b"".join(out)


def _splice(template: _Template, source: Dataset, record: ScoreResult, stamp: _Stamp) -> bytes:
    """The encoded SR of ``source`` (identified: ``dicom_results._identified``) and ``record``:
    ``template`` with every per-image element (:func:`_values`) written in its slot.

    Raises:
        ValueError: a value does not fit its slot.
    """
    values = _values(template.where, source, record, stamp)
    if values.keys() != template.slots.keys():
        raise ValueError("the per-image values are not the template's slots")
    encoded = {
        path: _encode_slot(s, values[path], template.charset) for path, s in template.slots.items()
    }
    return _render(template.parts, encoded)


def _plan(sr: Dataset, data: bytes, source: Dataset, record: ScoreResult) -> _Template:
    """The template of ``sr`` (built by highdicom from ``source`` and ``record``; encoded:
    ``data``).

    Raises:
        ValueError: the per-image values are not (only) where :func:`_values` puts them, or do
            not fit their elements.
    """
    if sr.file_meta.TransferSyntaxUID != _EXPLICIT_VR_LITTLE_ENDIAN:
        raise ValueError(f"the SR's transfer syntax is {sr.file_meta.TransferSyntaxUID}")
    where = _locate(sr, source, record)
    stamp = _stamp(str(sr.SeriesInstanceUID))
    parts, slots = _layout(data, frozenset(_values(where, source, record, stamp)))
    charset = sr.get("SpecificCharacterSet", "iso8859")  # what dcmwrite encodes text with
    template = _Template(where, parts, slots, charset, str(sr.SOPClassUID))
    _splice(template, source, record, stamp)  # a value that does not fit fails here, once
    return template


def _encoded(sr: Dataset) -> tuple[bytes, str, str]:
    """``sr`` as file bytes, with its SOP Instance UID and SOP Class UID."""
    return encode(sr), str(sr.SOPInstanceUID), str(sr.SOPClassUID)


class DecisionSRs:
    """The SRs of one bundle's results: :meth:`build_encoded` equals
    ``encode(build_sr(source, record, algorithm))`` (generated UIDs and creation date and time
    aside), from a template for a scored record whose shape was seen before. Thread-safe."""

    def __init__(self, algorithm: AlgorithmInfo, max_templates: int = MAX_TEMPLATES) -> None:
        self.algorithm = algorithm
        self.max_templates = max_templates
        self._templates: OrderedDict[tuple, _Template | None] = OrderedDict()
        self._lock = threading.Lock()

    def build_encoded(
        self,
        source_ds: Dataset,
        record: ScoreResult,
        *,
        series_instance_uid: str | None = None,
    ) -> tuple[bytes, str, str]:
        """The SR of one scored, abstained or failed input (as :func:`build_sr`) as DICOM file
        bytes (``dicom_results.encode``), with its SOP Instance UID and SOP Class UID.

        Raises:
            ReportUnavailable: highdicom is not installed.
        """
        from pydicom.uid import generate_uid

        series = series_instance_uid or generate_uid()
        if record.status != "scored" or not record.scores:
            return _encoded(build_sr(source_ds, record, self.algorithm, series_instance_uid=series))
        source = _identified(source_ds)
        key = _shape(source, record)
        template, seen = self._lookup(key)
        if template is not None:
            stamp = _stamp(series)
            data = _splice(template, source, record, stamp)
            return data, stamp.sop_instance_uid, template.sop_class_uid
        sr = build_sr(source_ds, record, self.algorithm, series_instance_uid=series)
        data, uid, sop_class = _encoded(sr)
        if not seen:
            try:
                template = _plan(sr, data, source, record)
            except (ValueError, AttributeError, KeyError, struct.error):
                template = None  # not templatable: this shape is always built by highdicom
            self._keep(key, template)
        return data, uid, sop_class

    def _lookup(self, key: tuple) -> tuple[_Template | None, bool]:
        """(the template of shape ``key`` or None, whether the shape was seen before)."""
        with self._lock:
            seen = key in self._templates
            if seen:
                self._templates.move_to_end(key)
            return self._templates.get(key), seen

    def _keep(self, key: tuple, template: _Template | None) -> None:
        """Remember shape ``key``'s template (None: not templatable), dropping the least
        recently used beyond ``max_templates``."""
        with self._lock:
            self._templates[key] = template
            while len(self._templates) > self.max_templates:
                self._templates.popitem(last=False)

    def templates(self) -> int:
        """How many shapes have a template."""
        with self._lock:
            return sum(t is not None for t in self._templates.values())


__all__ = ["MAX_TEMPLATES", "DecisionSRs"]
