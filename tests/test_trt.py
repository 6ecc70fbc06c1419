"""TensorRT: what can be checked without TensorRT (engine naming, sidecar matching, engine
selection, idempotence logic, the missing-TensorRT errors) with small fakes for the pure logic
only, and the real build + run, which skips when tensorrt is not installed.

Nothing in the fake-based tests executes TensorRT: they check which engine file the runtime
would pick and which it refuses.
"""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest

from ddad_edge.export.trt_build import existing_engine_ok, profile_shapes
from ddad_edge.export.weights import link_or_copy
from ddad_edge.runtime import scorer as scorer_mod
from ddad_edge.runtime.backends import TRT_MISSING, BackendUnavailable
from ddad_edge.runtime.bundle import (
    Bundle,
    BundleError,
    EngineMismatch,
    check_engine,
    engine_files,
    engine_mismatches,
    engine_stem,
    open_bundle,
    sha256_file,
    slugify,
)

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
TRT_VERSION = "10.9.0.34"


def test_slug_and_engine_names(tmp_path: Path) -> None:
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slugify("NVIDIA GeForce RTX 4090 (Laptop)") == "nvidia-geforce-rtx-4090-laptop"
    assert slugify("Orin/Jetson  AGX") == "orin-jetson-agx"
    assert slugify("  ") == "gpu"
    assert engine_stem(GPU["name"], "11.1.0", "fp16") == "nvidia-h100-80gb-hbm3-trt11.1.0-fp16"
    plan, side = engine_files(tmp_path, GPU["name"], "11.1.0", "fp16")
    assert plan == tmp_path / "engines" / "nvidia-h100-80gb-hbm3-trt11.1.0-fp16.plan"
    assert side == plan.with_suffix(".json")


def test_sidecar_mismatches_name_each_difference() -> None:
    side = {
        "tensorrt_version": TRT_VERSION,
        "gpu_name": GPU["name"],
        "compute_capability": "9.0",
        "onnx_sha256": "aa",
        "precision": "fp16",
    }
    ok = dict(trt_version=TRT_VERSION, gpu=GPU, onnx_sha256="aa", precision="fp16")
    assert engine_mismatches(side, **ok) == []
    assert (
        "TensorRT 10.9.0.34, installed is 11.0"
        in engine_mismatches(side, **{**ok, "trt_version": "11.0"})[0]
    )
    probs = engine_mismatches(
        side, **{**ok, "gpu": {"name": "NVIDIA L4", "compute_capability": "8.9"}}
    )
    assert len(probs) == 2 and "NVIDIA L4" in probs[0] and "8.9" in probs[1]
    assert "different ONNX graph" in engine_mismatches(side, **{**ok, "onnx_sha256": "bb"})[0]
    assert "asked for fp32" in engine_mismatches(side, **{**ok, "precision": "fp32"})[0]


@pytest.fixture
def fake_bundle(tmp_path: Path, bundle: Path) -> Bundle:
    """A bundle folder whose files are hard links to the shared exported bundle's files (a
    symlink would lead out of the bundle, which bundles refuse)."""
    root = tmp_path / "bundle"
    root.mkdir()
    for p in bundle.iterdir():
        link_or_copy(p, root / p.name)
    return open_bundle(root, verify=False)


def _write_engine(b: Bundle, precision: str, **override: str) -> Path:
    plan, side = engine_files(b.root, GPU["name"], TRT_VERSION, precision)
    plan.parent.mkdir(exist_ok=True)
    plan.write_bytes(b"not a real engine: " + precision.encode())
    info = {
        "tensorrt_version": TRT_VERSION,
        "gpu_name": GPU["name"],
        "compute_capability": "9.0",
        "precision": precision,
        "onnx_sha256": b.file_sha256(f"dual_{precision}.onnx"),
        "plan_sha256": sha256_file(plan),
        "profile": profile_shapes(64, None),
    }
    info.update(override)
    side.write_text(json.dumps(info))
    return plan


def test_check_engine_finds_refuses_and_says_how_to_rebuild(
    tmp_path: Path, fake_bundle: Bundle
) -> None:
    b = fake_bundle
    with pytest.raises(
        BundleError, match=r"no TensorRT engine .*`ddad-edge build .* --precision fp16"
    ):
        check_engine(b, "fp16", TRT_VERSION, GPU)
    plan = _write_engine(b, "fp16")
    assert check_engine(b, "fp16", TRT_VERSION, GPU)[0] == plan
    # the same file name can only mismatch through its sidecar: another GPU with the same slug,
    # a re-exported graph, a corrupted plan
    _write_engine(b, "fp16", compute_capability="8.0")
    with pytest.raises(EngineMismatch, match=r"compute capability 8\.0.*--force"):
        check_engine(b, "fp16", TRT_VERSION, GPU)
    _write_engine(b, "fp16", onnx_sha256="0" * 64)
    with pytest.raises(EngineMismatch, match="different ONNX graph"):
        check_engine(b, "fp16", TRT_VERSION, GPU)
    _write_engine(b, "fp16", plan_sha256="0" * 64)
    with pytest.raises(EngineMismatch, match="does not match the sha256 in its sidecar"):
        check_engine(b, "fp16", TRT_VERSION, GPU)
    # another TensorRT version looks for another file name
    with pytest.raises(BundleError, match="trt11.0.0-fp16.plan: no TensorRT engine"):
        check_engine(b, "fp16", "11.0.0", GPU)


def test_build_idempotence_logic(tmp_path: Path, fake_bundle: Bundle) -> None:
    b = fake_bundle
    plan = _write_engine(b, "fp16")
    side = plan.with_suffix(".json")
    prof = profile_shapes(64, None)
    kw = dict(
        trt_version=TRT_VERSION,
        gpu=GPU,
        onnx_sha256=b.file_sha256("dual_fp16.onnx"),
        precision="fp16",
    )
    assert existing_engine_ok(side, plan, profile=prof, **kw)
    assert not existing_engine_ok(side, plan, profile=profile_shapes(32, None), **kw)
    assert not existing_engine_ok(side, plan, profile=prof, **{**kw, "trt_version": "11.0"})
    plan.write_bytes(b"changed")
    assert not existing_engine_ok(side, plan, profile=prof, **kw)
    assert profile_shapes(64, 8) == {
        "min": [1, 1, 64, 64],
        "opt": [8, 1, 64, 64],
        "max": [64, 1, 64, 64],
    }
    with pytest.raises(ValueError, match="opt_batch"):
        profile_shapes(16, 32)


class _StubTrtBackend:
    """Stands in for TrtBackend in the selection test: records the plan, runs nothing."""

    name, thread_safe, device, active_providers = "trt", False, "stub", ["stub"]

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_engine_selection_in_auto_and_trt_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_bundle: Bundle
) -> None:
    b = fake_bundle
    monkeypatch.setattr(
        scorer_mod, "import_tensorrt", lambda: types.SimpleNamespace(__version__=TRT_VERSION)
    )
    monkeypatch.setattr(scorer_mod, "gpu_info", lambda: GPU)
    monkeypatch.setattr(scorer_mod, "TrtBackend", _StubTrtBackend)
    # no engine: auto falls through to onnxruntime and says why
    backends, prec, notes = scorer_mod.make_backends(b, "auto")
    assert backends["dual"].name in ("ort-cuda", "ort-cpu")
    assert any("no TensorRT engine" in n for n in notes)
    # fp32 and fp16 engines: auto takes fp16, an explicit precision its own engine
    p32, p16 = _write_engine(b, "fp32"), _write_engine(b, "fp16")
    backends, prec, _ = scorer_mod.make_backends(b, "auto")
    assert backends["dual"].path == p16 and prec == "fp16"
    backends, prec, _ = scorer_mod.make_backends(b, "trt", "fp32")
    assert backends["dual"].path == p32 and prec == "fp32"
    s = scorer_mod.Scorer(b, backends, prec)
    assert s._lock is not None  # the TensorRT backend is serialised
    # a stale engine is refused in trt mode with the rebuild command
    _write_engine(b, "fp16", tensorrt_version="10.0.1")
    with pytest.raises(BackendUnavailable, match=r"TensorRT 10\.0\.1.*ddad-edge build .* --force"):
        scorer_mod.make_backends(b, "trt", "fp16")
    with pytest.raises(BackendUnavailable, match="dual graph only"):
        scorer_mod.make_backends(b, "trt", "fp16", graph="modules")


@pytest.mark.skipif(
    HAVE_TRT, reason="tensorrt is installed: the missing-TensorRT errors cannot occur"
)
def test_missing_tensorrt_errors(tmp_path: Path, bundle: Path) -> None:
    from ddad_edge.export.trt_build import build_engine

    with pytest.raises(BackendUnavailable) as e:
        build_engine(bundle)
    assert str(e.value) == TRT_MISSING
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        scorer_mod.Scorer.from_bundle(bundle, backend="trt")


@pytest.mark.skipif(not HAVE_TRT, reason="TensorRT is not installed (needs an NVIDIA GPU machine)")
def test_real_tensorrt_build_and_run(bundle: Path) -> None:  # pragma: no cover - needs a GPU
    from ddad_edge.export.trt_build import build_engine

    first = build_engine(bundle, precision="fp16", max_batch=16)
    again = build_engine(bundle, precision="fp16", max_batch=16)
    assert not again.built and again.plan == first.plan
    assert first.sidecar.is_file() and (first.plan.parent / "timing.cache").is_file()
    with scorer_mod.Scorer.from_bundle(bundle, backend="trt", precision="fp16") as s:
        rep = s.replay_golden()
        assert s.backend_name == "trt"
    assert rep["passed"], rep


class _FakeCuda:
    """Device memory and streams as counters (what TrtBackend asks of CudaApi)."""

    def __init__(self) -> None:
        self.live: set[int] = set()
        self._next = 0

    def malloc(self, nbytes: int) -> int:
        self._next += 1
        self.live.add(self._next)
        return self._next

    def free(self, ptr: int) -> None:
        self.live.remove(ptr)

    def stream(self) -> int:
        return self.malloc(0)

    def stream_destroy(self, stream: int) -> None:
        self.free(stream)

    def device_info(self) -> dict[str, str]:
        return dict(GPU)


class _FakeLogger:
    WARNING = 2

    def __init__(self, level: int) -> None:
        self.level = level


def _fake_tensorrt() -> types.SimpleNamespace:
    """The slice of the TensorRT 10/11 API TrtBackend.load uses: an engine with input x and
    outputs mean_a, std_a, mean_b, std_b (profile batch 1..8)."""
    io = {"x": "in", "mean_a": "out", "std_a": "out", "mean_b": "out", "std_b": "out"}
    names = list(io)
    engine = types.SimpleNamespace(
        num_io_tensors=len(names),
        get_tensor_name=names.__getitem__,
        get_tensor_dtype=lambda n: "float32",
        get_tensor_mode=lambda n: io[n],
        get_tensor_profile_shape=lambda n, p: [(1, 1, 64, 64), (8, 1, 64, 64), (8, 1, 64, 64)],
        create_execution_context=lambda: object(),
    )
    return types.SimpleNamespace(
        __version__=TRT_VERSION,
        Logger=_FakeLogger,
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda b: engine),
        nptype=lambda dt: np.float32,
        TensorIOMode=types.SimpleNamespace(INPUT="in"),
    )


def test_trt_backend_loads_again_after_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddad_edge.runtime import backends

    cuda = _FakeCuda()
    monkeypatch.setattr(backends, "import_tensorrt", _fake_tensorrt)
    monkeypatch.setattr(backends, "CudaApi", lambda: cuda)
    plan = tmp_path / "e.plan"
    plan.write_bytes(b"plan")
    b = backends.TrtBackend(plan)
    for _ in range(2):  # the second load used to see input_names ["x", "x"] and refuse
        b.load()
        assert b.input_names == ["x"] and b.max_batch == 8
        assert b.output_names == ["mean_a", "std_a", "mean_b", "std_b"]
        assert len(cuda.live) == 6  # five I/O buffers and a stream
        b.close()
        assert not cuda.live
