"""Inference backends with one shape (like Polygraphy runners): ``load()``, ``infer(feeds)``,
``settle(timeout)``, ``close()``, plus ``name``, ``device``, ``active_providers`` and
``thread_safe``.

``settle`` finishes optional warm-up work a backend starts after its first inference (a
:class:`WarmUp`, opted into per backend by a factory; the one the project has is
``runtime/hugepages.py``'s huge pages for onnxruntime's CPU weights) and says what it did.

* :class:`OrtBackend` -- onnxruntime with the CPU, CUDA or TensorRT execution provider. After the
  session is created it checks which provider really runs (``session.get_providers()``) and raises
  :class:`BackendUnavailable` when a requested GPU provider silently fell back to CPU (unless the
  caller allows the fallback, which is then reported in ``fallback_note``).
* :class:`TrtBackend` -- a serialized TensorRT engine run with the TensorRT 10/11 name-based API
  (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); device buffers through
  cuda-python (``cuda.bindings.runtime`` or the older ``cuda.cudart``), pycuda as a fallback.

Nothing here imports onnxruntime, tensorrt or cuda at module import time.

Thread safety: onnxruntime documents ``InferenceSession.run`` as safe to call from several threads
on one session, so ``OrtBackend.thread_safe`` is True. A TensorRT execution context and its
buffers are not, so ``TrtBackend.thread_safe`` is False and callers must serialise ``infer``
(:class:`ddad_edge.runtime.scorer.Scorer` does, with a lock).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ddad_edge.runtime.cpu import physical_cores

TRT_MISSING = (
    "TensorRT is not installed: pip install 'ddad-edge[trt]' on a machine with an NVIDIA GPU"
)
CUDA_MISSING = (
    "no CUDA Python binding found (cuda-python or pycuda): pip install 'ddad-edge[gpu]' "
    "(cuda-python) on a machine with an NVIDIA GPU"
)
ORT_GPU_HINT = (
    "install the GPU build of onnxruntime: pip uninstall -y onnxruntime && "
    "pip install 'ddad-edge[gpu]'"
)
CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"

ORT_BACKENDS: dict[str, tuple[str, ...]] = {
    "ort-cpu": (CPU_EP,),
    "ort-cuda": (CUDA_EP, CPU_EP),
    "ort-trt": (TRT_EP, CUDA_EP, CPU_EP),
}
"""Backend name -> onnxruntime provider list, most preferred first."""


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run here (package, provider, GPU or engine missing)."""


class Backend(Protocol):
    """What every backend offers."""

    name: str
    device: str
    active_providers: list[str]
    thread_safe: bool

    def load(self) -> None: ...

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def settle(self, timeout: float | None = None) -> str | None:
        """Start any warm-up work now (if not yet started), wait up to ``timeout`` s for it and
        return one line on what it did; None when the backend has none."""
        ...

    def close(self) -> None: ...


class WarmUp(Protocol):
    """Background work a backend starts once, after its first inference (so that the first
    result is not delayed), e.g. ``hugepages.HugePages``."""

    def start(self) -> None: ...

    def status(self, timeout: float | None = 0.0) -> str:
        """Wait up to ``timeout`` s, then one line: what it achieved, or that it still runs."""
        ...


WarmUpFactory = Callable[[Backend], "WarmUp | None"]
"""Given a loaded backend, the warm-up it should run (None: none for this backend)."""


# ----------------------------------------------------------------------------------------------
# Environment probes
# ----------------------------------------------------------------------------------------------


def import_onnxruntime() -> Any:
    """onnxruntime, imported on first use."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise BackendUnavailable("onnxruntime is not installed: pip install ddad-edge") from e


def session_options(ort: Any, intra_op_threads: int | None = None) -> Any:
    """The runtime's onnxruntime SessionOptions (also used by the benchmark's profiler).

    All graph optimisations; ``intra_op_threads`` CPU threads (default: physical cores); errors
    only in the log (keeps ORT's warnings off the user's console). Worker threads spin only
    during a run: between runs (decoding the next images, the application's own work) they would
    otherwise keep the cores busy and slow the decoding down (benchmarks/README.md, decision log).
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = intra_op_threads or physical_cores()
    so.log_severity_level = 3
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def import_tensorrt() -> Any:
    """tensorrt, imported on first use; BackendUnavailable with the install hint otherwise."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        raise BackendUnavailable(TRT_MISSING) from e


def tensorrt_installed() -> bool:
    """Whether ``import tensorrt`` could work (no import is done)."""
    return importlib.util.find_spec("tensorrt") is not None


def ort_providers() -> list[str]:
    """onnxruntime's available execution providers ([] when onnxruntime is missing)."""
    try:
        return list(import_onnxruntime().get_available_providers())
    except BackendUnavailable:
        return []


# ----------------------------------------------------------------------------------------------
# onnxruntime
# ----------------------------------------------------------------------------------------------
class OrtBackend:
    """One onnxruntime session on one ONNX file.

    Args:
        onnx_path: the graph.
        providers: provider names (or (name, options) pairs), most preferred first.
        allow_cpu_fallback: accept a session whose first requested GPU provider is not active
            (it then runs on CPU; ``fallback_note`` says so). False raises BackendUnavailable.
        intra_op_threads: CPU threads per run; default the number of physical cores.
        name: the backend name reported to users (default derived from the first provider).
        warm_up: opt-in warm-up work, made at load for the loaded session (e.g.
            ``hugepages.for_cpu_backend``) and started after the first run; ``settle`` waits
            for it. None (default): none.
    """

    thread_safe = True

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        providers: Sequence[str | tuple[str, dict[str, Any]]] = (CPU_EP,),
        *,
        allow_cpu_fallback: bool = False,
        intra_op_threads: int | None = None,
        name: str | None = None,
        warm_up: WarmUpFactory | None = None,
    ) -> None:
        self.path = Path(onnx_path)
        self.warm_up_factory = warm_up
        self.warm_up: WarmUp | None = None
        self._warm_up_started = False
        self._warm_up_lock = threading.Lock()  # infer() may be called from several threads
        self.providers = list(providers)
        self.allow_cpu_fallback = allow_cpu_fallback
        self.intra_op_threads = intra_op_threads
        first = self._pname(self.providers[0])
        self.name = name or {CPU_EP: "ort-cpu", CUDA_EP: "ort-cuda", TRT_EP: "ort-trt"}.get(
            first, f"ort:{first}"
        )
        self.device = "not loaded"
        self.active_providers: list[str] = []
        self.fallback_note: str | None = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._session: Any = None

    @staticmethod
    def _pname(p: str | tuple[str, dict[str, Any]]) -> str:
        return p if isinstance(p, str) else p[0]

    def load(self) -> None:
        """Create the session; verify the requested provider is the one that runs."""
        ort = import_onnxruntime()
        available = ort.get_available_providers()
        wanted = [self._pname(p) for p in self.providers]
        missing = [p for p in wanted if p not in available]
        providers = self.providers
        if missing:
            if wanted[0] in missing and not self.allow_cpu_fallback:
                raise BackendUnavailable(
                    f"onnxruntime {ort.__version__} has no {wanted[0]} (available: "
                    f"{', '.join(available)}); {ORT_GPU_HINT}"
                )
            providers = [p for p in self.providers if self._pname(p) in available] or [CPU_EP]
        so = session_options(ort, self.intra_op_threads)
        if not self.path.is_file():
            raise BackendUnavailable(f"{self.path}: no such ONNX file")
        try:
            with warnings.catch_warnings():  # a silent fallback is detected and reported below
                warnings.simplefilter("ignore", UserWarning)
                self._session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # ORT raises its own exception types
            raise BackendUnavailable(f"{self.path}: onnxruntime could not load it: {e}") from e
        self.active_providers = list(self._session.get_providers())
        if wanted[0] != CPU_EP and wanted[0] not in self.active_providers:
            note = (
                f"{wanted[0]} was requested but onnxruntime runs {self.path.name} on "
                f"{', '.join(self.active_providers)}"
            )
            if not self.allow_cpu_fallback:
                self.close()
                raise BackendUnavailable(f"{note}; {ORT_GPU_HINT} and check the CUDA install")
            self.fallback_note = note
            self.name = "ort-cpu"
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.device = self._describe(ort)
        self.warm_up = self.warm_up_factory(self) if self.warm_up_factory else None
        self._warm_up_started = False

    def _describe(self, ort: Any) -> str:
        top = self.active_providers[0] if self.active_providers else "?"
        if top == CPU_EP:
            threads = self.intra_op_threads or physical_cores()
            return (
                f"CPU ({physical_cores()} physical cores, {threads} intra-op threads), "
                f"onnxruntime {ort.__version__}"
            )
        return f"{top} (onnxruntime {ort.__version__}, device {ort.get_device()})"

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph. feeds: input name -> array; returns output name -> array."""
        if self._session is None:
            self.load()
        outs = self._session.run(None, feeds)
        if self.warm_up is not None and not self._warm_up_started:  # after the first run
            self._start_warm_up()
        return dict(zip(self.output_names, outs, strict=True))

    def _start_warm_up(self) -> None:
        with self._warm_up_lock:
            if self.warm_up is not None and not self._warm_up_started:
                self._warm_up_started = True
                self.warm_up.start()

    def settle(self, timeout: float | None = None) -> str | None:
        """Start the warm-up now if the first run has not yet, wait up to ``timeout`` s and
        say what it did (None without a warm-up)."""
        if self.warm_up is None:
            return None
        self._start_warm_up()
        return self.warm_up.status(timeout)

    def close(self) -> None:
        """Drop the session."""
        self._session = None


# ----------------------------------------------------------------------------------------------
# CUDA helpers (cuda-python, else pycuda)
# ----------------------------------------------------------------------------------------------
def _import_cudart() -> Any | None:
    """cuda-python's runtime module under its new (``cuda.bindings``) or old name, or None."""
    for mod in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(mod)
        except ImportError:
            continue
    return None


class CudaApi:
    """The handful of CUDA runtime calls the TensorRT backend needs, through cuda-python or
    pycuda. Pointers and stream handles are plain ints."""

    def __init__(self) -> None:
        self._rt = _import_cudart()
        self._pycuda: Any = None
        if self._rt is None:
            try:
                self._pycuda = importlib.import_module("pycuda.driver")
                importlib.import_module("pycuda.autoinit")
            except ImportError as e:
                raise BackendUnavailable(CUDA_MISSING) from e
            self._allocs: dict[int, Any] = {}
            self._streams: dict[int, Any] = {}
        self.binding = "cuda-python" if self._rt is not None else "pycuda"

    def _check(self, result: Any) -> Any:
        """Unpack cuda-python's (err, value...) tuples, raising on an error code."""
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self._rt.cudaGetErrorString(err)[1]
            raise BackendUnavailable(f"CUDA error {int(err)}: {name!r}")
        return rest[0] if len(rest) == 1 else rest

    def device_info(self, device: int = 0) -> dict[str, str]:
        """{"name": GPU name, "compute_capability": "major.minor"} of a device."""
        if self._rt is not None:
            props = self._check(self._rt.cudaGetDeviceProperties(device))
            name = props.name
            name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            return {
                "name": name.split("\x00")[0].strip(),
                "compute_capability": f"{props.major}.{props.minor}",
            }
        dev = self._pycuda.Device(device)
        major, minor = dev.compute_capability()
        return {"name": dev.name().strip(), "compute_capability": f"{major}.{minor}"}

    def malloc(self, nbytes: int) -> int:
        if self._rt is not None:
            return int(self._check(self._rt.cudaMalloc(nbytes)))
        buf = self._pycuda.mem_alloc(nbytes)
        self._allocs[int(buf)] = buf
        return int(buf)

    def free(self, ptr: int) -> None:
        if self._rt is not None:
            self._check(self._rt.cudaFree(ptr))
        else:
            self._allocs.pop(ptr).free()

    def stream(self) -> int:
        if self._rt is not None:
            return int(self._check(self._rt.cudaStreamCreate()))
        s = self._pycuda.Stream()
        self._streams[int(s.handle)] = s
        return int(s.handle)

    def stream_destroy(self, stream: int) -> None:
        if self._rt is not None:
            self._check(self._rt.cudaStreamDestroy(stream))
        else:
            self._streams.pop(stream, None)

    def htod(self, dst: int, src: np.ndarray, stream: int) -> None:
        src = np.ascontiguousarray(src)
        if self._rt is not None:
            kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._check(self._rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))
        else:
            self._pycuda.memcpy_htod_async(dst, src, self._streams[stream])

    def dtoh(self, dst: np.ndarray, src: int, stream: int) -> None:
        if self._rt is not None:
            kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(self._rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))
        else:
            self._pycuda.memcpy_dtoh_async(dst, src, self._streams[stream])

    def sync(self, stream: int) -> None:
        if self._rt is not None:
            self._check(self._rt.cudaStreamSynchronize(stream))
        else:
            self._streams[stream].synchronize()


def gpu_info(device: int = 0) -> dict[str, str]:
    """Name and compute capability of a GPU (BackendUnavailable without CUDA bindings/GPU)."""
    return CudaApi().device_info(device)


# ----------------------------------------------------------------------------------------------
# TensorRT
# ----------------------------------------------------------------------------------------------
class TrtBackend:
    """A serialized TensorRT engine (``.plan``) run with the TensorRT 10/11 tensor API.

    Device buffers for every I/O tensor are allocated once at ``load()`` for the engine's
    maximum batch (its optimization profile 0); larger batches are split. Not thread-safe.
    Sidecar matching (TensorRT version, GPU, ONNX hash) is done by the caller before load
    (see ``ddad_edge.runtime.bundle.check_engine``).
    """

    name = "trt"
    thread_safe = False

    def __init__(self, engine_path: str | os.PathLike[str]) -> None:
        self.path = Path(engine_path)
        self.device = "not loaded"
        self.active_providers: list[str] = []
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.max_batch = 0
        self._cuda: CudaApi | None = None
        self._ctx: Any = None
        self._engine: Any = None
        self._buffers: dict[str, int] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._stream = 0

    def load(self) -> None:
        """Deserialize the engine, create a context, allocate device buffers and a stream."""
        trt = import_tensorrt()
        self._cuda = CudaApi()
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise BackendUnavailable(
                f"{self.path}: TensorRT could not deserialize the engine (built by another "
                "TensorRT version or for another GPU?); rebuild it with `ddad-edge build --force`"
            )
        self._engine = engine
        self._ctx = engine.create_execution_context()
        self._runtime = runtime
        # a second load (after close) starts from empty tensor lists, not the old ones
        self.input_names, self.output_names, self._dtypes = [], [], {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self._dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.input_names.append(name)
            else:
                self.output_names.append(name)
        if len(self.input_names) != 1:
            raise BackendUnavailable(f"{self.path}: expected one input, got {self.input_names}")
        x = self.input_names[0]
        shapes = engine.get_tensor_profile_shape(x, 0)  # [min, opt, max]
        max_shape = tuple(int(d) for d in shapes[-1])
        self.max_batch = max_shape[0]
        per_item = int(np.prod(max_shape[1:]))
        for name in self.input_names + self.output_names:
            nbytes = self.max_batch * per_item * self._dtypes[name].itemsize
            self._buffers[name] = self._cuda.malloc(nbytes)
        self._stream = self._cuda.stream()
        info = self._cuda.device_info()
        self.device = (
            f"{info['name']} (sm {info['compute_capability']}), TensorRT {trt.__version__}"
        )
        self.active_providers = [f"TensorRT {trt.__version__}"]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine on feeds {input name: float32 [N, 1, 64, 64]}, any N >= 1."""
        if self._ctx is None:
            self.load()
        name = self.input_names[0]
        x = np.asarray(feeds[name])
        parts = []
        for i in range(0, len(x), self.max_batch):
            parts.append(self._run(name, x[i : i + self.max_batch]))
        return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}

    def _run(self, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        assert self._cuda is not None
        ctx, cuda, stream = self._ctx, self._cuda, self._stream
        x = np.ascontiguousarray(x, dtype=self._dtypes[name])
        if not ctx.set_input_shape(name, tuple(x.shape)):
            raise ValueError(f"{self.path}: input shape {x.shape} outside the engine profile")
        cuda.htod(self._buffers[name], x, stream)
        for tensor, ptr in self._buffers.items():
            ctx.set_tensor_address(tensor, ptr)
        if not ctx.execute_async_v3(stream):
            raise RuntimeError(f"{self.path}: TensorRT execute_async_v3 failed")
        out = {}
        for tensor in self.output_names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(tensor))
            host = np.empty(shape, dtype=self._dtypes[tensor])
            cuda.dtoh(host, self._buffers[tensor], stream)
            out[tensor] = host
        cuda.sync(stream)
        return {k: v.astype(np.float32, copy=False) for k, v in out.items()}

    def settle(self, timeout: float | None = None) -> str | None:
        """No warm-up work: None."""
        return None

    def close(self) -> None:
        """Free device buffers and the stream; drop the engine."""
        if self._cuda is not None:
            for ptr in self._buffers.values():
                self._cuda.free(ptr)
            if self._stream:
                self._cuda.stream_destroy(self._stream)
        self._buffers, self._stream = {}, 0
        self._ctx = self._engine = None
