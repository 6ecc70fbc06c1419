"""What decoding one input can report: the error that refuses it, the warnings that go with a
score, and the pixel budget checked before any decoding. Shared by the image-file and DICOM
decoders (``runtime/imagefile.py``, ``runtime/dicom.py``) and their dispatcher ``runtime/io.py``.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest image a file may declare, in pixels (rows x columns x frames x samples for DICOM,
width x height for Pillow formats), checked from the header before decoding. It admits every
real CR, DX and mammography size; a larger file is refused as a likely decompression bomb."""

MSG_MAX = 200
"""Characters of an underlying library message kept in an error reason."""


class ImageLoadError(Exception):
    """A file could not be decoded into an image.

    Attributes:
        path: the file, as given (``str``).
        reason: what went wrong, for a human (``str``, one line).

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
    """A DICOM file's VOI window / declared bit depth did not fit its pixels."""


class MultiFrameWarning(InputWarning):
    """The file holds several frames (animated GIF, multi-page TIFF, multi-frame DICOM); only
    the first was used."""


Notes = list[InputWarning]
"""Warnings gathered while decoding one input, in order (one list per call: thread-safe)."""


def one_line(e: BaseException | str) -> str:
    """An exception or message of ours as one line, whole (multi-line text joined with ' | ');
    for a third-party library's text, :func:`short_reason`."""
    text = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or (type(e).__name__ if isinstance(e, BaseException) else "")


def short_reason(exc: BaseException) -> str:
    """One-line, length-limited text of an exception from a third-party library."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > MSG_MAX:
        text = text[: MSG_MAX - 3] + "..."
    return text


def first_frame_note(frames: int) -> MultiFrameWarning:
    """The warning for a file of ``frames`` frames of which only the first is used."""
    return MultiFrameWarning(f"{frames} frames; only the first was scored")


def check_pixel_budget(p: str, pixels: int, max_pixels: int | None, what: str) -> None:
    """Refuse a file whose header declares more than ``max_pixels`` pixels (None: no limit).

    Args:
        p: the file (for the error).
        pixels: declared pixel count.
        max_pixels: the budget.
        what: how ``pixels`` was counted, e.g. ``"13000 x 13000"``.
    """
    if max_pixels is not None and pixels > max_pixels:
        raise ImageLoadError(
            p,
            f"image too large: {what} = {pixels / 1e6:.1f} MP declared, over the limit of "
            f"{max_pixels / 1e6:.1f} MP (max_pixels / --max-pixels); refused before decoding",
        )


def check_file(p: str) -> None:
    """Raise ImageLoadError for a path that is not a readable, non-empty regular file."""
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageLoadError(p, "symbolic link loop (too many levels of links)") from e
        if e.errno == errno.ENOENT:
            why = "no such file (broken symbolic link)" if os.path.islink(p) else "no such file"
            raise ImageLoadError(p, why) from e
        raise ImageLoadError(p, f"cannot read file: {short_reason(e)}") from e
    except ValueError as e:  # e.g. an embedded NUL character
        raise ImageLoadError(p, f"not a valid path: {short_reason(e)}") from e
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(p, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(p, "not a regular file (device, pipe or socket)")
    size = st.st_size
    if size == 0:
        raise ImageLoadError(p, "file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise ImageLoadError(p, "file is not readable (permission denied)")
