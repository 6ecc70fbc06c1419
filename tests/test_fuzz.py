"""Fuzzing the input side (issue 10): mutated real and generated files must each give a finite
network input or a one-line error naming the file; nothing raises, nothing is silent.

Seeds: small files generated here (PNG 8/16-bit, JPEG, GIF, TIFF, uncompressed / RLE / JPEG 2000
DICOM, MONOCHROME1 with a window), plus real files from ../shared/data when present (skipped
otherwise: the generated seeds still run). Mutations: bit flips, truncation, a DICOM header
element replaced by bytes of another VR / value / multiplicity, huge declared dimensions over a
tiny payload. ``DDAD_FUZZ_EXAMPLES`` sets the number of examples (default 60: a few seconds);
benchmarks/README.md reports a longer run.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from dicom_craft import encapsulated, grey_dataset, ramp, save
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ddad_edge.runtime.batch import load_path
from ddad_edge.runtime.io import Decoded, ImageLoadError

EXAMPLES = int(os.environ.get("DDAD_FUZZ_EXAMPLES", "60"))
LOG = os.environ.get("DDAD_FUZZ_LOG")  # a file to which each example's outcome is appended
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL = [
    "dicom-cxr/original/fo-dicom__CR-MONO1-10-chest.dcm",
    "dicom-cxr/original/torchxrayvision__siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "dicom-cxr/original/pydicom-data__RG1_J2KI.dcm",
    "kermany-cxr/test/NORMAL/IM-0001-0001.jpeg",
]
# Image-pixel and VOI elements (group 0028) whose bytes the header mutation replaces.
TAGS = [0x0002, 0x0004, 0x0008, 0x0010, 0x0011, 0x0100, 0x0101, 0x0102, 0x0103, 0x1050, 0x1051]
TAGS += [0x1052, 0x1053, 0x3002]


def _generated(folder: Path) -> dict[str, bytes]:
    """Small seed files of every format and DICOM encoding the loader handles."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    g = np.random.default_rng(0)
    grey = np.clip(ramp(48, 40, 8) + g.normal(0, 10, (48, 40)), 0, 255).astype(np.uint8)
    out: dict[str, bytes] = {}
    for name, arr, fmt in [
        ("g8.png", grey, "PNG"),
        ("g16.png", grey.astype(np.uint16) * 257, "PNG"),
        ("g.jpg", grey, "JPEG"),
        ("g.tif", grey, "TIFF"),
    ]:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt)
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    frames = [Image.fromarray(grey), Image.fromarray(255 - grey)]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out["anim.gif"] = buf.getvalue()
    ds = grey_dataset(ramp(48, 40))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = 2000, 3000
    ds.RescaleSlope, ds.RescaleIntercept = 1, -10
    out["mono1.dcm"] = save(ds, folder / "mono1.dcm").read_bytes()
    ds = grey_dataset(ramp(48, 40))
    ds.compress(RLELossless)
    out["rle.dcm"] = save(ds, folder / "rle.dcm").read_bytes()
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "JPEG2000", irreversible=False)
    path = encapsulated(folder / "jp2.dcm", buf.getvalue(), JPEG2000Lossless, 48, 40)
    out["jp2.dcm"] = path.read_bytes()  # JP2-wrapped (not conformant in DICOM, but seen)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "JPEG2000", irreversible=False, no_jp2=True)
    path = encapsulated(folder / "j2k.dcm", buf.getvalue(), JPEG2000Lossless, 48, 40)
    out["j2k.dcm"] = path.read_bytes()  # a bare codestream, as PS3.5 A.4.4 wants
    return out


def _real() -> dict[str, bytes]:
    return {Path(r).name: (DATA / r).read_bytes() for r in REAL if (DATA / r).is_file()}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return {**_generated(tmp_path_factory.mktemp("seeds")), **_real()}


def flip_bits(data: bytes, offsets: list[int]) -> bytes:
    b = bytearray(data)
    for o in offsets if b else []:
        b[o % len(b)] ^= 1 << (o % 8)
    return bytes(b)


def replace_element(data: bytes, tag: int, payload: bytes, vr: bytes | None = None) -> bytes:
    """Replace the value of the first (0028,tag) element (explicit or implicit VR little
    endian) by ``payload``, written under ``vr`` (default: the payload's first two bytes, so
    mostly a wrong VR)."""
    key = struct.pack("<HH", 0x0028, tag)
    i = data.find(key)
    if i < 0:
        return data
    vr = data[i + 4 : i + 6]
    if vr.isalpha():  # explicit VR, short form: tag, VR, 2-byte length
        old_len = struct.unpack("<H", data[i + 6 : i + 8])[0]
        head = key + (vr or (payload[:2].upper() if len(payload) >= 2 else b"UN"))
        head += struct.pack("<H", len(payload))
        return data[:i] + head + payload + data[i + 8 + old_len :]
    old_len = struct.unpack("<I", data[i + 4 : i + 8])[0]
    return data[:i] + key + struct.pack("<I", len(payload)) + payload + data[i + 8 + old_len :]


def huge_dimensions(data: bytes, rows: int, cols: int) -> bytes:
    """Rows/Columns set to rows/cols (the payload is left as it is: tiny for them)."""
    data = replace_element(data, 0x0010, struct.pack("<H", rows), b"US")
    return replace_element(data, 0x0011, struct.pack("<H", cols), b"US")


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.integers(0, 2**31), min_size=1, max_size=16)),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("element"), st.sampled_from(TAGS), st.binary(max_size=12)),
    st.tuples(st.just("huge"), st.integers(1, 65535), st.integers(1, 65535)),
)


def mutate(data: bytes, m: tuple) -> bytes:
    kind = m[0]
    if kind == "flip":
        return flip_bits(data, m[1])
    if kind == "truncate":
        return data[: int(len(data) * m[1])]
    if kind == "element":
        return replace_element(data, m[1], m[2])
    return huge_dimensions(data, m[1], m[2])


def check_one(path: Path) -> str:
    """Load one file; assert the property; return "ok" or "error"."""
    r = load_path(path)
    if isinstance(r, ImageLoadError):
        assert r.path == str(path) and r.reason and "\n" not in r.reason, r
        assert len(r.reason) < 400
        return "error"
    assert isinstance(r, Decoded)
    x = r.image
    assert x.shape == (1, 64, 64) and x.dtype == np.float32
    assert np.isfinite(x).all() and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(x.max()) > float(x.min())  # never a constant, silently
    assert all(isinstance(w, str) and "\n" not in w for w in r.warnings)
    return "ok"


@settings(
    max_examples=EXAMPLES,
    deadline=None,  # time is bounded by the pixel budget; timings are not asserted in tests
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(name=st.data(), mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_files_give_a_score_input_or_a_clear_error(
    seeds: dict[str, bytes], tmp_path: Path, name, mutations
) -> None:
    seed = name.draw(st.sampled_from(sorted(seeds)))
    data = seeds[seed]
    for m in mutations:
        data = mutate(data, m)
    path = tmp_path / f"fuzz-{seed}"
    path.write_bytes(data)
    outcome = check_one(path)
    if LOG:  # the long run's tally (benchmarks/README.md)
        with open(LOG, "a") as fh:
            fh.write(f"{seed}\t{'+'.join(m[0] for m in mutations)}\t{outcome}\n")


def test_every_seed_loads(seeds: dict[str, bytes], tmp_path: Path) -> None:
    """The unmutated seeds all give a network input (so the fuzzing starts from valid files)."""
    for name, data in seeds.items():
        (tmp_path / name).write_bytes(data)
        assert check_one(tmp_path / name) == "ok", name
