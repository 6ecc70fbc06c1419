"""Drift watch: PSI and KS statistics, score records, the drift command, and real shifts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ddad_edge.cli import app
from ddad_edge.models import FusedEnsemble
from ddad_edge.reference import dual_stats
from ddad_edge.runtime.batch import load_inputs
from ddad_edge.runtime.calibration import calibrate, calibration_record, write_calibration
from ddad_edge.runtime.drift import (
    MIN_SAMPLES,
    ScoreWindow,
    chi2_sf,
    compare,
    compare_files,
    ks_2samp,
    psi,
    psi_pvalue,
)
from ddad_edge.runtime.io import load_image
from ddad_edge.runtime.preprocess import preprocess
from ddad_edge.runtime.score_records import (
    ScoreRecordError,
    read_reference_scores,
    read_score_records,
)
from ddad_edge.runtime.scores import image_scores, maps_from_stats
from ddad_edge.train import TrainConfig, train_module

runner = CliRunner()


def test_ks_matches_scipy_asymptotic() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n, m, shift in ((200, 200, 0.0), (200, 50, 0.3), (1000, 300, 0.1), (40, 40, 0.5)):
        a, b = rng.normal(size=n), rng.normal(shift, size=m)
        d, p = ks_2samp(a, b)
        ref = stats.ks_2samp(a, b, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert p == pytest.approx(ref.pvalue, abs=0.01)  # Stephens' correction vs scipy's form
    for x, dof in ((5.0, 9), (20.0, 9), (30.0, 9), (2.0, 1)):
        assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), abs=0.005)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=60),
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=60),
)
def test_psi_is_non_negative_and_zero_on_itself(a: list[float], b: list[float]) -> None:
    assert psi(np.array(a), np.array(b)) >= 0.0
    assert psi(np.array(a), np.array(a)) == pytest.approx(0.0, abs=1e-12)


def test_psi_null_rate_and_growth_with_shift() -> None:
    rng = np.random.default_rng(1)
    # under no change the PSI test rejects at about its level (chi-square approximation)
    pv = [psi_pvalue(psi(rng.normal(size=200), rng.normal(size=200)), 200, 200) for _ in range(300)]
    assert np.mean(np.array(pv) < 0.01) < 0.05
    ref = rng.normal(size=2000)
    values = [psi(ref, rng.normal(s, size=2000)) for s in (0.0, 0.25, 0.5, 1.0)]
    assert values == sorted(values) and values[0] < 0.02 and values[-1] > 0.25


def test_compare_verdicts() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=500)
    assert compare(ref, rng.normal(size=300)).verdict == "stable"
    moved = compare(ref, rng.normal(1.0, size=300), "inter")
    assert moved.verdict == "inputs moved" and moved.direction == "higher"
    assert "inter" in moved.message and "higher" in moved.message
    assert compare(ref, rng.normal(-0.35, size=2000)).verdict == "moderate shift"
    few = compare(ref, rng.normal(3.0, size=MIN_SAMPLES - 1))
    assert few.verdict == "too few scores" and few.psi > 0.25
    # a large PSI on a tiny sample is noise, not a shift: significance is required
    small = compare(rng.normal(size=40), rng.normal(size=40))
    assert small.verdict == "stable"
    with pytest.raises(ValueError, match="NaN"):
        compare(ref, np.array([np.nan] * 40))


def test_score_window_is_bounded_and_ordered() -> None:
    w = ScoreWindow(size=3)
    for i in range(5):
        w.add({"inter": float(i), "rec": None, "intra": float("nan")})
    assert w.values("inter").tolist() == [2.0, 3.0, 4.0] and len(w) == 3
    assert w.values("rec").size == 0 and w.values("intra").size == 0


def _write_records(path: Path, values: np.ndarray, errors: int = 0) -> Path:
    lines = [
        json.dumps({"source": f"x{i}", "scores": {"inter": v}, "error": None})
        for i, v in enumerate(values.tolist())
    ]
    lines += [json.dumps({"source": "bad", "scores": None, "error": "corrupt"})] * errors
    path.write_text("\n".join(lines) + "\n")
    return path


def test_records_and_calibration_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    f = _write_records(tmp_path / "a.jsonl", rng.normal(size=10), errors=2)
    assert read_score_records(f)["inter"].size == 10  # failed inputs are not scores
    spool = tmp_path / "spool"
    (spool / "day2").mkdir(parents=True)
    _write_records(spool / "day1.jsonl", np.arange(3.0))
    _write_records(spool / "day2" / "x.jsonl", np.arange(3.0, 5.0))
    assert read_score_records(spool)["inter"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"scores": {"inter": 1}}\n{oops\n')
    with pytest.raises(ScoreRecordError, match=r"bad.jsonl:2"):
        read_score_records(bad)
    cal = tmp_path / "calibration.json"
    normals = rng.random(40)
    record = calibration_record(
        {"files": {}},
        calibrate(normals, n_boot=20),
        score="inter",
        normals={"source": "test", "n": 40},
        abnormals=None,
        bootstrap={"n": 20, "level": 0.95, "seed": 0},
        normal_scores={"inter": normals, "rec": normals * 2},
    )
    write_calibration(record, cal)
    ref = read_reference_scores(cal)
    assert ref["inter"].tolist() == normals.tolist() and set(ref) == {"inter", "rec"}
    cal.write_text(json.dumps({"threshold": 1.0}))
    with pytest.raises(ScoreRecordError, match="normal_scores"):
        read_reference_scores(cal)
    with pytest.raises(ScoreRecordError, match="no such file"):
        read_score_records(tmp_path / "missing.jsonl")


def test_drift_command(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"normal_scores": {"inter": rng.normal(size=400).tolist()}}))
    same = _write_records(tmp_path / "same.jsonl", rng.normal(size=200))
    moved = _write_records(tmp_path / "moved.jsonl", rng.normal(1.5, size=200))
    r = runner.invoke(app, ["drift", str(same), "--calibration", str(cal)])
    assert r.exit_code == 0 and "look like the calibration normals" in r.output
    r = runner.invoke(app, ["drift", str(moved), "--calibration", str(cal), "--json"])
    assert r.exit_code == 2, r.output
    assert json.loads(r.output.splitlines()[0])["verdict"] == "inputs moved"
    r = runner.invoke(app, ["drift", str(moved), "--calibration", str(cal), "--last", "20"])
    assert r.exit_code == 0 and "no verdict" in r.output  # 20 recent scores are too few
    r = runner.invoke(app, ["drift", str(same), "--calibration", str(cal), "--score", "rec"])
    assert r.exit_code == 1 and "rec" in r.output and "Traceback" not in r.output
    reports = compare_files(moved, cal, last=20)  # the library behind the command
    assert [(r.score, r.n_current, r.n_reference) for r in reports] == [("inter", 20, 400)]
    with pytest.raises(ScoreRecordError, match="rec"):
        compare_files(same, cal, ["inter", "rec"])


# --------------------------------------------------------------------------------------------
# Real shifts on the Kermany data (Kermany et al., CC BY 4.0)
# --------------------------------------------------------------------------------------------


def _kermany_lists(root: Path) -> tuple[list[Path], list[Path]]:
    rows = list(csv.DictReader((root / "labels.csv").open()))
    pick = [r for r in rows if r["split"] == "train"]
    normal = [root / r["path"] for r in pick if r["label"] == "0"]
    pneumonia = [root / r["path"] for r in pick if r["label"] == "1"]
    return normal, pneumonia


def test_real_shifts_on_kermany(kermany: Path, tmp_path: Path) -> None:
    """A small model trained on Kermany normals; its scores on other normals stay put, on
    pneumonia images they move, and the same images decoded from the full-resolution originals
    (another decode path) score like their 224-px copies."""
    torch.manual_seed(0)
    normal, pneumonia = _kermany_lists(kermany)
    train = torch.from_numpy(load_inputs(normal[:128]).x)
    cfg = TrainConfig(kind="ae", k=2, epochs=2, batch_size=32, seed=0)
    models = []
    for module in ("A", "B"):
        st_ = train_module(module, train, cfg, tmp_path / f"{module}.pt")
        m = FusedEnsemble(st_["kind"], st_["k"])
        m.load_state_dict(st_["model"])
        models.append(m.eval())

    def rec(x: np.ndarray) -> np.ndarray:  # a 2-epoch model's rec, not inter: inter needs training
        return image_scores(maps_from_stats(x, dual_stats(models[0], models[1], x)))["rec"]

    reference = rec(load_inputs(normal[200:320]).x)
    same = compare(reference, rec(load_inputs(normal[320:440]).x), "rec")
    assert same.verdict == "stable", same
    shifted = compare(reference, rec(load_inputs(pneumonia[:120]).x), "rec")
    assert shifted.verdict == "inputs moved", shifted
    full = kermany.parent / "kermany-fullres"
    if not (full / "labels.csv").is_file():
        pytest.skip(f"full-resolution set not found at {full}")
    paths = sorted((full / "NORMAL").glob("*.jpeg"))
    x_full = np.stack([preprocess(load_image(p, target_size=None)) for p in paths])
    x_224 = load_inputs([kermany / "train" / "NORMAL" / p.name for p in paths]).x
    paired = compare(rec(x_224), rec(x_full), "rec")
    assert paired.verdict == "stable", paired
