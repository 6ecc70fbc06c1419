"""Serving on Triton Inference Server: the model repository (configs parsed with Triton's schema
and checked against the ONNX graphs, no server needed), then a real ``tritonserver`` (the
nvidia-pytriton wheel's binary) on loopback: scores equal to the direct Scorer over HTTP and
gRPC, per-file errors in multi-file requests, dynamic batching merging requests, a bounded
load and a server killed mid-load.

Server start and model load take a few seconds each; one server serves the module, the kill
test starts its own.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ddad_edge.runtime.scorer import Scorer, ScoreResult

pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (triton extra)")

N_PER_CLASS = 6  # Kermany test images per class scored through the server (time budget)


@pytest.fixture(scope="module")
def calibration(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibration file for the bundle, from 40 scores spread over the golden images' inter
    scores (so that some images flag abnormal and some normal)."""
    from ddad_edge.runtime.bundle import open_bundle
    from ddad_edge.runtime.calibration import calibrate, calibration_record, write_calibration

    b = open_bundle(bundle, verify=False)
    golden = b.golden()["score_inter"].astype(np.float64)
    normals = np.linspace(golden.min() * 0.9, golden.max() * 1.1, 40)
    rec = calibration_record(
        b.manifest,
        calibrate(normals, n_boot=50),
        score="inter",
        normals={"source": "test: spread over the golden scores", "n": 40},
        abnormals=None,
        bootstrap={"n": 50, "level": 0.95, "seed": 0},
    )
    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    write_calibration(rec, path)
    return path


@pytest.fixture(scope="module")
def repo(bundle: Path, calibration: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository the server tests serve: calibrated at specificity 0.9."""
    from ddad_edge.export.triton_repo import write_repository

    out = tmp_path_factory.mktemp("triton") / "repo"
    return write_repository(bundle, out, calibration=calibration, operating_point=0.9).root


# ----------------------------------------------------------------------------------------------
# The repository (no server)
# ----------------------------------------------------------------------------------------------
def _onnx_io(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (Triton dtype, dims without the batch) read with the onnx package (an independent
    reader: the repository writer uses onnxruntime)."""
    onnx = pytest.importorskip("onnx", reason="reading the graph independently needs onnx (train)")

    types = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}
    g = onnx.load(str(path), load_external_data=False).graph
    out = {}
    for v in [*g.input, *g.output]:
        dims = v.type.tensor_type.shape.dim
        assert dims[0].dim_param, f"{v.name}: batch dimension must be symbolic"
        out[v.name] = (types[v.type.tensor_type.elem_type], tuple(d.dim_value for d in dims[1:]))
    return out


def test_every_config_parses_with_tritons_schema_and_matches_its_graph(repo: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    names = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    assert names == ["ddad_dual_fp16", "ddad_dual_fp32", "ddad_score"]
    for name in names:
        cfg = text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert cfg.name == name and cfg.max_batch_size == 64
        if name == "ddad_score":
            # several files per request: only a full batch is dispatched before the delay
            assert cfg.dynamic_batching.preferred_batch_size == [64]
            assert cfg.backend == "python" and (repo / name / "1" / "model.py").is_file()
            assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [
                ("FILE", mc.TYPE_UINT8, [-1]),
                ("SIZE", mc.TYPE_INT64, [1]),
                ("NAME", mc.TYPE_UINT8, [-1]),
            ]
            assert [t.allow_ragged_batch for t in cfg.input] == [True, False, True]
            assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [
                ("SCORES", mc.TYPE_FP32, [3]),
                ("ERROR", mc.TYPE_UINT8, [-1]),
                ("RECORD", mc.TYPE_UINT8, [-1]),
                ("FLAG", mc.TYPE_BOOL, [1]),  # the repository is calibrated
            ]
            assert cfg.parameters["calibration"].string_value == "calibration.json"
            assert (repo / name / "1" / "calibration.json").is_file()
            assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
            assert cfg.instance_group[0].count == 2  # the default: one decodes, one infers
            continue
        assert cfg.dynamic_batching.preferred_batch_size == [8, 16, 32, 64]
        assert cfg.platform == "onnxruntime_onnx"
        kind = cfg.instance_group[0].kind
        want_kind = "KIND_GPU" if name.endswith("fp16") else "KIND_CPU"
        assert mc.ModelInstanceGroup.Kind.Name(kind) == want_kind
        have = {
            t.name: (mc.DataType.Name(t.data_type), tuple(t.dims))
            for t in [*cfg.input, *cfg.output]
        }
        assert have == _onnx_io(repo / name / "1" / "model.onnx")


def test_validation_catches_a_config_that_differs_from_its_graph(repo: Path, tmp_path) -> None:
    from ddad_edge.export.triton_config import ConfigError
    from ddad_edge.export.triton_repo import validate_repository

    assert {m.name for m in validate_repository(repo)} >= {"ddad_dual_fp32", "ddad_score"}
    bad = tmp_path / "repo"
    shutil.copytree(repo / "ddad_dual_fp32", bad / "ddad_dual_fp32")
    cfg = bad / "ddad_dual_fp32" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: [ 1, 64, 64 ]", "dims: [ 1, 32, 64 ]", 1))
    with pytest.raises(ConfigError, match="differ from the graph"):
        validate_repository(bad)
    cfg.write_text(cfg.read_text().replace("TYPE_FP32", "TYPE_FLOAT32", 1))
    with pytest.raises(ConfigError, match="not a valid Triton model config"):
        validate_repository(bad)
    # The scoring model: its tensors, its bundle's scores and its calibration file.
    score = tmp_path / "score_repo"
    shutil.copytree(repo / "ddad_score", score / "ddad_score")
    cfg = score / "ddad_score" / "config.pbtxt"
    text = cfg.read_text()
    assert {m.note for m in validate_repository(score)} == {"schema + tensors + bundle"}
    cfg.write_text(text.replace('name: "FLAG"', 'name: "FLAGS"'))
    with pytest.raises(ConfigError, match="the scoring model needs"):
        validate_repository(score)
    cfg.write_text(text.replace("allow_ragged_batch: true", "allow_ragged_batch: false", 1))
    with pytest.raises(ConfigError, match="allow_ragged_batch"):
        validate_repository(score)
    cfg.write_text(text)
    (score / "ddad_score" / "1" / "calibration.json").unlink()
    with pytest.raises(ConfigError, match="calibration file calibration.json is missing"):
        validate_repository(score)


def test_engine_becomes_a_tensorrt_plan_model(bundle: Path, tmp_path: Path) -> None:
    """An engine left by ``ddad-edge build`` (here a plan file and its sidecar: TensorRT is not
    installed, the plan is only copied) gets a tensorrt_plan model with the engine's batch."""
    from ddad_edge.export.triton_repo import validate_repository, write_repository

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    engines = copy / "engines"
    engines.mkdir()
    (engines / "nvidia-l4-trt10.8-fp16.plan").write_bytes(b"plan bytes")
    side = {"onnx_file": "dual_fp16.onnx", "gpu_name": "NVIDIA L4", "tensorrt_version": "10.8"}
    side["profile"] = {"min": [1, 1, 64, 64], "opt": [32, 1, 64, 64], "max": [32, 1, 64, 64]}
    (engines / "nvidia-l4-trt10.8-fp16.json").write_text(json.dumps(side))
    res = write_repository(copy, tmp_path / "repo")
    trt = [m for m in res.models if m.kind == "tensorrt_plan"]
    assert [m.name for m in trt] == ["ddad_trt_nvidia_l4_trt10_8_fp16"]
    text = (trt[0].path / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in text and "max_batch_size: 32" in text
    assert (trt[0].path / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert "ddad_trt_nvidia_l4_trt10_8_fp16" in {m.name for m in validate_repository(res.root)}
    assert not (res.root / "ddad_score" / "1" / "bundle" / "engines").exists()


def test_instances_share_the_cores_unless_threads_are_given(bundle: Path, tmp_path: Path) -> None:
    from ddad_edge.export.triton_config import parse_config
    from ddad_edge.export.triton_repo import write_repository
    from ddad_edge.runtime.cpu import physical_cores
    from ddad_edge.runtime.triton_model import cpu_threads

    n = physical_cores()
    assert cpu_threads({}, 1) == n and cpu_threads({}, n) == 1 and cpu_threads({}, 4 * n) == 1
    assert cpu_threads({"intra_op_threads": ""}, 1) == n
    assert cpu_threads({"intra_op_threads": "3"}, 2) == 3
    root = write_repository(bundle, tmp_path / "repo", instances=2, threads=1).root
    cfg = parse_config(root / "ddad_score" / "config.pbtxt")
    assert cfg.instance_group[0].count == 2
    assert cfg.parameters["intra_op_threads"].string_value == "1"
    with pytest.raises(ValueError, match="threads"):
        write_repository(bundle, tmp_path / "bad", threads=0)


def test_an_executed_batch_is_one_scorer_call_and_one_inference(
    bundle: Path, good_images: list[Path], tmp_path: Path
) -> None:
    """The files of all the requests of one executed batch go through ONE inference at the
    batch's size, and each request gets back exactly its own files' records."""
    from ddad_edge.runtime.triton_model import score_requests

    with Scorer.from_bundle(bundle, backend="ort-cpu", precision="fp32") as scorer:
        want = scorer.score(good_images)
        sizes: list[int] = []
        infer = scorer.infer
        scorer.infer = lambda x: (sizes.append(len(x)), infer(x))[1]  # count, then infer
        items = [(p.name, p.read_bytes()) for p in good_images]
        requests = [items[:2], "a malformed request", [("bad.png", b"not an image"), items[2]]]
        got = score_requests(scorer, requests, tmp_path)
    assert sizes == [3], "one inference for the batch's three decodable files"
    assert got[1] == "a malformed request"
    assert [len(r) for r in (got[0], got[2])] == [2, 2]
    assert got[2][0].error and got[2][0].scores is None
    for g, w in zip([*got[0], got[2][1]], want, strict=True):
        assert g.scores == pytest.approx(w.scores, rel=1e-6)
    assert not any(tmp_path.iterdir()), "the batch's files are removed"


# ----------------------------------------------------------------------------------------------
# A real Triton server
# ----------------------------------------------------------------------------------------------
def _start(repo: Path):
    from ddad_edge.runtime.triton_server import ServerError, dist_dir, start_server

    try:
        dist_dir()
    except ServerError as e:
        pytest.skip(str(e))
    return start_server(repo, models=["ddad_score"], ready_timeout=180)


@pytest.fixture(scope="module")
def server(repo: Path):
    srv = _start(repo)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def direct(bundle: Path, calibration: Path) -> Scorer:
    s = Scorer.from_bundle(
        bundle, backend="ort-cpu", precision="fp32", calibration=calibration, operating_point=0.9
    )
    yield s
    s.close()


@pytest.fixture(scope="module")
def real_images(kermany: Path) -> list[Path]:
    """A bounded subset of the Kermany test split and every DICOM of the shared data."""
    root = kermany / "test"
    dicom = kermany.parent / "dicom-cxr"
    kermany = [
        p for c in ("NORMAL", "PNEUMONIA") for p in sorted((root / c).iterdir())[:N_PER_CLASS]
    ]
    dicoms = sorted((dicom / "original").iterdir()) + sorted((dicom / "edge_cases").iterdir())
    return kermany + dicoms


def bad_files(where: Path, good: Path, dicom: Path) -> list[Path]:
    """Inputs that are not scored: text, an empty file, a truncated JPEG, missing files (errors)
    and a CT image (the input gate abstains)."""
    import pydicom

    ds = pydicom.dcmread(dicom, force=True)
    ds.Modality = "CT"
    ct = where / "ct.dcm"
    ds.save_as(ct, enforce_file_format=False)
    text = where / "notes.png"
    text.write_text("not an image")
    empty = where / "empty.dcm"
    empty.write_bytes(b"")
    cut = where / "truncated.jpeg"
    cut.write_bytes(good.read_bytes()[:300])
    return [text, empty, cut, where / "missing.png", where / "missing.dcm", ct]


def assert_same_records(got: list[ScoreResult], want: list[ScoreResult]) -> None:
    """Same records as local scoring: every field equal, image scores to 1e-6 relative."""
    assert [r.source for r in got] == [r.source for r in want]
    for g, w in zip(got, want, strict=True):
        gj, wj = g.to_json(), w.to_json()
        gs, ws = gj.pop("scores"), wj.pop("scores")
        assert gj == wj, g.source
        assert (gs is None) == (ws is None), g.source
        for n, v in (ws or {}).items():
            assert gs[n] == pytest.approx(v, rel=1e-6, abs=0), (g.source, n)


@pytest.fixture(scope="module")
def cases(real_images, direct, tmp_path_factory) -> tuple[list[str], list[ScoreResult]]:
    """The real images and the bad files, and the direct Scorer's records for them."""
    dicom = min((p for p in real_images if p.suffix == ".dcm"), key=lambda p: p.stat().st_size)
    bad = bad_files(tmp_path_factory.mktemp("bad"), real_images[0], dicom)
    files = [str(p) for p in real_images + bad]
    want = direct.score(files)
    statuses = [r.status for r in want]
    assert statuses.count("scored") >= 2 * N_PER_CLASS and statuses.count("error") >= 6
    assert statuses.count("abstained") == 1
    assert all(r.flag in ("normal", "abnormal") for r in want if r.status == "scored")
    return files, want


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_scores_equal_the_direct_scorer(server, cases, protocol) -> None:
    """Requests of two files, each a file that is not scored next to one that is: every file
    gets its own record, the same as local scoring."""
    from ddad_edge.runtime.triton_client import TritonScorer

    files, want = cases
    bad = [i for i, r in enumerate(want) if r.status != "scored"]
    good = [i for i, r in enumerate(want) if r.status == "scored"]
    order = [i for pair in zip(bad, good, strict=False) for i in pair]
    order += [i for i in range(len(files)) if i not in order]
    url = server.http_url if protocol == "http" else f"grpc://{server.grpc_url}"
    got = TritonScorer(url, concurrency=4, files_per_request=2).score([files[i] for i in order])
    assert_same_records(got, [want[i] for i in order])
    assert server.ready(), "the server stopped serving after bad inputs"


def test_bad_rows_and_malformed_requests(server, cases) -> None:
    """A row whose SIZE overruns FILE is an error for that file only; a request whose tensors
    disagree is refused as a whole (a Triton error: Triton checks the batch dimensions itself
    before the model), and the server keeps serving."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from ddad_edge.runtime.triton_client import _results
    from ddad_edge.runtime.triton_protocol import encode_files, encode_names

    files, want = cases
    good = next(i for i, r in enumerate(want) if r.status == "scored")
    data = Path(files[good]).read_bytes()
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def infer(file: np.ndarray, size: np.ndarray, names: np.ndarray):
        tensors = []
        for n, arr, dtype in (
            ("FILE", file, "UINT8"),
            ("SIZE", size, "INT64"),
            ("NAME", names, "UINT8"),
        ):
            t = grpcclient.InferInput(n, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            tensors.append(t)
        return client.infer("ddad_score", tensors)

    file, size = encode_files([data, data])
    names = encode_names([files[good], "second.jpeg"])
    size[1, 0] = file.shape[1] + 5
    got = _results([files[good], "second.jpeg"], infer(file, size, names), "test")
    assert_same_records(got[:1], [want[good]])
    assert got[1].scores is None and "SIZE" in got[1].error
    with pytest.raises(InferenceServerException, match="batch size does not match"):
        infer(file, size[:1], names)
    assert server.ready()


def test_dynamic_batching_batches_under_bounded_load(server, cases) -> None:
    """8 concurrent clients sending two files per request, a fixed number of files: every
    answer right, none lost, and Triton's statistics show requests merged into batches of more
    than two files."""
    from ddad_edge.runtime.triton_client import TritonScorer

    images = cases[0][: 2 * N_PER_CLASS]
    files = images * 4
    want = {r.source: r for r in cases[1]}
    client = TritonScorer(f"grpc://{server.grpc_url}", concurrency=8, files_per_request=2)
    before = _batch_counts(client.statistics())
    t0 = time.perf_counter()
    got = client.score(files)
    elapsed = time.perf_counter() - t0
    assert len(got) == len(files) and all(r.error is None for r in got)
    assert_same_records(got, [want[f] for f in files])
    after = _batch_counts(client.statistics())
    batched = {b: n - before.get(b, 0) for b, n in after.items() if b > 2 and n > before.get(b, 0)}
    assert batched, f"no batch of merged requests in the server's statistics: {after}"
    print(f"{len(files)} requests, 8 clients: {len(files) / elapsed:.1f} img/s; batches {batched}")


def _batch_counts(stats: dict) -> dict[int, int]:
    model = stats["model_stats"][0]
    return {
        int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in model.get("batch_stats", [])
    }


def test_server_killed_mid_load_gives_clear_errors_never_a_wrong_score(repo, cases) -> None:
    from ddad_edge.runtime.triton_client import TritonScorer

    srv = _start(repo)
    try:
        images = cases[0][: 2 * N_PER_CLASS]
        want = {r.source: r for r in cases[1]}
        files = images * 6
        done = threading.Semaphore(0)
        client = TritonScorer(srv.http_url, concurrency=8, timeout=20)
        killer = threading.Thread(target=lambda: (done.acquire(), srv.kill()))
        killer.start()
        got = client.score(files, on_item=lambda i: done.release())
        killer.join(30)
    finally:
        srv.stop()
    assert len(got) == len(files)
    scored = [r for r in got if r.error is None]
    failed = [r for r in got if r.error is not None]
    assert scored and failed, "the kill should land mid-load"
    assert_same_records(scored, [want[r.source] for r in scored])
    for r in failed:
        assert r.scores is None and r.error.startswith(f"Triton server {srv.http_url}"), r.error
    print(
        f"killed mid-load: {len(scored)} scored right, {len(failed)} clear errors: "
        f"{sorted({r.error for r in failed})[:2]}"
    )
    assert np.isfinite([r.scores["inter"] for r in scored]).all()


def test_bench_triton_lane_measures_the_server_against_the_scorer(bundle, cases) -> None:
    """The ``triton`` lane of ``ddad-edge bench``, small, on one ``ddad_score`` instance (the
    other tests serve the default two): every file answered, none wrong, the server's stages
    recorded."""
    from ddad_edge.benchmarks.bench_report import triton_section
    from ddad_edge.benchmarks.triton_load import measure_triton
    from ddad_edge.runtime.cpu import physical_cores

    images = [Path(p) for p in cases[0][: 2 * N_PER_CLASS]]
    res = measure_triton(
        bundle, images, clients=(1, 4), instances=(1,), files_per_request=(3,), files=12, reps=1
    )
    assert res["available"], res.get("reason")
    assert set(res["points"]) == {"1", "4"} and res["reference"]["throughput"] > 0
    for p in res["points"].values():
        assert p["files"] == 12 and p["requests"] == 4 and p["files_per_request"] == 3
        assert p["wrong"] == 0 and p["lost"] == 0 and p["errors"] == 0
        assert sum(p["batches"].values()) >= 1 and p["p95_ms"] >= p["p50_ms"] > 0
        assert p["server_ms"]["compute_infer"] > 0 and p["server_ms"]["queue"] >= 0
    threads = physical_cores()
    assert [(s["instances"], s["threads_per_instance"]) for s in res["servers"]] == [(1, threads)]
    assert f"| 1×{threads} | 3 | 4 | 4 |" in triton_section(res)
