"""Decision SRs from templates: the SR of a scored image without per-image highdicom work.

Building the TID 1500 SR with highdicom (:func:`~ddad_edge.runtime.dicom_results.build_sr`) and
encoding it with pydicom is pure Python that costs several times an image's decode and score.
For one bundle and operating point, the SRs of two scored images whose headers have the same
*shape* (below) differ only in values that come from the image or from the moment: so highdicom
builds the SR once per shape, its encoded bytes are kept as a template, and each image's SR is
that template, read back lazily (unread elements are written back as they were) with every
per-image attribute set by :func:`_fill`:

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

The shape (the cache key) is everything else the SR depends on: the record's score names,
operating point and whether it has a decision; the source's attributes after
``dicom_results._identified`` (each tag, VR and whether it is empty), its SOP Class UID,
Specific Character Set, Patient's Sex (highdicom checks it) and equipment (manufacturer, model,
serial number, software, institution, station: highdicom's Contributing Equipment). A template
is only kept when building it shows that the copied attributes and the source's UIDs sit
exactly where :func:`_fill` sets them (:func:`_plan`); otherwise that shape is always built
by highdicom. ``tests/test_sr_templates.py`` checks, over generated sources, scores and
decisions, that the SR from a template equals the SR highdicom builds, attribute by attribute,
except the generated UIDs and the creation date and time, and that dciodvfy finds no error.
"""

from __future__ import annotations

import datetime
import io
import json
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


@dataclass(frozen=True)
class _Template:
    """An encoded SR and where its per-image values are."""

    data: bytes
    copied: tuple[int, ...]  # top-level tags copied from the source
    image: Path  # the IMAGE content item referencing the source
    tracking: Path  # the Tracking Unique Identifier
    scores: dict[str, Path]  # score name -> its NUM content item
    assessment: Path  # the decision's CODE content item


def _shape(source: Dataset, record: ScoreResult) -> tuple:
    """The cache key: what the SR depends on besides the values :func:`_fill` sets."""
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


def _plan(sr: Dataset, source: Dataset, record: ScoreResult) -> _Template:
    """The template of ``sr`` (built by highdicom from ``source`` and ``record``).

    Raises:
        ValueError: the per-image values are not (only) where :func:`_fill` sets them.
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
    study, series, instance = _evidence_ref(sr)
    items = _items(sr)
    image = _only([p for p, it in items if it.get("ValueType") == "IMAGE"], "image references")
    (ref,) = _at(sr, image).ReferencedSOPSequence
    uids = (str(source.StudyInstanceUID), str(source.SeriesInstanceUID))
    uids += (str(source.SOPClassUID), str(source.SOPInstanceUID))
    got = (study.StudyInstanceUID, series.SeriesInstanceUID, instance.ReferencedSOPClassUID)
    got += (instance.ReferencedSOPInstanceUID,)
    if tuple(map(str, got)) != uids or (
        ref.ReferencedSOPClassUID,
        ref.ReferencedSOPInstanceUID,
    ) != (
        uids[2],
        uids[3],
    ):
        raise ValueError("the source's UIDs are not where the template expects them")
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
    return _Template(encode(sr), copied, image, tracking, scores, assessment)


def _fill(
    template: _Template,
    source: Dataset,
    record: ScoreResult,
    sop_instance_uid: str,
    series_instance_uid: str,
) -> Dataset:
    """The SR of ``source`` and ``record`` from ``template`` (see the module docstring): every
    per-image attribute set, the rest as highdicom built it for this shape."""
    import pydicom
    from pydicom.uid import generate_uid
    from pydicom.valuerep import DA, DS, DT, TM

    sr = pydicom.dcmread(io.BytesIO(template.data))
    for tag in template.copied:
        sr[tag] = source[tag]
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    sr.SeriesInstanceUID = series_instance_uid
    now = datetime.datetime.now()
    sr.InstanceCreationDate = sr.ContentDate = DA(now.date())
    sr.InstanceCreationTime = sr.ContentTime = TM(now.time())
    *acquisition, software = sr.ContributingEquipmentSequence
    software.ContributionDateTime = DT(now)
    for item in acquisition:  # the source's equipment (its values are part of the shape)
        acquired = _acquisition_datetime(source)
        if acquired is not None:
            item.ContributionDateTime = DT(acquired)
    study, series, instance = _evidence_ref(sr)
    study.StudyInstanceUID = source.StudyInstanceUID
    series.SeriesInstanceUID = source.SeriesInstanceUID
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    (ref,) = _at(sr, template.image).ReferencedSOPSequence
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    _at(sr, template.tracking).UID = generate_uid()
    for name, path in template.scores.items():
        value = float((record.scores or {})[name])
        measured = _at(sr, path).MeasuredValueSequence[0]
        measured.NumericValue = DS(value, auto_format=True)
        measured.FloatingPointValue = value
    code, _ = _finding(record)
    concept = _at(sr, template.assessment).ConceptCodeSequence[0]
    concept.CodeValue, concept.CodeMeaning = code.value, code.meaning
    concept.CodingSchemeDesignator = code.scheme_designator
    return sr


class DecisionSRs:
    """The SRs of one bundle's results: :meth:`build` equals ``build_sr(source, record,
    algorithm)`` (generated UIDs and creation date and time aside), from a template for a
    scored record whose shape was seen before. Thread-safe."""

    def __init__(self, algorithm: AlgorithmInfo, max_templates: int = MAX_TEMPLATES) -> None:
        self.algorithm = algorithm
        self.max_templates = max_templates
        self._templates: OrderedDict[tuple, _Template | None] = OrderedDict()
        self._lock = threading.Lock()

    def build(
        self,
        source_ds: Dataset,
        record: ScoreResult,
        *,
        series_instance_uid: str | None = None,
    ) -> Dataset:
        """The SR of one scored, abstained or failed input (as :func:`build_sr`).

        Raises:
            ReportUnavailable: highdicom is not installed.
        """
        from pydicom.uid import generate_uid

        series = series_instance_uid or generate_uid()
        if record.status != "scored" or not record.scores:
            return build_sr(source_ds, record, self.algorithm, series_instance_uid=series)
        source = _identified(source_ds)
        key = _shape(source, record)
        with self._lock:
            seen = key in self._templates
            template = self._templates.get(key)
            if seen:
                self._templates.move_to_end(key)
        if template is not None:
            return _fill(template, source, record, generate_uid(), series)
        sr = build_sr(source_ds, record, self.algorithm, series_instance_uid=series)
        if not seen:
            try:
                template = _plan(sr, source, record)
            except (ValueError, AttributeError, KeyError):
                template = None  # not templatable: this shape is always built by highdicom
            with self._lock:
                self._templates[key] = template
                while len(self._templates) > self.max_templates:
                    self._templates.popitem(last=False)
        return sr

    def templates(self) -> int:
        """How many shapes have a template."""
        with self._lock:
            return sum(t is not None for t in self._templates.values())


__all__ = ["MAX_TEMPLATES", "DecisionSRs"]
