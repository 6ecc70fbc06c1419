"""The decision end to end on a small bundle: gate + score + flag in the Scorer's records, a
pydicom Dataset scored like its file, and the SR + SC built for scored/abstained inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dciodvfy_errors, require_dicom_cxr

from ddad_edge.runtime.calibration import calibrate, calibration_record, write_calibration
from ddad_edge.runtime.gate import ARRAY_NOTE
from ddad_edge.runtime.scorer import Scorer, summarize


@pytest.fixture(scope="module")
def scorer(bundle: Path) -> Scorer:
    s = Scorer.from_bundle(bundle, backend="ort-cpu", precision="fp32")
    yield s
    s.close()


def cr_file() -> Path:
    return require_dicom_cxr() / "original" / "fo-dicom__CR-MONO1-10-chest.dcm"


def test_scored_abstained_and_error_kept_apart(scorer: Scorer, tmp_path: Path) -> None:
    good = cr_file()
    ds = pydicom.dcmread(good, force=True)
    ds.Modality = "CT"
    ct = tmp_path / "ct.dcm"
    ds.save_as(ct)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    array = np.random.default_rng(0).integers(0, 256, (80, 80), dtype=np.uint8)
    res = scorer.score([str(good), str(ct), str(broken), array])
    ungated = Scorer(scorer.bundle, scorer.backends, scorer.precision, gate=False)
    forced = ungated.score([str(ct)])[0]
    assert [r.status for r in res] == ["scored", "abstained", "error", "scored"]
    assert res[1].reason == "modality CT is not CR or DX" and res[1].scores is None
    assert res[2].error and res[2].reason is None and res[2].scores is None
    assert res[3].notes == [ARRAY_NOTE]
    assert forced.status == "scored"
    assert forced.scores == pytest.approx(res[0].scores)  # same pixels as the CR
    assert all(r.flag is None and r.threshold is None for r in res)  # not calibrated
    assert summarize(res) == {"scored": 2, "abstained": 1, "error": 1, "abnormal": 0, "normal": 0}
    rec = res[1].to_json()
    assert rec["status"] == "abstained" and rec["scores"] is None and rec["error"] is None


def test_dataset_scored_like_its_file(scorer: Scorer) -> None:
    good = cr_file()
    ds = pydicom.dcmread(good, force=True)
    from_file = scorer.score([str(good)])[0]
    r = scorer.score_dataset(ds)
    assert r.status == "scored" and r.source == f"dicom:{ds.SOPInstanceUID}"
    assert r.scores == pytest.approx(from_file.scores)
    ds.ViewPosition = "LL"
    lateral = scorer.score_dataset(ds)
    assert lateral.status == "abstained" and "LL" in lateral.reason


def test_calibrated_flags_and_dicom_results(bundle: Path, tmp_path: Path) -> None:
    from ddad_edge.runtime.dicom_results import AlgorithmInfo, build_results

    pytest.importorskip("highdicom", reason="the report extra (highdicom) is not installed")
    good = cr_file()
    with Scorer.from_bundle(bundle, backend="ort-cpu", precision="fp32") as s:
        inter = s.score([str(good)])[0].scores["inter"]
        # normals straddling the file's score: its flag is known at each operating point
        normals = np.r_[np.linspace(0.5, 0.99, 90), np.linspace(1.01, 1.5, 10)] * inter
        pts = calibrate(normals, specificities=(0.5, 0.95), n_boot=50)
        rec = calibration_record(
            s.bundle.manifest,
            pts,
            score="inter",
            normals={"source": "test", "n": 100},
            abnormals=None,
            bootstrap={"n": 50, "level": 0.95, "seed": 0},
        )
        write_calibration(rec, tmp_path / "cal.json")
    cal = tmp_path / "cal.json"
    with Scorer.from_bundle(bundle, backend="ort-cpu", calibration=cal, operating_point=0.5) as s:
        assert s.score([str(good)])[0].flag == "abnormal"  # above the median of the normals
    with Scorer.from_bundle(bundle, backend="ort-cpu", calibration=cal) as s:  # default: 0.95
        ds = pydicom.dcmread(good, force=True)
        ds.BodyPartExamined = "ABDOMEN"
        abd = tmp_path / "abd.dcm"
        ds.save_as(abd)
        scored, abstained = s.score([str(good), str(abd)], maps=True)
        assert scored.flag == "normal" and scored.operating_point["specificity"] == 0.95
        assert scored.threshold == pytest.approx(pts[1]["threshold"])
        assert abstained.flag is None and abstained.status == "abstained"
        info = AlgorithmInfo.from_manifest(s.bundle.manifest)
        objs = build_results(good, scored, info)
        assert [o.Modality for o in objs] == ["SR", "OT"]
        assert len(build_results(abd, abstained, info)) == 1  # SR only: nothing was scored
    for i, o in enumerate(objs):
        path = tmp_path / f"out{i}.dcm"
        o.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []


def _pngs(folder: Path, n: int, seed: int, bright: float) -> Path:
    """n smooth grey PNGs (a blob on a gradient); ``bright`` shifts them away from the rest."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        img = 0.3 * xx + 0.4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05) + bright
        Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def test_cli_calibrate_score_report(bundle: Path, tmp_path: Path) -> None:
    import json

    pytest.importorskip("highdicom", reason="the report extra (highdicom) is not installed")

    from typer.testing import CliRunner

    from ddad_edge.cli import app

    runner = CliRunner()
    normals = _pngs(tmp_path / "normals", 24, 0, 0.0)
    abnormals = _pngs(tmp_path / "abnormals", 6, 1, 0.4)
    cal = tmp_path / "cal.json"
    args = ["calibrate", str(bundle), "--normals", str(normals), "--abnormals", str(abnormals)]
    res = runner.invoke(app, [*args, "--n-boot", "100", "-o", str(cal)])
    assert res.exit_code == 0, res.output
    rec = json.loads(cal.read_text())
    assert [p["specificity"] for p in rec["operating_points"]] == [0.90, 0.95, 0.99]
    assert rec["normals"]["n"] == 24 and rec["abnormals"]["n"] == 6
    assert all("sensitivity_interval" in p for p in rec["operating_points"])
    assert rec["default_specificity"] == 0.95 and rec["score"] == "inter"
    from ddad_edge.runtime.score_records import read_reference_scores

    ref = read_reference_scores(cal)  # the drift watch's reference sample
    assert set(ref) == {"rec", "intra", "inter"} and len(ref["inter"]) == 24

    good = require_dicom_cxr() / "original" / "fo-dicom__CR-MONO1-10-chest.dcm"
    ds = pydicom.dcmread(good, force=True)
    ds.ViewPosition = "LL"
    lateral = tmp_path / "lateral.dcm"
    ds.save_as(lateral)
    png = normals / "00.png"
    inputs = [str(bundle), str(good), str(lateral), str(png), "--calibration", str(cal)]
    res = runner.invoke(app, ["score", *inputs, "--json"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [r["status"] for r in recs] == ["scored", "abstained", "scored"]
    t95 = rec["operating_points"][1]["threshold"]
    assert recs[0]["threshold"] == t95 and recs[0]["flag"] in ("abnormal", "normal")
    assert recs[0]["flag"] == ("abnormal" if recs[0]["scores"]["inter"] > t95 else "normal")
    assert recs[1]["flag"] is None and "LL" in recs[1]["reason"]

    other = tmp_path / "other.json"
    other.write_text(json.dumps({**rec, "bundle_digest": "0" * 64}))
    res = runner.invoke(app, ["score", str(bundle), str(good), "--calibration", str(other)])
    assert res.exit_code == 1 and "another bundle" in res.stderr

    out = tmp_path / "out"
    res = runner.invoke(app, ["report", *inputs, "-o", str(out)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert lines[0]["dicom"] == [f"{good.stem}.sr.dcm", f"{good.stem}.sc.dcm"]
    assert lines[1]["dicom"] == ["lateral.sr.dcm"] and lines[1]["status"] == "abstained"
    assert lines[2]["dicom"].startswith("not DICOM")
    for name in (*lines[0]["dicom"], "lateral.sr.dcm"):
        assert dciodvfy_errors(out / name) == [], name
    sr = pydicom.dcmread(out / f"{good.stem}.sr.dcm")
    assert sr.StudyInstanceUID == ds.StudyInstanceUID


def test_unique_stem_numbers_repeated_names() -> None:
    from ddad_edge.runtime.report_folder import unique_stem

    used: set[str] = set()
    names = [unique_stem(p, used) for p in ("a/x.dcm", "b/x.dcm", "x.png", "", "c/x-2.dcm")]
    assert names == ["x", "x-2", "x-3", "input", "x-2-2"]
