"""Decode one image file (PNG, JPEG, any other Pillow format, or DICOM) to a grey float image.

Torch-free: numpy, Pillow and pydicom only. pydicom is imported lazily inside the DICOM functions
so that ``import ddad_edge.runtime.io`` stays fast. Every failure is reported as
:class:`ImageLoadError` naming the file and the reason, never as a bare Pillow/pydicom traceback.

Public API
----------
- :func:`load_image`: file -> float32 HxW in [0, 1].
- :func:`load_input`: file -> network input float32 [1, size, size] in [-1, 1]
  (:func:`load_image` + :func:`ddad_edge.runtime.preprocess.preprocess`).
- :func:`is_dicom`: decides which decoder a file goes to.
- :func:`dicom_info`: header summary of a DICOM file (no pixel decoding).

Pillow formats (PNG, JPEG, TIFF, BMP, ...)
------------------------------------------
- 8-bit modes are divided by 255. Alpha (LA, RGBA, PA, ...) is dropped, not composited. Mode 1
  becomes L (0/255); P, CMYK, YCbCr, LAB, HSV, ... are converted to RGB by Pillow first.
- RGB -> grey with the BT.601 luma weights of :func:`~ddad_edge.runtime.preprocess.to_unit_grey`.
- 16-bit grey (I;16, I;16B, I;16L) is divided by 65535 with full 16-bit precision (no 8-bit
  detour). 32-bit integer mode I (what older Pillow gives for 16-bit PNG) is divided by 65535 when
  its values lie in [0, 65535], otherwise rejected. Float mode F must already lie in [0, 1].
  Pillow itself reads 16-bit-per-channel RGB(A) PNGs as 8-bit RGB(A): that precision is lost there.
- EXIF orientation is applied (as ``ImageOps.exif_transpose`` would), so the array is what a
  viewer shows.
- Reduced decoding, only when ``target_size`` is given (default 64; ``None`` = full resolution).
  With ``m = 2 * target_size``:

  1. JPEG: ``im.draft("L", (m, m))`` before decoding. libjpeg then decodes at 1/2, 1/4 or 1/8
     scale (DCT-domain scaling), the largest reduction that keeps BOTH sides >= m, and returns
     the Y (luma) channel of colour JPEGs directly. A 2000x1600 JPEG decodes to 250x200 for
     target_size 64. When a side is not a multiple of the scale, libjpeg's last row/column
     covers a partial block; the decoded image is then resampled (bilinear, the ``box`` that
     ``draft`` returns, as ``Image.thumbnail`` does) to ``round(side / scale)`` pixels so that
     the geometry stays exact.
  2. Any format, after step 1: if ``f = min(w, h) // m`` is >= 2, the image is box-filtered to
     ``round(w / f) x round(h / f)`` pixels (``resize(..., Image.BOX)``: an area average like
     ``Image.reduce(f)``, but exact at the right/bottom edge when w or h is not a multiple of
     f); both sides stay >= m. 8-bit images are averaged in 8 bits (mean rounded, error
     <= 0.5/255); 16-bit and 32-bit integer images are converted to float32 first so no
     precision is lost.

  The later bilinear resize to the network size is therefore never fed a huge image. Shapes
  returned by :func:`load_image` for large non-DICOM files are the reduced ones.

DICOM (what we do better than the reference code, which min-max scaled to 8 bits)
---------------------------------------------------------------------------------
Read with ``pydicom.dcmread(path, force=True)`` so files with no preamble / no file meta
(ACR-NEMA style) load. When the file meta has no Transfer Syntax UID it is set from the
encoding pydicom detected while parsing the data set (implicit VR -> Implicit VR Little Endian,
explicit VR -> Explicit VR Little/Big Endian); encapsulated (compressed) pixel data without a
Transfer Syntax UID is rejected, since the codec cannot be known.

Grey images (MONOCHROME1 / MONOCHROME2), all arithmetic in float64, no 8-bit detour:

1. ``pixel_array`` (first frame of a multi-frame image), stored values.
2. Modality LUT (``pydicom.pixels.apply_modality_lut``): Modality LUT Sequence, else Rescale
   Slope/Intercept, else identity.
3. VOI, then scaling to [0, 1] against the FIXED output range of that step, never against the
   image's own min/max (so the same tissue gets the same grey in every image):

   - VOI LUT Sequence present (first item, ``pydicom.pixels.apply_voi``): output / (2**n - 1),
     n = the LUT's bits per entry (3rd value of LUT Descriptor).
   - else Window Center/Width (first pair if several), VOI LUT Function LINEAR (default),
     LINEAR_EXACT or SIGMOID, exactly as PS3.3 C.11.2.1.2 / C.11.2.1.3 define it. For LINEAR,
     x <= c - 0.5 - (w-1)/2 -> 0, x > c - 0.5 + (w-1)/2 -> 1, linear in between; i.e. the
     window [WC - WW/2, WC + WW/2] (to within half a stored unit) is stretched to [0, 1] and
     values outside it are clipped. This equals pydicom's ``apply_windowing`` divided by its
     output range (checked in the tests).
     Exception: if the window lies entirely outside the image's values (every pixel would clip
     to the same value and the image would be a constant), the window is ignored with a
     :class:`DicomWindowWarning` and the no-VOI rule below applies. An invalid window (width < 1
     for LINEAR, <= 0 otherwise, unreadable values) is ignored the same way.
   - no VOI at all: the range of the stored bit depth carried through the modality step:
     [0, 2**b - 1] for unsigned (b = Bits Stored), [-2**(b-1), 2**(b-1) - 1] for signed, both
     mapped by the rescale slope/intercept; [0, 2**n - 1] after a Modality LUT Sequence of n
     bits. Values outside it are clipped (with a :class:`DicomWindowWarning`).
4. MONOCHROME1: v -> 1 - v (against that fixed range, not against the image's own maximum).
   The result is "bright = dense" like MONOCHROME2. Only the Photometric Interpretation drives
   the inversion; Presentation LUT Shape is not applied (in DX it is INVERSE exactly when the
   image is MONOCHROME1, i.e. it restates the same inversion). A header that says MONOCHROME1
   over pixels that are really MONOCHROME2 (torchxrayvision's Fake_MONOHR1 test file) is
   therefore inverted: we trust the header, by design.

Colour images (RGB, YBR_* which pydicom converts to RGB, PALETTE COLOR through its colour LUT)
are divided by 2**BitsStored - 1 (palette: 2**n - 1 of the LUT) and turned to luma; no
modality/VOI step applies to colour. Other photometric interpretations are rejected.

Compressed transfer syntaxes (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, ...) decode
through pydicom's plugins (pylibjpeg + openjpeg/libjpeg: the ``dicom-codecs`` extra; pydicom may
also use Pillow for JPEG / JPEG 2000). When no plugin for the file's transfer syntax is
installed, the error names the transfer syntax and says to
``pip install "ddad-edge[dicom-codecs]"``. A stream the decoders reject gives
"pixel data could not be decoded (<transfer syntax>): <short message>".
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .preprocess import IMAGE_SIZE, PreprocessError, check_input, preprocess, to_unit_grey

__all__ = [
    "CODECS_HINT",
    "DICOM_EXTENSIONS",
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

CODECS_HINT = 'install the extra with `pip install "ddad-edge[dicom-codecs]"`'
"""Advice appended to the error raised when a DICOM codec plugin is missing."""

_MSG_MAX = 200  # characters of an underlying library message kept in an error reason

_PIL_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_MONO = ("MONOCHROME1", "MONOCHROME2")
_RGB_LIKE = (
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
    "YBR_PARTIAL_420",
    "YBR_PARTIAL_422",
)


class ImageLoadError(Exception):
    """A file could not be decoded into an image.

    Attributes:
        path: the file, as given (``str``).
        reason: what went wrong, for a human (``str``).

    ``str(e) == f"{path}: {reason}"``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


class InputWarning(UserWarning):
    """Something about one input that the caller should know although it was scored."""


class DicomWindowWarning(InputWarning):
    """A DICOM file's VOI window / declared bit depth did not fit its pixels (see module doc)."""


class MultiFrameWarning(InputWarning):
    """The file holds several frames (animated GIF, multi-page TIFF, multi-frame DICOM); only
    the first was used."""


Notes = list[InputWarning]
"""Warnings gathered while decoding one input, in order (one list per call: thread-safe)."""


@dataclass
class Decoded:
    """One decoded input.

    image: float32 HxW in [0, 1] (:func:`read_image`) or the network input float32
        [1, size, size] in [-1, 1] (:func:`read_input`).
    warnings: one line each, what the caller should know (e.g. only the first frame was used).
    """

    image: np.ndarray
    warnings: list[str] = field(default_factory=list)


def _short(exc: BaseException) -> str:
    """One-line, length-limited text of an exception from a third-party library."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > _MSG_MAX:
        text = text[: _MSG_MAX - 3] + "..."
    return text


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


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


def _check_file(p: str) -> None:
    """Raise ImageLoadError for a path that is not a readable, non-empty regular file."""
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageLoadError(p, "symbolic link loop (too many levels of links)") from e
        if e.errno == errno.ENOENT:
            why = "no such file (broken symbolic link)" if os.path.islink(p) else "no such file"
            raise ImageLoadError(p, why) from e
        raise ImageLoadError(p, f"cannot read file: {_short(e)}") from e
    except ValueError as e:  # e.g. an embedded NUL character
        raise ImageLoadError(p, f"not a valid path: {_short(e)}") from e
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(p, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(p, "not a regular file (device, pipe or socket)")
    size = st.st_size
    if size == 0:
        raise ImageLoadError(p, "file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise ImageLoadError(p, "file is not readable (permission denied)")


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike[str], *, target_size: int | None = IMAGE_SIZE) -> Decoded:
    """Decode one image file to grey, with the warnings the decoding raised.

    As :func:`load_image`, but the warnings come back in :attr:`Decoded.warnings` instead of
    through :mod:`warnings` (safe from several threads), and ANY failure, including one a
    library did not foresee, is an :class:`ImageLoadError` naming the file.
    """
    notes: Notes = []
    img = _decode(os.fspath(path), target_size, notes)
    return Decoded(img, [str(n) for n in notes])


def _decode(p: str, target_size: int | None, notes: Notes) -> np.ndarray:
    """The body of :func:`read_image` (warnings appended to ``notes``)."""
    if target_size is not None and (isinstance(target_size, bool) or int(target_size) < 1):
        raise ValueError(f"target_size must be a positive int or None, got {target_size!r}")
    try:
        _check_file(p)
        if is_dicom(p):
            img = _load_dicom(p, notes)
        else:
            img = _load_pillow(p, None if target_size is None else int(target_size), notes)
        img = to_unit_grey(img)
    except ImageLoadError:
        raise
    except PreprocessError as e:
        raise ImageLoadError(p, str(e)) from e
    except MemoryError as e:
        raise ImageLoadError(p, "not enough memory to decode this image") from e
    except Exception as e:  # a malformed header can break a library in ways nobody listed
        raise ImageLoadError(p, f"could not be decoded: {type(e).__name__}: {_short(e)}") from e
    return img


def load_image(path: str | os.PathLike[str], *, target_size: int | None = IMAGE_SIZE) -> np.ndarray:
    """Decode one image file to grey.

    Args:
        path: PNG, JPEG, any other format Pillow reads, or DICOM (see :func:`is_dicom`).
        target_size: side of the network input the image is meant for, pixels. Only a decoding
            hint for Pillow formats: JPEG draft mode and a box-filter reduction shrink the image
            while both sides stay >= ``2 * target_size`` (see the module docstring). ``None``
            decodes at full resolution. DICOM is always returned at full resolution.

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
    img = _decode(p, target_size, notes)
    for n in notes:
        warnings.warn(type(n)(f"{p}: {n}"), stacklevel=2)
    return img


def load_input(path: str | os.PathLike[str], *, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode a file and turn it into one network input.

    :func:`load_image` (with ``target_size=size``) followed by
    :func:`~ddad_edge.runtime.preprocess.preprocess`.

    Returns:
        float32 array, shape (1, size, size), values in [-1, 1].

    Raises:
        ImageLoadError: as :func:`load_image`; a ``PreprocessError`` (e.g. image smaller than
            2x2) is re-raised as ``ImageLoadError`` naming the file.
    """
    return read_input(path, size=size).image


def read_input(path: str | os.PathLike[str], *, size: int = IMAGE_SIZE) -> Decoded:
    """:func:`read_image` + preprocessing + :func:`~ddad_edge.runtime.preprocess.check_input`.

    Returns:
        Decoded: image float32 [1, size, size] in [-1, 1], and the decoding's warnings.

    Raises:
        ImageLoadError: as :func:`read_image`, or the image cannot be a chest radiograph
            (too small, constant), naming the file.
    """
    p = os.fspath(path)
    d = read_image(p, target_size=size)
    try:
        x = preprocess(d.image, size)
        check_input(x)
    except PreprocessError as e:
        raise ImageLoadError(p, str(e)) from e
    return Decoded(x, d.warnings)


# ---------------------------------------------------------------------------------------------
# Pillow
# ---------------------------------------------------------------------------------------------


_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _load_pillow(p: str, target_size: int | None, notes: Notes) -> np.ndarray:
    """Decode with Pillow; returns uint8/uint16 HxW[x3] or float32 HxW (range checked later)."""
    try:
        with Image.open(p) as im:
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:  # animated GIF/PNG/WebP, multi-page TIFF: Pillow opens frame 0
                notes.append(MultiFrameWarning(_first_frame_note(frames)))
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except Exception:  # a broken EXIF block must not stop the pixels from loading
                orientation = 1
            box = None
            if target_size is not None:
                drafted = im.draft("L", (2 * target_size, 2 * target_size))  # JPEG only
                if drafted is not None and tuple(drafted[1][2:]) != tuple(im.size):
                    box = drafted[1]
            im.load()
            return _pillow_to_array(p, im, target_size, box, orientation)
    except ImageLoadError:
        raise
    except UnidentifiedImageError as e:
        raise ImageLoadError(p, "not a recognised image format (neither DICOM nor Pillow)") from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(p, f"image too large: {_short(e)}") from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageLoadError(p, f"image data could not be decoded: {_short(e)}") from e


def _pillow_to_array(
    p: str,
    im: Image.Image,
    target_size: int | None,
    box: tuple[float, float, float, float] | None,
    orientation: int,
) -> np.ndarray:
    mode = im.mode
    if mode in ("1", "La", "LA"):
        im = im.getchannel(0).convert("L") if mode != "1" else im.convert("L")
    elif mode == "RGBA":
        im = im.convert("RGB")  # drops alpha, no compositing
    elif mode not in ("L", "RGB", "I", "F") + _PIL_16BIT:
        im = im.convert("RGB")
    mode = im.mode
    wide = mode in _PIL_16BIT or mode == "I"

    if box is not None:  # exact geometry after a JPEG draft with partial edge blocks
        size = (max(1, round(box[2])), max(1, round(box[3])))
        im = im.resize(size, Image.Resampling.BILINEAR, box=box)
    if target_size is not None:
        f = min(im.size) // (2 * target_size)
        if f >= 2:
            if wide:
                im, mode = im.convert("F"), "F32"  # exact for 16-bit values
            size = (round(im.size[0] / f), round(im.size[1] / f))
            im = im.resize(size, Image.Resampling.BOX)
    if orientation in _EXIF_TRANSPOSE:
        im = im.transpose(_EXIF_TRANSPOSE[orientation])

    arr = np.asarray(im)
    if mode in _PIL_16BIT:
        return arr.astype(np.uint16)  # native byte order; to_unit_grey divides by 65535
    if mode in ("I", "F32"):
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageLoadError(
                p, f"32-bit integer image with values [{lo:g}, {hi:g}] outside [0, 65535]"
            )
        return arr.astype(np.float32) / np.float32(65535.0)
    return arr  # uint8 grey / RGB, or float32 (mode F; [0, 1] checked by to_unit_grey)


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------


def _read_dicom(p: str, *, stop_before_pixels: bool = False) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(p, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as e:
        raise ImageLoadError(p, f"not a readable DICOM file: {_short(e)}") from e


def _transfer_syntax(ds: Any, p: str, *, fix: bool) -> Any:
    """The data set's Transfer Syntax UID; when absent, detect it (and store it if ``fix``)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        raise ImageLoadError(
            p,
            "compressed (encapsulated) pixel data but no Transfer Syntax UID in the file meta: "
            "the codec cannot be determined",
        )
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit or implicit is None:
        ts = ImplicitVRLittleEndian
    elif little is False:
        ts = ExplicitVRBigEndian
    else:
        ts = ExplicitVRLittleEndian
    if fix:
        if meta is None:
            ds.file_meta = meta = FileMetaDataset()
        meta.TransferSyntaxUID = ts
    return ts


def _ts_name(ts: Any) -> str:
    name = getattr(ts, "name", "") or str(ts)
    return name if name == str(ts) else f"{name}, {ts}"


def _codec_error(p: str, ts: Any, detail: str = "") -> ImageLoadError:
    why = f" ({detail})" if detail else ""
    return ImageLoadError(
        p,
        f"no installed decoder for DICOM transfer syntax {_ts_name(ts)}{why}; {CODECS_HINT}",
    )


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS/IS element, as float."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _first_frame_note(frames: int) -> str:
    return f"{frames} frames; only the first was scored"


def _window(ds: Any, notes: Notes | None = None) -> tuple[float, float, str] | None:
    """(center, width, function) of the first window, or None when there is no usable one."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    try:
        c = _first(ds.WindowCenter)
        w = _first(ds.WindowWidth)
        func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    except Exception as e:
        _note(notes, f"unreadable Window Center/Width ignored: {_short(e)}")
        return None
    if func not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        _note(notes, f"unknown VOI LUT Function {func!r}, using LINEAR")
        func = "LINEAR"
    if not (np.isfinite(c) and np.isfinite(w)) or w < (1 if func == "LINEAR" else 1e-12):
        _note(notes, f"invalid window (center {c}, width {w}) ignored")
        return None
    return c, w, func


def _note(notes: Notes | None, text: str) -> None:
    if notes is not None:
        notes.append(DicomWindowWarning(text))


def _window_edges(c: float, w: float, func: str) -> tuple[float, float]:
    """Input values at which a LINEAR / LINEAR_EXACT window reaches 0 and 1 (PS3.3 C.11.2.1)."""
    if func == "LINEAR":
        return c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    return c - w / 2, c + w / 2


def _to_unit(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 clip((x - lo) / (hi - lo), 0, 1), computed in float64 (x is not modified)."""
    y = np.subtract(x, lo, dtype=np.float64)
    y *= 1.0 / (hi - lo)
    np.clip(y, 0.0, 1.0, out=y)
    return y.astype(np.float32)


def _apply_window(x: np.ndarray, c: float, w: float, func: str) -> np.ndarray:
    """VOI windowing straight to [0, 1] (float32), per PS3.3 C.11.2.1.2 / C.11.2.1.3."""
    if func == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))).astype(np.float32)
    lo, hi = _window_edges(c, w, func)
    if hi <= lo:  # LINEAR with width 1: a step at c - 0.5
        return (x > lo).astype(np.float32)
    return _to_unit(x, lo, hi)


def _stored_range(ds: Any) -> tuple[float, float]:
    """Range of the stored values from Bits Stored / Pixel Representation."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _modality_range(ds: Any) -> tuple[float, float]:
    """Fixed output range of the Modality LUT step (mirrors ``apply_modality_lut``)."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, 2.0**bits - 1
    lo, hi = _stored_range(ds)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        a, b = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
        lo, hi = min(a, b), max(a, b)
    return lo, hi


def _voi_lut_bits(ds: Any) -> int | None:
    """Bits per entry of the first VOI LUT Sequence item, or None when there is no usable one."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return int(item.LUTDescriptor[2])


def _grey_to_unit(p: str, arr: np.ndarray, ds: Any, notes: Notes) -> np.ndarray:
    """Stored grey values -> float32 in [0, 1] through Modality LUT and VOI (before MONO1)."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    try:
        x = np.asarray(apply_modality_lut(arr, ds))
    except Exception as e:
        raise ImageLoadError(p, f"Modality LUT / rescale could not be applied: {_short(e)}") from e

    lut_bits = _voi_lut_bits(ds)
    if lut_bits is not None:
        try:
            xi = x if np.issubdtype(x.dtype, np.integer) else np.rint(x).astype(np.int64)
            y = np.asarray(apply_voi(xi, ds, 0), dtype=np.float64)
        except Exception as e:
            raise ImageLoadError(p, f"VOI LUT Sequence could not be applied: {_short(e)}") from e
        return _to_unit(y, 0.0, 2.0**lut_bits - 1)

    x_min, x_max = float(x.min()), float(x.max())
    window = _window(ds, notes)
    if window is not None:
        c, w, func = window
        if func != "SIGMOID":
            lo, hi = _window_edges(c, w, func)
            if x_max <= lo or x_min > hi:
                _note(
                    notes,
                    f"window center {c:g} / width {w:g} lies entirely outside the pixel "
                    f"values [{x_min:g}, {x_max:g}]; window ignored, scaling to the stored "
                    "bit depth instead",
                )
                window = None
    if window is not None:
        return _apply_window(x, *window)

    lo, hi = _modality_range(ds)
    if not hi > lo:
        raise ImageLoadError(
            p, f"Modality LUT maps every stored value to {lo:g} (Rescale Slope 0?): no image"
        )
    if x_min < lo or x_max > hi:
        _note(
            notes,
            f"pixel values [{x_min:g}, {x_max:g}] exceed the declared range "
            f"[{lo:g}, {hi:g}] (Bits Stored {ds.get('BitsStored')}); clipped",
        )
    return _to_unit(x, lo, hi)


def _decode_pixels(p: str, ds: Any, ts: Any, notes: Notes) -> np.ndarray:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except Exception as e:
        raise ImageLoadError(
            p, f"unsupported DICOM transfer syntax {_ts_name(ts)}: {_short(e)}"
        ) from e
    if not decoder.is_available:
        raise _codec_error(p, ts, "; ".join(decoder.missing_dependencies))
    frames = ds.get("NumberOfFrames")
    try:
        n_frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        n_frames = 1
    if n_frames > 1:
        notes.append(MultiFrameWarning(_first_frame_note(n_frames)))
    try:
        ds.pixel_array_options(index=0 if n_frames > 1 else None)
        return np.asarray(ds.pixel_array)
    except Exception as e:
        msg = str(e)
        if "missing dependencies" in msg or "no plugins" in msg.lower():
            raise _codec_error(p, ts) from e
        raise ImageLoadError(
            p, f"pixel data could not be decoded ({_ts_name(ts)}): {_short(e)}"
        ) from e


_SINGLE_VALUED = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
)
_LUT_SEQUENCES = ("ModalityLUTSequence", "VOILUTSequence")


def _element_name(keyword: str) -> str:
    from pydicom.datadict import dictionary_description, tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"{dictionary_description(tag)} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag else keyword


def _check_header(p: str, ds: Any) -> None:
    """Refuse, naming the element, a header the pixel pipeline cannot trust: an image-pixel
    element (PS3.3 C.7.6.3) whose value cannot be read or has several values where the standard
    allows one, and a LUT Descriptor (C.11.1, C.11.2) that does not have its three values."""
    for key in _SINGLE_VALUED:
        try:
            value = ds.get(key)
        except Exception as e:  # a wrong length or VR in the file: pydicom fails on access
            raise ImageLoadError(p, f"DICOM {_element_name(key)} is malformed: {_short(e)}") from e
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            raise ImageLoadError(
                p, f"DICOM {_element_name(key)} has {len(value)} values, expected 1"
            )
    for key in _LUT_SEQUENCES:
        try:
            items = list(ds.get(key) or [])
            descriptors = [it.get("LUTDescriptor") for it in items]
        except Exception as e:
            raise ImageLoadError(p, f"DICOM {_element_name(key)} is malformed: {_short(e)}") from e
        for d in descriptors:
            n = 0 if d is None else len(d) if not isinstance(d, (int, float)) else 1
            if d is not None and n != 3:
                raise ImageLoadError(
                    p, f"DICOM {_element_name(key)}: LUT Descriptor has {n} value(s), expected 3"
                )


def _load_dicom(p: str, notes: Notes) -> np.ndarray:
    """DICOM -> float32 HxW in [0, 1] (pipeline in the module docstring)."""
    ds = _read_dicom(p)
    _check_header(p, ds)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageLoadError(p, "DICOM data set has no Pixel Data (not an image, or not DICOM)")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise ImageLoadError(p, f"DICOM image has zero size (Rows={rows}, Columns={cols})")
    for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if key in ds and not ds[key].value:
            raise ImageLoadError(p, f"DICOM {key} element is empty")

    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if not photometric and spp == 1:
        ds.PhotometricInterpretation = photometric = "MONOCHROME2"  # ACR-NEMA files may omit it
    if photometric not in _MONO + _RGB_LIKE + ("PALETTE COLOR",):
        raise ImageLoadError(
            p, f"unsupported DICOM Photometric Interpretation {photometric or '(missing)'!r}"
        )

    ts = _transfer_syntax(ds, p, fix=True)
    arr = _decode_pixels(p, ds, ts, notes)
    if arr.size == 0:
        raise ImageLoadError(p, "DICOM pixel data decoded to an empty array")

    if photometric in _MONO:
        if arr.ndim != 2:
            raise ImageLoadError(
                p, f"{photometric} image should have one sample per pixel, got shape {arr.shape}"
            )
        v = _grey_to_unit(p, arr, ds, notes)
        if photometric == "MONOCHROME1":
            v = np.float32(1.0) - v
    else:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            try:
                arr = np.asarray(apply_color_lut(arr, ds))
                bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
            except Exception as e:
                raise ImageLoadError(p, f"palette colour LUT failed: {_short(e)}") from e
        else:
            bits = int(ds.get("BitsStored") or 8)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ImageLoadError(p, f"{photometric} image should be HxWx3, got shape {arr.shape}")
        rgb = np.clip(arr.astype(np.float64) / (2.0**bits - 1), 0.0, 1.0)
        v = to_unit_grey(rgb.astype(np.float32))
    return v.astype(np.float32)


def dicom_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Header summary of a DICOM file (pixel data is not read or decoded).

    Returns:
        dict with ``modality``, ``photometric``, ``rows``, ``columns``, ``frames``,
        ``bits_allocated``, ``bits_stored``, ``pixel_representation``, ``window_center`` and
        ``window_width`` (first pair, float, or None), ``voi_lut_function``,
        ``voi_lut_sequence`` (bool), ``modality_lut_sequence`` (bool), ``rescale_slope``,
        ``rescale_intercept`` (float or None), ``presentation_lut_shape``, ``transfer_syntax``
        (name), ``transfer_syntax_uid``, ``has_file_meta`` (bool: False for preamble-less files,
        whose transfer syntax is then the detected one) and ``voi`` (which VOI step
        :func:`load_image` uses: ``"voi_lut_sequence"``, ``"window"`` or ``"none"``; a window
        that excludes every pixel is still dropped at load time).

    Raises:
        ImageLoadError: the file is missing, empty or not readable as DICOM.
    """
    p = os.fspath(path)
    _check_file(p)
    ds = _read_dicom(p, stop_before_pixels=True)
    meta = getattr(ds, "file_meta", None)
    has_meta = bool(meta is not None and meta.get("TransferSyntaxUID"))
    try:
        ts = _transfer_syntax(ds, p, fix=False)
    except ImageLoadError:
        ts = None

    def num(key: str) -> float | None:
        v = ds.get(key)
        try:
            return None if v is None or v == "" else _first(v)
        except Exception:
            return None

    window = _window(ds)
    if _voi_lut_bits(ds) is not None:
        voi = "voi_lut_sequence"
    elif window is not None:
        voi = "window"
    else:
        voi = "none"
    return {
        "modality": str(ds.get("Modality", "") or ""),
        "photometric": str(ds.get("PhotometricInterpretation", "") or ""),
        "rows": int(ds.get("Rows") or 0),
        "columns": int(ds.get("Columns") or 0),
        "frames": int(num("NumberOfFrames") or 1),
        "bits_allocated": int(ds.get("BitsAllocated") or 0),
        "bits_stored": int(ds.get("BitsStored") or 0),
        "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
        "window_center": window[0] if window else None,
        "window_width": window[1] if window else None,
        "voi_lut_function": window[2] if window else None,
        "voi_lut_sequence": _voi_lut_bits(ds) is not None,
        "modality_lut_sequence": bool(ds.get("ModalityLUTSequence")),
        "rescale_slope": num("RescaleSlope"),
        "rescale_intercept": num("RescaleIntercept"),
        "presentation_lut_shape": str(ds.get("PresentationLUTShape", "") or "") or None,
        "transfer_syntax": getattr(ts, "name", None) if ts is not None else None,
        "transfer_syntax_uid": str(ts) if ts is not None else None,
        "has_file_meta": has_meta,
        "voi": voi,
    }
