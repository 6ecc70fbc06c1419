"""The ``ddad_score`` model for Triton's Python backend: encoded files in, image scores out, with
the runtime's own decoding, preprocessing and scoring (:class:`~ddad_edge.runtime.Scorer`).

A request carries one or more files; each batch Triton's dynamic batcher hands to
:meth:`TritonPythonModel.execute` (requests merged up to ``max_batch_size`` files) is scored as
ONE ``Scorer.score`` call over all its files (:func:`score_requests`): the Scorer decodes them
with its own threads and runs one inference at the executed batch size (its ``max_batch`` is
the model's ``max_batch_size``), so the weights are read once per executed batch, not once per
request. The files are written to a private folder (on ``/dev/shm`` when present) under their
own base names, so that decoding sees exactly what local scoring sees, and removed afterwards.
Wire format: ``runtime/triton_protocol.py``.

Inference (model parameter ``inference``):

* ``in-process`` (the default): the Scorer's onnxruntime session runs inside the stub process.
  Default because the scores then come from the very code path local scoring uses, with no
  second copy of the batch through Triton's shared memory, and because it is the only mode the
  ``nvidia-pytriton`` server build can run (it has no onnxruntime or TensorRT backend). On a GPU
  server, in-process inference needs onnxruntime-gpu in the stub's Python.
* ``bls``: the Scorer runs its graph through a BLS call to a graph model of the repository
  (``ddad_dual_fp32``/``ddad_dual_fp16`` on Triton's onnxruntime backend, or a TensorRT plan),
  which lets Triton batch and place the network on the GPU while decoding and scoring stay here.

numpy 2: the stub in the ``nvidia-pytriton`` wheel (Triton 2.51) was built with a pybind11 that
reads numpy 1's dtype layout. Under numpy 2, ``Tensor.as_numpy()`` returned every element equal
to the first and ``pb_utils.Tensor(name, ndarray)`` sent empty outputs (tried here; BYTES tensors
were garbled both ways). DLPack does not go through that layout and is exact, so every tensor
here goes through ``np.from_dlpack`` / ``Tensor.from_dlpack``; BYTES tensors are not used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.runtime.cpu import physical_cores
from ddad_edge.runtime.scorer import Scorer, ScoreResult
from ddad_edge.runtime.triton_protocol import (
    ERROR_OUTPUT,
    FILE_INPUT,
    FLAG_OUTPUT,
    NAME_INPUT,
    RECORD_OUTPUT,
    SCORES_OUTPUT,
    SIZE_INPUT,
    decode_files,
    decode_names,
    pad_texts,
    record_text,
    scores_tensor,
)

Item = tuple[str, bytes] | str
"""A request's file as (base name, bytes), or the reason it could not be read."""
Request = list[Item] | str
"""A request's files, or the reason the request as a whole is malformed."""


class BlsBackend:
    """A runtime backend (load / infer / close) whose inference is a BLS call to a graph model
    of the same Triton server. Outputs are asked for in CPU memory."""

    thread_safe = True

    def __init__(self, pb_utils: Any, model: str, outputs: list[str]) -> None:
        self.pb = pb_utils
        self.model = model
        self.outputs = outputs
        self.name = "triton-bls"
        self.device = f"Triton model {model} (BLS)"
        self.active_providers: list[str] = []

    def load(self) -> None:
        """Nothing to load: the graph model is Triton's."""

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph model on ``feeds`` (name -> float32 [N, 1, 64, 64])."""
        pb = self.pb
        inputs = [pb.Tensor.from_dlpack(k, np.ascontiguousarray(v)) for k, v in feeds.items()]
        request = pb.InferenceRequest(
            model_name=self.model,
            inputs=inputs,
            requested_output_names=self.outputs,
            preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"BLS call to {self.model} failed: {response.error().message()}")
        return {
            n: np.from_dlpack(pb.get_output_tensor_by_name(response, n)).copy()
            for n in self.outputs
        }

    def close(self) -> None:
        """Nothing to release."""


def cpu_threads(params: dict[str, str], instances: int) -> int:
    """onnxruntime intra-op threads (and decoding threads) of one instance: the model parameter
    ``intra_op_threads`` when set, else the physical cores shared out among the model's
    ``instances`` (at least one each), so that instances do not oversubscribe the cores."""
    if params.get("intra_op_threads"):
        return max(1, int(params["intra_op_threads"]))
    return max(1, physical_cores() // max(1, instances))


def make_scorer(
    version_dir: Path, params: dict[str, str], pb_utils: Any, instances: int = 1
) -> Scorer:
    """The Scorer the model serves, from its parameters: bundle, inference, max_batch,
    bls_model, calibration (a file in the version folder), operating_point and
    intra_op_threads (:func:`cpu_threads`; ``instances``: instances of the model)."""
    bundle_dir = version_dir / params.get("bundle", "bundle")
    max_batch = int(params.get("max_batch", "64"))
    threads = cpu_threads(params, instances)
    calibration = version_dir / params["calibration"] if params.get("calibration") else None
    point = float(params["operating_point"]) if params.get("operating_point") else None
    if params.get("inference", "in-process") == "in-process":
        return Scorer.from_bundle(
            bundle_dir,
            backend="ort-cpu",
            precision="fp32",
            max_batch=max_batch,
            workers=threads,
            intra_op_threads=threads,
            calibration=calibration,
            operating_point=point,
        )
    from ddad_edge.runtime.bundle import open_bundle
    from ddad_edge.runtime.calibration import load_calibration

    bundle = open_bundle(bundle_dir, verify=True)
    model = params.get("bls_model", "ddad_dual_fp32")
    precision = "fp16" if "fp16" in model else "fp32"
    outputs = list(bundle.graph("dual", "fp32")["outputs"])
    backend = BlsBackend(pb_utils, model, outputs)
    cal = None if calibration is None else load_calibration(calibration, bundle.manifest, point)
    return Scorer(
        bundle, {"dual": backend}, precision, max_batch=max_batch, workers=threads, calibration=cal
    )


def score_files(scorer: Scorer, items: list[Item], workdir: Path) -> list[ScoreResult]:
    """Gate and score files given as (base name, bytes); one result per item, in order.

    The files are written under ``workdir`` as ``<i>/<name>`` and removed afterwards; a
    result's ``source`` is that path. Items that are already errors (a str) and files that cannot
    be decoded get ``error``; an inference failure becomes the error of every file of the batch
    (never a partial or wrong score).
    """
    results = [ScoreResult(f"item[{i}]") for i in range(len(items))]
    paths: list[tuple[int, Path]] = []
    try:
        for i, item in enumerate(items):
            if isinstance(item, str):
                results[i].error = item
                continue
            name, data = item
            path = workdir / str(i) / (name if name not in ("", ".", "..") else "file")
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            paths.append((i, path))
        if paths:
            try:
                scored = scorer.score([p for _, p in paths])
            except Exception as e:  # onnxruntime / BLS failures: report, never guess
                scored = [ScoreResult(str(p), error=f"inference failed: {e}") for _, p in paths]
            for (i, _), r in zip(paths, scored, strict=True):
                results[i] = r
    finally:
        for i, _ in paths:
            shutil.rmtree(workdir / str(i), ignore_errors=True)
    return results


def score_requests(
    scorer: Scorer, requests: list[Request], workdir: Path
) -> list[list[ScoreResult] | str]:
    """Score the files of several requests (one executed batch) in ONE :func:`score_files`
    call, then split the results back per request, in order; a malformed request (a str) is
    passed through as its error."""
    items = [it for r in requests if not isinstance(r, str) for it in r]
    flat = iter(score_files(scorer, items, workdir))
    return [r if isinstance(r, str) else [next(flat) for _ in r] for r in requests]


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class TritonPythonModel:
    """The model class Triton's Python backend instantiates (initialize / execute / finalize)."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the bundle named by the model's parameters (see :func:`make_scorer`)."""
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        self.scorer = make_scorer(version_dir, params, pb_utils, instances)
        self.flag = any(o["name"] == FLAG_OUTPUT for o in config.get("output", []))

    def _read(self, request: Any) -> Request:
        """The files of one request (``triton_protocol``), or why the request is malformed."""
        pb = self.pb
        tensors = [pb.get_input_tensor_by_name(request, n) for n in (FILE_INPUT, SIZE_INPUT)]
        name = pb.get_input_tensor_by_name(request, NAME_INPUT)
        if any(t is None for t in [*tensors, name]):
            return f"request needs {FILE_INPUT}, {SIZE_INPUT} and {NAME_INPUT}"
        file, size = (np.from_dlpack(t) for t in tensors)
        names = np.from_dlpack(name)
        rows = {len(file), len(size), len(names)}
        if file.ndim != 2 or size.shape != (len(file), 1) or names.ndim != 2 or len(rows) != 1:
            return (
                f"request tensors disagree: {FILE_INPUT} {file.shape}, {SIZE_INPUT} "
                f"{size.shape}, {NAME_INPUT} {names.shape} (want [B, n], [B, 1], [B, m])"
            )
        data = decode_files(file, size)
        return [
            d if isinstance(d, str) else (n, d)
            for n, d in zip(decode_names(names), data, strict=True)
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Score one dynamic batch: one response per request, a row per file of the request
        (see ``triton_protocol``); a malformed request gets a Triton error response."""
        reads = [self._read(r) for r in requests]
        # A folder per batch, not per instance: a stub killed without finalize() (the server
        # SIGKILLed) then leaves behind at most the batch in flight, not a folder per start.
        with tempfile.TemporaryDirectory(prefix="ddad-score-", dir=_shm_dir()) as workdir:
            results = score_requests(self.scorer, reads, Path(workdir))
        return [self._response(r) for r in results]

    def _response(self, results: list[ScoreResult] | str) -> Any:
        """SCORES, ERROR, RECORD (and FLAG) of one request's files, whatever their status."""
        pb = self.pb
        if isinstance(results, str):
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(results))
        names = self.scorer.score_names
        scores = np.concatenate([scores_tensor(r.scores, names) for r in results])
        tensors = [
            pb.Tensor.from_dlpack(SCORES_OUTPUT, scores),
            pb.Tensor.from_dlpack(ERROR_OUTPUT, pad_texts([r.error or "" for r in results])),
            pb.Tensor.from_dlpack(
                RECORD_OUTPUT, pad_texts([record_text(r.to_json(), r.source) for r in results])
            ),
        ]
        if self.flag:
            flag = np.array([[r.flag == "abnormal"] for r in results], np.bool_)
            tensors.append(pb.Tensor.from_dlpack(FLAG_OUTPUT, flag))
        return pb.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        """Release the backend."""
        self.scorer.close()


__all__ = [
    "BlsBackend",
    "TritonPythonModel",
    "cpu_threads",
    "make_scorer",
    "score_files",
    "score_requests",
]
