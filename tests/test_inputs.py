"""Input hardening (issue 10): every bad input is its own one-line error, never a call-killer;
inputs that cannot be a radiograph are refused; multi-frame inputs carry a warning."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from dicom_craft import bombs, encapsulated, grey_dataset, killers, ramp, save
from PIL import Image
from typer.testing import CliRunner

from ddad_edge.cli import app
from ddad_edge.runtime.io import ImageLoadError, MultiFrameWarning, load_image, read_image
from ddad_edge.runtime.scorer import Scorer
from ddad_edge.runtime.scores import SCORE_NAMES


def _noise(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, w)[None, :] + g.normal(0, 20, (h, w))
    return np.clip(ramp, 0, 255).astype(np.uint8)


def _good_files(folder: Path) -> tuple[Path, Path]:
    png, jpg = folder / "good.png", folder / "good.jpg"
    Image.fromarray(_noise()).save(png)
    Image.fromarray(_noise(seed=1)).save(jpg, quality=90)
    return png, jpg


@pytest.fixture(scope="module")
def scorer(bundle: Path) -> Scorer:
    s = Scorer.from_bundle(bundle, backend="ort-cpu", precision="fp32", max_batch=3)
    yield s
    s.close()


def _assert_scored(r) -> None:
    assert r.error is None, (r.source, r.error)
    assert set(r.scores) == set(SCORE_NAMES) and all(np.isfinite(list(r.scores.values())))


def _assert_failed(r, *fragments: str) -> None:
    assert r.scores is None and r.maps is None and r.error, (r.source, r.scores)
    assert "\n" not in r.error and len(r.error) < 400, r.error
    for frag in fragments:
        assert frag in r.error, (r.source, r.error)


# ---------------------------------------------------------------------------------------------
# The DICOM files that used to kill the whole call
# ---------------------------------------------------------------------------------------------

KILLER_REASONS = {
    "slope0": "Rescale Slope 0",
    "slope0_window": "constant",
    "voi_descriptor_1": "LUT Descriptor",
    "samples_2_values": "Samples per Pixel",
    "rows_length_3": "(0028,0010)",
}


@pytest.mark.parametrize("name", sorted(KILLER_REASONS))
def test_crafted_dicom_is_a_clear_per_file_error(tmp_path: Path, scorer: Scorer, name: str):
    path = killers(tmp_path)[name]
    png, jpg = _good_files(tmp_path)
    res = scorer.score([png, path, jpg])
    assert [r.source for r in res] == [str(png), str(path), str(jpg)]
    _assert_scored(res[0])
    _assert_scored(res[2])
    _assert_failed(res[1], KILLER_REASONS[name])


def test_cli_score_prints_every_record_around_a_killer(tmp_path: Path, bundle: Path) -> None:
    png, jpg = _good_files(tmp_path)
    slope0 = killers(tmp_path)["slope0"]
    args = ["score", str(bundle), str(png), str(slope0), str(jpg), "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["source"] for r in recs] == [str(png), str(slope0), str(jpg)]
    assert recs[0]["scores"] and recs[2]["scores"] and recs[1]["scores"] is None
    assert "Rescale Slope 0" in recs[1]["error"]
    assert all(r["warnings"] == [] for r in recs)


# ---------------------------------------------------------------------------------------------
# Any object among good inputs
# ---------------------------------------------------------------------------------------------


def _bad_objects() -> list[tuple[object, str]]:
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    nan, inf = ramp.copy(), ramp.copy()
    nan[3, 3], inf[5, 5] = np.nan, np.inf
    struct = np.zeros((64, 64), dtype=[("a", "u1"), ("b", "f4")])
    return [
        (None, "got NoneType"),
        (7, "got int"),
        ([[0.1, 0.2], [0.3, 0.4]], "got list"),
        (np.full((64, 64), "0.5"), "not an image dtype"),
        (np.full((64, 64), b"1"), "not an image dtype"),
        (np.full((64, 64), 0.5, dtype=object), "not an image dtype"),
        (np.full((64, 64), np.datetime64(datetime.date(2026, 1, 1))), "not an image dtype"),
        (struct, "not an image dtype"),
        (np.zeros((64, 64), np.complex64), "not an image dtype"),
        (nan, "NaN"),
        (inf, "NaN or infinite"),
        (np.full((80, 100), 128, np.uint8), "constant"),
        (np.zeros((2, 64, 64, 1), np.uint8), "shape"),
        (np.zeros(64, np.uint8), "shape"),
        (np.float32(0.5), "got float32"),
    ]


def test_any_object_is_its_own_error_and_no_chunk_is_lost(scorer: Scorer, tmp_path: Path):
    png, jpg = _good_files(tmp_path)
    bad = _bad_objects()
    inputs: list[object] = [png]
    for obj, _ in bad:
        inputs += [obj, jpg]  # goods in every chunk of 3, before and after each bad one
    res = scorer.score(inputs)
    assert len(res) == len(inputs)
    for i, r in enumerate(res):
        if i % 2 == 0:
            _assert_scored(r)
            assert r.source == str(inputs[i])
        else:
            obj, frag = bad[i // 2]
            _assert_failed(r, frag)
            assert r.source == (f"array[{i}]" if isinstance(obj, np.ndarray) else f"input[{i}]")


def test_bad_pathlike_and_unreadable_paths(scorer: Scorer, tmp_path: Path) -> None:
    class Broken(os.PathLike):
        def __fspath__(self) -> str:
            raise RuntimeError("cannot say")

    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    dangling = tmp_path / "dangling.png"
    os.symlink(tmp_path / "gone.png", dangling)
    png, _ = _good_files(tmp_path)
    res = scorer.score([Broken(), loop, dangling, tmp_path / "nul\0.png", png])
    _assert_failed(res[0])
    assert "not a file path" in res[0].error or "cannot say" in res[0].error
    _assert_failed(res[1], "symbolic link loop")
    _assert_failed(res[2], "broken symbolic link")
    _assert_failed(res[3], "null byte")
    _assert_scored(res[4])


# ---------------------------------------------------------------------------------------------
# Multi-frame inputs: first frame, with a warning
# ---------------------------------------------------------------------------------------------


def _multi_frame_files(folder: Path) -> list[Path]:
    frames = [Image.fromarray(_noise(seed=s)) for s in range(3)]
    gif, tif = folder / "anim.gif", folder / "pages.tif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(tif, save_all=True, append_images=frames[1:])
    stack = np.stack([np.asarray(f, np.uint16) * 16 for f in frames])
    dcm = save(grey_dataset(stack), folder / "frames.dcm")
    return [gif, tif, dcm]


def test_multi_frame_inputs_are_scored_with_a_warning(scorer: Scorer, tmp_path: Path) -> None:
    files = _multi_frame_files(tmp_path)
    res = scorer.score(files)
    for path, r in zip(files, res, strict=True):
        _assert_scored(r)
        assert r.warnings == ["3 frames; only the first was scored"], (path, r.warnings)
        assert r.to_json()["warnings"] == r.warnings
        first = read_image(path, target_size=None).image
        assert first.shape == (96, 80)
    with pytest.warns(MultiFrameWarning, match="only the first"):
        load_image(files[0])


def test_single_frame_results_carry_no_warning(scorer: Scorer, tmp_path: Path) -> None:
    png, jpg = _good_files(tmp_path)
    assert all(r.warnings == [] for r in scorer.score([png, jpg, _noise()]))


def test_io_errors_are_image_load_errors(tmp_path: Path) -> None:
    for name, path in killers(tmp_path).items():
        if name == "slope0_window":  # decodes; refused later as a constant network input
            continue
        with pytest.raises(ImageLoadError) as ei:
            load_image(path)
        assert ei.value.path == str(path) and KILLER_REASONS[name] in ei.value.reason


# ---------------------------------------------------------------------------------------------
# Resource limits: refused from the header, before decoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_decompression_bombs_are_refused_before_decoding(tmp_path: Path) -> None:
    """Each bomb in a fresh process: refused with the size it declares, and the process's peak
    RSS stays near that of the interpreter with numpy, Pillow and pydicom loaded."""
    made = bombs(tmp_path)
    code = textwrap.dedent(
        f"""
        import json
        from ddad_edge.runtime.io import read_input, ImageLoadError
        out = {{}}
        for name, path in { ({k: str(v) for k, v in made.items()})!r}.items():
            try:
                read_input(path)
                out[name] = "scored"
            except ImageLoadError as e:
                out[name] = e.reason
        hwm = [x for x in open("/proc/self/status") if x.startswith("VmHWM:")]  # this exec only
        out["peak_rss_mb"] = int(hwm[0].split()[1]) / 1024
        print(json.dumps(out))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    for name in made:
        assert "image too large" in out[name] and "refused before decoding" in out[name], out
    assert "13000 x 13000" in out["png_13000"]
    assert "codestream 13000 x 13000" in out["jpeg_stream_13000"]
    assert "30000 x 30000" in out["rle_30000"]
    assert out["peak_rss_mb"] < 250, out  # a decoded 13000^2 image alone would be 169 MB


def test_pixel_budget_is_configurable(tmp_path: Path, bundle: Path) -> None:
    png, _ = _good_files(tmp_path)  # 80 x 96 = 7680 pixels
    with pytest.raises(ImageLoadError, match="7680 x|80 x 96"):
        read_image(png, max_pixels=7000)
    assert read_image(png, max_pixels=7680).image.shape == (96, 80)
    dcm = save(grey_dataset(), tmp_path / "g.dcm")  # 64 x 64 x 1 x 1
    with pytest.raises(ImageLoadError, match="64 x 64 x 1 frame"):
        read_image(dcm, max_pixels=4000)
    assert read_image(dcm, max_pixels=None).image.shape == (64, 64)
    with Scorer.from_bundle(bundle, backend="ort-cpu", precision="fp32", max_pixels=7000) as s:
        res = s.score([png, dcm])
    _assert_failed(res[0], "image too large")
    _assert_scored(res[1])
    args = ["score", str(bundle), str(png), str(dcm), "--json", "--max-pixels", "4000"]
    recs = [json.loads(x) for x in CliRunner().invoke(app, args).stdout.splitlines()]
    assert len(recs) == 2 and "image too large" in recs[0]["error"]
    # a DICOM header over the budget is refused before decoding: an error, not an abstention
    assert recs[1]["status"] == "error" and "image too large" in recs[1]["error"]


def test_dicom_is_processed_in_blocks_with_unchanged_values(tmp_path: Path, monkeypatch) -> None:
    """Rescale + window computed a block of rows at a time equal the whole-image computation."""
    import ddad_edge.runtime.dicom as dicom

    ds = grey_dataset(ramp(300, 200))
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 3000, 4000
    path = save(ds, tmp_path / "w.dcm")
    whole = read_image(path, target_size=None).image
    monkeypatch.setattr(dicom, "_BLOCK_PIXELS", 1000)  # 5 rows per block
    np.testing.assert_array_equal(read_image(path, target_size=None).image, whole)


def test_missing_pylibjpeg_hint_when_pillow_alone_fails(tmp_path: Path, monkeypatch) -> None:
    """A JPEG 2000 file that only pylibjpeg could decode: with Pillow as the only plugin, the
    error says to install the dicom-codecs extra (it used to say "broken data stream" only)."""
    import io

    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    buf = io.BytesIO()
    Image.fromarray(_noise()).save(buf, "JPEG2000", irreversible=False)
    stream = buf.getvalue()
    broken = stream[:200] + bytes(len(stream) - 200)  # header intact, tile data zeroed
    path = encapsulated(tmp_path / "j2k.dcm", broken, JPEG2000Lossless, 96, 80)
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {"pillow": decoder._available["pillow"]})
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    assert "pixel data could not be decoded" in ei.value.reason
    assert "ddad-edge[dicom-codecs]" in ei.value.reason


def test_one_image_extension_list() -> None:
    from ddad_edge.benchmarks import latency as bench_e2e
    from ddad_edge.data import IMAGE_EXTS as data_exts
    from ddad_edge.export.sources import IMAGE_EXTS as export_exts
    from ddad_edge.runtime.io import IMAGE_EXTS

    assert data_exts is IMAGE_EXTS and export_exts is IMAGE_EXTS
    assert bench_e2e.IMAGE_EXTS is IMAGE_EXTS
    assert {".png", ".jpg", ".dcm", ".tif", ".bmp"} <= IMAGE_EXTS


def test_jp2_box_of_length_zero_is_refused_not_an_endless_loop(tmp_path: Path) -> None:
    """Found by the fuzz test: a JP2-wrapped frame with a box length of 0 before the codestream
    box sent pydicom's JPEG 2000 header parser into an endless loop (the call never returned)."""
    import io

    from pydicom.uid import JPEG2000Lossless

    buf = io.BytesIO()
    Image.fromarray(_noise()).save(buf, "JPEG2000", irreversible=False)
    jp2 = bytearray(buf.getvalue())
    i = jp2.find(b"jp2h") - 4
    assert jp2.startswith(b"\x00\x00\x00\x0cjP  ") and i > 0
    jp2[i : i + 4] = bytes(4)  # the header box's length: 0
    path = encapsulated(tmp_path / "jp2box0.dcm", bytes(jp2), JPEG2000Lossless, 96, 80)
    code = f"from ddad_edge.runtime.batch import load_path\nprint(load_path({str(path)!r}).reason)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "box at byte" in res.stdout and "length 0" in res.stdout, res.stdout
