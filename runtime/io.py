"""Decode one image file (PNG, JPEG, any other Pillow format, or DICOM) to a grey float image.

The thin dispatcher over the two decoders: ``runtime/imagefile.py`` (Pillow: PNG, JPEG, TIFF,
GIF, BMP, ...; reduced JPEG decoding) and ``runtime/dicom.py`` (pydicom: Modality LUT, VOI LUT,
photometric interpretation, each in its own function citing PS3.3). Their module docstrings
give the exact pipelines; README "Input contract" summarises them.

Torch-free: numpy, Pillow and pydicom only; pydicom is imported lazily, so that
``import ddad_edge.runtime.io`` stays fast. Every failure is an :class:`ImageLoadError` naming the
file and a one-line reason, never a bare Pillow/pydicom traceback, whatever the file holds.

Public API
----------
- :func:`read_image`: file -> :class:`Decoded` (float32 HxW in [0, 1] and the warnings).
- :func:`read_input`: file -> :class:`Decoded` holding the network input float32
  [1, size, size] in [-1, 1] (:func:`read_image` + preprocessing + ``check_input``).
- :func:`load_image` / :func:`load_input`: the same arrays, warnings through :mod:`warnings`.
- :func:`is_dicom`: decides which decoder a file goes to.
- :func:`dicom_info`: header summary of a DICOM file (no pixel decoding).
- :data:`IMAGE_EXTS`: the file name extensions listed as images when a folder is read.

Limits: the size a file declares is checked against ``max_pixels`` (default
:data:`~ddad_edge.runtime.loaderrors.DEFAULT_MAX_PIXELS`) before anything is decoded. Multi-frame
files give their first frame and a :class:`MultiFrameWarning`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .dicom import CODECS_HINT, dicom_info, load_dicom
from .imagefile import load_pillow
from .loaderrors import (
    DEFAULT_MAX_PIXELS,
    DicomWindowWarning,
    ImageLoadError,
    InputWarning,
    MultiFrameWarning,
    Notes,
    check_file,
    short_reason,
)
from .preprocess import IMAGE_SIZE, PreprocessError, check_input, preprocess, to_unit_grey

__all__ = [
    "CODECS_HINT",
    "DEFAULT_MAX_PIXELS",
    "DICOM_EXTENSIONS",
    "IMAGE_EXTS",
    "Decoded",
    "DicomWindowWarning",
    "ImageLoadError",
    "InputWarning",
    "MultiFrameWarning",
    "dicom_info",
    "is_dicom",
    "load_image",
    "load_input",
    "read_image",
    "read_input",
]

DICOM_EXTENSIONS = (".dcm", ".dicom")
"""File name extensions (lower case) always treated as DICOM."""

IMAGE_EXTS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *DICOM_EXTENSIONS}
)
"""File name extensions (lower case) taken as images when a folder is listed (split, export,
benchmarks). Any file can still be scored by name: the decoder is chosen by content."""


@dataclass
class Decoded:
    """One decoded input.

    image: float32 HxW in [0, 1] (:func:`read_image`) or the network input float32
        [1, size, size] in [-1, 1] (:func:`read_input`).
    warnings: one line each, what the caller should know (e.g. only the first frame was used).
    """

    image: np.ndarray
    warnings: list[str] = field(default_factory=list)


def _looks_like_raw_dicom(head: bytes) -> bool:
    """True for a DICOM data set written with no preamble and no "DICM" (ACR-NEMA style).

    Such a file starts directly with a group 0x0002 or 0x0008 element, little endian, in
    explicit VR (two upper-case letters follow the tag) or implicit VR (a 32-bit length follows).
    """
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    if group not in (0x0002, 0x0008) or element > 0x00FF:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    return int.from_bytes(head[4:8], "little") < 0x10000


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`load_image` decodes ``path`` as DICOM.

    True when the extension is ``.dcm`` / ``.dicom`` (any case), or the file has ``b"DICM"`` at
    byte offset 128 (standard Part 10 preamble), or it starts like a preamble-less DICOM data set
    (a group 0x0002/0x0008 element). A file that cannot be read gives False.
    """
    p = os.fspath(path)
    if os.path.splitext(p)[1].lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    return _looks_like_raw_dicom(head)


def read_image(
    path: str | os.PathLike[str],
    *,
    target_size: int | None = IMAGE_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Decoded:
    """Decode one image file to grey, with the warnings the decoding raised.

    As :func:`load_image`, but the warnings come back in :attr:`Decoded.warnings` instead of
    through :mod:`warnings` (safe from several threads), and ANY failure, including one a
    library did not foresee, is an :class:`ImageLoadError` naming the file.
    """
    notes: Notes = []
    img = _decode(os.fspath(path), target_size, max_pixels, notes)
    return Decoded(img, [str(n) for n in notes])


def _decode(p: str, target_size: int | None, max_pixels: int | None, notes: Notes) -> np.ndarray:
    """The body of :func:`read_image` (warnings appended to ``notes``)."""
    if target_size is not None and (isinstance(target_size, bool) or int(target_size) < 1):
        raise ValueError(f"target_size must be a positive int or None, got {target_size!r}")
    try:
        check_file(p)
        if is_dicom(p):
            img = load_dicom(p, notes, max_pixels, target_size)
        else:
            size = None if target_size is None else int(target_size)
            img = load_pillow(p, size, notes, max_pixels)
        img = to_unit_grey(img)
    except ImageLoadError:
        raise
    except PreprocessError as e:
        raise ImageLoadError(p, str(e)) from e
    except MemoryError as e:
        raise ImageLoadError(p, "not enough memory to decode this image") from e
    except Exception as e:  # a malformed header can break a library in ways nobody listed
        why = f"{type(e).__name__}: {short_reason(e)}"
        raise ImageLoadError(p, f"could not be decoded: {why}") from e
    return img


def load_image(
    path: str | os.PathLike[str],
    *,
    target_size: int | None = IMAGE_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode one image file to grey.

    Args:
        path: PNG, JPEG, any other format Pillow reads, or DICOM (see :func:`is_dicom`).
        target_size: side of the network input the image is meant for, pixels. Only a decoding
            hint: JPEG draft mode and a box-filter reduction shrink Pillow images, and JPEG 2000
            DICOM images are decoded at a reduced resolution level, while both sides stay
            >= ``2 * target_size`` (JPEG, PNG...) or ``4 * target_size`` (JPEG 2000; see the
            decoders' module docstrings). ``None`` decodes at
            full resolution. Other DICOM images are always returned at full resolution.

    Returns:
        float32 array, shape HxW (the file's size, or its reduced size, see above), values in
        [0, 1], 0 = black, 1 = white as displayed (MONOCHROME1 already inverted).

    Raises:
        ImageLoadError: the file is missing, empty, not an image, truncated, corrupt, or needs a
            DICOM codec that is not installed; ``str(e)`` names the file and the reason.

    Warns:
        InputWarning (DicomWindowWarning, MultiFrameWarning): see :func:`read_image`.
    """
    notes: Notes = []
    p = os.fspath(path)
    img = _decode(p, target_size, max_pixels, notes)
    for n in notes:
        warnings.warn(type(n)(f"{p}: {n}"), stacklevel=2)
    return img


def load_input(
    path: str | os.PathLike[str],
    *,
    size: int = IMAGE_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode a file and turn it into one network input.

    :func:`load_image` (with ``target_size=size``) followed by
    :func:`~ddad_edge.runtime.preprocess.preprocess`.

    Returns:
        float32 array, shape (1, size, size), values in [-1, 1].

    Raises:
        ImageLoadError: as :func:`load_image`; a ``PreprocessError`` (e.g. image smaller than
            2x2) is re-raised as ``ImageLoadError`` naming the file.
    """
    return read_input(path, size=size, max_pixels=max_pixels).image


def read_input(
    path: str | os.PathLike[str],
    *,
    size: int = IMAGE_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Decoded:
    """:func:`read_image` + preprocessing + :func:`~ddad_edge.runtime.preprocess.check_input`.

    Returns:
        Decoded: image float32 [1, size, size] in [-1, 1], and the decoding's warnings.

    Raises:
        ImageLoadError: as :func:`read_image`, or the image cannot be a chest radiograph
            (too small, constant), naming the file.
    """
    p = os.fspath(path)
    d = read_image(p, target_size=size, max_pixels=max_pixels)
    try:
        x = preprocess(d.image, size)
        check_input(x)
    except PreprocessError as e:
        raise ImageLoadError(p, str(e)) from e
    return Decoded(x, d.warnings)
