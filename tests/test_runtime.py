"""The torch-free runtime: bundle hashes, golden replay, tampering, backends (provider checks),
the Scorer's stages, per-item errors, threads, heat-map naming, and a subprocess in which torch
cannot be imported at all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from ddad_edge.runtime.backends import BackendUnavailable, OrtBackend, physical_cores
from ddad_edge.runtime.bundle import BundleError, open_bundle, relative_errors, sha256_file
from ddad_edge.runtime.heatmaps import overlay_paths, write_overlays
from ddad_edge.runtime.manifest import sealed
from ddad_edge.runtime.preprocess import to_display
from ddad_edge.runtime.scorer import Scorer
from ddad_edge.runtime.scores import SCORE_NAMES


@pytest.fixture(scope="module")
def scorer(bundle: Path) -> Scorer:
    s = Scorer.from_bundle(bundle, backend="ort-cpu", precision="fp32")
    yield s
    s.close()


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------------------
# Bundle integrity and golden replay
# ----------------------------------------------------------------------------------------------
def test_golden_replay_passes_fp32_fp16_and_module_graphs(bundle: Path) -> None:
    cases = (("fp32", "dual"), ("fp16", "dual"), ("int8", "dual"), ("fp32", "modules"))
    for precision, graph in cases:
        with Scorer.from_bundle(bundle, backend="ort", precision=precision, graph=graph) as s:
            rep = s.replay_golden()
        assert rep["passed"], rep
        assert rep["n"] == 8
        worst = max(e["rel"] for e in rep["errors"].values())
        if precision == "fp32":
            assert worst <= 1e-5
            assert max(rep["score_errors"].values()) <= 1e-6
        elif precision == "fp16":
            assert 0 < worst <= 5e-3
        else:  # 8-bit bottleneck weights: gated at export like FP16
            assert 0 < worst <= 2e-2
            assert s.precision == "int8"


def test_tampered_weight_with_rehash_fails_numerically(bundle: Path, tmp_path: Path) -> None:
    b = copy_bundle(bundle, tmp_path / "b")
    path = b / "dual_fp32.onnx"
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = next(t for t in model.graph.initializer if t.name == "fc4.bias.member0")
    arr = numpy_helper.to_array(init).copy()
    arr[:64] += 0.05  # member 0 of module A: one 4x4 patch of the decoder input
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"]["dual_fp32.onnx"] = {
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
    }
    (b / "manifest.json").write_text(json.dumps(sealed(manifest)))
    open_bundle(b)  # hashes now agree ...
    with Scorer.from_bundle(b, backend="ort-cpu", precision="fp32") as s:
        rep = s.replay_golden()
    assert not rep["passed"]  # ... but the numbers do not
    assert rep["errors"]["mean_a"]["rel"] > 1e-3
    assert rep["errors"]["mean_b"]["rel"] <= 1e-5  # module B untouched


def test_tampered_file_without_rehash_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = copy_bundle(bundle, tmp_path / "b")
    path = b / "dual_fp16.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"dual_fp16\.onnx: sha256 does not match"):
        open_bundle(b)
    with pytest.raises(BundleError, match="dual_fp16.onnx"):
        Scorer.from_bundle(b, backend="ort-cpu")
    # the shared weights file is hashed like the graphs (a tampered weight changed scores)
    data = bytearray((b / "weights_fp32.bin").read_bytes())
    data[len(data) // 2] ^= 0x40
    (b / "weights_fp32.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"weights_fp32\.bin: sha256 does not match"):
        open_bundle(b, verify=["module_A_fp32.onnx", "weights_fp32.bin"])
    (b / "golden.npz").write_bytes(b"short")
    with pytest.raises(BundleError, match=r"golden\.npz: size"):
        open_bundle(b, verify=["golden.npz"])
    (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        open_bundle(b)


def test_relative_errors_scale() -> None:
    ref = {"a": np.array([0.99, 1.01], np.float32), "b": np.array([-1.0, 1.0], np.float32)}
    got = {"a": np.array([0.99, 1.02], np.float32), "b": np.array([-1.0, 1.1], np.float32)}
    e = relative_errors(got, ref)
    assert e["a"]["scale"] == pytest.approx(1.01) and e["a"]["rel"] == pytest.approx(
        0.01 / 1.01, rel=1e-4
    )
    assert e["b"]["range"] == pytest.approx(2.0) and e["b"]["rel"] == pytest.approx(0.05, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
def test_ort_backend_cpu_options_and_gpu_fallback_detection(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bundle / "dual_fp32.onnx"
    cpu = OrtBackend(path)
    cpu.load()
    assert cpu.name == "ort-cpu" and cpu.active_providers == ["CPUExecutionProvider"]
    assert cpu.thread_safe and f"{physical_cores()} intra-op threads" in cpu.device
    assert physical_cores() >= 1
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback cases below need a CPU-only build")
    with pytest.raises(BackendUnavailable, match="no CUDAExecutionProvider.*onnxruntime-gpu|gpu"):
        OrtBackend(path, ("CUDAExecutionProvider", "CPUExecutionProvider")).load()
    # A provider that is listed but silently does not run is caught after session creation.
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])
    with pytest.raises(BackendUnavailable, match="requested but onnxruntime runs"):
        OrtBackend(path, ("CUDAExecutionProvider", "CPUExecutionProvider")).load()
    fb = OrtBackend(
        path, ("CUDAExecutionProvider", "CPUExecutionProvider"), allow_cpu_fallback=True
    )
    fb.load()
    assert fb.active_providers == ["CPUExecutionProvider"] and fb.name == "ort-cpu"
    assert "CUDAExecutionProvider was requested" in fb.fallback_note


def test_auto_backend_reports_why_gpu_backends_were_skipped(bundle: Path) -> None:
    from ddad_edge.runtime.hugepages import for_cpu_backend

    with Scorer.from_bundle(bundle, backend="auto") as s:
        d = s.describe()
        assert s.settle() == {}  # no warm-up unless asked for
    assert d["backend"] in ("trt", "ort-cuda", "ort-cpu")
    if d["backend"] == "ort-cpu":
        assert d["precision"] == "fp32"
        assert any(n.startswith("trt:") for n in d["notes"])
        # the opt-in warm-up (huge pages for the CPU weights), reported per graph
        with Scorer.from_bundle(bundle, backend="auto", warm_up=for_cpu_backend) as s:
            settled = s.settle()
        assert set(settled) == {"dual"} and settled["dual"].startswith("huge pages: ")
    with pytest.raises(ValueError, match="backend must be one of"):
        Scorer.from_bundle(bundle, backend="cuda")


# ----------------------------------------------------------------------------------------------
# Scorer
# ----------------------------------------------------------------------------------------------
def test_score_mixed_inputs_with_per_item_errors(
    scorer: Scorer, tmp_path: Path, good_images: list[Path], broken_dicom: Path | None
) -> None:
    files = good_images
    broken = tmp_path / "not-an-image.png"
    broken.write_bytes(b"\x89PNG garbage")
    rgb16 = (np.random.default_rng(0).random((90, 70, 3)) * 65535).astype(np.uint16)
    inputs = [
        str(files[0]),
        broken,
        files[1],
        np.tile(np.arange(100, dtype=np.uint8), (80, 1)),
        rgb16,
        np.linspace(0, 1, 64 * 64).reshape(64, 64),
        np.full((10, 10), 3.0),  # float outside [0, 1]
        tmp_path / "missing.png",
        files[2],
    ]
    if broken_dicom:
        inputs.append(broken_dicom)
    kept = scorer.recent.values("inter")
    res = scorer.score(inputs, maps=True)
    assert [r.source for r in res][:4] == [str(files[0]), str(broken), str(files[1]), "array[3]"]
    bad = {i for i, r in enumerate(res) if r.error}
    expected_bad = {1, 6, 7} | ({9} if broken_dicom else set())
    assert bad == expected_bad, [(r.source, r.error) for r in res]
    assert "[0, 1]" in res[6].error and "no such file" in res[7].error
    if broken_dicom:
        assert "could not be decoded" in res[9].error
    for i, r in enumerate(res):
        if i in bad:
            assert r.scores is None and r.maps is None
        else:
            assert set(r.scores) == set(SCORE_NAMES) and all(np.isfinite(list(r.scores.values())))
            assert r.maps["inter"].shape == (64, 64) and r.maps["inter"].dtype == np.float32
            assert r.scores["inter"] == pytest.approx(float(r.maps["inter"].mean()), rel=1e-5)
    assert json.dumps([r.to_json() for r in res])
    # the drift watch keeps every returned score, in order, and nothing for failed inputs
    scored = [r.scores["inter"] for i, r in enumerate(res) if i not in bad]
    assert (
        scorer.recent.values("inter").tolist() == [*kept.tolist(), *scored][-scorer.recent.size :]
    )


def test_stages_match_score_and_golden(scorer: Scorer) -> None:
    g = scorer.bundle.golden()
    images01 = [to_display(x[0]) for x in g["x"]]  # 64x64 in [0, 1]: preprocess is the identity
    lb = scorer.load(images01)
    np.testing.assert_allclose(lb.x, g["x"], atol=1e-6)
    stats = scorer.infer(lb.x)
    assert set(stats) == {"mean_a", "std_a", "mean_b", "std_b"}
    arr = scorer.scores(lb.x, stats, maps=True)
    res = scorer.score(images01)
    for n in SCORE_NAMES:
        np.testing.assert_allclose(arr.image[n], g[f"score_{n}"], rtol=2e-5)
        np.testing.assert_allclose([r.scores[n] for r in res], arr.image[n], rtol=1e-6)
        assert arr.maps[n].shape == (8, 1, 64, 64)
    # small max_batch: chunked inference gives the same numbers
    small = Scorer(scorer.bundle, scorer.backends, "fp32", max_batch=3)
    np.testing.assert_allclose(small.infer(lb.x)["std_b"], stats["std_b"], rtol=1e-6, atol=1e-7)
    assert small.infer(lb.x[:0])["mean_a"].shape == (0, 1, 64, 64)
    with pytest.raises(ValueError, match="expected x"):
        scorer.infer(lb.x[:, :, :32])


def test_concurrent_callers_get_the_same_results(scorer: Scorer, good_images: list[Path]) -> None:
    files = good_images
    expected = [r.scores for r in scorer.score(files)]
    out: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            out[i] = [r.scores for r in scorer.score(files[i % 3 :] + files[: i % 3])]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, got in out.items():
        rot = expected[i % 3 :] + expected[: i % 3]
        for a, b in zip(got, rot, strict=True):
            assert a == pytest.approx(b, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Heat maps
# ----------------------------------------------------------------------------------------------
def test_overlay_names_never_collide_or_overwrite_inputs(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "img.png", tmp_path / "y" / "img.png"
    trap = tmp_path / "out" / "scan.inter.png"  # an input that looks like an overlay name
    paths = overlay_paths(
        [str(a), str(b), str(tmp_path / "out" / "scan"), str(trap), "array[4]"],
        tmp_path / "out",
        "inter",
    )
    assert paths[0].name == "img.inter.png" and paths[1].name == "img-1.inter.png"
    assert paths[2] != trap and paths[2].name == "scan-2.inter.png"
    assert paths[4].name == "array-4.inter.png"
    assert len({p.resolve() for p in paths}) == 5


def test_write_overlays(scorer: Scorer, tmp_path: Path, good_images: list[Path]) -> None:
    files = good_images[:2]
    ramp = np.tile(np.arange(60, 120, dtype=np.uint8), (50, 1))  # a constant one is refused
    res = scorer.score([*files, tmp_path / "missing.png", ramp], maps=True)
    written = write_overlays(
        [r.source for r in res],
        [r.maps["inter"] if r.maps else None for r in res],
        tmp_path / "hm",
        vmax=0.05,
        arrays=[None, None, None, ramp],
    )
    assert written[2] is None
    assert [p.name for p in written if p] == [
        f"{files[0].stem}.inter.png",
        f"{files[1].stem}.inter.png",
        "array-3.inter.png",
    ]
    from PIL import Image

    im = Image.open(written[0])
    assert im.mode == "RGB" and max(im.size) <= 512
    assert Image.open(written[3]).size == (60, 50)


# ----------------------------------------------------------------------------------------------
# No torch: the whole scorer in a subprocess where importing torch raises
# ----------------------------------------------------------------------------------------------
def test_runtime_runs_with_torch_unimportable(
    bundle: Path, tmp_path: Path, good_images: list[Path], mono1_dicom: Path | None
) -> None:
    files = [str(p) for p in good_images[:2]]
    if mono1_dicom:
        files.append(str(mono1_dicom))
    code = textwrap.dedent(
        f"""
        import json, sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        import ddad_edge.runtime
        assert "onnxruntime" not in sys.modules, "onnxruntime imported eagerly"
        from ddad_edge.runtime import Scorer
        from ddad_edge.runtime.heatmaps import write_overlays
        scorer = Scorer.from_bundle({str(bundle)!r}, backend="auto")
        ramp = np.tile(np.arange(40, dtype=np.uint8), (40, 1))
        res = scorer.score({files!r} + [ramp], maps=True)
        rep = scorer.replay_golden()
        arrays = [None] * {len(files)} + [ramp]
        pngs = write_overlays([r.source for r in res], [r.maps["inter"] for r in res],
                              {str(tmp_path / "hm")!r}, arrays=arrays)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx"))
        print(json.dumps({{"scores": [r.scores for r in res], "errors": [r.error for r in res],
                          "passed": rep["passed"], "heavy": heavy, "pngs": len(pngs),
                          "backend": scorer.backend_name}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["heavy"] == [] and rec["passed"] and rec["pngs"] == len(files) + 1
    assert all(e is None for e in rec["errors"]) and all(s for s in rec["scores"])
