"""Small crafted DICOM files for the input-hardening tests (written into tmp folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def ramp(rows: int = 64, cols: int = 64, bits: int = 12) -> np.ndarray:
    """A uint16 ramp image that uses the whole ``bits`` range."""
    v = np.linspace(0, 2**bits - 1, rows * cols).reshape(rows, cols)
    return v.astype(np.uint16)


def sc_dataset() -> Dataset:
    """An empty Secondary Capture data set with its file meta (Explicit VR LE) and new UIDs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    return ds


def grey_dataset(pixels: np.ndarray | None = None, bits: int = 12) -> Dataset:
    """An uncompressed MONOCHROME2 data set (Explicit VR LE) holding ``pixels`` (uint16 HxW,
    or frames x H x W)."""
    px = ramp(bits=bits) if pixels is None else np.asarray(pixels, dtype=np.uint16)
    ds = sc_dataset()
    ds.Modality = "CR"  # a chest PA radiograph, as the input gate wants
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = px.shape[-2:]
    if px.ndim == 3:
        ds.NumberOfFrames = px.shape[0]
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(px).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def replace_element(path: Path, old: bytes, new: bytes) -> Path:
    """Replace the first occurrence of the raw bytes ``old`` in a file by ``new`` (to write
    what pydicom itself refuses to write: wrong lengths, wrong multiplicities)."""
    data = path.read_bytes()
    i = data.find(old)
    assert i >= 0, f"{old!r} not in {path}"
    path.write_bytes(data[:i] + new + data[i + len(old) :])
    return path


def killers(folder: Path) -> dict[str, Path]:
    """The DICOM files that used to end a whole scoring call (issue 10), by name."""
    out = {}
    ds = grey_dataset()
    ds.RescaleSlope, ds.RescaleIntercept = 0, 0
    out["slope0"] = save(ds, folder / "slope0.dcm")
    ds = grey_dataset()
    ds.RescaleSlope, ds.RescaleIntercept = 0, 0
    ds.WindowCenter, ds.WindowWidth = 0, 100
    out["slope0_window"] = save(ds, folder / "slope0_window.dcm")
    ds = grey_dataset()
    item = Dataset()
    item.add_new(0x00283002, "US", [4096])  # LUT Descriptor with one value instead of three
    item.add_new(0x00283006, "US", list(range(4096)))
    ds.VOILUTSequence = [item]
    out["voi_descriptor_1"] = save(ds, folder / "voi_descriptor_1.dcm")
    ds = grey_dataset()
    ds.SamplesPerPixel = [1, 1]
    out["samples_2_values"] = save(ds, folder / "samples_2_values.dcm")
    path = save(grey_dataset(), folder / "rows_length_3.dcm")
    out["rows_length_3"] = replace_element(
        path, b"\x28\x00\x10\x00US\x02\x00\x40\x00", b"\x28\x00\x10\x00US\x03\x00\x40\x00\x00"
    )
    return out


def png_bomb(path: Path, side: int = 13000) -> Path:
    """A valid 8-bit grey PNG of side x side black pixels: a few hundred KB on disk, side**2
    bytes once decoded (compressed row by row, so writing it needs no big buffer)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    comp = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0 + black pixels
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def encapsulated(path: Path, frame: bytes, ts: str, rows: int, cols: int, bits: int = 8) -> Path:
    """A MONOCHROME2 DICOM whose Pixel Data is ``frame`` encapsulated under transfer syntax
    ``ts``, with the header declaring rows x cols (which need not match the stream)."""
    from pydicom.encaps import encapsulate

    ds = grey_dataset(np.zeros((2, 2), np.uint16), bits=bits)
    ds.file_meta.TransferSyntaxUID = ts
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    return save(ds, path)


def jpeg_with_declared_size(side: int) -> bytes:
    """A small baseline JPEG whose SOF0 marker is rewritten to declare side x side pixels."""
    import io
    import struct

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(ramp(16, 16, 8).astype(np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def bombs(folder: Path) -> dict[str, Path]:
    """The decompression bombs of issue 10, by name (each a few KB to a few hundred KB)."""
    from pydicom.uid import JPEGBaseline8Bit, RLELossless

    small_jpeg = jpeg_with_declared_size(16)
    return {
        "png_13000": png_bomb(folder / "bomb13000.png"),
        "jpeg_dicom_13000": encapsulated(
            folder / "jpeg13000.dcm", small_jpeg, JPEGBaseline8Bit, 13000, 13000
        ),
        "jpeg_stream_13000": encapsulated(
            folder / "jpegstream13000.dcm", jpeg_with_declared_size(13000), JPEGBaseline8Bit, 16, 16
        ),
        "rle_12000": encapsulated(folder / "rle12000.dcm", b"\0" * 64, RLELossless, 12000, 12000),
        "rle_30000": encapsulated(folder / "rle30000.dcm", b"\0" * 64, RLELossless, 30000, 30000),
    }
