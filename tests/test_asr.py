"""ASR refinement (ddad_edge.asr, export/asr_graph.py): the focal loss, the synthetic
anomalies, the fused export and its parity gate, the runtime's asr score, and bundles
without ASR left as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ddad_edge.asr import (  # noqa: E402
    AsrConfig,
    AsrNet,
    asr_probability,
    crop_origins,
    focal_loss,
    load_asr,
    synthesize,
)
from ddad_edge.runtime.scores import ASR_SCORE, SCORE_NAMES  # noqa: E402


def test_focal_loss_is_the_direct_formula() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 1, 5, 4, generator=g) > 0.7).double()
    for gamma in (0.0, 2.0, 3.5):
        p1 = torch.exp(logits[:, 1]) / (torch.exp(logits[:, 0]) + torch.exp(logits[:, 1]))
        pt = torch.where(mask[:, 0] > 0, p1, 1 - p1)
        want = (-((1 - pt) ** gamma) * torch.log(pt)).mean()
        assert float(focal_loss(logits, mask, gamma)) == pytest.approx(float(want), rel=1e-12)
    ce = torch.nn.functional.cross_entropy(logits, mask[:, 0].long())
    assert float(focal_loss(logits, mask, 0.0)) == pytest.approx(float(ce), rel=1e-12)


def _find(patch: np.ndarray, image: np.ndarray) -> bool:
    """Whether ``patch`` [s, s] occurs in ``image`` [H, W] exactly."""
    s = patch.shape[0]
    win = np.lib.stride_tricks.sliding_window_view(image, (s, s))
    return bool(np.any(np.all(win == patch, axis=(2, 3))))


def test_synthetic_anomaly_is_a_square_of_another_d_image() -> None:
    rng = np.random.default_rng(1)
    d = rng.uniform(-1, 1, (6, 1, 64, 64)).astype(np.float32)
    cfg = AsrConfig(corrupt_fraction=1.0, blend_min=1.0, blend_max=1.0)
    x, mask, donors = synthesize(d, np.random.default_rng(2), cfg)
    assert (donors >= 0).all() and (donors != np.arange(6)).all() and (donors < 6).all()
    for i in range(6):
        rows, cols = np.flatnonzero(mask[i, 0].any(1)), np.flatnonzero(mask[i, 0].any(0))
        s = len(rows)
        assert cfg.patch_min <= s <= cfg.patch_max and len(cols) == s
        box = np.zeros((64, 64), bool)
        box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
        np.testing.assert_array_equal(mask[i, 0] > 0, box)  # the mask is exactly a square
        np.testing.assert_array_equal(x[i, 0][~box], d[i, 0][~box])  # nothing else changed
        assert not np.array_equal(x[i, 0][box], d[i, 0][box])
        pasted = x[i, 0][box].reshape(s, s)
        assert _find(pasted, d[donors[i], 0])  # cut from the donor, an image of D
    half = AsrConfig(corrupt_fraction=0.5)
    x, mask, donors = synthesize(d, np.random.default_rng(3), half)
    for i in np.flatnonzero(donors < 0):  # untouched images: no mask, no change
        assert not mask[i].any() and np.array_equal(x[i], d[i])


def test_journal_patch_comes_from_the_same_place_of_another_image() -> None:
    """--anomaly journal (the authors' code): the labelled box is the donor's box at the same
    place, centred in the middle 80% (rows and columns 6..56 of 64), half-width 3..12
    clipped at the border; nothing else changes."""
    rng = np.random.default_rng(11)
    d = rng.uniform(-1, 1, (40, 1, 64, 64)).astype(np.float32)
    cfg = AsrConfig(corrupt_fraction=1.0, blend_min=1.0, blend_max=1.0, anomaly="journal")
    x, mask, donors = synthesize(d, np.random.default_rng(12), cfg)
    sides = set()
    for i in range(40):
        box = mask[i, 0] > 0
        rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
        assert box.sum() == len(rows) * len(cols)  # one rectangle
        for lo, hi in ((rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)):
            if 0 < lo and hi < 64:  # not clipped: an even side 2r, centre lo + r
                assert (hi - lo) % 2 == 0 and 6 <= hi - lo <= 24 and 6 <= (lo + hi) // 2 <= 56
            sides.add(hi - lo)
        j = donors[i]
        assert j != i and j >= 0
        np.testing.assert_array_equal(x[i, 0][box], d[j, 0][box])  # the same place of j
        np.testing.assert_array_equal(x[i, 0][~box], d[i, 0][~box])
    assert min(sides) >= 6 and max(sides) <= 24 and len(sides) > 3


def test_batch_norm_is_folded_into_the_exported_convolutions() -> None:
    """The authors' network (--batch-norm): the export's folded convolutions give the eval-mode
    network's logits (ReLU after the first two)."""
    from export.asr_graph import asr_weights

    torch.manual_seed(0)
    net = AsrNet(channels=8, batch_norm=True)
    for bn in (net.norm1, net.norm2):  # statistics and affine far from the identity
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    net.eval()
    m = torch.randn(2, 2, 16, 16)
    h = m
    for i, (w, b) in enumerate(asr_weights(net, [1.0, 1.0]).convs):
        h = torch.nn.functional.conv2d(h, torch.from_numpy(w), torch.from_numpy(b), padding=1)
        h = torch.relu(h) if i < 2 else h
    with torch.no_grad():
        np.testing.assert_allclose(h.numpy(), net(m).numpy(), rtol=1e-4, atol=1e-5)
    plain = AsrNet(channels=8)
    assert all(not list(n.parameters()) for n in (plain.norm1, plain.norm2))


def test_opacity_brightens_a_soft_blob_and_labels_its_core() -> None:
    """--anomaly opacity: only pixels inside one s x s box change, each towards white (never
    darker, never past 1); the labelled pixels are the blob's core, inside that box, and they
    changed most."""
    rng = np.random.default_rng(7)
    d = rng.uniform(-1, 0.5, (8, 1, 64, 64)).astype(np.float32)
    cfg = AsrConfig(corrupt_fraction=1.0, anomaly="opacity")
    x, mask, donors = synthesize(d, np.random.default_rng(8), cfg)
    assert (donors == -1).all()
    for i in range(8):
        changed = x[i, 0] != d[i, 0]
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        assert rows[-1] - rows[0] < cfg.patch_max and cols[-1] - cols[0] < cfg.patch_max
        assert (x[i] >= d[i]).all() and (x[i] <= 1).all()
        core = mask[i, 0] > 0
        assert core.any() and not (core & ~changed).any()
        rise = (x[i, 0] - d[i, 0]) / (1 - d[i, 0])  # a * weight
        assert rise[core].min() >= rise[changed & ~core].max() - 1e-6
    again, _, _ = synthesize(d, np.random.default_rng(8), cfg)
    np.testing.assert_array_equal(x, again)  # seeded
    with pytest.raises(ValueError, match="anomaly"):
        AsrConfig(anomaly="square").check(64)


def test_solver_settings_reach_adam_and_are_checked(tmp_path: Path, shared_run) -> None:
    """The journal's solver (--batch-size 8 --lr 1e-4 --weight-decay 1e-4 --beta1 0.5, blend
    factors from 0): Adam runs with exactly those settings and the checkpoint records them."""
    import shutil

    from ddad_edge.asr import train_asr

    run = tmp_path / "run"
    shutil.copytree(shared_run("aeu"), run)
    d = np.random.default_rng(9).uniform(-1, 1, (16, 1, 64, 64)).astype(np.float32)
    cfg = AsrConfig(epochs=1, batch_size=8, lr=1e-4, weight_decay=1e-4, beta1=0.5, blend_min=0.0)
    state = train_asr(run, d, cfg)
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"], group["betas"]) == (1e-4, 1e-4, (0.5, 0.999))
    assert state["optimizer"]["state"][0]["step"] == 2  # 16 images, 8 per step
    assert state["config"]["blend_min"] == 0.0 and state["config"]["beta1"] == 0.5
    with pytest.raises(ValueError, match="beta1"):
        AsrConfig(beta1=1.0).check(64)
    with pytest.raises(ValueError, match="blend_min"):
        AsrConfig(blend_min=-0.1).check(64)


def test_crops_hold_the_whole_patch() -> None:
    d = np.random.default_rng(4).uniform(-1, 1, (20, 1, 64, 64)).astype(np.float32)
    _, mask, _ = synthesize(d, np.random.default_rng(5), AsrConfig())
    origins = crop_origins(mask, 32, np.random.default_rng(6))
    for i, (y, x0) in enumerate(origins):
        assert 0 <= y <= 32 and 0 <= x0 <= 32
        assert mask[i, :, y : y + 32, x0 : x0 + 32].sum() == mask[i].sum()


def test_checkpoint_is_plain_data_and_resumes(asr_run: Path, tmp_path: Path) -> None:
    from ddad_edge.asr import ASR_FILE, load_asr_checkpoint, train_asr
    from ddad_edge.checkpoint import CheckpointError

    ck = torch.load(asr_run / ASR_FILE, weights_only=True)
    assert ck["epoch"] == ck["epochs"] == 1 and len(ck["input_scale"]) == 2
    with pytest.raises(CheckpointError, match="--resume"):
        train_asr(asr_run, np.zeros((2, 1, 64, 64), np.float32), AsrConfig(epochs=1))
    d = np.zeros((2, 1, 64, 64), np.float32)
    with pytest.raises(CheckpointError, match="other anomaly"):
        train_asr(asr_run, d, AsrConfig(epochs=2, batch_size=16, anomaly="opacity"), resume=True)
    with pytest.raises(CheckpointError, match="other lr, weight_decay"):
        journal = AsrConfig(epochs=2, batch_size=16, lr=1e-4, weight_decay=1e-4)
        train_asr(asr_run, d, journal, resume=True)
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / ASR_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="asr.pt"):
        load_asr_checkpoint(bad)


def test_train_asr_records_how_closely_asr_follows_inter(
    asr_run: Path, asr_bundle: Path, training_images
) -> None:
    """The checkpoint's inter_agreement is the Spearman correlation, over the normals it was
    trained on, of the mean asr probability with the mean inter map, recomputed here from the
    frozen modules and the network; the bundle's manifest carries it."""
    from ddad_edge.checkpoint import load_module
    from ddad_edge.reference import dual_stats
    from ddad_edge.runtime.metrics import spearman
    from ddad_edge.runtime.scores import maps_from_stats

    ck = torch.load(asr_run / "asr.pt", weights_only=True)
    x = training_images[0][:32]  # what the fixture trained it on
    maps = maps_from_stats(x, dual_stats(load_module(asr_run, "A"), load_module(asr_run, "B"), x))
    p = asr_probability(*load_asr(asr_run), maps)
    want = spearman(p.mean(axis=(1, 2, 3)), maps["inter"].mean(axis=(1, 2, 3)))
    assert -1.0 <= ck["inter_agreement"] <= 1.0
    assert ck["inter_agreement"] == pytest.approx(want, abs=1e-9)
    m = json.loads((asr_bundle / "manifest.json").read_text())
    assert m["asr"]["inter_agreement"] == pytest.approx(want, abs=1e-9)


def test_export_repeats_the_agreement_warning(asr_run: Path, tmp_path: Path) -> None:
    """`export` of a run whose ASR network failed train-asr's check (its asr.pt says so) warns
    and still writes the bundle; one that passed it exports without the warning."""
    import shutil

    from typer.testing import CliRunner

    from ddad_edge.asr import AGREEMENT_MIN
    from ddad_edge.cli import app

    run = tmp_path / "run"
    shutil.copytree(asr_run, run)
    ck = torch.load(run / "asr.pt", weights_only=True)
    args = ["--n-parity", "4", "--n-golden", "2", "--no-module-graphs", "--no-int8"]
    for rho in (-0.6, 0.9):
        ck["inter_agreement"] = rho
        torch.save(ck, run / "asr.pt")
        out = tmp_path / f"bundle{rho}"
        res = CliRunner().invoke(app, ["export", "--ckpt", str(run), "-o", str(out), *args])
        assert res.exit_code == 0, res.output
        m = json.loads((out / "manifest.json").read_text())
        assert m["asr"]["inter_agreement"] == pytest.approx(rho)
        warned = "does not follow inter" in res.output
        assert warned == (rho < AGREEMENT_MIN), res.output
        assert not warned or f"ranking of D (Spearman {rho:.3f} < {AGREEMENT_MIN})" in res.output


@pytest.mark.parametrize("rho, warned", [(0.9, False), (0.5, False), (0.2, True), (-0.8, True)])
def test_train_asr_warns_when_asr_does_not_follow_inter(rho: float, warned: bool, capsys) -> None:
    from ddad_edge.cli_asr import _report_agreement

    _report_agreement(rho, "D")
    out = capsys.readouterr()
    assert f"Spearman {rho:.3f}" in out.out
    assert ("does not follow inter" in out.err) == warned
    _report_agreement(float("nan"), "D")  # a constant score is not agreement either
    assert "does not follow inter" in capsys.readouterr().err


def _torch_reference(run: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    from ddad_edge.checkpoint import load_module
    from ddad_edge.reference import dual_stats
    from ddad_edge.runtime.scores import maps_from_stats

    stats = dual_stats(load_module(run, "A"), load_module(run, "B"), x)
    stats[ASR_SCORE] = asr_probability(*load_asr(run), maps_from_stats(x, stats))
    return stats


def test_export_fuses_asr_and_gates_it(asr_bundle: Path) -> None:
    m = json.loads((asr_bundle / "manifest.json").read_text())
    for key in ("dual_fp32", "dual_fp16", "dual_int8"):
        assert ASR_SCORE in m["graphs"][key]["outputs"], key
    assert m["scores"]["names"] == [*SCORE_NAMES, ASR_SCORE]
    assert m["asr"]["inputs"] == ["inter", "intra"] and m["asr"]["channels"] == 128
    assert m["asr"]["batch_norm"]  # the fixture's network has it; folded, and gated below
    res = {r["graph"]: r for r in m["parity"]["results"]}
    fp32 = res["dual_fp32"]
    assert fp32["passed"] and fp32["errors"][ASR_SCORE]["rel"] <= 1e-5
    assert fp32["score_errors"][ASR_SCORE] <= 1e-5
    for key in ("dual_fp16", "dual_fp16 (fp16 storage emulation)", "dual_int8"):
        assert res[key]["passed"] and ASR_SCORE in res[key]["errors"], key
    assert "score_asr" in m["golden"]["arrays"] and ASR_SCORE in m["golden"]["arrays"]


def test_runtime_asr_score_matches_pytorch(asr_run: Path, asr_bundle: Path, good_images) -> None:
    from ddad_edge.runtime import Scorer

    with Scorer.from_bundle(asr_bundle, backend="ort-cpu", precision="fp32") as scorer:
        assert scorer.score_names == (*SCORE_NAMES, ASR_SCORE)
        assert scorer.replay_golden()["passed"]
        results = scorer.score([str(p) for p in good_images], maps=True)
        x = scorer.load([str(p) for p in good_images]).x
    ref = _torch_reference(asr_run, x)
    for r, want in zip(results, ref[ASR_SCORE], strict=True):
        assert r.status == "scored" and list(r.scores) == [*SCORE_NAMES, ASR_SCORE]
        assert 0.0 <= r.scores[ASR_SCORE] <= 1.0
        assert r.scores[ASR_SCORE] == pytest.approx(float(want.mean()), rel=1e-5)
        np.testing.assert_allclose(r.maps[ASR_SCORE], want[0], atol=1e-5)


def test_calibrate_on_asr_and_bundles_without_it(
    asr_bundle: Path, bundle: Path, good_images, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ddad_edge.cli import app
    from ddad_edge.runtime import Scorer

    with Scorer.from_bundle(bundle, backend="ort-cpu") as plain:
        assert plain.score_names == SCORE_NAMES and not plain.bundle.has_asr
        assert list(plain.score(str(good_images[0]))[0].scores) == list(SCORE_NAMES)
    # ``calibrate --score asr``: the threshold lies on the asr score, and score flags with it
    normals = tmp_path / "normals"
    normals.mkdir()
    for i in range(20):  # calibrate needs 20 normals: copies of the three images will do
        p = good_images[i % len(good_images)]
        (normals / f"{i}{p.suffix}").write_bytes(p.read_bytes())
    out = tmp_path / "cal.json"
    runner = CliRunner()
    args = ["calibrate", str(asr_bundle), "--normals", str(normals), "--n-boot", "50"]
    res = runner.invoke(app, [*args, "--score", "asr", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["score"] == ASR_SCORE
    with Scorer.from_bundle(asr_bundle, backend="ort-cpu", calibration=out) as s:
        r = s.score(str(good_images[0]))[0]
        assert r.flag in ("normal", "abnormal") and r.operating_point["score"] == ASR_SCORE
    res = runner.invoke(
        app, ["calibrate", str(bundle), "--normals", str(normals), "--score", "asr"]
    )
    assert res.exit_code != 0 and "has no asr score" in res.output


def test_asr_is_not_calibrated_on_the_normals_it_was_trained_on(asr_bundle: Path) -> None:
    """The bundle names what its ASR network was trained on; calibrating asr on that same part
    of that same split is refused (other scores, parts or splits are not)."""
    from ddad_edge.runtime.bundle import open_bundle
    from ddad_edge.runtime.calibration import CalibrationError, calibrate_scored

    manifest = open_bundle(asr_bundle).manifest
    assert manifest["asr"]["trained_on"] == {"part": "normal_train", "split_sha256": None}
    manifest = {**manifest, "asr": {**manifest["asr"]}}
    manifest["asr"]["trained_on"] = {"part": "calibration", "split_sha256": "ab12"}
    normals = ({ASR_SCORE: np.linspace(0.1, 0.2, 40), "inter": np.linspace(1, 2, 40)}, [])
    none = ({}, [])
    kw = {"source": "test", "n_boot": 20, "split_sha256": "ab12"}
    with pytest.raises(CalibrationError, match="trained on these normals"):
        calibrate_scored(
            manifest, normals, none, none, score=ASR_SCORE, split_part="calibration", **kw
        )
    for score, part in ((ASR_SCORE, "test"), ("inter", "calibration")):
        calibrate_scored(manifest, normals, none, none, score=score, split_part=part, **kw)


def test_node_pipeline_and_triton_records_carry_asr(asr_bundle: Path, tmp_path: Path) -> None:
    """The node's pipeline and Triton's ddad_score model score with the runtime Scorer: both
    report asr (the SR as a measurement, SCORES as a 4th value that the client checks)."""
    pytest.importorskip("highdicom")
    from conftest import require_dicom_cxr

    from ddad_edge.node.journal import ObjectRow
    from ddad_edge.node.pipeline import Pipeline
    from ddad_edge.node.scoring import InProcess
    from ddad_edge.runtime import Scorer
    from ddad_edge.runtime.triton_protocol import encode_record, scores_tensor

    src = sorted((require_dicom_cxr() / "original").glob("*.dcm"))[0]
    with Scorer.from_bundle(asr_bundle, backend="ort-cpu") as scorer:
        row = ObjectRow("1.2.3", "1.2.840.10008.5.1.4.1.1.1", "MOD", str(src), "received", None, 0)
        out = Pipeline(InProcess(scorer))(row)
        direct = scorer.score(str(src))[0]
    assert out.state == "scored" and set(out.record["scores"]) == {*SCORE_NAMES, ASR_SCORE}
    assert out.record["scores"][ASR_SCORE] == pytest.approx(direct.scores[ASR_SCORE], rel=1e-6)
    sr = next(r for r in out.results if r.kind == "sr")
    assert b"DDAD-ASR refined anomaly score" in sr.data
    # Triton: SCORES holds the bundle's four scores in its order; the client's check accepts it
    from ddad_edge.runtime.triton_client import _result

    class Response:
        def __init__(self, r):
            self.t = {
                "SCORES": scores_tensor(r.scores, scorer.score_names),
                "ERROR": np.zeros((1, 0), np.uint8),
                "RECORD": encode_record(r.to_json(), r.source),
            }

        def as_numpy(self, name):
            return self.t[name]

    got = _result(direct.source, Response(direct), "test")
    assert got.error is None and got.scores == direct.scores
    assert list(got.scores)[-1] == ASR_SCORE


def test_trace_measures_how_maps_respond_to_synthetic_anomalies(shared_run, training_images):
    """benchmarks/asr_trace.py: pixel AUC and inside/outside ratio per map; a brightening the
    modules never saw stands out in the reconstruction error."""
    from ddad_edge.benchmarks.asr_trace import MAPS, trace
    from ddad_edge.checkpoint import load_module

    run = shared_run("aeu")
    models = (load_module(run, "A"), load_module(run, "B"))
    d = training_images[0][:16]
    out = trace(models, d, AsrConfig(anomaly="opacity"))
    assert set(out) == set(MAPS)
    for n in MAPS:
        assert 0 <= out[n]["pixel_auc"] <= 1 and np.isfinite(out[n]["inside_over_outside"])
    assert out["rec"]["pixel_auc"] > 0.6 and out["rec"]["inside_over_outside"] > 1
    assert trace(models, d, AsrConfig(anomaly="opacity")) == out  # seeded
