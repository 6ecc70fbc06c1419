"""Decode an image file that Pillow reads (PNG, JPEG, TIFF, GIF, BMP, ...) to a grey array.

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
- Only the first frame of a multi-frame file (animated GIF, multi-page TIFF) is decoded, with a
  :class:`~ddad_edge.runtime.loaderrors.MultiFrameWarning`.
- The declared size (read lazily from the header) is checked against the pixel budget before
  anything is decoded.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from .loaderrors import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    Notes,
    check_pixel_budget,
    first_frame_note,
    short_reason,
)

__all__ = ["load_pillow"]

_PIL_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")

_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def load_pillow(
    p: str, target_size: int | None, notes: Notes, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode the first frame of an image file with Pillow (module docstring).

    Args:
        p: the file.
        target_size: network input side the image is meant for (reduced decoding), or None.
        notes: warnings are appended here (several frames).
        max_pixels: pixel budget, checked from the header before decoding.

    Returns:
        uint8 / uint16 HxW or HxWx3, or float32 HxW (range checked by ``to_unit_grey``).

    Raises:
        ImageLoadError: not an image, too large, truncated or corrupt.
    """
    try:
        with Image.open(p) as im:
            w, h = im.size
            check_pixel_budget(p, w * h, max_pixels, f"{w} x {h}")
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:  # animated GIF/PNG/WebP, multi-page TIFF: Pillow opens frame 0
                notes.append(first_frame_note(frames))
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
        raise ImageLoadError(p, f"image too large: {short_reason(e)}") from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageLoadError(p, f"image data could not be decoded: {short_reason(e)}") from e


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
