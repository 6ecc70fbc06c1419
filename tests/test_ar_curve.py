"""`ddad-edge ar-curve`: test AUC against the anomaly rate of Du, from evaluated runs made as the
README's sweep makes them (split --ar, train --reuse-b, eval), on SYNTHETIC phantoms."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ddad_edge.cli import app
from ddad_edge.phantom import make_phantom_dataset

runner = CliRunner()


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three runs: AR 0 (seed 0, trains B), AR 1 seeds 0 and 1 (module B reused), evaluated."""
    root = tmp_path_factory.mktemp("ar")
    data = root / "phantoms"
    make_phantom_dataset(
        data, n_train_normal=96, n_train_abnormal=32, n_test_normal=16, n_test_abnormal=16, size=64
    )
    split = ["split", str(data), "--labels", "labels.csv", "--normal-train", "64"]
    _ok([*split, "--unlabeled", "32", "--ar", "0", "--ar", "1", "-o", str(root / "split.json")])
    train = ["train", "--model", "ae", "--k", "2", "--epochs", "1", "--threads", "1"]
    runs = [("0", 0, None), ("1", 0, "run-ar0-s0"), ("1", 1, "run-ar0-s0")]
    for ar, seed, reuse in runs:
        out = root / f"run-ar{ar}-s{seed}"
        args = [*train, "--split", str(root / f"split-ar{ar}.json"), "--seed", str(seed)]
        _ok([*args, "-o", str(out), *(["--reuse-b", str(root / reuse)] if reuse else [])])
        _ok(["eval", str(out), "--split", str(root / f"split-ar{ar}.json")])
    return root


def test_ar_curve_tabulates_and_plots_the_evaluated_runs(sweep: Path) -> None:
    runs = sorted(sweep.glob("run-ar*-s*"))
    out = _ok(["ar-curve", *map(str, runs), "-o", str(sweep / "ar.png"), "--score", "inter"])
    auc = {
        r.name: json.loads((r / "eval" / "metrics.json").read_text())["metrics"]["inter"]["auc"]
        for r in runs
    }
    lines = [line for line in out.splitlines() if line.startswith("AR ")]
    assert lines[0] == f"AR 0.00: inter AUC {auc['run-ar0-s0']:.3f} (n 1: {auc['run-ar0-s0']:.3f})"
    a, b = auc["run-ar1-s0"], auc["run-ar1-s1"]
    mean, sd = (a + b) / 2, abs(a - b) / 2**0.5
    assert lines[1] == f"AR 1.00: inter AUC {mean:.3f} +- {sd:.3f} (n 2: {a:.3f}, {b:.3f})"
    assert (sweep / "ar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ar_curve_names_a_run_that_was_not_evaluated(sweep: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((sweep / "run-ar1-s0" / "config.json").read_text())
    res = runner.invoke(app, ["ar-curve", str(bare), "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert re.search(r"bare: no eval/metrics\.json \(run `ddad-edge eval` on it first\)", text)
    assert not (tmp_path / "x.png").exists()


def test_asr_gain_table_and_figure_from_evaluated_asr_runs(sweep: Path, tmp_path: Path) -> None:
    """train-asr with the journal's solver flags (and, for seed 1, the authors' network and
    patches: --anomaly journal --crop 64 --batch-norm), eval, then `benchmarks.asr_gain add`
    takes each run's seed and inter/asr AUCs from its files, and `plot` draws the table."""
    import shutil

    import torch

    from ddad_edge.benchmarks import asr_gain

    runs = []
    for seed in (0, 1):
        run = tmp_path / f"run-s{seed}"
        shutil.copytree(sweep / f"run-ar1-s{seed}", run)
        split = str(sweep / "split-ar1.json")
        solver = ["--batch-size", "8", "--lr", "1e-4", "--weight-decay", "1e-4", "--beta1", "0.5"]
        authors = ["--anomaly", "journal", "--crop", "64", "--batch-norm"] if seed else []
        _ok(["train-asr", str(run), "--split", split, "--epochs", "1", "--seed", str(seed),
             *solver, *authors, "--blend-min", "0", "--threads", "1"])  # fmt: skip
        config = torch.load(run / "asr.pt", weights_only=True)["config"]
        assert (config["anomaly"], config["crop"], config["batch_norm"]) == (
            ("journal", 64, True) if seed else ("patch", 32, False)
        )
        _ok(["eval", str(run), "--split", split])
        runs.append(run)
    table = tmp_path / "gain.csv"
    assert asr_gain.main(["add", str(table), "--recipe", "journal solver", *map(str, runs)]) == 0
    gains = asr_gain.read_table(table)["journal solver"]
    for (seed, gain), run in zip(gains, runs, strict=True):
        m = json.loads((run / "eval" / "metrics.json").read_text())["metrics"]
        assert seed == int(run.name[-1])
        assert gain == pytest.approx(m["asr"]["auc"] - m["inter"]["auc"], abs=1e-6)
    assert asr_gain.main(["plot", str(table), "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a run without an ASR score is named, and nothing is appended
    assert asr_gain.main(["add", str(table), "--recipe", "x", str(sweep / "run-ar0-s0")]) == 1
    assert len(table.read_text().splitlines()) == 3


def test_asr_ceiling_scores_the_maps_eval_scores(sweep: Path) -> None:
    """`benchmarks.asr_ceiling` on an evaluated run: the mean-pooled test maps give eval's own
    AUCs (the same maps), the ceiling is an AUC, and a Du of one class gets no Du AUC."""
    from ddad_edge.benchmarks.asr_ceiling import ceiling

    run = sweep / "run-ar1-s0"
    out = ceiling(run, sweep / "split-ar1.json")
    m = json.loads((run / "eval" / "metrics.json").read_text())["metrics"]
    for name in ("inter", "intra"):
        assert out["test_auc"][name] == pytest.approx(m[name]["auc"], abs=1e-9)
    assert 0.0 <= out["supervised_cv_auc"] <= 1.0 and out["n_test"] == 32
    assert out["du_auc"] is None and out["du_note"] == "Du's analysis labels are all 1: no AUC"
