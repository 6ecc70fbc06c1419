"""Tests for runtime/io.py: PNG/JPEG/DICOM decoding to grey float32 in [0, 1].

Real DICOM and full-resolution JPEG files come from ../shared/data (never copied into the repo);
those tests skip when it is absent. Everything else uses small synthetic files in tmp_path.
"""

from __future__ import annotations

import csv
import functools
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_craft import sc_dataset
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_windowing, get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)

from ddad_edge.runtime.dicom import j2k_reduce_level
from ddad_edge.runtime.io import (
    CODECS_HINT,
    DicomWindowWarning,
    ImageLoadError,
    MultiFrameWarning,
    dicom_info,
    is_dicom,
    load_image,
    load_input,
)
from ddad_edge.runtime.preprocess import preprocess, to_unit_grey

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DICOM_DIR = DATA / "dicom-cxr"
INDEX = DICOM_DIR / "dicom_index.csv"
FULLRES = DATA / "kermany-fullres"

needs_dicom = pytest.mark.skipif(
    not INDEX.is_file(), reason=f"real DICOM test data not found at {DICOM_DIR}"
)
needs_fullres = pytest.mark.skipif(
    not (FULLRES / "labels.csv").is_file(),
    reason=f"kermany-fullres test data not found at {FULLRES}",
)

FO_DICOM = "original/fo-dicom__CR-MONO1-10-chest.dcm"
NIH = "original/nccid__nih_1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"
SIIM = "original/torchxrayvision__siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
J2K_966 = "original/pylibjpeg-data__966_fixed.dcm"
BROKEN = "edge_cases/pylibjpeg-data__966_BROKEN_J2K.dcm"
WIDE16 = "edge_cases/pylibjpeg-data__JPEG2KLossless_1s_1f_u_16_16.dcm"
FAKE_MONO1 = "edge_cases/torchxrayvision__Fake_MONOHR1.dcm"


def _index() -> list[dict[str, str]]:
    if not INDEX.is_file():
        return []
    with open(INDEX, newline="") as fh:
        return list(csv.DictReader(fh))


INDEX_ROWS = {r["file"]: r for r in _index()}
LOADABLE = sorted(f for f in INDEX_ROWS if f.split("/")[0] in ("original", "decompressed"))
DECOMPRESSED = sorted(f for f in INDEX_ROWS if f.startswith("decompressed/"))


def _ids(files: list[str]) -> list[str]:
    return [f.split("/")[0][:4] + "/" + f.split("/")[1][:40] for f in files]


@functools.cache
def _load(rel: str) -> np.ndarray:
    """load_image of a real DICOM file at full resolution, cached across tests (read-only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomWindowWarning)
        a = load_image(DICOM_DIR / rel, target_size=None)
    a.flags.writeable = False
    return a


def _regions(a: np.ndarray) -> tuple[float, float]:
    """Mean of a central (mediastinum) strip and of both lateral (lung) strips, mid height."""
    h, w = a.shape
    band = a[int(0.3 * h) : int(0.6 * h)]
    centre = band[:, int(0.45 * w) : int(0.55 * w)]
    lungs = np.concatenate(
        [band[:, int(0.2 * w) : int(0.35 * w)], band[:, int(0.65 * w) : int(0.8 * w)]], axis=1
    )
    return float(centre.mean()), float(lungs.mean())


def _reference_unit(ds: Dataset) -> np.ndarray:
    """Independent reference for grey DICOM: pydicom's own modality LUT + windowing, divided by
    the output range pydicom's apply_windowing uses (stored bit depth), MONOCHROME1 inverted."""
    arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    bits = int(ds.BitsStored)
    y_max = 2.0**bits - 1
    if "WindowCenter" in ds:
        arr = apply_windowing(arr, ds)
    v = np.clip(arr / y_max, 0, 1)
    return 1.0 - v if ds.PhotometricInterpretation == "MONOCHROME1" else v


def _write_dicom(path: Path, pixels: np.ndarray, **attrs: object) -> Path:
    """Write a minimal uncompressed (Explicit VR LE) DICOM image with the given attributes."""
    ds = sc_dataset()
    ds.Modality = "OT"
    pixels = np.asarray(pixels)
    ds.SamplesPerPixel = 3 if pixels.shape[-1] == 3 and pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if ds.SamplesPerPixel == 3 else pixels.shape[-2:]
    if pixels.ndim == 3 and ds.SamplesPerPixel == 1:
        ds.NumberOfFrames = pixels.shape[0]
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "MONOCHROME2" if ds.SamplesPerPixel == 1 else "RGB"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Module hygiene
# ---------------------------------------------------------------------------------------------


def test_import_pulls_in_neither_torch_nor_pydicom():
    code = (
        "import sys, ddad_edge.runtime.io\n"
        "bad = [m for m in ('torch', 'pydicom') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_image_load_error_format_and_pickle(tmp_path):
    e = ImageLoadError(tmp_path / "x.png", "broken")
    assert e.path == str(tmp_path / "x.png") and e.reason == "broken"
    assert str(e) == f"{tmp_path / 'x.png'}: broken"
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.reason, str(e2)) == (e.path, e.reason, str(e))


def test_is_dicom(tmp_path):
    png = _png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    assert not is_dicom(png)
    assert is_dicom(tmp_path / "missing.DCM")  # extension alone decides
    assert not is_dicom(tmp_path / "missing.png")
    dcm = _write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint8))
    noext = tmp_path / "noext"
    shutil.copy(dcm, noext)
    assert is_dicom(noext)  # "DICM" at offset 128
    disguised = tmp_path / "disguised.png"
    shutil.copy(dcm, disguised)
    assert is_dicom(disguised)
    np.testing.assert_array_equal(load_image(disguised), load_image(dcm))


# ---------------------------------------------------------------------------------------------
# Real DICOM files
# ---------------------------------------------------------------------------------------------


@needs_dicom
@pytest.mark.parametrize("rel", LOADABLE, ids=_ids(LOADABLE))
def test_real_dicom_loads_with_index_shape(rel):
    row = INDEX_ROWS[rel]
    a = _load(rel)
    assert a.dtype == np.float32
    assert a.shape == (int(row["rows"]), int(row["cols"]))
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert float(a.std()) > 0.05  # a real radiograph, not a constant


@needs_dicom
@pytest.mark.parametrize("rel", LOADABLE, ids=_ids(LOADABLE))
def test_real_dicom_matches_pydicom_reference(rel):
    """Fixed-range scaling (not the image's min/max): equals pydicom's windowing output divided
    by its fixed output range, or stored value / (2**BitsStored - 1) without a window."""
    ds = pydicom.dcmread(DICOM_DIR / rel, force=True)
    if not ds.file_meta.get("TransferSyntaxUID"):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    np.testing.assert_allclose(_load(rel), _reference_unit(ds), atol=1e-6, rtol=0)


J2K_FILES = [f for f in LOADABLE if "J2K" in INDEX_ROWS[f]["transfer_syntax"].upper()]
J2K_FILES += [WIDE16] if INDEX.is_file() else []


def test_j2k_reduce_level_keeps_both_sides_over_four_times_the_target():
    assert j2k_reduce_level(2128, 2000, 64, 5) == 2  # 532 x 500
    assert j2k_reduce_level(1955, 1841, 64, 5) == 2  # 489 x 461
    assert j2k_reduce_level(2128, 2000, 64, 1) == 1  # no more levels than the codestream has
    assert j2k_reduce_level(511, 4000, 64, 5) == 1  # ceil(511 / 2) = 256
    assert j2k_reduce_level(510, 4000, 64, 5) == 0  # 255 would be under 256
    assert j2k_reduce_level(448, 448, 64, 5) == 0
    assert j2k_reduce_level(2128, 2000, 64, 5, margin=2) == 3  # 266 x 250
    assert j2k_reduce_level(2128, 2000, 256, 5) == 0  # a larger network input reduces less


@needs_dicom
@pytest.mark.parametrize("rel", J2K_FILES, ids=_ids(J2K_FILES))
def test_j2k_reduced_decode_is_the_same_image_smaller(rel):
    """The scorer's decode of a JPEG 2000 DICOM (target_size 64) is the reduced level: both
    sides >= 256, level 2 (a quarter of each side), and the network input it gives is the full
    decode's to within a small mean difference (the score-level check is the AUC parity in
    benchmarks/README.md)."""
    pytest.importorskip("glymur", reason="reduced JPEG 2000 decoding needs the dicom-codecs extra")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomWindowWarning)
        reduced = load_image(DICOM_DIR / rel)
        full = _load(rel)
    assert min(reduced.shape) >= 256
    assert reduced.shape == tuple(-(-n // 4) for n in full.shape)  # level 2: ceil(side / 4)
    assert float(np.abs(preprocess(reduced) - preprocess(full)).mean()) < 0.01


@needs_dicom
def test_j2k_reduced_decode_falls_back_to_full(monkeypatch):
    """Without glymur (or on any failure of the reduced path) the full decode is used."""
    import builtins

    real_import = builtins.__import__

    def no_glymur(name, *a, **k):
        if name == "glymur":
            raise ImportError("no glymur")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_glymur)
    rel = J2K_966
    assert load_image(DICOM_DIR / rel).shape == (
        int(INDEX_ROWS[rel]["rows"]),
        int(INDEX_ROWS[rel]["cols"]),
    )


@needs_dicom
def test_no_window_scales_by_bit_depth_not_min_max():
    ds = pydicom.dcmread(DICOM_DIR / NIH)
    stored_max = int(ds.pixel_array.max())
    assert stored_max < 255  # the point of the test: this image does not reach 255
    assert float(_load(NIH).max()) == pytest.approx(stored_max / 255.0, abs=1e-7)


@needs_dicom
@pytest.mark.parametrize("rel", DECOMPRESSED, ids=_ids(DECOMPRESSED))
def test_decompressed_equals_compressed_original(rel):
    original = rel.replace("decompressed/", "original/").replace("__explicitVRLE", "")
    assert original in INDEX_ROWS
    # All four are exact re-saves of the decoded pixels (the lossy J2K one included: its
    # decompressed copy holds the lossy-decoded pixels), so the results are identical.
    np.testing.assert_array_equal(_load(rel), _load(original))


@needs_dicom
@pytest.mark.parametrize(
    "rel",
    [f for f in LOADABLE if f.startswith("original/")],
    ids=_ids([f for f in LOADABLE if f.startswith("original/")]),
)
def test_real_dicom_displays_mediastinum_brighter_than_lungs(rel):
    """MONOCHROME1 is inverted: every real PA chest (MONO1 and MONO2) ends up 'dense = bright'."""
    centre, lungs = _regions(_load(rel))
    assert centre > lungs + 0.1, (INDEX_ROWS[rel]["photometric"], centre, lungs)


@needs_dicom
def test_monochrome1_is_one_minus_monochrome2(tmp_path):
    src = DICOM_DIR / FO_DICOM
    ds = pydicom.dcmread(src, force=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.PhotometricInterpretation = "MONOCHROME2"
    mono2 = tmp_path / "mono2.dcm"
    ds.save_as(mono2, enforce_file_format=False)
    a1, a2 = _load(FO_DICOM), load_image(mono2)
    np.testing.assert_allclose(a1, 1.0 - a2, atol=1e-6)
    # inverted against the window's fixed range: the darkest stored values (below the window)
    # become exactly 1.0, whatever the image's own maximum
    assert float(a1.max()) == 1.0 and float(a2.min()) == 0.0


@needs_dicom
def test_fake_monochrome1_header_is_trusted_and_inverted():
    """torchxrayvision's Fake_MONOHR1 holds the SIIM MONOCHROME2 pixels under a MONOCHROME1
    header. We follow the header, so it comes out as the exact negative of the SIIM image."""
    fake, real = _load(FAKE_MONO1), _load(SIIM)
    assert fake.shape == real.shape == (1024, 1024)
    np.testing.assert_allclose(fake, 1.0 - real, atol=1e-6)
    centre, lungs = _regions(fake)
    assert centre < lungs  # looks like a negative, by design of its header


@needs_dicom
def test_no_preamble_dicom_loads_even_without_extension(tmp_path):
    src = DICOM_DIR / FO_DICOM
    assert src.read_bytes()[128:132] != b"DICM"
    info = dicom_info(src)
    assert info["has_file_meta"] is False
    assert info["transfer_syntax"] == "Implicit VR Little Endian"
    noext = tmp_path / "CR-MONO1-10-chest"  # how fo-dicom ships it
    shutil.copy(src, noext)
    assert is_dicom(noext)
    np.testing.assert_array_equal(load_image(noext), _load(FO_DICOM))


@needs_dicom
def test_broken_j2k_raises_image_load_error_only():
    path = DICOM_DIR / BROKEN
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    e = ei.value
    assert e.path == str(path)
    assert path.name in str(e)
    assert "pixel data could not be decoded" in e.reason
    assert "JPEG 2000" in e.reason
    assert len(e.reason) < 400 and "\n" not in e.reason
    with pytest.raises(ImageLoadError):
        load_input(path)


@needs_dicom
def test_16bit_dx_outside_its_window_loads_clipped_to_bit_depth():
    """Pixels 32744..65535 vs window 2725/5310: the window would map every pixel to 1.0. The
    loader warns, ignores that window and scales by the 16-bit stored range instead."""
    path = DICOM_DIR / WIDE16
    with pytest.warns(DicomWindowWarning, match="outside the pixel values"):
        a = load_image(path, target_size=None)
    ds = pydicom.dcmread(path)
    assert a.shape == (int(ds.Rows), int(ds.Columns))
    assert a.dtype == np.float32 and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    np.testing.assert_allclose(a, ds.pixel_array / 65535.0, atol=1e-6)
    assert float(a.std()) > 0.01  # not the constant image the window alone would give


@needs_dicom
def test_missing_codec_reported_before_decoding(monkeypatch):
    """Simulate an install without pylibjpeg/Pillow J2K support: no decoder plugin available."""
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    with pytest.raises(ImageLoadError) as ei:
        load_image(DICOM_DIR / J2K_966, target_size=None)  # (glymur's reduced path aside)
    msg = str(ei.value)
    assert "ddad-edge[dicom-codecs]" in msg and CODECS_HINT in msg
    assert "JPEG 2000 Image Compression (Lossless Only)" in msg
    assert Path(J2K_966).name in msg


@needs_dicom
def test_missing_codec_reported_when_pydicom_raises(monkeypatch):
    """Same, when only pydicom's decode step finds out (its RuntimeError is translated)."""
    from pydicom.pixels.decoders.base import Decoder

    decoder = get_decoder(JPEGBaseline8Bit)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: True))
    with pytest.raises(ImageLoadError) as ei:
        load_image(DICOM_DIR / SIIM)
    assert "ddad-edge[dicom-codecs]" in str(ei.value)
    assert "JPEG Baseline" in str(ei.value)


@needs_dicom
@pytest.mark.parametrize("rel", sorted(INDEX_ROWS), ids=_ids(sorted(INDEX_ROWS)))
def test_dicom_info_agrees_with_index(rel):
    row, info = INDEX_ROWS[rel], dicom_info(DICOM_DIR / rel)
    assert info["modality"] == row["modality"]
    assert info["photometric"] == row["photometric"]
    assert (info["rows"], info["columns"]) == (int(row["rows"]), int(row["cols"]))
    assert info["bits_stored"] == int(row["bits_stored"])
    assert info["bits_allocated"] == int(row["bits_alloc"])
    if row["window_center"]:
        assert info["window_center"] == float(row["window_center"])
        assert info["window_width"] == float(row["window_width"])
        assert info["voi"] == "window"
    else:
        assert info["window_center"] is None and info["voi"] == "none"
    if info["has_file_meta"]:
        assert info["transfer_syntax"] == row["transfer_syntax"]


@needs_dicom
def test_real_dicom_load_input():
    x = load_input(DICOM_DIR / FO_DICOM)
    assert x.shape == (1, 64, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x, preprocess(_load(FO_DICOM)), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Synthetic DICOM: pipeline branches
# ---------------------------------------------------------------------------------------------


def test_dicom_rescale_without_window_uses_rescaled_bit_range(tmp_path):
    px = np.array([[0, 100], [2000, 4095]], dtype=np.uint16)
    p = _write_dicom(
        tmp_path / "r.dcm", px, BitsStored=12, HighBit=11, RescaleSlope=2, RescaleIntercept=-1024
    )
    # range [0, 4095] -> [-1024, 7166]; the linear map makes the result px / 4095 again
    np.testing.assert_allclose(load_image(p), px / 4095.0, atol=1e-6)


def test_dicom_signed_without_window(tmp_path):
    px = np.array([[-2048, -1], [0, 2047]], dtype=np.int16)
    p = _write_dicom(tmp_path / "s.dcm", px, BitsStored=12, HighBit=11)
    np.testing.assert_allclose(load_image(p), (px + 2048.0) / 4095.0, atol=1e-6)


@pytest.mark.parametrize("func", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_dicom_window_functions_match_pydicom(tmp_path, func):
    px = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    attrs = dict(BitsStored=12, HighBit=11, WindowCenter=[1500, 40], WindowWidth=[1000, 80])
    attrs["VOILUTFunction"] = func
    p = _write_dicom(tmp_path / "w.dcm", px, **attrs)
    a = load_image(p)
    ds = pydicom.dcmread(p)
    ref = apply_windowing(px.astype(np.float64), ds, index=0) / 4095.0  # first window
    np.testing.assert_allclose(a, ref, atol=1e-6)
    if func != "SIGMOID":
        assert float(a.min()) == 0.0 and float(a.max()) == 1.0  # clipped outside the window


def test_dicom_voi_lut_sequence(tmp_path):
    px = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 12])
    item.add_new("LUTData", "US", [4095, 2000, 1000, 0])  # an inverting 12-bit LUT
    p = _write_dicom(
        tmp_path / "v.dcm", px, VOILUTSequence=Sequence([item]), WindowCenter=1, WindowWidth=2
    )
    assert dicom_info(p)["voi"] == "voi_lut_sequence"
    np.testing.assert_allclose(
        load_image(p), np.array([[4095, 2000], [1000, 0]]) / 4095.0, atol=1e-6
    )


def test_dicom_multiframe_gives_first_frame(tmp_path):
    frames = np.stack([np.full((8, 6), v, np.uint8) for v in (10, 200, 30)])
    frames[0, 0, 0] = 0
    with pytest.warns(MultiFrameWarning, match="3 frames; only the first"):
        a = load_image(_write_dicom(tmp_path / "m.dcm", frames))
    assert a.shape == (8, 6)
    np.testing.assert_allclose(a, frames[0] / 255.0, atol=1e-7)


def test_dicom_rgb_goes_to_luma(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    a = load_image(_write_dicom(tmp_path / "c.dcm", rgb))
    np.testing.assert_allclose(a, to_unit_grey(rgb), atol=1e-6)


def test_dicom_without_pixel_data(tmp_path):
    p = _write_dicom(tmp_path / "n.dcm", np.zeros((4, 4), np.uint8))
    ds = pydicom.dcmread(p)
    del ds.PixelData
    ds.save_as(p)
    with pytest.raises(ImageLoadError, match="no Pixel Data"):
        load_image(p)


def test_truncated_dicom(tmp_path):
    p = _write_dicom(tmp_path / "t.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 4000])
    with pytest.raises(ImageLoadError) as ei:
        load_image(p)
    assert str(ei.value).startswith(f"{p}: ") and ei.value.reason


def test_dicom_unsupported_photometric(tmp_path):
    p = _write_dicom(
        tmp_path / "u.dcm", np.zeros((4, 4), np.uint8), PhotometricInterpretation="XYZ"
    )
    with pytest.raises(ImageLoadError, match="Photometric Interpretation 'XYZ'"):
        load_image(p)


# ---------------------------------------------------------------------------------------------
# Pillow formats
# ---------------------------------------------------------------------------------------------


def test_png_8bit_grey(tmp_path):
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    a = load_image(_png(tmp_path / "g.png", arr))
    assert a.dtype == np.float32 and a.shape == (16, 16)
    np.testing.assert_allclose(a, arr / 255.0, atol=1e-7)


def test_png_16bit_keeps_low_byte(tmp_path):
    arr = (40000 + np.arange(256)).astype(np.uint16).reshape(16, 16)  # one high byte
    p = _png(tmp_path / "g16.png", arr)
    assert Image.open(p).mode.startswith("I")
    a = load_image(p)
    assert len(np.unique(a)) == 256  # an 8-bit detour would collapse these to 1-2 values
    np.testing.assert_allclose(a, arr / 65535.0, atol=1e-7, rtol=0)


def test_png_rgb_and_rgba_use_luma(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    a = load_image(_png(tmp_path / "c.png", rgb))
    np.testing.assert_allclose(a, to_unit_grey(rgb), atol=1e-6)
    # Pillow's own L conversion uses the same weights (rounded to 8 bits)
    ref_l = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255.0
    assert float(np.abs(a - ref_l).max()) <= 1.0 / 255.0 + 1e-6
    rgba = np.concatenate([rgb, rng.integers(0, 256, (20, 30, 1), dtype=np.uint8)], axis=2)
    np.testing.assert_allclose(load_image(_png(tmp_path / "c4.png", rgba)), a, atol=1e-7)


@pytest.mark.parametrize("mode", ["LA", "P", "1"])
def test_png_other_modes(tmp_path, mode):
    arr = np.tile(np.array([0, 255], np.uint8), (8, 4))
    p = _png(tmp_path / f"m{mode}.png", arr, mode)
    assert Image.open(p).mode == mode
    np.testing.assert_allclose(load_image(p), arr / 255.0, atol=1e-6)


def test_tiff_int32_and_float(tmp_path):
    arr = np.array([[0, 1], [65534, 65535]], dtype=np.int32)
    p = tmp_path / "i.tif"
    Image.fromarray(arr, mode="I").save(p)
    np.testing.assert_allclose(load_image(p), arr / 65535.0, atol=1e-7)
    Image.fromarray(np.array([[0, 70000], [1, 2]], np.int32), mode="I").save(p)
    with pytest.raises(ImageLoadError, match=r"outside \[0, 65535\]"):
        load_image(p)
    f = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    Image.fromarray(f, mode="F").save(p)
    np.testing.assert_array_equal(load_image(p), f)
    Image.fromarray(f * 3, mode="F").save(p)
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        load_image(p)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((40, 80), np.uint8)
    arr[:, :40] = 255  # left half white
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise to display
    p = tmp_path / "o.jpg"
    im.save(p, exif=exif, quality=95)
    a = load_image(p, target_size=None)
    assert a.shape == (80, 40)
    assert a[:40].mean() > 0.9 and a[40:].mean() < 0.1  # white half now on top


def _large_jpeg(path: Path, w: int = 2000, h: int = 1600) -> Path:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.5 + 0.3 * np.sin(xx / 90.0) * np.cos(yy / 70.0) + 0.15 * (xx / w)
    img[h // 3 : h // 2, w // 4 : w // 3] = 0.05  # a sharp-edged block
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path, quality=92)
    return path


def test_jpeg_draft_mode_reduces_large_jpeg(tmp_path):
    p = _large_jpeg(tmp_path / "big.jpg")
    full = load_image(p, target_size=None)
    assert full.shape == (1600, 2000)
    small = load_image(p)
    assert min(small.shape) >= 128 and small.shape[0] < 1600 and small.shape[1] < 2000
    assert small.shape == (200, 250)  # 1/8 DCT scale keeps both sides >= 128
    x = load_input(p)
    assert x.shape == (1, 64, 64) and x.dtype == np.float32
    assert float(np.abs(x - preprocess(full)).mean()) < 0.02
    # a bigger target means less reduction (1/4 scale keeps sides >= 256)
    assert load_image(p, target_size=128).shape == (400, 500)


def test_jpeg_draft_with_partial_edge_blocks_keeps_geometry(tmp_path):
    p = _large_jpeg(tmp_path / "odd.jpg", w=1021, h=899)
    small = load_image(p)
    # min(1021 // 128, 899 // 128) = 7 -> 1/4 scale; 255.25 x 224.75 -> resampled to 255 x 225
    assert small.shape == (225, 255)
    full = load_image(p, target_size=None)
    assert float(np.abs(load_input(p) - preprocess(full)).mean()) < 0.01


def test_jpeg_rgb_draft_gives_luma(tmp_path):
    rng = np.random.default_rng(2)
    base = np.kron(rng.integers(0, 256, (20, 25, 3)), np.ones((80, 80, 1))).astype(np.uint8)
    p = tmp_path / "rgb.jpg"
    Image.fromarray(base).save(p, quality=95)
    small = load_image(p)
    assert min(small.shape) >= 128 and small.shape != (1600, 2000)
    ref = preprocess(to_unit_grey(base))
    assert float(np.abs(load_input(p) - ref).mean()) < 0.02


def test_large_png_reduce_keeps_16bit_precision(tmp_path):
    rng = np.random.default_rng(3)
    arr = (30000 + rng.integers(0, 256, (600, 520))).astype(np.uint16)
    p = _png(tmp_path / "big16.png", arr)
    a = load_image(p)  # factor 520 // 128 = 4
    assert a.shape == (150, 130)
    ref = (arr / 65535.0).reshape(150, 4, 130, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(a, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(load_image(p, target_size=None), arr / 65535.0, atol=1e-7)


def test_large_8bit_png_reduce_close_to_full(tmp_path):
    yy, xx = np.mgrid[0:900, 0:1100]
    arr = ((np.sin(xx / 50.0) * np.cos(yy / 40.0) * 0.5 + 0.5) * 255).astype(np.uint8)
    p = _png(tmp_path / "big8.png", arr)
    a = load_image(p)
    assert min(a.shape) >= 128 and a.shape[0] < 900
    full = load_image(p, target_size=None)
    assert float(np.abs(load_input(p) - preprocess(full)).mean()) < 0.02


@needs_fullres
def test_kermany_fullres_jpegs():
    with open(FULLRES / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 50
    rows.sort(key=lambda r: -int(r["width"]) * int(r["height"]))
    rgb = [r for r in rows if r["mode"] == "RGB"]
    for r in rows[:10] + rgb[:2]:
        path = FULLRES / r["path"]
        img = load_image(path)
        w, h = int(r["width"]), int(r["height"])
        assert img.dtype == np.float32 and img.ndim == 2
        assert min(img.shape) >= min(128, w, h) and img.shape[0] <= h and img.shape[1] <= w
        x = load_input(path)
        assert x.shape == (1, 64, 64) and x.dtype == np.float32
        assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.05
    for r in rows[:2] + rgb[:1]:  # the largest ones: reduced decode ~ full decode
        path = FULLRES / r["path"]
        full = preprocess(load_image(path, target_size=None))
        assert float(np.abs(load_input(path) - full).mean()) < 0.02


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def _assert_load_error(path: Path, *fragments: str) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    e = ei.value
    assert str(e).startswith(f"{path}: ") and e.path == str(path)
    for frag in fragments:
        assert frag in e.reason, e.reason
    return e


def test_missing_file(tmp_path):
    _assert_load_error(tmp_path / "nope.png", "no such file")
    _assert_load_error(tmp_path / "nope.dcm", "no such file")


def test_directory(tmp_path):
    d = tmp_path / "dir.png"
    d.mkdir()
    _assert_load_error(d, "directory")


@pytest.mark.parametrize("name", ["empty.png", "empty.dcm", "empty"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    _assert_load_error(tmp_path / name, "empty")


def test_truncated_png(tmp_path):
    arr = np.random.default_rng(4).integers(0, 256, (64, 64), dtype=np.uint8)
    data = _png(tmp_path / "full.png", arr).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    _assert_load_error(cut, "could not be decoded")


@pytest.mark.parametrize("name", ["notes.png", "notes.jpg", "notes"])
def test_text_file_with_image_name(tmp_path, name):
    (tmp_path / name).write_text("this is not an image\n" * 20)
    _assert_load_error(tmp_path / name, "not a recognised image format")


def test_text_file_named_dcm(tmp_path):
    p = tmp_path / "notes.dcm"
    p.write_text("this is not a DICOM file\n" * 20)
    with pytest.raises(ImageLoadError) as ei:
        load_image(p)
    assert str(ei.value).startswith(f"{p}: ")


def test_tiny_image_rejected_by_load_input(tmp_path):
    p = _png(tmp_path / "one.png", np.zeros((1, 1), np.uint8))
    with pytest.raises(ImageLoadError, match="too small") as ei:
        load_input(p)
    assert ei.value.path == str(p)


def test_bad_target_size(tmp_path):
    p = _png(tmp_path / "g.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        load_image(p, target_size=0)


def test_pathlike_and_str_accepted(tmp_path):
    p = _png(tmp_path / "g.png", np.full((4, 4), 51, np.uint8))
    np.testing.assert_array_equal(load_image(p), load_image(str(p)))
    np.testing.assert_allclose(load_image(p), 0.2, atol=1e-7)
