"""Write a Triton Inference Server model repository for a bundle (``ddad-edge triton``).

Layout (model names are fixed so that clients and BLS calls can rely on them)::

    model_repository/
      ddad_score/            Python backend: encoded files (B per request) -> image scores
        config.pbtxt
        1/model.py           imports ddad_edge.runtime.triton_model (the runtime's own
        1/bundle/            decoding, preprocessing and scoring) and the bundle it loads
      ddad_dual_fp32/        onnxruntime_onnx, the fused dual graph, FP32, CPU instances
        config.pbtxt, 1/model.onnx
      ddad_dual_fp16/        onnxruntime_onnx, FP16 compute (FP32 I/O), GPU instances
      ddad_trt_<engine>/     tensorrt_plan, one per engine ``ddad-edge build`` wrote
        config.pbtxt, 1/model.plan

``ddad_score`` scores in-process with onnxruntime by default; ``--inference bls`` makes it send
the preprocessed batch to one of the graph models by a BLS call instead (see
``runtime/triton_model.py`` for why in-process is the default).

Files are hard links to the bundle's when the file system allows it, copies otherwise; the
shared weights files are always copied (``export.weights.link_or_copy`` says why), and each
ONNX model gets the weights file its graph reads beside its ``model.onnx``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddad_edge.export.triton_config import (
    ConfigError,
    Sym,
    dynamic_batching,
    graph_io,
    parameters,
    to_pbtxt,
    validate_config,
)
from ddad_edge.export.weights import link_or_copy
from ddad_edge.runtime.bundle import ENGINES_DIR, open_bundle, slugify
from ddad_edge.runtime.triton_protocol import (
    ERROR_OUTPUT,
    FILE_INPUT,
    FLAG_OUTPUT,
    NAME_INPUT,
    RECORD_OUTPUT,
    SCORE_MODEL,
    SCORE_ORDER,
    SCORES_OUTPUT,
    SIZE_INPUT,
)

ONNX_MODELS = {"fp32": ("ddad_dual_fp32", "KIND_CPU"), "fp16": ("ddad_dual_fp16", "KIND_GPU")}
INFERENCE_MODES = ("in-process", "bls")
MODEL_PY = '''"""ddad-edge scoring model for Triton's Python backend (by `ddad-edge triton`).

Needs ddad-edge installed in the Python that runs the backend's stub (pip install ddad-edge).
"""

from ddad_edge.runtime.triton_model import TritonPythonModel  # noqa: F401
'''


@dataclass
class RepoModel:
    """One model written: name, kind ("python", "onnxruntime_onnx", "tensorrt_plan"), its folder
    and the graph its tensors were read from (None for the Python model)."""

    name: str
    kind: str
    path: Path
    graph: Path | None = None
    note: str = ""


@dataclass
class RepoResult:
    """What :func:`write_repository` wrote: the repository folder and its models."""

    root: Path
    models: list[RepoModel] = field(default_factory=list)


def _write_config(model_dir: Path, config: dict[str, Any]) -> Path:
    path = model_dir / "config.pbtxt"
    path.write_text(to_pbtxt(config))
    return path


def graph_model_config(
    name: str, platform: str, kind: str, graph: Path, max_batch: int, queue_delay_us: int
) -> dict[str, Any]:
    """Config of a graph model (ONNX or TensorRT plan): I/O read from ``graph``."""
    inputs, outputs = graph_io(graph)
    return {
        "name": name,
        "platform": platform,
        "max_batch_size": max_batch,
        "input": [t.config() for t in inputs],
        "output": [t.config() for t in outputs],
        "dynamic_batching": dynamic_batching(max_batch, queue_delay_us),
        "instance_group": [{"kind": Sym(kind), "count": 1}],
    }


def score_model_config(
    max_batch: int, params: dict[str, str], queue_delay_us: int, instances: int
) -> dict[str, Any]:
    """Config of the Python scoring model: a request carries B files (``max_batch_size`` > 0,
    so the batch dimension is the file), and dynamic batching merges requests into executions
    of up to ``max_batch`` files.

    FILE is UINT8 [-1] (each file's bytes, zero-padded), SIZE INT64 [1] (its length) and NAME
    UINT8 [-1] (its UTF-8 base name): this Triton build's Python stub cannot read or write
    BYTES tensors under numpy 2 (see ``runtime/triton_model.py``). FILE and NAME allow ragged
    batches (their widths differ between requests; the Python backend gets each request's own
    tensors). SCORES is FP32 [S] (``score_order``: rec, intra, inter, and asr for a bundle with
    ASR), ERROR UINT8 [-1] the file's error text, RECORD UINT8 [-1] its record's JSON, FLAG BOOL
    [1] only when calibrated (``runtime/triton_protocol.py``). The one preferred batch size is
    ``max_batch``: with several files per request, a smaller preferred size would dispatch a
    lone request at once instead of waiting up to ``queue_delay_us`` for others to join it, and
    with none at all Triton's batcher counts every pending batch as past its largest preferred
    size and sends each request alone (seen on this server).
    """
    ragged = {"data_type": Sym("TYPE_UINT8"), "dims": [-1], "allow_ragged_batch": True}
    n_scores = len(params.get("score_order", ",".join(SCORE_ORDER)).split(","))
    outputs = [
        {"name": SCORES_OUTPUT, "data_type": Sym("TYPE_FP32"), "dims": [n_scores]},
        {"name": ERROR_OUTPUT, "data_type": Sym("TYPE_UINT8"), "dims": [-1]},
        {"name": RECORD_OUTPUT, "data_type": Sym("TYPE_UINT8"), "dims": [-1]},
    ]
    if params.get("calibration"):
        outputs.append({"name": FLAG_OUTPUT, "data_type": Sym("TYPE_BOOL"), "dims": [1]})
    inputs = [
        {"name": FILE_INPUT, **ragged},
        {"name": SIZE_INPUT, "data_type": Sym("TYPE_INT64"), "dims": [1]},
        {"name": NAME_INPUT, **ragged},
    ]
    return {
        "name": SCORE_MODEL,
        "backend": "python",
        "max_batch_size": max_batch,
        "input": inputs,
        "output": outputs,
        "dynamic_batching": {
            "preferred_batch_size": [max_batch],
            "max_queue_delay_microseconds": queue_delay_us,
        },
        "instance_group": [{"kind": Sym("KIND_CPU"), "count": instances}],
        "parameters": parameters(params),
    }


def _engines(bundle_root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(plan, sidecar) of every engine ``ddad-edge build`` left in the bundle."""
    out = []
    for side in sorted((bundle_root / ENGINES_DIR).glob("*.json")):
        plan = side.with_suffix(".plan")
        try:
            info = json.loads(side.read_text())
        except (OSError, ValueError):
            continue
        if plan.is_file() and "profile" in info:
            out.append((plan, info))
    return out


def write_repository(
    bundle_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    max_batch: int = 64,
    calibration: str | os.PathLike[str] | None = None,
    operating_point: float | None = None,
    inference: str = "in-process",
    bls_model: str = ONNX_MODELS["fp32"][0],
    queue_delay_us: int = 2000,
    instances: int = 2,
    threads: int | None = None,
    force: bool = False,
) -> RepoResult:
    """Write the model repository for a bundle (layout in the module docstring).

    Args:
        bundle_dir: folder written by ``ddad-edge export`` (hash-verified first).
        output: repository folder; must not exist unless ``force`` (then it is replaced).
        max_batch: ``max_batch_size`` of every model (TensorRT models: the engine's profile).
        calibration: a calibration file of this bundle, copied next to the scoring model: its
            records then carry the flag (and the FLAG output exists); checked here first.
        operating_point: the specificity to use (None: the calibration file's default).
        inference: "in-process" (onnxruntime inside the Python model) or "bls".
        bls_model: the graph model BLS calls go to.
        queue_delay_us: dynamic batching's longest wait for a batch to fill.
        instances: instances of the scoring model (each loads its own onnxruntime session). Two
            by default, each with half the cores: while one decodes its batch (a stage that
            leaves cores idle at its end) the other runs its inference, so the cores stay busy.
        threads: onnxruntime (and decoding) threads per instance; None: the server machine's
            physical cores shared out among the instances, decided when the model loads.

    Raises:
        BundleError: the bundle is unusable; ConfigError: a graph Triton cannot serve;
        FileExistsError: ``output`` exists and ``force`` is False.
    """
    if max_batch < 1 or instances < 1 or (threads is not None and threads < 1):
        raise ValueError("max_batch, instances and threads must be >= 1")
    if inference not in INFERENCE_MODES:
        raise ValueError(f"inference must be one of {', '.join(INFERENCE_MODES)}")
    bundle = open_bundle(bundle_dir, verify=True)
    if calibration is not None:
        from ddad_edge.runtime.calibration import load_calibration

        load_calibration(calibration, bundle.manifest, operating_point)  # refuses a mismatch
    out = Path(output)
    if out.exists():
        if not force:
            raise FileExistsError(f"{out}: exists; pass --force to replace it")
        shutil.rmtree(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    result = RepoResult(out)
    models = _write_graph_models(bundle, staging, max_batch, queue_delay_us)
    params = {
        "bundle": "bundle",
        "inference": inference,
        "max_batch": str(max_batch),
        "score_order": ",".join(bundle.score_names),
    }
    if inference == "bls":
        params["bls_model"] = bls_model
    if threads is not None:
        params["intra_op_threads"] = str(threads)
    if calibration is not None:
        params["calibration"] = "calibration.json"
        params["operating_point"] = "" if operating_point is None else repr(operating_point)
    score_dir = staging / SCORE_MODEL
    _write_score_model(bundle.root, score_dir, calibration, params)
    cfg = score_model_config(max_batch, params, queue_delay_us, instances)
    _write_config(score_dir, cfg)
    models.append(RepoModel(SCORE_MODEL, "python", score_dir, None, f"inference {inference}"))
    os.replace(staging, out)
    for m in models:
        m.path = out / m.path.relative_to(staging)
        if m.graph is not None and staging in m.graph.parents:
            m.graph = out / m.graph.relative_to(staging)
    result.models = models
    return result


def _write_graph_models(
    bundle: Any, root: Path, max_batch: int, queue_delay_us: int
) -> list[RepoModel]:
    models = []
    for precision, (name, kind) in ONNX_MODELS.items():
        key = f"dual_{precision}"
        if key not in bundle.graphs():
            continue
        src = bundle.graph_path("dual", precision)
        d = root / name
        link_or_copy(src, d / "1" / "model.onnx")
        for data in bundle.graph("dual", precision).get("external_data", []):
            link_or_copy(bundle.root / data, d / "1" / data)  # weights beside the graph
        cfg = graph_model_config(name, "onnxruntime_onnx", kind, src, max_batch, queue_delay_us)
        _write_config(d, cfg)
        models.append(RepoModel(name, "onnxruntime_onnx", d, d / "1" / "model.onnx"))
    for plan, info in _engines(bundle.root):
        name = "ddad_trt_" + slugify(plan.stem).replace("-", "_").replace(".", "_")
        d = root / name
        link_or_copy(plan, d / "1" / "model.plan")
        onnx_src = bundle.root / info.get("onnx_file", "dual_fp16.onnx")
        engine_batch = int(info["profile"]["max"][0])
        cfg = graph_model_config(
            name, "tensorrt_plan", "KIND_GPU", onnx_src, engine_batch, queue_delay_us
        )
        _write_config(d, cfg)
        note = f"engine for {info.get('gpu_name')}, TensorRT {info.get('tensorrt_version')}"
        models.append(RepoModel(name, "tensorrt_plan", d, onnx_src, note))
    return models


def _write_score_model(
    bundle_root: Path, model_dir: Path, calibration: str | os.PathLike[str] | None, params: dict
) -> None:
    """Version 1 of the scoring model: model.py, the bundle (no engines), the calibration."""
    version = model_dir / "1"
    for f in bundle_root.rglob("*"):
        if f.is_file() and ENGINES_DIR not in f.relative_to(bundle_root).parts:
            link_or_copy(f, version / "bundle" / f.relative_to(bundle_root))
    (version / "model.py").write_text(MODEL_PY)
    if calibration is not None:
        shutil.copy2(calibration, version / params["calibration"])


def _check_score_model(path: Path, cfg: Any) -> None:
    """The Python scoring model: model.py, its bundle and calibration files, and tensors exactly
    those :func:`score_model_config` gives for its parameters and its bundle's scores.

    Raises:
        ConfigError: naming the file and what differs.
    """
    from ddad_edge.export.triton_config import config_tensors

    version = path.parent / "1"
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    if not (version / "model.py").is_file():
        raise ConfigError(f"{path}: Python-backend model without 1/model.py")
    try:
        names = ",".join(open_bundle(version / params.get("bundle", "bundle")).score_names)
    except Exception as e:  # BundleError and OS errors alike: the model could not load
        raise ConfigError(f"{path}: its bundle cannot be opened: {e}") from e
    if params.get("score_order") != names:
        raise ConfigError(f"{path}: score_order {params.get('score_order')!r}; bundle: {names!r}")
    if params.get("calibration") and not (version / params["calibration"]).is_file():
        raise ConfigError(f"{path}: calibration file {params['calibration']} is missing")
    want = score_model_config(cfg.max_batch_size, params, 0, 1)
    for which in ("input", "output"):
        have = [(t.name, t.data_type, t.dims) for t in config_tensors(cfg, which)]
        need = [(t["name"], str(t["data_type"]), tuple(t["dims"])) for t in want[which]]
        if have != need:
            raise ConfigError(f"{path}: {which}s {have}; the scoring model needs {need}")
    ragged = {t.name for t in cfg.input if t.allow_ragged_batch}
    if not {FILE_INPUT, NAME_INPUT} <= ragged:
        raise ConfigError(
            f"{path}: {FILE_INPUT} and {NAME_INPUT} need allow_ragged_batch (their widths "
            "differ between the requests of a batch)"
        )
    if cfg.max_batch_size < 1:
        raise ConfigError(f"{path}: max_batch_size {cfg.max_batch_size}; files need a batch dim")


def validate_repository(root: str | os.PathLike[str]) -> list[RepoModel]:
    """Parse every ``config.pbtxt`` under ``root`` with Triton's schema and check graph models'
    tensors against their graph (ONNX models: ``1/model.onnx``; TensorRT models: the ONNX graph
    named in the bundle copy's engine sidecar is not kept, so only the schema is checked).

    Returns:
        The models found, with ``note`` saying what was checked.

    Raises:
        ConfigError: the first config that does not parse or does not match its graph.
    """
    found = []
    for cfg_path in sorted(Path(root).glob("*/config.pbtxt")):
        d = cfg_path.parent
        onnx = d / "1" / "model.onnx"
        cfg = validate_config(cfg_path, onnx if onnx.is_file() else None)
        kind = cfg.platform or cfg.backend
        what = "schema + graph tensors" if onnx.is_file() else "schema"
        if kind == "python":
            _check_score_model(cfg_path, cfg)
            what = "schema + tensors + bundle"
        found.append(RepoModel(cfg.name, kind, d, onnx if onnx.is_file() else None, what))
    if not found:
        raise ConfigError(f"{root}: no config.pbtxt found; not a model repository")
    return found


__all__ = [
    "ONNX_MODELS",
    "RepoModel",
    "RepoResult",
    "validate_repository",
    "write_repository",
]
