"""What the machine can do, measured in the same run as the results: matmul peak (GFLOP/s) and
memory bandwidth (GB/s = 1e9 B/s).

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
  and the weight-read floor at batch 1 is that of the cache, not DRAM's.
- Figures are best-case and measured while whatever else runs on the machine keeps running: the
  load average at the start and end of the run is recorded to judge how quiet it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ddad_edge.benchmarks.latency import Budget, repeat_timed
from ddad_edge.benchmarks.machine import llc_bytes, memory_total_gib


def _best_of(
    fn: Callable[[], object], min_reps: int, min_seconds: float, max_seconds: float
) -> list[float]:
    """Durations (s) of fn() after one untimed call: >= min_reps calls and >= min_seconds total,
    stopping at max_seconds (``latency.repeat_timed``)."""

    def once() -> dict[str, float]:
        t0 = time.perf_counter()
        fn()
        return {"call": time.perf_counter() - t0}

    budget = Budget(warmup=1, min_reps=min_reps, min_seconds=min_seconds, max_seconds=max_seconds)
    return repeat_timed(once, budget)["call"].tolist()


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
