"""Results as DICOM objects a PACS stores and a viewer shows next to the image (highdicom).

- :func:`build_sr`: a Comprehensive 3D SR holding a TID 1500 Measurement Report with one
  TID 1501 image-level group:
  - a qualitative evaluation (99DDAD "assessment"): Abnormal / Normal (SCT 263654008 /
    17621005) at the calibrated operating point, or Not Evaluated (SCT 373121007) with the
    reason as text when the gate abstained, the image could not be decoded, or there is no
    operating point (the scores are then still reported);
  - numeric evaluations: the image scores, the threshold and the target specificity;
  - the algorithm identification (name, version, bundle digest), a device observer context,
    and the source image (TID 1501 source images, and the evidence sequence).
- :func:`build_heatmap_sc`: a Secondary Capture Image (RGB) of the anomaly map over the image,
  with "NOT FOR DIAGNOSTIC USE" burned in (Burned In Annotation YES).

Both go in the source's study (same Study Instance UID; patient and study identification copied
from the source, as PS3.3 C.7.1.1 / C.7.2.1 require for a derived object in the same study), in
a new series, with new SOP Instance UIDs. Score concepts use the private coding scheme ``99DDAD``
(declared in the Coding Scheme Identification Sequence).

highdicom is the ``report`` extra: this module imports it lazily, so the runtime without it
still scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

    from ddad_edge.runtime.scorer import ScoreResult

REPORT_HINT = 'install the extra with `pip install "ddad-edge[report]"`'
SCHEME = "99DDAD"
SCHEME_NAME = "ddad-edge private codes"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
MANUFACTURER = "ddad-edge"
ASSESSMENT_MEANING = "DDAD image-level anomaly assessment"
"""Concept name of the qualitative evaluation (private: TID 1501 keeps DCM 121071 "Finding" for
the group's finding type, and highdicom reads it as such)."""
_SCORE_MEANINGS = {
    "rec": "DDAD reconstruction score",
    "intra": "DDAD intra-discrepancy score",
    "inter": "DDAD inter-discrepancy score",
    "asr": "DDAD-ASR refined anomaly score",
}


class ReportUnavailable(ImportError):
    """highdicom is not installed."""


def _hd() -> Any:
    try:
        import highdicom
    except ImportError as e:
        raise ReportUnavailable(f"DICOM results need highdicom: {REPORT_HINT}") from e
    return highdicom


@dataclass(frozen=True)
class AlgorithmInfo:
    """What produced the result: name, version (toolkit), bundle digest and model kind."""

    name: str
    version: str
    bundle_digest: str
    model_kind: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> AlgorithmInfo:
        """From a bundle manifest (``Bundle.manifest``)."""
        from ddad_edge.runtime.calibration import bundle_digest

        kind = str(manifest.get("model", {}).get("kind", "?"))
        version = str(manifest.get("toolkit", {}).get("version", "?"))
        return cls(f"ddad-edge DDAD {kind.upper()}", version, bundle_digest(manifest), kind)

    @property
    def device_uid(self) -> str:
        """A UID for the device observer, stable for one bundle."""
        from pydicom.uid import generate_uid

        return generate_uid(entropy_srcs=["ddad-edge device", self.bundle_digest])


# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1): present in
# a conformant source; a source that lacks one gets it empty in the result (highdicom reads them).
_TYPE2_IDENTIFICATION = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _valid_value(vr: str, value: Any) -> bool:
    """Whether a value is valid for its VR (pydicom's checks of PS3.5 6.2: length, characters,
    date/time/age form). Sequences and binary values are not checked here."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    if vr in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return True
    try:
        validate_value(vr, value, config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


_TEXT_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC")
_TEXT_VRS += ("UI", "UR", "UT")


def _in_default_repertoire(vr: str, value: Any) -> bool:
    """Whether a text value uses only the default character repertoire (ISO-IR 6, i.e. ASCII;
    PS3.5 6.1), as a data set without Specific Character Set must."""
    if vr not in _TEXT_VRS or value is None:
        return True
    from pydicom.multival import MultiValue

    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return all(str(v).isascii() for v in values)


def _identified(source_ds: Dataset) -> Dataset:
    """A header-only copy of the source with the Type 2 identification attributes present.

    A value the source holds that is invalid for its VR (anonymisers write hashes into dates and
    accession numbers), or that is not in the default character repertoire although the source
    declares no Specific Character Set (bytes of an undeclared national encoding), is blanked
    when Type 2 and dropped otherwise, so the result stays valid.
    """
    from pydicom import Dataset as Ds

    ds = Ds()
    default_repertoire = not source_ds.get("SpecificCharacterSet")
    for elem in source_ds:
        if elem.tag.group == 0x7FE0 or not elem.keyword:
            continue
        if not _valid_value(elem.VR, elem.value) or (
            default_repertoire and not _in_default_repertoire(elem.VR, elem.value)
        ):
            if elem.keyword in _TYPE2_IDENTIFICATION:
                setattr(ds, elem.keyword, "")
            continue
        ds.add(elem)
    for keyword in _TYPE2_IDENTIFICATION:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _code(value: str, meaning: str) -> Any:
    return _hd().sr.CodedConcept(value, SCHEME, meaning)


def _finding(record: ScoreResult) -> tuple[Any, str | None]:
    """(value code of the Finding evaluation, reason text when Not Evaluated)."""
    from pydicom.sr.codedict import codes

    if record.status == "abstained":
        return codes.SCT.NotEvaluated, f"abstained: {record.reason}"
    if record.status == "error":
        return codes.SCT.NotEvaluated, f"error: {record.error}"
    if record.flag is None:
        return codes.SCT.NotEvaluated, "no calibrated operating point: scores only"
    return (codes.SCT.Abnormal if record.flag == "abnormal" else codes.SCT.Normal), None


def _measurements(record: ScoreResult, algorithm: Any) -> list[Any]:
    hd = _hd()
    from pydicom.sr.codedict import codes

    out = []
    for name, value in (record.scores or {}).items():
        concept = _code(name, _SCORE_MEANINGS.get(name, f"DDAD {name} score"))
        out.append(
            hd.sr.Measurement(concept, float(value), codes.UCUM.NoUnits, algorithm_id=algorithm)
        )
    if record.operating_point is not None:
        op = record.operating_point
        out.append(
            hd.sr.Measurement(
                codes.DCM.ThresholdValue,
                float(op["threshold"]),
                codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            )
        )
        out.append(
            hd.sr.Measurement(
                _code("target-spec", "Target specificity of the operating point"),
                float(op["specificity"]),
                codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            )
        )
    return out


def _algorithm(info: AlgorithmInfo, record: ScoreResult) -> Any:
    params = [f"bundle digest {info.bundle_digest}", f"model {info.model_kind}"]
    if record.operating_point is not None:
        op = record.operating_point
        params.append(
            f"operating point: {op['score']} > {op['threshold']:.6g} is abnormal "
            f"(specificity {op['specificity']:g} on site normals)"
        )
    return _hd().sr.AlgorithmIdentification(info.name, info.version, parameters=params)


def _group(source_ds: Dataset, record: ScoreResult, info: AlgorithmInfo) -> Any:
    """The TID 1501 image-level group."""
    hd = _hd()
    from pydicom.uid import generate_uid

    algorithm = _algorithm(info, record)
    value, reason = _finding(record)
    assessment = _code("assessment", ASSESSMENT_MEANING)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="DDAD image-level anomaly result"
        ),
        algorithm_id=algorithm,
        measurements=_measurements(record, algorithm) or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(assessment, value)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source_ds)],
    )
    if reason is not None:
        text = hd.sr.TextContentItem(
            _code("not-eval-reason", "Reason not evaluated"),
            reason[:1024],
            relationship_type="CONTAINS",
        )
        group[0].ContentSequence.append(text)
    return group


def _observation_context(info: AlgorithmInfo) -> Any:
    hd = _hd()
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=info.device_uid, name=info.name, manufacturer_name=MANUFACTURER, model_name=info.name
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device)
    )


def _coding_scheme(ds: Dataset) -> None:
    from pydicom import Dataset as Ds

    item = Ds()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    ds.CodingSchemeIdentificationSequence = [item]


def build_sr(
    source_ds: Dataset,
    record: ScoreResult,
    algorithm: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) for one scored, abstained or failed input.

    Args:
        source_ds: the source image's data set (header is enough; pixel data not needed).
        record: its :class:`~ddad_edge.runtime.scorer.ScoreResult`.
        algorithm: :class:`AlgorithmInfo` of the bundle (``AlgorithmInfo.from_manifest``).
        series_instance_uid: the SR series (None: a new one).
        instance_number: Instance Number in that series.

    Returns:
        a ``highdicom.sr.Comprehensive3DSR`` (a pydicom Dataset), explicit VR little endian.

    Raises:
        ReportUnavailable: highdicom is not installed.
    """
    hd = _hd()
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    source_ds = _identified(source_ds)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=codes.SCT.PlainChestXRay
        if hasattr(codes.SCT, "PlainChestXRay")
        else hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        imaging_measurements=[_group(source_ds, record, algorithm)],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source_ds],
        content=report[0],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="DDAD anomaly result (not for diagnostic use)",
    )
    _coding_scheme(sr)
    return sr


def encode(ds: Dataset) -> bytes:
    """A data set as DICOM file bytes (preamble, file meta and the data set in its transfer
    syntax), as a PACS receives it."""
    import io

    from pydicom import dcmwrite

    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _burn_label(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """Draw white text on a black band at the top of an RGB uint8 [H, W, 3] image."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(rgb, mode="RGB")
    size = max(10, img.width // 40)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    pad = size // 3
    draw.rectangle([0, 0, img.width, len(lines) * (size + pad) + pad], fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * (size + pad)), line, fill=(255, 255, 255), font=font)
    return np.asarray(img, dtype=np.uint8)


def fit_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """float32 [H, W] reduced (bilinear) so that its longer side is at most max_side."""
    from PIL import Image

    img = np.asarray(image, np.float32)
    h, w = img.shape
    if max(h, w) <= max_side:
        return img
    f = max_side / max(h, w)
    size = (max(2, round(w * f)), max(2, round(h * f)))
    return np.asarray(Image.fromarray(img, mode="F").resize(size, Image.BILINEAR), np.float32)


def _source_image_item(source_ds: Dataset) -> Dataset:
    """An item of Source Image Sequence (PS3.3 C.7.6.1, Image SOP Instance Reference Macro
    C.10.1.1.1) naming the source image and why it was used (DCM 121322 "Source image for
    image processing operation")."""
    from pydicom import Dataset as Ds

    item = Ds()
    item.ReferencedSOPClassUID = source_ds.SOPClassUID
    item.ReferencedSOPInstanceUID = source_ds.SOPInstanceUID
    purpose = Ds()
    purpose.CodeValue = "121322"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def build_heatmap_sc(
    source_ds: Dataset,
    image: np.ndarray,
    heat_map: np.ndarray,
    *,
    caption: str = "",
    vmax: float | None = None,
    max_side: int = 1024,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A Secondary Capture Image of the anomaly map blended over the image.

    Args:
        source_ds: the source image's data set (patient, study and orientation are copied).
        image: the decoded image, float [H, W] in [0, 1] (``runtime.io.load_image``; any size,
            e.g. reduced).
        heat_map: the anomaly map, float [h, w] (the 64x64 map; resized to the image).
        caption: a second burned-in line (e.g. "inter map; flag abnormal at specificity 0.95").
        vmax: top of the colour scale in map units (None: the map's maximum).
        max_side: longer side of the capture in pixels (larger images are reduced, bilinear).
        series_instance_uid: the SC series (None: a new one).
        instance_number: Instance Number in that series.
        sop_instance_uid: its SOP Instance UID (None: a new one).

    Returns:
        a ``highdicom.sc.SCImage`` (RGB, 8 bits), Burned In Annotation YES, whose Source Image
        Sequence references the source image (PS3.3 C.7.6.1.1.4).
    """
    hd = _hd()
    from pydicom.uid import generate_uid

    from ddad_edge.runtime.heatmaps import overlay_heatmap

    rgb = overlay_heatmap(fit_image(image, max_side), np.asarray(heat_map, np.float32), vmax=vmax)
    rgb = _burn_label(rgb, [NOT_FOR_DIAGNOSIS] + ([caption] if caption else []))
    source_ds = _identified(source_ds)
    orientation = source_ds.get("PatientOrientation")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source_ds,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        # highdicom requires two values; the real ones are set below (Type 2: may be empty)
        patient_orientation=("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.PatientOrientation = orientation if orientation and len(orientation) == 2 else ""
    # Laterality (Type 2C) is needed for paired body parts only; chest is not one, and saying so
    # (Body Part Examined copied from the source) lets a validator see that
    if source_ds.get("Laterality"):
        sc.Laterality = source_ds.Laterality
    elif not source_ds.get("BodyPartExamined"):
        # no body part: a validator cannot rule out a paired one, so Laterality is present,
        # empty (unknown), as Type 2C allows
        sc.Laterality = ""
    if source_ds.get("BodyPartExamined"):
        sc.BodyPartExamined = source_ds.BodyPartExamined
    sc.SourceImageSequence = [_source_image_item(source_ds)]
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = "DDAD anomaly heat map (not for diagnostic use)"
    sc.ImageComments = NOT_FOR_DIAGNOSIS
    return sc


def heatmap_caption(record: ScoreResult, heat: str) -> str:
    """The second burned-in line of the heat-map SC: the map and the decision."""
    if record.flag is None:
        return f"DDAD {heat} map; no calibrated operating point"
    op = record.operating_point or {}
    return f"DDAD {heat} map; {record.flag.upper()} at specificity {op.get('specificity', 0):g}"


def build_results(
    source: str | os.PathLike[str],
    record: ScoreResult,
    algorithm: AlgorithmInfo,
    *,
    heat: str = "inter",
    vmax: float | None = None,
    sr_series_uid: str | None = None,
    sc_series_uid: str | None = None,
    instance_number: int = 1,
    image: np.ndarray | None = None,
    max_side: int = 1024,
) -> list[Dataset]:
    """The DICOM results for one DICOM input: its SR, plus the heat-map SC when it was scored
    with maps (``Scorer.score(..., maps=True)``).

    Args:
        source: the DICOM file that was scored.
        record: its ScoreResult.
        algorithm: the bundle's AlgorithmInfo.
        heat: the map drawn in the SC ("inter" by default).
        vmax: top of the SC's colour scale (the bundle's ``display.heatmap_vmax[heat]``).
        sr_series_uid / sc_series_uid: series to put them in (None: new ones).
        instance_number: Instance Number of both.
        image: the source's decoded image, float [H, W] in [0, 1], when the caller has it
            (e.g. the reduced decode it scored); None: decoded again at full resolution.
        max_side: longer side of the SC in pixels.

    Raises:
        ImageLoadError: the source cannot be read again (header or, for the SC, pixels).
        ReportUnavailable: highdicom is not installed.
    """
    from ddad_edge.runtime.gate import read_header
    from ddad_edge.runtime.io import load_image

    p = os.fspath(source)
    ds = read_header(p)
    out = [
        build_sr(
            ds,
            record,
            algorithm,
            series_instance_uid=sr_series_uid,
            instance_number=instance_number,
        )
    ]
    if record.status == "scored" and record.maps is not None:
        if image is None:
            image = load_image(p, target_size=None)
        out.append(
            build_heatmap_sc(
                ds,
                image,
                record.maps[heat],
                caption=heatmap_caption(record, heat),
                vmax=vmax,
                max_side=max_side,
                series_instance_uid=sc_series_uid,
                instance_number=instance_number,
            )
        )
    return out


__all__ = [
    "NOT_FOR_DIAGNOSIS",
    "encode",
    "heatmap_caption",
    "build_results",
    "AlgorithmInfo",
    "ReportUnavailable",
    "build_heatmap_sc",
    "build_sr",
]
