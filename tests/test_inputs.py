"""Input hardening (issue 10): every bad input is its own one-line error, never a call-killer;
inputs that cannot be a radiograph are refused; multi-frame inputs carry a warning."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import numpy as np
import pytest
from dicom_craft import grey_dataset, killers, save
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
    "rows_length_3": "Rows",
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
    _assert_failed(res[0], "not a file path")
    _assert_failed(res[1], "symbolic link loop")
    _assert_failed(res[2], "broken symbolic link")
    _assert_failed(res[3], "not a valid path")
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
