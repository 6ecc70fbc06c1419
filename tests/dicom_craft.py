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


def grey_dataset(pixels: np.ndarray | None = None, bits: int = 12) -> Dataset:
    """An uncompressed MONOCHROME2 data set (Explicit VR LE) holding ``pixels`` (uint16 HxW,
    or frames x H x W)."""
    px = ramp(bits=bits) if pixels is None else np.asarray(pixels, dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
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
