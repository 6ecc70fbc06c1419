"""The machine under test: what it is (CPU, cores, GPU, library versions, date) and what it can do
(measured matmul peak in GFLOP/s and memory bandwidth in GB/s, in the same run as the results).

Method of the limits:

- Matmul peak: C = A @ B with square float32 matrices (default n = 2048, 2 n^3 FLOPs per call),
  through numpy (its BLAS, all its threads) and torch (torch.get_num_threads() threads). Each is
  repeated for at least ``min_reps`` calls and ``min_seconds``; the BEST call is the peak, the
  median is reported beside it. The machine's peak is the larger of the two libraries.
- Memory bandwidth: arrays of ``nbytes`` (default the larger of 256 MiB and twice the last-level
  cache, so the figure is DRAM's), best of repeated calls. "read" = a full reduction over the
  array (bytes = array size); "copy" = dst[:] = src (bytes = 2 x array size: one read, one
  write, as STREAM counts). Measured with numpy (one thread) and torch (all its threads); the
  machine's figure is the best of them.
- Read bandwidth at a graph's weight size (:func:`measure_read_bandwidth`): the same "read" on a
  buffer as large as the graph's weights, read again and again -- what batch-1 inference does
  with its weights. When the weights fit in the last-level cache this is the cache's bandwidth,
  and the weight-read floor at batch 1 is that of the cache, not DRAM's (on the 2-core Xeon of
  our reports: 480 MiB L3, 107 MB of FP32 weights).
- Figures are best-case and measured while whatever else runs on the machine keeps running: the
  load average at the start and end of the run is recorded to judge how quiet it was.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ddad_edge.runtime.cpu import core_ids, cpuinfo_records, usable_cpus

LIBRARIES: tuple[str, ...] = (
    "numpy",
    "onnx",
    "onnxruntime",
    "torch",
    "tensorrt",
    "PIL",
    "pydicom",
    "matplotlib",
)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_info() -> dict[str, Any]:
    """CPU model, logical/physical/usable cores and the SIMD flags that matter for int8/fp16."""
    records = cpuinfo_records()
    first = records[0] if records else {}
    model = first.get("model name", "")
    flags = set(first.get("flags", "").split())
    interesting = (
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
        "f16c",
    )
    return {
        "model": model or platform.processor() or platform.machine(),
        "llc_bytes": llc_bytes(),
        "logical_cores": os.cpu_count(),
        "physical_cores": len(core_ids(records)) or None,
        "usable_cores": len(usable_cpus()),
        "flags": [f for f in interesting if f in flags],
        "arch": platform.machine(),
    }


def llc_bytes() -> int | None:
    """Size of the largest (last-level) CPU cache in bytes, from sysfs (None when unknown)."""
    best: tuple[int, int] | None = None
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return None
    for d in entries:
        if not d.startswith("index"):
            continue
        level, size = _read(f"{base}/{d}/level").strip(), _read(f"{base}/{d}/size").strip()
        if not level.isdigit() or not size:
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1].upper(), 1)
        digits = size[:-1] if size[-1].isalpha() else size
        if not digits.isdigit():
            continue
        cand = (int(level), int(digits) * mult)
        best = cand if best is None or cand > best else best
    return best[1] if best else None


def memory_total_gib() -> float | None:
    """Installed memory from /proc/meminfo, GiB (None when unknown)."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return None


def library_versions() -> dict[str, str]:
    """Version of each library in LIBRARIES, or 'not installed: <reason>'."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            mod = importlib.import_module(name)
            out[name] = str(getattr(mod, "__version__", "unknown"))
        except Exception as e:  # noqa: BLE001 - any import failure is a fact to record
            out[name] = f"not installed: {type(e).__name__}: {e}"[:200]
    return out


def gpu_description() -> dict[str, Any]:
    """GPU name(s), driver and CUDA runtime as torch and nvidia-smi see them."""
    out: dict[str, Any] = {"cuda_available": False, "devices": []}
    try:
        import torch

        out["cuda_available"] = bool(torch.cuda.is_available())
        out["torch_cuda"] = torch.version.cuda
        if out["cuda_available"]:
            out["devices"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    except Exception as e:  # noqa: BLE001
        out["torch_error"] = f"{type(e).__name__}: {e}"[:200]
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if r.returncode == 0 and r.stdout.strip():
            out["nvidia_smi"] = r.stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def ort_providers() -> list[str]:
    """onnxruntime's available execution providers ([] when onnxruntime is missing)."""
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except ImportError:
        return []


def thread_settings() -> dict[str, Any]:
    """Threading knobs that change the numbers: torch threads and the usual env variables."""
    out: dict[str, Any] = {
        k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        out["torch_interop_threads"] = torch.get_num_interop_threads()
    except ImportError:
        pass
    return out


def describe_machine() -> dict[str, Any]:
    """Everything about the machine that a reader needs to compare two benchmark reports."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "memory_gib": memory_total_gib(),
        "gpu": gpu_description(),
        "onnxruntime_providers": ort_providers(),
        "threads": thread_settings(),
        "versions": library_versions(),
        "loadavg_start": list(load) if load else None,
    }


def _best_of(
    fn: Callable[[], None], min_reps: int, min_seconds: float, max_seconds: float
) -> list[float]:
    """Durations (s) of fn() after one untimed call: >= min_reps calls and >= min_seconds total,
    stopping at max_seconds."""
    fn()
    times: list[float] = []
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - t_start
        if (len(times) >= min_reps and elapsed >= min_seconds) or elapsed >= max_seconds:
            return times


def measure_matmul_peak(
    n: int = 2048, *, min_reps: int = 3, min_seconds: float = 1.0, max_seconds: float = 10.0
) -> dict[str, Any]:
    """float32 n x n matmul throughput via numpy and torch (when importable).

    Returns {"n", "flops_per_call", "numpy": {"best_gflops", "median_gflops", "reps"},
    "torch": {...} or {"error"}, "peak_gflops": the best of the libraries}.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    flops = 2.0 * n**3
    out: dict[str, Any] = {"n": n, "flops_per_call": flops}

    def summary(times: list[float]) -> dict[str, Any]:
        return {
            "best_gflops": flops / min(times) / 1e9,
            "median_gflops": flops / float(np.median(times)) / 1e9,
            "reps": len(times),
        }

    out["numpy"] = summary(
        _best_of(lambda: np.matmul(a, b, out=c), min_reps, min_seconds, max_seconds)
    )
    try:
        import torch

        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        out["torch"] = summary(
            _best_of(lambda: torch.matmul(ta, tb, out=tc), min_reps, min_seconds, max_seconds)
        )
        out["torch"]["threads"] = torch.get_num_threads()
    except ImportError as e:
        out["torch"] = {"error": str(e)}
    out["peak_gflops"] = max(
        v["best_gflops"] for v in (out["numpy"], out["torch"]) if "best_gflops" in v
    )
    return out


def default_bandwidth_bytes() -> int:
    """Array size for the DRAM bandwidth: max(256 MiB, 2 x last-level cache), at most 1/8 of
    the installed memory."""
    want = max(256 * 2**20, 2 * (llc_bytes() or 0))
    mem = memory_total_gib()
    if mem:
        want = min(want, int(mem * 2**30 / 8))
    return want


def _read_gbps(src: np.ndarray, kw: dict[str, Any]) -> dict[str, Any]:
    """Best "read" (full reduction) bandwidth of the float32 array ``src``, numpy and torch."""
    nbytes = src.nbytes
    out: dict[str, Any] = {
        "numpy": {"read_gbps": nbytes / min(_best_of(lambda: src.sum(), **kw)) / 1e9}
    }
    try:
        import torch

        ts = torch.from_numpy(src)
        out["torch"] = {"read_gbps": nbytes / min(_best_of(lambda: ts.sum(), **kw)) / 1e9}
    except ImportError as e:
        out["torch"] = {"error": str(e)}
    out["read_gbps"] = max(v["read_gbps"] for v in out.values() if "read_gbps" in v)
    return out


def measure_bandwidth(
    nbytes: int | None = None,
    *,
    min_reps: int = 3,
    min_seconds: float = 0.5,
    max_seconds: float = 5.0,
) -> dict[str, Any]:
    """DRAM bandwidth from a full read and a copy of float32 arrays of ``nbytes`` (default
    :func:`default_bandwidth_bytes`).

    Returns {"nbytes", "llc_bytes", "numpy": {"read_gbps", "copy_gbps"}, "torch": {...},
    "read_gbps", "copy_gbps"} in GB/s (1e9 bytes per second), best call of each.
    """
    n = (nbytes or default_bandwidth_bytes()) // 4
    kw = {"min_reps": min_reps, "min_seconds": min_seconds, "max_seconds": max_seconds}
    out: dict[str, Any] = {"nbytes": int(n * 4), "llc_bytes": llc_bytes()}
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    read = _read_gbps(src, kw)
    out["numpy"] = {
        "read_gbps": read["numpy"]["read_gbps"],
        "copy_gbps": 2 * n * 4 / min(_best_of(lambda: np.copyto(dst, src), **kw)) / 1e9,
        "threads": 1,
    }
    try:
        import torch

        ts, td = torch.from_numpy(src), torch.from_numpy(dst)
        out["torch"] = {
            "read_gbps": read["torch"]["read_gbps"],
            "copy_gbps": 2 * n * 4 / min(_best_of(lambda: td.copy_(ts), **kw)) / 1e9,
            "threads": torch.get_num_threads(),
        }
    except ImportError as e:
        out["torch"] = {"error": str(e)}
    libs = [v for v in (out["numpy"], out["torch"]) if "read_gbps" in v]
    out["read_gbps"] = max(v["read_gbps"] for v in libs)
    out["copy_gbps"] = max(v["copy_gbps"] for v in libs)
    return out


def measure_read_bandwidth(
    nbytes: int, *, min_reps: int = 5, min_seconds: float = 0.3, max_seconds: float = 3.0
) -> dict[str, Any]:
    """Read bandwidth of a buffer of ``nbytes`` read repeatedly (cache-resident when it fits in
    the last-level cache), GB/s. Returns {"nbytes", "in_llc", "read_gbps", "numpy", "torch"}."""
    kw = {"min_reps": min_reps, "min_seconds": min_seconds, "max_seconds": max_seconds}
    out = _read_gbps(np.ones(max(1, nbytes // 4), np.float32), kw)
    llc = llc_bytes()
    return {"nbytes": int(nbytes), "in_llc": None if llc is None else nbytes <= llc, **out}


READ_CURVE_MIB: tuple[int, ...] = (16, 32, 64, 96, 128, 192, 256, 512)


def measure_read_curve(sizes_mib: tuple[int, ...] = READ_CURVE_MIB) -> list[dict[str, Any]]:
    """Read bandwidth against buffer size (:func:`measure_read_bandwidth` at each size, MiB).

    Shows how much of the last-level cache this process really gets: on a VM whose cache is
    shared with other tenants the bandwidth falls off well below the nominal cache size.
    Returns [{"mib", "read_gbps", "in_llc"}] in the order of ``sizes_mib``."""
    out = []
    for mib in sizes_mib:
        r = measure_read_bandwidth(mib * 2**20, min_reps=3, min_seconds=0.2, max_seconds=1.0)
        out.append({"mib": int(mib), "read_gbps": r["read_gbps"], "in_llc": r["in_llc"]})
    return out


def measure_limits(*, quick: bool = False) -> dict[str, Any]:
    """Matmul peak and memory bandwidth (``quick``: small sizes, for smoke tests only)."""
    if quick:
        return {
            "matmul": measure_matmul_peak(256, min_reps=2, min_seconds=0.0, max_seconds=0.5),
            "bandwidth": measure_bandwidth(8 * 2**20, min_reps=2, min_seconds=0.0, max_seconds=0.5),
            "quick": True,
        }
    return {
        "matmul": measure_matmul_peak(),
        "bandwidth": measure_bandwidth(),
        "read_curve": measure_read_curve(),
        "quick": False,
    }
