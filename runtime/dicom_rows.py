"""Decode a grey DICOM film while its file is still being written, one band of rows at a time.

The node's scoring child follows each C-STORE's file as the node writes it (``node.scoring``):
pixel data that is not compressed lands row after row, and every step of the decoder works on
any block of rows (``runtime.dicom``, steps 1-4, and the first pass of
``runtime.preprocess.resize``). So each band of complete rows is decoded as it lands, with the
decoder's own functions:

1. stored values: pydicom's ``pixel_array`` of a data set holding the header's image-pixel
   elements and only this band's rows (PS3.5 8.1.1: native pixel data is the rows in order);
2. :func:`~ddad_edge.runtime.dicom.modality_lut` (PS3.3 C.11.1), its span kept;
3. the VOI step of :func:`~ddad_edge.runtime.dicom.voi_mapping` (PS3.3 C.11.2);
4. :func:`~ddad_edge.runtime.dicom.to_display_polarity` (PS3.3 C.7.6.3.1.2);
5. :func:`~ddad_edge.runtime.preprocess.resize_width`, the resize's pass along the rows.

When the file is complete only the last band, the resize's pass along the columns and the
normalisation remain. :meth:`RowDecoder.finish` gives the image and network input that
``load_image`` + ``preprocess`` give for the finished file, bit for bit (tested), or None where
it could not stand for them, and the caller decodes the file as usual: anything but a
single-frame, little-endian, uncompressed grey image of 8 or 16 bits whose Pixel Data is the
last element; a window that the finished image's values show must be ignored (the choice of the
VOI step depends on the whole image's span); any error (the usual decode then names it).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from .dicom import image_header, modality_lut, to_display_polarity, voi_mapping
from .loaderrors import DEFAULT_MAX_PIXELS, Notes
from .preprocess import IMAGE_SIZE, normalise, resize_height, resize_width

__all__ = ["RowDecoder"]

STREAMED_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
"""Implicit and Explicit VR Little Endian (PS3.5 A.1, A.2): native pixel data, rows in order."""

HEADER_MAX = 1 << 22
"""Bytes of header (all before Pixel Data) beyond which a file is not followed, bytes."""

BAND_ROWS = 64
"""Fewest new rows decoded at once before the last ones (pydicom's per-call cost), rows."""

_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) Pixel Data, little endian
_PIXEL_ELEMENTS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)


def _copy_header(ds: Any) -> Any:
    """A copy of a header data set (and its file meta) whose elements can be set without
    changing ``ds``: each element is copied (a raw, still undecoded one is immutable)."""
    import copy

    from pydicom.dataset import Dataset, FileMetaDataset

    out = Dataset({tag: copy.copy(elem) for tag, elem in ds._dict.items()})
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        out.file_meta = FileMetaDataset({tag: copy.copy(e) for tag, e in meta._dict.items()})
    return out


class RowDecoder:
    """Follows one file being written (opened by path; the file may be renamed meanwhile).

    Call :meth:`advance` while the file grows and :meth:`finish` once it is complete. Neither
    raises for what the file holds: a file that cannot be followed sets :attr:`failed`. Once
    the header is in, :attr:`header` holds it as ``gate.read_header`` reads it (every file
    whose header has Rows and Columns, compressed or not; no pixel data), and the rows are
    decoded where they can be (:attr:`rows_error` says why not).
    """

    def __init__(
        self, path: str, size: int = IMAGE_SIZE, max_pixels: int | None = DEFAULT_MAX_PIXELS
    ) -> None:
        self.path, self.size, self.max_pixels = path, size, max_pixels
        self._fd = os.open(path, os.O_RDONLY)
        self.inode = os.fstat(self._fd).st_ino
        self.failed: str | None = None
        self.header: Any = None
        self.rows_error: str | None = None
        self._read = 0  # bytes of the file read so far
        self._head = bytearray()  # the file's bytes until the header is complete
        self._pending = bytearray()  # pixel bytes not yet decoded (a partial band)
        self.ds: Any = None
        self.rows_done = 0
        self.rows = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def complete(self) -> bool:
        """Every row decoded."""
        return self.ds is not None and self.rows_done == self.rows

    @property
    def done(self) -> bool:
        """Nothing more to do before :meth:`finish`: every row decoded, or the header read and
        the rows not followed."""
        return self.complete or (self.header is not None and self.rows_error is not None)

    def gone(self) -> bool:
        """The file was removed (a transfer cut off: ``node.receiving.drop_partial``)."""
        return self._fd < 0 or os.fstat(self._fd).st_nlink == 0

    def advance(self) -> bool:
        """Read what was written since the last call and decode the complete rows; True when
        there was anything new."""
        if self.failed is not None or self.done:
            return False
        try:
            data = os.pread(self._fd, 1 << 24, self._read)
            if not data:
                return False
            self._read += len(data)
            if self.ds is None:
                self._head += data
                self._parse_header()
            else:
                self._pending += data
            self._decode_rows(last=False)
            return True
        except Exception as e:  # noqa: BLE001 - not followed; the usual decode names the fault
            self.failed = f"{type(e).__name__}: {e}"
            return False

    def finish(self, path: str, notes: Notes) -> tuple[np.ndarray, np.ndarray] | None:
        """The image (float32 HxW in [0, 1], as ``load_image``) and network input (float32
        [1, size, size], as ``preprocess``) of the finished file now at ``path``; the decoder's
        notes appended to ``notes``. None when the streamed decode cannot stand for the usual
        one (module docstring)."""
        try:
            if os.stat(path).st_ino != self.inode:
                return None
            while self.advance():
                pass
            if self.failed is not None or self.ds is None:
                return None
            self._decode_rows(last=True)
            if not self.complete or os.fstat(self._fd).st_size != self._end:
                return None  # rows missing, or elements after the pixel data
            if not (0.0 <= self._grey[0] and self._grey[1] <= 1.0):  # NaN fails too
                return None
            mine: Notes = []
            kind, _ = voi_mapping(path, self.ds, self._lo, self._hi, mine)
            if kind != self._kind:
                return None
            notes.extend(mine)
            return self._image, normalise(resize_height(self._wide, self.size))
        except Exception as e:  # noqa: BLE001 - the usual decode decides (and names the fault)
            self.failed = f"{type(e).__name__}: {e}"
            return None
        finally:
            self.close()

    def _parse_header(self) -> None:
        """Once the header is in: keep it, check it as the decoder does, prepare the bands."""
        import pydicom

        fp = io.BytesIO(self._head)
        try:
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - a partial header: wait for more
            ds = None
        at = fp.tell()
        # wait for the Pixel Data element's header (12 bytes explicit VR) and a first value byte
        if ds is None or self._head[at : at + 4] != _PIXEL_TAG or len(self._head) <= at + 12:
            if len(self._head) > HEADER_MAX:
                raise ValueError("no Pixel Data within the first 4 MiB")
            return
        if ds.get("Rows") and ds.get("Columns"):  # what gate.read_header accepts
            self.header = ds
        try:
            self._start_rows(_copy_header(ds), at)  # the checks below may set elements
        except Exception as e:  # noqa: BLE001 - the header stays of use; the rows are not followed
            self.rows_error = f"{type(e).__name__}: {e}"
            self.ds = None
        self._head = bytearray()

    def _start_rows(self, ds: Any, at: int) -> None:
        """Check that the rows can be followed and prepare the bands."""
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if ts not in STREAMED_SYNTAXES:
            raise ValueError(f"transfer syntax {ts or '(none)'} is not followed")
        start, length = self._pixel_element(at, explicit=ts.endswith(".1"))
        self._setup(ds, start, length)
        self._pending = self._head[start:]

    def _pixel_element(self, at: int, explicit: bool) -> tuple[int, int]:
        """(offset of the first pixel byte, Pixel Data's length) from the element's header."""
        head = bytes(self._head[at : at + 12])
        if len(head) < 12:
            raise ValueError("Pixel Data element header cut")
        if explicit:
            if head[4:6] not in (b"OW", b"OB"):
                raise ValueError(f"Pixel Data with VR {head[4:6]!r}")
            return at + 12, int.from_bytes(head[8:12], "little")
        return at + 8, int.from_bytes(head[4:8], "little")

    def _setup(self, ds: Any, start: int, length: int) -> None:
        """The decoder's header checks and the arrays the bands fill."""
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.get("BitsAllocated") or 0)
        if bits not in (8, 16) or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise ValueError(f"{bits}-bit or colour pixels are not followed")
        if ds.get("NumberOfFrames") not in (None, "", 1, "1"):
            raise ValueError("several frames are not followed")
        if min(rows, cols) < 2 * self.size:
            raise ValueError("an image this small is not worth following")
        self._row_bytes = cols * bits // 8
        if length not in (rows * self._row_bytes, rows * self._row_bytes + 1):
            raise ValueError(f"Pixel Data length {length} does not match the header")
        ds.PixelData = bytes(self._head[start : start + self._row_bytes])  # for the checks
        self._photometric, _ = image_header(self.path, ds, self.max_pixels)
        if self._photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError(f"{self._photometric} is not followed")
        self._kind, self._voi = voi_mapping(self.path, ds, -np.inf, np.inf, [])
        self._band = self._band_dataset(ds)
        self.ds, self.rows, self._end = ds, rows, start + length
        self._lo, self._hi = np.inf, -np.inf
        self._grey = np.inf, -np.inf
        self._image = np.empty((rows, cols), np.float32)
        self._wide = np.empty((rows, self.size), np.float32)

    @staticmethod
    def _band_dataset(ds: Any) -> Any:
        """A data set with the header's image-pixel elements, to hold one band's rows."""
        from pydicom.dataset import Dataset, FileMetaDataset

        band = Dataset()
        band.file_meta = FileMetaDataset()
        band.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
        for key in _PIXEL_ELEMENTS:
            if key in ds:
                band[key] = ds[key]
        return band

    def _decode_rows(self, last: bool) -> None:
        """Decode the complete rows pending (at least ``BAND_ROWS`` unless ``last``)."""
        if self.ds is None:
            return
        n = min(len(self._pending) // self._row_bytes, self.rows - self.rows_done)
        if n == 0 or (n < BAND_ROWS and not last and self.rows_done + n < self.rows):
            return
        take = n * self._row_bytes
        self._band.Rows = n
        self._band.PixelData = bytes(self._pending[:take])
        del self._pending[:take]
        stored = np.asarray(self._band.pixel_array)
        x = modality_lut(stored, self.ds)
        self._lo, self._hi = min(self._lo, float(x.min())), max(self._hi, float(x.max()))
        grey = to_display_polarity(self._voi(x), self._photometric)
        # the decoder's to_unit_grey leaves an image in [0, 1] as it is; finish() checks that
        self._grey = min(self._grey[0], float(grey.min())), max(self._grey[1], float(grey.max()))
        r = slice(self.rows_done, self.rows_done + n)
        self._image[r] = grey
        self._wide[r] = resize_width(grey, self.size)
        self.rows_done += n
