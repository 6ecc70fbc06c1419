"""The input gate: does the DICOM header say this is an image the model was trained for?

DDAD learns what *frontal chest radiographs* look like; on anything else its score means nothing,
so the runtime abstains (a result with a reason, not an error and not a score) instead of scoring.
The gate reads the header only (``stop_before_pixels``); pixel problems are the decoder's.

Checks, in order (the first failure is the reason; accepted caveats become notes):

1. Modality (0008,0060) CR or DX (PS3.3 C.7.3.1.1.1); anything else abstains.
2. DX for-processing images (SOP Class 1.2.840.10008.5.1.4.1.1.1.1.1, or Presentation Intent
   Type (0008,0068) "FOR PROCESSING", PS3.3 C.8.11.1.1.1) hold raw detector values, not the
   presentation image the model learned from: abstain.
3. Body Part Examined (0018,0015) CHEST; absent: accepted with a note; other values abstain.
4. View Position (0018,5101) PA or AP (PS3.3 C.8.11.5.1.1); LL/RL and other views abstain;
   absent: accepted with a note.
5. Photometric Interpretation (0028,0004) MONOCHROME1 or MONOCHROME2; colour abstains.
6. Rows and Columns no smaller than the network input (:class:`GateLimits`); an image too large
   to decode is the decoder's error (its pixel budget), not an abstention.
7. Patient Age (0010,1010, e.g. "062Y", "005M") within the training population's range when the
   bundle records one (``age_years=(lo, hi)``); absent or unreadable age with a range: a note.

Non-DICOM files (PNG, JPEG, ...) and arrays carry no such information: they pass with a note that
nothing could be checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ddad_edge.runtime.preprocess import IMAGE_SIZE

MODALITIES = ("CR", "DX")
VIEWS = ("PA", "AP")
BODY_PARTS = ("CHEST",)
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
NOT_DICOM_NOTE = "not DICOM: modality, body part, view and photometry could not be checked"
ARRAY_NOTE = "array input: modality, body part, view and photometry could not be checked"

_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


@dataclass(frozen=True)
class GateLimits:
    """Image size bounds in pixels: a side below ``min_side`` is smaller than the network input.
    Too large is not the gate's call: the decoder's pixel budget refuses it as an error
    (``runtime/loaderrors.py``), since such a file cannot be read at all."""

    min_side: int = IMAGE_SIZE


@dataclass
class GateResult:
    """accepted: score it; reason: why not (None when accepted); notes: what was accepted with a
    caveat or could not be checked."""

    accepted: bool
    reason: str | None = None
    notes: list[str] = field(default_factory=list)


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, None)
    if value is None:
        return ""
    return " ".join(str(value).split()).upper()


def patient_age_years(value: str) -> float | None:
    """Patient Age (AS VR, "nnnD/W/M/Y", PS3.5 6.2) in years; None when malformed. Bare digits
    (a common non-conformant encoding, e.g. "62") are read as years."""
    v = value.strip().upper()
    if v.isdigit() and len(v) <= 3:
        return float(v)
    if len(v) != 4 or not v[:3].isdigit() or v[3] not in _AGE_UNITS:
        return None
    return int(v[:3]) * _AGE_UNITS[v[3]]


def _identity_checks(ds: Any, notes: list[str]) -> str | None:
    """Modality, for-processing, body part, view: a reason to abstain or None."""
    modality = _text(ds, "Modality")
    if modality not in MODALITIES:
        return f"modality {modality or '(missing)'} is not CR or DX"
    intent = _text(ds, "PresentationIntentType")
    if str(ds.get("SOPClassUID", "")) == DX_FOR_PROCESSING or intent == "FOR PROCESSING":
        return "DX image for processing (raw detector values), not for presentation"
    body = _text(ds, "BodyPartExamined")
    if not body:
        notes.append("Body Part Examined absent: assumed CHEST")
    elif body not in BODY_PARTS:
        return f"body part {body} is not CHEST"
    view = _text(ds, "ViewPosition")
    if not view:
        notes.append("View Position absent: assumed frontal (PA/AP)")
    elif view not in VIEWS:
        return f"view position {view} is not PA or AP (frontal views only)"
    return None


def _image_checks(ds: Any, limits: GateLimits) -> str | None:
    """Photometric interpretation and size: a reason to abstain or None."""
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric and photometric not in MONOCHROME:
        return f"photometric interpretation {photometric} is not monochrome"
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if min(rows, cols) < limits.min_side:
        return f"image size {cols}x{rows} is below {limits.min_side} pixels on a side"
    return None


def _age_check(ds: Any, age_years: tuple[float, float], notes: list[str]) -> str | None:
    lo, hi = age_years
    raw = str(ds.get("PatientAge", "") or "")
    age = patient_age_years(raw) if raw else None
    if age is None:
        notes.append(f"Patient Age {'absent' if not raw else repr(raw)}: not checked")
        return None
    if not lo <= age <= hi:
        return f"patient age {raw.strip()} outside the training population ({lo:g}-{hi:g} years)"
    return None


def check_dataset(
    ds: Any,
    *,
    age_years: tuple[float, float] | None = None,
    limits: GateLimits = GateLimits(),
) -> GateResult:
    """Gate a pydicom Dataset (header only; see the module docstring for the checks).

    Args:
        ds: a ``pydicom.Dataset`` (pixel data not needed).
        age_years: the training population's age range in years, or None (not checked).
        limits: image size bounds.
    """
    notes: list[str] = []
    reason = _identity_checks(ds, notes) or _image_checks(ds, limits)
    if reason is None and age_years is not None:
        reason = _age_check(ds, age_years, notes)
    return GateResult(reason is None, reason, notes)


def check_file(
    path: str | os.PathLike[str],
    *,
    age_years: tuple[float, float] | None = None,
    limits: GateLimits = GateLimits(),
) -> GateResult:
    """Gate one file: DICOM headers are checked, other formats pass with a note.

    Raises:
        ImageLoadError: a file that is missing, empty or unreadable, or a DICOM file whose header
            cannot be read (an error, not an abstention).
    """
    from ddad_edge.runtime.io import is_dicom
    from ddad_edge.runtime.loaderrors import check_file as check_readable

    # A missing, empty or unreadable file gets the loader's reason, not a header error.
    check_readable(os.fspath(path))
    if not is_dicom(path):
        return GateResult(True, None, [NOT_DICOM_NOTE])
    return check_dataset(read_header(path), age_years=age_years, limits=limits)


def read_header(path: str | os.PathLike[str]) -> Any:
    """A DICOM image file's data set without its pixel data.

    Raises:
        ImageLoadError: the header cannot be read, or it describes no image (no Rows/Columns).
    """
    import pydicom

    from ddad_edge.runtime.io import ImageLoadError

    p = os.fspath(path)
    try:
        ds = pydicom.dcmread(p, force=True, stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types on a corrupt header
        raise ImageLoadError(p, f"DICOM header could not be read: {str(e)[:200]}") from e
    if not ds.get("Rows") or not ds.get("Columns"):
        raise ImageLoadError(p, "DICOM data set has no image (Rows/Columns missing or zero)")
    return ds


def population_age(manifest: dict[str, Any]) -> tuple[float, float] | None:
    """The bundle's training population age range in years (``manifest["population"]
    ["age_years"] = [lo, hi]``), or None when the bundle does not record one."""
    rng = (manifest.get("population") or {}).get("age_years")
    if not rng:
        return None
    lo, hi = rng
    return float(lo), float(hi)


__all__ = [
    "ARRAY_NOTE",
    "NOT_DICOM_NOTE",
    "GateLimits",
    "GateResult",
    "check_dataset",
    "check_file",
    "patient_age_years",
    "population_age",
    "read_header",
]
