"""The torch-free DDAD scorer: bundle -> backend -> image scores (and maps).

Stages, exposed separately so benchmarks can time them:

1. :meth:`Scorer.load` -- files (PNG/JPEG/DICOM) or arrays -> preprocessed batch
   x float32 [N, 1, 64, 64] in [-1, 1] (``runtime.batch`` / ``runtime.preprocess``).
2. :meth:`Scorer.infer` -- x -> member statistics {mean_a, std_a, mean_b, std_b[, var_b]},
   float32 [N, 1, 64, 64], from the dual graph (or the two module graphs).
3. :meth:`Scorer.scores` -- statistics -> maps and image scores with ``runtime.scores`` (the one
   scoring implementation; nothing is scored inside the graphs).

:meth:`Scorer.score` runs all three per chunk of ``max_batch`` inputs and returns one
:class:`ScoreResult` per input; an input that cannot be loaded gets its ``error`` and the rest
are scored. Every image score it returns is also kept in ``Scorer.recent`` (a bounded
:class:`~ddad_edge.runtime.drift.ScoreWindow`) for the drift watch (``runtime/drift.py``).

Backends (``backend=``): "trt" (a TensorRT engine built by ``ddad-edge build``), "ort-trt",
"ort-cuda", "ort-cpu", "ort" (ort-cuda when onnxruntime has CUDA, else ort-cpu) and "auto"
(trt > ort-cuda > ort-cpu, the first that works here; why the others were skipped is kept in
``Scorer.notes``). ``precision="auto"`` means fp16 on GPU backends and fp32 on CPU.

Thread safety: :meth:`score`, :meth:`infer` and friends may be called from several threads.
onnxruntime sessions allow concurrent ``run`` calls, so ORT backends are not locked; the
TensorRT backend (one execution context, fixed device buffers) is serialised with a lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddad_edge.runtime.backends import (
    CUDA_EP,
    ORT_BACKENDS,
    Backend,
    BackendUnavailable,
    OrtBackend,
    TrtBackend,
    WarmUpFactory,
    gpu_info,
    import_tensorrt,
    ort_providers,
)
from ddad_edge.runtime.batch import LoadedBatch, item_error, load_inputs
from ddad_edge.runtime.bundle import (
    PRECISIONS,
    TOLERANCES,
    Bundle,
    BundleError,
    check_engine,
    graph_key,
    open_bundle,
    relative_errors,
)
from ddad_edge.runtime.calibration import Calibration, CalibrationError, load_calibration
from ddad_edge.runtime.drift import ScoreWindow
from ddad_edge.runtime.gate import (
    ARRAY_NOTE,
    GateResult,
    check_dataset,
    check_file,
    population_age,
)
from ddad_edge.runtime.io import DEFAULT_MAX_PIXELS, ImageLoadError
from ddad_edge.runtime.preprocess import IMAGE_SIZE, PreprocessError, check_input, preprocess
from ddad_edge.runtime.scores import (
    ASR_SCORE,
    dual_from_modules,
    image_scores,
    maps_from_stats,
    relative_score_errors,
    score_names,
)

BACKENDS = ("auto", "trt", "ort-trt", "ort-cuda", "ort-cpu", "ort")
GRAPH_MODES = ("dual", "modules")  # one dual graph, or the two module graphs
Input = str | os.PathLike[str] | np.ndarray


@dataclass
class ScoreResult:
    """The outcome for one input: scored, abstained (the input gate said the model does not apply)
    or error (it could not be read). The three are distinct everywhere results are reported.

    source: the path as given, ``"array[i]"`` for the i-th input when it was an array, or
        ``"input[i]"`` when it was neither a path nor an array.
    scores: {"rec", "intra", "inter"[, "asr"]} -> image score (float); None unless scored.
    maps: with ``maps=True``: the same names -> float32 [64, 64] pixel maps.
    error: why the input could not be read, one line (None otherwise).
    warnings: what the caller should know about a scored input, one line each (e.g. a
        multi-frame file of which only the first frame was scored); empty when nothing.
    reason: why the input gate abstained (None otherwise; ``runtime/gate.py``).
    notes: what the gate accepted with a caveat or could not check.
    flag: "abnormal" / "normal" at the calibrated operating point (None when uncalibrated or not
        scored).
    operating_point: {"specificity", "score", "threshold", "threshold_interval",
        "bundle_digest"} of the calibration in use, or None.
    """

    source: str
    scores: dict[str, float] | None = None
    maps: dict[str, np.ndarray] | None = field(default=None, repr=False)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    flag: str | None = None
    operating_point: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        """ "error", "abstained" or "scored"."""
        if self.error is not None:
            return "error"
        return "abstained" if self.reason is not None else "scored"

    @property
    def threshold(self) -> float | None:
        """The calibrated threshold in use, or None."""
        return None if self.operating_point is None else self.operating_point["threshold"]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready record (maps left out): source, status, scores, flag, threshold,
        operating_point, reason, notes, error, warnings."""
        return {
            "source": self.source,
            "status": self.status,
            "scores": self.scores,
            "flag": self.flag,
            "threshold": self.threshold,
            "operating_point": self.operating_point,
            "reason": self.reason,
            "notes": self.notes,
            "error": self.error,
            "warnings": list(self.warnings),
        }


def summarize(results: Sequence[ScoreResult]) -> dict[str, int]:
    """Counts per status ("scored", "abstained", "error") and per flag ("abnormal", "normal")."""
    out = {"scored": 0, "abstained": 0, "error": 0, "abnormal": 0, "normal": 0}
    for r in results:
        out[r.status] += 1
        if r.flag is not None:
            out[r.flag] += 1
    return out


@dataclass
class ScoreArrays:
    """Scores of a batch: image {name: float32 [N]}, maps {name: float32 [N, 1, 64, 64]} or None."""

    image: dict[str, np.ndarray]
    maps: dict[str, np.ndarray] | None = None


def _ort_names(backend: str) -> list[str]:
    if backend == "ort":
        return ["ort-cuda", "ort-cpu"] if CUDA_EP in ort_providers() else ["ort-cpu"]
    return [backend]


def _precision_for(backend: str, precision: str) -> str:
    if precision != "auto":
        return precision
    return "fp32" if backend == "ort-cpu" else "fp16"


def make_backends(
    bundle: Bundle,
    backend: str = "auto",
    precision: str = "auto",
    graph: str = "dual",
    *,
    intra_op_threads: int | None = None,
    warm_up: WarmUpFactory | None = None,
) -> tuple[dict[str, Backend], str, list[str]]:
    """Pick, create and load the backend(s) for a bundle (``warm_up``: see Scorer.from_bundle).

    Returns:
        ({graph name: loaded backend}, precision used, notes on skipped candidates). The graph
        names are "dual", or "module_A" and "module_B".

    Raises:
        BackendUnavailable / BundleError: the requested backend cannot run here (no candidate
        works in auto mode), with the reasons.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"precision must be {', '.join(PRECISIONS)} or auto; got {precision!r}")
    if graph not in GRAPH_MODES:
        raise ValueError(f"graph must be one of {', '.join(GRAPH_MODES)}; got {graph!r}")
    graphs = ["dual"] if graph == "dual" else ["module_A", "module_B"]
    if backend == "auto":
        candidates = ["trt", "ort-cuda", "ort-cpu"]
    else:
        candidates = _ort_names(backend)
    notes: list[str] = []
    last: Exception | None = None
    for cand in candidates:
        prec = _precision_for(cand, precision)
        try:
            if cand == "trt":
                trt_backend, trt_prec = _trt_backend(bundle, graph, precision)
                return {"dual": trt_backend}, trt_prec, notes
            if cand == "ort-cuda" and backend == "auto" and CUDA_EP not in ort_providers():
                raise BackendUnavailable("onnxruntime has no CUDAExecutionProvider")
            out: dict[str, Backend] = {}
            try:
                for g in graphs:
                    path = bundle.graph_path(g, prec)
                    b = OrtBackend(
                        path,
                        _providers(cand, bundle),
                        intra_op_threads=intra_op_threads,
                        name=cand,
                        warm_up=warm_up,
                    )
                    b.load()
                    out[g] = b
            except BaseException:
                for loaded in out.values():
                    loaded.close()
                raise
            return out, prec, notes
        except (BackendUnavailable, BundleError) as e:
            last = e
            notes.append(f"{cand}: {e}")
            if backend != "auto" and len(candidates) == 1:
                raise
    raise BackendUnavailable("; ".join(notes)) from last


def _trt_backend(bundle: Bundle, graph: str, asked: str) -> tuple[Backend, str]:
    """A loaded TrtBackend for the engine matching this GPU/TensorRT, and its precision
    (precision "auto": the fp16 engine, else the fp32 one)."""
    if graph != "dual":
        raise BackendUnavailable("TensorRT engines are built from the dual graph only")
    trt = import_tensorrt()  # BackendUnavailable with the install hint when missing
    try:
        gpu = gpu_info()
    except BackendUnavailable:
        raise
    except Exception as e:  # CUDA bindings present but no usable GPU/driver
        raise BackendUnavailable(f"no usable CUDA GPU: {e}") from e
    precs = ["fp16", "fp32"] if asked == "auto" else [asked]
    errors = []
    for p in precs:
        try:
            plan, _ = check_engine(bundle, p, trt.__version__, gpu)
        except BundleError as e:
            errors.append(str(e))
            continue
        b = TrtBackend(plan)
        try:
            b.load()
        except BackendUnavailable:
            raise
        except Exception as e:  # TensorRT / CUDA runtime errors
            b.close()
            raise BackendUnavailable(f"{plan}: TensorRT could not load the engine: {e}") from e
        return b, p
    raise BackendUnavailable("; ".join(errors))


def _providers(name: str, bundle: Bundle) -> list[Any]:
    provs: list[Any] = list(ORT_BACKENDS[name])
    if name == "ort-trt":
        cache = bundle.engines_dir / "ort-trt-cache"
        cache.mkdir(parents=True, exist_ok=True)
        opts = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
        }
        provs[0] = (provs[0], opts)
    return provs


def _check_counts(max_batch: int, workers: int | None) -> None:
    """ValueError for a batch size below 1 or a worker count below 1 (None: the default)."""
    if max_batch < 1:
        raise ValueError(f"max_batch (batch size) must be >= 1, got {max_batch}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1 (or unset: one per physical core), got {workers}")


def _score_not_given(path: Any, score: str, given: Sequence[str]) -> CalibrationError:
    """The error for a calibration on a score the scorer does not give (asr without ASR)."""
    return CalibrationError(
        f"{path}: calibrated on the {score} score, which this scorer does not give "
        f"(it gives {', '.join(given)})"
    )


class Scorer:
    """Score chest X-rays with a bundle (see the module docstring); build with
    :meth:`from_bundle`."""

    def __init__(
        self,
        bundle: Bundle,
        backends: dict[str, Backend],
        precision: str,
        *,
        max_batch: int = 64,
        workers: int | None = None,
        notes: list[str] | None = None,
        calibration: Calibration | None = None,
        gate: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        _check_counts(max_batch, workers)
        self.bundle = bundle
        self.backends = backends
        self.precision = precision
        self.graph = "dual" if "dual" in backends else "modules"
        self.max_batch = max_batch
        self.workers = workers
        self.max_pixels = max_pixels
        self.notes = list(notes or [])
        self.kind = bundle.kind
        self.has_asr = bundle.has_asr and self.graph == "dual"
        self.score_names = score_names(self.has_asr)
        """The image scores this scorer gives: rec, intra, inter (and asr with an ASR bundle's
        dual graph)."""
        self.calibration = calibration
        self.gate = gate
        self.age_years = population_age(bundle.manifest)
        self.recent = ScoreWindow()  # drift watch: recent image scores (runtime/drift.py)
        thread_safe = all(getattr(b, "thread_safe", False) for b in backends.values())
        self._lock = None if thread_safe else threading.Lock()

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | os.PathLike[str],
        backend: str = "auto",
        precision: str = "auto",
        graph: str = "dual",
        *,
        max_batch: int = 64,
        workers: int | None = None,
        verify: bool = True,
        intra_op_threads: int | None = None,
        warm_up: WarmUpFactory | None = None,
        calibration: str | os.PathLike[str] | None = None,
        operating_point: float | None = None,
        gate: bool = True,
        public_key: str | os.PathLike[str] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> Scorer:
        """Open (and hash-verify) a bundle and load a backend for it.

        Args:
            bundle_dir: folder written by ``ddad-edge export``.
            backend: "auto" (trt > ort-cuda > ort-cpu), "trt", "ort-trt", "ort-cuda", "ort-cpu"
                or "ort".
            precision: "fp32", "fp16", "int8" (8-bit bottleneck weights, onnxruntime only) or
                "auto" (fp16 on GPU backends, fp32 on CPU).
            graph: "dual" (one graph, default) or "modules" (module_A + module_B graphs).
            max_batch: inputs per inference call (and per loading chunk in :meth:`score`).
            workers: threads decoding image files (default: physical cores).
            max_pixels: largest image a file may declare (DICOM rows x columns x frames x
                samples, or width x height), checked from its header before decoding; larger
                files are that item's error. None: no limit.
            verify: check the sha256 of every bundle file first.
            intra_op_threads: onnxruntime CPU threads (default: physical cores).
            warm_up: opt-in background work per onnxruntime backend, started after its first
                inference (:meth:`settle` waits for it), e.g. ``hugepages.for_cpu_backend``
                (transparent huge pages for the CPU weights; process-wide advice). Default none.
            calibration: a calibration file for this bundle (``ddad-edge calibrate``); results
                then carry a flag at its operating point.
            operating_point: the specificity of the operating point to use (None: the file's
                default).
            gate: check DICOM headers before scoring and abstain on what the model does not
                cover (``runtime/gate.py``).
            public_key: PEM public key file: refuse the bundle unless it carries a valid
                signature by the matching private key (BundleError; needs the ``signing``
                extra). None (default): no signature check, and model-signing is not imported.

        Raises:
            CalibrationError: the calibration file is unreadable or for another bundle.
        """
        _check_counts(max_batch, workers)
        bundle = open_bundle(bundle_dir, verify=verify, public_key=public_key)
        cal = None
        if calibration is not None:
            cal = load_calibration(calibration, bundle.manifest, operating_point)
        backends, prec, notes = make_backends(
            bundle,
            backend,
            precision,
            graph,
            intra_op_threads=intra_op_threads,
            warm_up=warm_up,
        )
        scorer = cls(
            bundle,
            backends,
            prec,
            max_batch=max_batch,
            workers=workers,
            notes=notes,
            calibration=cal,
            gate=gate,
            max_pixels=max_pixels,
        )
        if cal is not None and cal.point.score not in scorer.score_names:
            scorer.close()
            raise _score_not_given(calibration, cal.point.score, scorer.score_names)
        return scorer

    # -- description ------------------------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        """Name of the backend that runs, e.g. "ort-cpu" or "trt"."""
        return next(iter(self.backends.values())).name

    @property
    def device(self) -> str:
        """Human description of where inference runs."""
        return next(iter(self.backends.values())).device

    def describe(self) -> dict[str, Any]:
        """Backend, device, providers, precision, graph and notes, for logs and reports."""
        first = next(iter(self.backends.values()))
        return {
            "backend": self.backend_name,
            "device": self.device,
            "active_providers": list(first.active_providers),
            "precision": self.precision,
            "graph": self.graph,
            "model": {"kind": self.kind, "k": self.bundle.k},
            "notes": self.notes
            + [n for b in self.backends.values() if (n := getattr(b, "fallback_note", None))],
        }

    def settle(self, timeout: float = 30.0) -> dict[str, str]:
        """Start the backends' warm-up work now (``from_bundle(warm_up=...)``; otherwise it
        starts after the first inference) and wait up to ``timeout`` s for it, so that later
        timings see the steady state. Returns {graph: what it did}; {} without warm-ups."""
        out = {}
        for g, b in self.backends.items():
            line = b.settle(timeout)
            if line is not None:
                out[g] = line
        return out

    # -- stages -----------------------------------------------------------------------------------
    def load(self, inputs: Sequence[Input] | Input, *, first_index: int = 0) -> LoadedBatch:
        """Decode and preprocess inputs; never raises for a bad input.

        Args:
            inputs: file paths (PNG/JPEG/DICOM/...) and/or image arrays (uint8, uint16 or float
                in [0, 1]; HxW or HxWx3); a single path or array is one input. Anything else
                (None, a number, a list, ...) becomes that item's error.
            first_index: index of ``inputs[0]`` in the caller's list (names ``array[i]``).

        Returns:
            LoadedBatch: x float32 [n_ok, 1, 64, 64] in [-1, 1], ``ok`` indices into inputs,
            ``errors`` (index, source, reason) for inputs that could not be loaded,
            ``warnings`` {index: [line, ...]} for loaded inputs with something to report.
        """
        items = _as_list(inputs)
        paths = [(i, it) for i, it in enumerate(items) if _is_path(it)]
        xs: dict[int, np.ndarray] = {}
        errors: list[tuple[int, str, str]] = []
        notes: dict[int, list[str]] = {}
        if paths:
            lb = load_inputs(
                [p for _, p in paths], workers=self.workers, max_pixels=self.max_pixels
            )
            for row, j in enumerate(lb.ok):
                xs[paths[j][0]] = lb.x[row]
            errors += [(paths[j][0], src, reason) for j, src, reason in lb.errors]
            notes.update({paths[j][0]: w for j, w in lb.warnings.items()})
        for i, it in enumerate(items):
            if _is_path(it):
                continue
            try:
                xs[i] = _array_input(it)
            except Exception as e:  # noqa: BLE001 - per-item isolation
                errors.append((i, _source(it, first_index + i), item_error(e)))
        ok = sorted(xs)
        x = (
            np.stack([xs[i] for i in ok]).astype(np.float32, copy=False)
            if ok
            else np.zeros((0, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32)
        )
        return LoadedBatch(x, ok, sorted(errors), notes)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Member statistics for x float32 [N, 1, 64, 64] in [-1, 1].

        Returns:
            {mean_a, std_a, mean_b, std_b[, var_b][, asr]} -> float32 [N, 1, 64, 64] (std:
            population, across each module's K members; var_b: AE-U only; asr: the ASR anomaly
            probability map, bundles with ASR only).
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected x [N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}], got {x.shape}")
        if len(x) == 0:
            names = ["mean_a", "std_a", "mean_b", "std_b"] + (
                ["var_b"] if self.kind == "aeu" else []
            )
            names += [ASR_SCORE] if self.has_asr else []
            return {n: np.zeros_like(x) for n in names}
        parts = [
            self._infer_chunk(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)
        ]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _infer_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self._lock is not None:
            with self._lock:
                return self._run(x)
        return self._run(x)

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.graph == "dual":
            out = self.backends["dual"].infer({"x": x})
        else:
            a = self.backends["module_A"].infer({"x": x})
            b = self.backends["module_B"].infer({"x": x})
            out = dual_from_modules(a, b)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def scores(
        self, x: np.ndarray, stats: dict[str, np.ndarray], maps: bool = False
    ) -> ScoreArrays:
        """Anomaly maps and image scores from x and its statistics (``runtime.scores``).

        Returns:
            ScoreArrays: image {rec, intra, inter[, asr]} float32 [N]; maps float32
            [N, 1, 64, 64] when ``maps`` is True.
        """
        m = maps_from_stats(x, stats)
        return ScoreArrays(image_scores(m), m if maps else None)

    def check(self, item: Input) -> GateResult:
        """The input gate for one input (``runtime/gate.py``); arrays pass with a note.

        Raises:
            ImageLoadError: a DICOM header that cannot be read.
        """
        if isinstance(item, np.ndarray):
            return GateResult(True, None, [ARRAY_NOTE])
        if not _is_path(item):
            return GateResult(True)  # not an image at all: loading reports the error
        return check_file(item, age_years=self.age_years)

    def score(self, inputs: Sequence[Input] | Input, maps: bool = False) -> list[ScoreResult]:
        """Gate, load, infer and score inputs in chunks of ``max_batch``; one result per input,
        in order. Inputs the gate rejects are abstained (``reason``); an input that fails to load
        (whatever it is: a bad file, a bad array, None) carries ``error``; neither has scores,
        and no exception escapes for a bad input. With a calibration, scored inputs get
        ``flag``."""
        return self._score(_as_list(inputs), maps, self.gate)

    def _score(self, items: list[Input], maps: bool, gate: bool) -> list[ScoreResult]:
        results: list[ScoreResult] = [ScoreResult(_source(it, i)) for i, it in enumerate(items)]
        todo = [i for i, it in enumerate(items) if self._gate_into(it, results[i], gate)]
        for start in range(0, len(todo), self.max_batch):
            idx = todo[start : start + self.max_batch]
            lb = self.load([items[i] for i in idx])
            for j, _, reason in lb.errors:
                results[idx[j]].error = reason
            for j, lines in lb.warnings.items():
                results[idx[j]].warnings = list(lines)
            if not lb.ok:
                continue
            arr = self.scores(lb.x, self.infer(lb.x), maps=maps)
            for row, j in enumerate(lb.ok):
                r = results[idx[j]]
                r.scores = {n: float(arr.image[n][row]) for n in self.score_names}
                self.recent.add(r.scores)
                if arr.maps is not None:
                    r.maps = {n: arr.maps[n][row, 0] for n in self.score_names}
                if self.calibration is not None:
                    r.flag = self.calibration.point.flag(r.scores)
                    r.operating_point = self.calibration.to_json()
        return results

    def score_dataset(self, ds: Any, maps: bool = False) -> ScoreResult:
        """Gate and score one pydicom Dataset (e.g. one received over the network; it needs its
        file meta or a transfer syntax pydicom can write). ``source`` is ``"dicom:<SOP Instance
        UID>"``. Scoring a file that is already on disk with :meth:`score` avoids a copy."""
        import tempfile

        source = f"dicom:{ds.get('SOPInstanceUID', '?')}"
        g = check_dataset(ds, age_years=self.age_years) if self.gate else GateResult(True)
        if not g.accepted:
            return ScoreResult(source, reason=g.reason, notes=list(g.notes))
        with tempfile.TemporaryDirectory(prefix="ddad-dataset-") as tmp:
            path = os.path.join(tmp, "input.dcm")
            try:
                ds.save_as(path, enforce_file_format=False)
            except Exception as e:  # pydicom raises many types on an inconsistent data set
                return ScoreResult(source, error=f"data set could not be written: {e}")
            r = self._score([path], maps, gate=False)[0]
        r.source, r.notes = source, list(g.notes)
        return r

    def _gate_into(self, item: Input, result: ScoreResult, gate: bool) -> bool:
        """Run the gate for one input and record its outcome; True when it is to be scored."""
        try:
            g = self.check(item) if gate else GateResult(True)
        except ImageLoadError as e:
            result.error = e.reason
            return False
        except Exception as e:  # noqa: BLE001 - per-item isolation (e.g. a failing PathLike)
            result.error = item_error(e)
            return False
        result.notes = list(g.notes)
        result.reason = g.reason
        return g.accepted

    # -- golden vectors ---------------------------------------------------------------------------
    def replay_golden(self, tolerance: float | None = None) -> dict[str, Any]:
        """Run the bundle's golden inputs and compare with the stored PyTorch FP32 outputs.

        Args:
            tolerance: largest allowed error / scale; default ``TOLERANCES[precision]``.

        Returns:
            {"errors": {output: {max_abs, range, rel}}, "score_errors": {score: max relative
            error}, "tolerance": float, "passed": bool, "n": int}. ``rel`` is the max abs error
            relative to the reference output's scale (``bundle.relative_errors``).
        """
        g = self.bundle.golden()
        x = g["x"]
        stats = self.infer(x)
        errs = relative_errors(stats, {k: g[k] for k in stats if k in g})
        got = self.scores(x, stats).image
        ref = {n: g[f"score_{n}"] for n in self.score_names if f"score_{n}" in g}
        score_errs = relative_score_errors(got, ref)
        tol = TOLERANCES[self.precision] if tolerance is None else float(tolerance)
        passed = all(e["rel"] <= tol for e in errs.values())
        return {
            "n": int(len(x)),
            "errors": errs,
            "score_errors": score_errs,
            "tolerance": tol,
            "passed": passed,
            "graph": graph_key("dual" if self.graph == "dual" else "modules", self.precision),
        }

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend(s)."""
        for b in self.backends.values():
            b.close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_list(inputs: Sequence[Input] | Input) -> list[Any]:
    if isinstance(inputs, (str, os.PathLike, np.ndarray)):
        return [inputs]
    return list(inputs)


def _is_path(item: object) -> bool:
    return isinstance(item, (str, os.PathLike))


def _array_input(item: object) -> np.ndarray:
    """Network input float32 [1, 64, 64] for an array item (ValueError/PreprocessError when
    the item is not an image array or cannot be a radiograph)."""
    if not isinstance(item, np.ndarray):
        raise PreprocessError(
            f"not an image: expected a file path or a numpy array, got {type(item).__name__}"
        )
    x = preprocess(item)
    check_input(x)
    return x


def _source(item: object, i: int) -> str:
    if isinstance(item, np.ndarray):
        return f"array[{i}]"
    if _is_path(item):
        try:
            return os.fsdecode(item)
        except Exception:  # noqa: BLE001 - a PathLike whose __fspath__ fails
            return f"input[{i}]"
    return f"input[{i}]"


__all__ = [
    "BACKENDS",
    "GRAPH_MODES",
    "ScoreArrays",
    "ScoreResult",
    "Scorer",
    "make_backends",
    "summarize",
]
