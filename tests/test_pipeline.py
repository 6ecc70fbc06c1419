"""Training runs end to end: run folder, resume, refusals, and the CLI on real data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddad_edge.cli import app
from ddad_edge.data import make_split
from ddad_edge.train import RunDirError, TrainConfig, train_run

runner = CliRunner()


def _tiny_manifest(tmp_path: Path) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """A manifest stub and (D [32, 1, 64, 64], Du [16, 1, 64, 64])."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(48, 1, 8, 8, generator=g), size=64) * 2 - 1
    manifest = {"sha256": "0" * 64, "root": str(tmp_path), "counts": {}}
    return manifest, (x[:32], x[32:])


def test_module_a_trains_on_d_and_du_module_b_on_d(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DDAD's data roles (method.md): A on D ∪ Du, B on D only; the library assembles them."""
    import ddad_edge.train as train_mod

    manifest, (d, du) = _tiny_manifest(tmp_path)
    seen: dict[str, torch.Tensor] = {}
    real = train_mod.train_module

    def spy(module: str, data: torch.Tensor, *args, **kwargs):
        seen[module] = data.clone()
        return real(module, data, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_module", spy)
    cfg = TrainConfig(kind="ae", k=2, epochs=1, batch_size=16)
    states = train_run(manifest, d, du, tmp_path / "run", cfg)
    assert torch.equal(seen["A"], torch.cat([d, du])) and torch.equal(seen["B"], d)
    assert states["A"]["n_train"] == 48 and states["B"]["n_train"] == 32
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert hist["A"]["n_train"] == 48 and hist["B"]["n_train"] == 32
    with pytest.raises(ValueError, match="image shape"):
        train_mod.module_data(d, du[:, :, :32])


def test_resume_continues_exactly(tmp_path: Path) -> None:
    manifest, data = _tiny_manifest(tmp_path)
    cfg = TrainConfig(kind="ae", k=2, epochs=2, batch_size=16, seed=5)
    straight = train_run(manifest, *data, tmp_path / "straight", cfg)
    one = TrainConfig(kind="ae", k=2, epochs=1, batch_size=16, seed=5)
    train_run(manifest, *data, tmp_path / "resumed", one)
    resumed = train_run(manifest, *data, tmp_path / "resumed", cfg, resume=True)
    for m in ("A", "B"):
        assert resumed[m]["epoch"] == 2 and len(resumed[m]["history"]) == 2
        np.testing.assert_allclose(resumed[m]["history"], straight[m]["history"], rtol=1e-6)
        for name, t in straight[m]["model"].items():
            torch.testing.assert_close(resumed[m]["model"][name], t, rtol=1e-5, atol=1e-6)
    hist = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert len(hist["A"]["loss_per_epoch"]) == 2


def test_reuse_module_b_trains_a_only(tmp_path: Path) -> None:
    """`train --reuse-b`: B is copied from a finished run with the same D (checked), A trains;
    another D, another kind or K is refused."""
    manifest, (d, du) = _tiny_manifest(tmp_path)
    manifest["normal_train"] = [f"n{i}.png" for i in range(32)]
    cfg = TrainConfig(kind="ae", k=2, epochs=1, batch_size=16, seed=5)
    src = train_run(manifest, d, du, tmp_path / "src", cfg)
    other_du = du.flip(0) * 0.5  # another Du (e.g. another anomaly rate), same D
    shared = train_run(manifest, d, other_du, tmp_path / "ar", cfg, module_b_from=tmp_path / "src")
    assert shared["B"]["history"] == src["B"]["history"]
    src_b = (tmp_path / "src" / "module_B.pt").read_bytes()
    assert (tmp_path / "ar" / "module_B.pt").read_bytes() == src_b
    assert shared["A"]["history"] != src["A"]["history"]
    cfg_json = json.loads((tmp_path / "ar" / "config.json").read_text())
    assert cfg_json["module_b_from"] == str((tmp_path / "src").resolve())
    more = TrainConfig(kind="ae", k=2, epochs=2, batch_size=16, seed=5)  # resume keeps the B
    resumed = train_run(manifest, d, other_du, tmp_path / "ar", more, resume=True)
    assert resumed["A"]["epoch"] == 2 and resumed["B"]["history"] == src["B"]["history"]
    other_d = {**manifest, "normal_train": manifest["normal_train"][::-1]}
    with pytest.raises(RunDirError, match="another D"):
        train_run(other_d, d, du, tmp_path / "x1", cfg, module_b_from=tmp_path / "src")
    aeu = TrainConfig(kind="aeu", k=2, epochs=1, batch_size=16)
    with pytest.raises(RunDirError, match="K=2"):
        train_run(manifest, d, du, tmp_path / "x2", aeu, module_b_from=tmp_path / "src")


def test_refuses_to_overwrite_or_mismatched_resume(tmp_path: Path) -> None:
    manifest, data = _tiny_manifest(tmp_path)
    cfg = TrainConfig(kind="ae", k=2, epochs=1, batch_size=16)
    train_run(manifest, *data, tmp_path / "run", cfg)
    with pytest.raises(RunDirError, match="already holds a run"):
        train_run(manifest, *data, tmp_path / "run", cfg)
    with pytest.raises(RunDirError, match="kind"):
        train_run(
            manifest,
            *data,
            tmp_path / "run",
            TrainConfig(kind="aeu", k=2, epochs=1, batch_size=16),
            resume=True,
        )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("user data")
    with pytest.raises(RunDirError, match="not empty"):
        train_run(manifest, *data, tmp_path / "other", cfg)
    assert (tmp_path / "other" / "precious.txt").read_text() == "user data"


def kermany_split(kermany: Path, out: Path, calibration: int) -> None:
    """A small split of the Kermany set: |D| 128, |Du| 64 at AR 0.5, seed 0."""
    args = ["split", str(kermany), "--labels", "labels.csv", "--normal-train", "128"]
    args += ["--unlabeled", "64", "--ar", "0.5", "--seed", "0"]
    r = runner.invoke(app, [*args, "--calibration", str(calibration), "-o", str(out)])
    assert r.exit_code == 0, r.output


def test_cli_split_train_eval_on_kermany(kermany: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    kermany_split(kermany, split, calibration=32)
    assert json.loads(split.read_text())["counts"]["calibration"] == 32
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            "train",
            "--split",
            str(split),
            "--model",
            "ae",
            "--k",
            "2",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "-o",
            str(run),
        ],
    )
    assert r.exit_code == 0, r.output
    for f in ("config.json", "module_A.pt", "module_B.pt", "history.json", "curves.png"):
        assert (run / f).is_file(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["split_sha256"] == json.loads(split.read_text())["sha256"]
    r = runner.invoke(app, ["eval", str(run), "--split", str(split)])
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n_test"] == 624
    for name in ("rec", "intra", "inter"):
        assert 0.0 <= metrics["metrics"][name]["auc"] <= 1.0
        assert 0.0 <= metrics["metrics"][name]["ap"] <= 1.0
    for f in ("roc.png", "histograms.png", "heatmaps.png", "scores.csv"):
        assert (run / "eval" / f).stat().st_size > 1000, f
    assert "Kermany" in metrics["data_note"]
    # a calibrated operating point on the ROC plot and in metrics.json
    rows = [ln.split(",") for ln in (run / "eval" / "scores.csv").read_text().splitlines()[1:]]
    normal_inter = sorted(float(r[4]) for r in rows if r[1] == "0")
    # a threshold midway between two neighbouring normal scores, so that the CSV's rounding of
    # the scores cannot move one across it
    k = next(i for i in range(len(normal_inter) // 2, len(normal_inter))
             if normal_inter[i] - normal_inter[i - 1] > 1e-7)  # fmt: skip
    t = (normal_inter[k - 1] + normal_inter[k]) / 2
    cal = tmp_path / "cal.json"
    point = {"specificity": 0.5, "threshold": t, "threshold_interval": [t, t]}
    body = {"format": "ddad-edge-calibration", "model_kind": "ae", "score": "inter"}
    cal.write_text(json.dumps({**body, "operating_points": [point]}))
    r = runner.invoke(app, ["eval", str(run), "--split", str(split), "--calibration", str(cal)])
    assert r.exit_code == 0, r.output
    (op,) = json.loads((run / "eval" / "metrics.json").read_text())["operating_points"]
    assert op["test_specificity"] == k / len(normal_inter)
    assert 0.0 < op["test_sensitivity"] < 1.0
    assert "calibrated inter >" in r.output
    # ASR on the 32 held-out normals (neither module saw them); a split without any is refused
    no_held_out = tmp_path / "split0.json"
    kermany_split(kermany, no_held_out, calibration=0)
    asr = ["train-asr", str(run), "--held-out", "--epochs", "1", "--split"]
    r = runner.invoke(app, [*asr, str(no_held_out)])
    assert r.exit_code == 1 and "no held-out normals" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [*asr, str(split)])
    assert r.exit_code == 0, r.output
    assert "on 32 images (held-out normals)" in r.output
    import torch

    ck = torch.load(run / "asr.pt", weights_only=True)
    assert (ck["trained_on"], ck["n_train"], ck["epoch"]) == ("calibration", 32, 1)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["train", "--split", str(tmp_path / "nope.json"), "-o", str(tmp_path / "r")]
    )
    assert r.exit_code == 1
    assert "cannot read split manifest" in r.output and "Traceback" not in r.output


def test_split_refusal_via_cli(tmp_path: Path) -> None:
    for sub, n in (("NORMAL", 5), ("ABNORMAL", 5)):
        (tmp_path / "d" / sub).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "d" / sub / f"{i}.png").write_bytes(b"")
    r = runner.invoke(
        app,
        [
            "split",
            str(tmp_path / "d"),
            "--normal-train",
            "50",
            "--unlabeled",
            "2",
            "-o",
            str(tmp_path / "s.json"),
        ],
    )
    assert r.exit_code == 1 and "not enough normal" in r.output
    assert not (tmp_path / "s.json").exists()


def test_make_split_marks_phantoms_synthetic(tmp_path: Path) -> None:
    from ddad_edge.data import read_labels_csv
    from ddad_edge.phantom import make_phantom_dataset

    csv = make_phantom_dataset(
        tmp_path / "ph",
        n_train_normal=20,
        n_train_abnormal=10,
        n_test_normal=5,
        n_test_abnormal=5,
        size=64,
    )
    m = make_split(
        tmp_path / "ph",
        read_labels_csv(tmp_path / "ph", csv),
        normal_train=10,
        unlabeled=10,
        ar=0.5,
    )
    assert m["data_note"].startswith("SYNTHETIC")


def test_demo_runs_end_to_end_on_phantoms(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--epochs", "1", "--k", "2", "--normal-train", "64",
            "--unlabeled", "64", "--threads", "1", "--test-per-class", "16"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "SYNTHETIC" in r.output
    metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())
    assert metrics["data_note"].startswith("SYNTHETIC")
    assert (out / "bundle" / "manifest.json").is_file()
    # the demo scores with backend "auto": whichever backend this machine selects
    assert re.search(r"runtime \((trt|ort-cuda|ort-cpu)\)", r.output), r.output
    # a second call resumes the finished run instead of refusing or retraining
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output


def test_demo_refuses_an_unknown_lesion_kind(tmp_path: Path) -> None:
    r = runner.invoke(app, ["demo", "-o", str(tmp_path / "d"), "--lesions", "cavitary"])
    assert r.exit_code == 1 and "lesion kind must be one of lucent, opaque" in r.output
    assert "Traceback" not in r.output
