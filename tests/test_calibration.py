"""Operating points: the threshold rule, bootstrap intervals, the file's binding to one bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddad_edge.runtime.calibration import (
    CalibrationError,
    bundle_digest,
    calibrate,
    calibrate_scored,
    calibration_record,
    load_calibration,
    threshold_at,
    write_calibration,
)

MANIFEST = {"model": {"kind": "ae"}, "files": {"dual_fp32.onnx": {"sha256": "1" * 64}}}
OTHER = {"model": {"kind": "ae"}, "files": {"dual_fp32.onnx": {"sha256": "2" * 64}}}


def test_threshold_is_the_order_statistic() -> None:
    s = np.arange(1, 101, dtype=float)  # 1..100
    assert threshold_at(s, 0.95) == 95.0  # 95 of 100 at or below
    assert threshold_at(s, 0.951) == 96.0
    assert threshold_at(s[::-1], 0.90) == 90.0  # order of the input does not matter
    assert threshold_at(np.array([[3.0, 1.0, 2.0], [6.0, 5.0, 4.0]]), 0.5).tolist() == [2.0, 5.0]


def test_calibrate_points_and_intervals() -> None:
    rng = np.random.default_rng(3)
    normals = rng.normal(0.0, 1.0, 400)
    abnormals = rng.normal(2.5, 1.0, 300)
    pts = calibrate(normals, abnormals, specificities=(0.90, 0.95, 0.99), n_boot=500)
    assert [p["specificity"] for p in pts] == [0.90, 0.95, 0.99]
    thresholds = [p["threshold"] for p in pts]
    assert thresholds == sorted(thresholds)
    for p, z in zip(pts, (1.2816, 1.6449, 2.3263), strict=True):
        lo, hi = p["threshold_interval"]
        assert lo <= p["threshold"] <= hi
        assert lo < z + 0.35 and hi > z - 0.35  # near the true quantile of N(0, 1)
        assert p["specificity_on_normals"] >= p["specificity"]
        slo, shi = p["sensitivity_interval"]
        assert slo <= p["sensitivity"] <= shi
        assert p["sensitivity"] == pytest.approx(np.mean(abnormals > p["threshold"]))
    assert pts[0]["sensitivity"] > pts[2]["sensitivity"]
    no_abn = calibrate(normals, None, n_boot=100)
    assert "sensitivity" not in no_abn[0]
    with pytest.raises(CalibrationError, match="at least 20"):
        calibrate(normals[:10])
    with pytest.raises(CalibrationError, match="specificity"):
        calibrate(normals, specificities=(1.0,))


def test_file_bound_to_bundle(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pts = calibrate(rng.random(100), n_boot=50)
    rec = calibration_record(
        MANIFEST,
        pts,
        score="inter",
        normals={"source": "test", "n": 100},
        abnormals=None,
        bootstrap={"n": 50, "level": 0.95, "seed": 0},
    )
    path = tmp_path / "c.json"
    write_calibration(rec, path)
    cal = load_calibration(path, MANIFEST)
    assert cal.point.specificity == 0.95 and cal.point.score == "inter"
    t = cal.point.threshold
    assert cal.point.flag({"inter": t}) == "normal"
    assert cal.point.flag({"inter": t + 1e-6}) == "abnormal"
    assert load_calibration(path, MANIFEST, 0.99).point.threshold >= t
    assert cal.to_json()["bundle_digest"] == bundle_digest(MANIFEST)
    with pytest.raises(CalibrationError, match="another bundle"):
        load_calibration(path, OTHER)
    with pytest.raises(CalibrationError, match="no operating point"):
        load_calibration(path, MANIFEST, 0.8)
    assert bundle_digest({**MANIFEST, "manifest_sha256": "abc"}) == "abc"
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(CalibrationError, match="not a ddad-edge calibration"):
        load_calibration(tmp_path / "bad.json", MANIFEST)


def test_calibrate_scored_records_what_was_used() -> None:
    rng = np.random.default_rng(1)
    normals = ({"inter": rng.random(40), "rec": rng.random(40)}, [{"path": "a", "status": "error"}])
    abnormals = ({"inter": 1 + rng.random(10)}, [])
    held = ({"inter": rng.random(30)}, [{"path": "b", "status": "abstained"}])
    none: tuple[dict, list] = ({}, [])
    kw = {"score": "inter", "source": "site", "n_boot": 50, "seed": 3}
    rec = calibrate_scored(MANIFEST, normals, abnormals, held, split_sha256="f" * 64, **kw)
    assert rec["normals"] == {"source": "site", "n": 40, "excluded": normals[1]}
    assert rec["abnormals"] == {"n": 10, "excluded": []}
    assert rec["held_out_normals"] == {"n": 30, "excluded": held[1]}
    assert rec["split_sha256_used"] == "f" * 64
    assert set(rec["normal_scores"]) == {"inter", "rec"}  # all of them: the drift reference
    assert rec["operating_points"] == calibrate(
        normals[0]["inter"], abnormals[0]["inter"], n_boot=50, seed=3, held_out=held[0]["inter"]
    )
    bare = calibrate_scored(MANIFEST, normals, none, none, **kw)
    assert bare["abnormals"] is None
    assert "held_out_normals" not in bare and "split_sha256_used" not in bare
    assert "sensitivity" not in bare["operating_points"][0]
    with pytest.raises(CalibrationError, match="at least 20"):
        calibrate_scored(MANIFEST, ({"inter": rng.random(5)}, []), none, none, **kw)
