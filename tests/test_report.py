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
