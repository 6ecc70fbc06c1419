"""Decoding a film while it arrives (``runtime.dicom_rows``): bit for bit what ``load_image`` +
``preprocess`` give for the finished file, or None where it cannot be, never another image."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
from conftest import require_dicom_cxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from ddad_edge.runtime.dicom_rows import RowDecoder
from ddad_edge.runtime.io import load_image
from ddad_edge.runtime.preprocess import preprocess, resize, resize_width


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(2, 700),
    w=st.integers(2, 700),
    size=st.sampled_from([64, 32]),
    seed=st.integers(0, 2**16),
)
def test_resize_in_two_passes(h: int, w: int, size: int, seed: int) -> None:
    """The rows' pass on any blocks of rows is the pass on the whole image; both passes are
    Pillow's one-call resize to within one float32 rounding step."""
    img = np.random.default_rng(seed).random((h, w), dtype=np.float32)
    cut = sorted({0, h, *np.random.default_rng(seed + 1).integers(0, h, 3).tolist()})
    blocks = [resize_width(img[a:b], size) for a, b in zip(cut, cut[1:], strict=False) if b > a]
    assert np.array_equal(np.concatenate(blocks), resize_width(img, size))
    one_call = np.clip(
        np.asarray(Image.fromarray(img, mode="F").resize((size, size), Image.BILINEAR)), 0, 1
    )
    assert np.abs(resize(img, size) - one_call).max() <= 1.2e-7


def _film(draw: st.DrawFn) -> Dataset:
    """A grey single-frame film with drawn bit depth, sign, polarity, rescale and VOI."""
    rows, cols = draw(st.integers(128, 300)), draw(st.integers(128, 300))
    bits = draw(st.sampled_from([8, 16]))
    stored = draw(st.integers(6, bits))
    signed = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    lo, hi = (-(2 ** (stored - 1)), 2 ** (stored - 1) - 1) if signed else (0, 2**stored - 1)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}
    arr = rng.integers(lo, hi + 1, (rows, cols)).astype(dtype[bits, signed])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = draw(
        st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    )
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", rows, cols, 1
    ds.PhotometricInterpretation = draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2"]))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    if draw(st.booleans()):
        ds.RescaleSlope, ds.RescaleIntercept = draw(st.sampled_from([1, 0.5, 2])), -7
    voi = draw(st.sampled_from(["none", "inside", "outside", "invalid"]))
    if voi != "none":
        centre = {"inside": (lo + hi) / 2, "outside": 10.0 * (abs(hi) + abs(lo) + 10)}.get(voi, 5)
        ds.WindowCenter, ds.WindowWidth = centre, (hi - lo) / 3 if voi != "invalid" else 0
        ds.VOILUTFunction = draw(st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID"]))
    ds.PixelData = arr.tobytes()
    return ds


def _arrive(data: bytes, path: Path, chunks: list[int]) -> RowDecoder:
    """Write ``data`` to ``path`` in pieces of the ``chunks`` sizes (the rest at once), the
    decoder following: it advances after each piece, as the node's child does."""
    with open(path, "wb") as fh:
        fh.write(data[:200])
        fh.flush()
        decoder = RowDecoder(str(path))
        at = 200
        for n in [*chunks, len(data)]:
            fh.write(data[at : at + n])
            fh.flush()
            at += n
            decoder.advance()
    return decoder


def _usual(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_image(path)
    return image, preprocess(image), [str(w.message) for w in caught]


def _encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_streamed_decode_is_the_usual_decode(data: st.DataObject, tmp_path_factory) -> None:
    """Whatever the header and however the bytes arrive: the same image, input and notes as
    the usual decode of the finished (renamed) file, or None only where a window is ignored
    for lying outside the image's values (the one choice that needs every pixel)."""
    ds = _film(data.draw)
    raw = _encoded(ds)
    chunks = data.draw(st.lists(st.integers(1, 40_000), max_size=12))
    folder = tmp_path_factory.mktemp("rows")
    decoder = _arrive(raw, folder / "part.dcm", chunks)
    final = folder / "final.dcm"
    os.rename(folder / "part.dcm", final)
    notes: list = []
    got = decoder.finish(str(final), notes)
    image, x, warned = _usual(final)
    if got is None:
        assert "window" in " ".join(warned) and "ignored" in " ".join(warned)
        assert "outside" in " ".join(warned)
        return
    assert np.array_equal(got[0], image) and np.array_equal(got[1], x)
    assert [f"{final}: {n}" for n in notes] == warned


def test_what_is_not_followed_gives_none(tmp_path: Path) -> None:
    """Compressed, several frames, too small, bytes after the pixel data, another file: the
    caller decodes as usual."""
    from dicomnet import make_xray

    base = make_xray(seed=1)
    cases = {}
    small = make_xray(seed=1)
    small.Rows, small.Columns = 100, 100
    small.PixelData = np.zeros((100, 100), np.uint16).tobytes()
    cases["small"] = _encoded(small)
    frames = make_xray(seed=1)
    frames.NumberOfFrames = 1  # declared, even as 1: the usual path's business
    frames.NumberOfFrames = 2
    frames.PixelData = base.PixelData * 2
    cases["frames"] = _encoded(frames)
    cases["trailing"] = _encoded(base) + b"\xfc\xff\xfc\xff\x04\x00\x00\x00abcd"
    cases["compressed"] = _encoded(_compressed(base))
    for name, raw in cases.items():
        decoder = _arrive(raw, tmp_path / f"{name}.dcm", [5000])
        assert decoder.finish(str(tmp_path / f"{name}.dcm"), []) is None, name
    other = tmp_path / "other.dcm"
    other.write_bytes(_encoded(base))
    decoder = _arrive(_encoded(base), tmp_path / "first.dcm", [])
    assert decoder.finish(str(other), []) is None  # the same bytes, but not the file followed


def _compressed(ds: Dataset) -> Dataset:
    from pydicom.uid import RLELossless

    out = pydicom.dcmread(io.BytesIO(_encoded(ds)))
    out.compress(RLELossless)
    return out


def test_a_removed_file_is_let_go(tmp_path: Path) -> None:
    from dicomnet import make_xray

    path = tmp_path / "cut.dcm"
    raw = _encoded(make_xray(seed=2))
    decoder = _arrive(raw[: len(raw) // 2], path, [])
    assert not decoder.gone() and 0 < decoder.rows_done < decoder.rows
    path.unlink()  # what the node does with a transfer cut off
    assert decoder.gone()
    decoder.close()


def test_real_films_arriving_decode_as_usual(tmp_path: Path) -> None:
    """The full-resolution uncompressed films of ../shared/data arriving in 1 MiB pieces (the
    node's PDU size)."""
    root = require_dicom_cxr()
    films = sorted((root / "decompressed").glob("*.dcm"))
    assert films
    for film in films:
        raw = film.read_bytes()
        path = tmp_path / film.name
        decoder = _arrive(raw, path, [1 << 20] * (len(raw) >> 20))
        assert decoder.rows_done > 0
        notes: list = []
        got = decoder.finish(str(path), notes)
        image, x, warned = _usual(path)
        assert got is not None, film.name
        assert np.array_equal(got[0], image) and np.array_equal(got[1], x), film.name
