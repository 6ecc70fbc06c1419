"""What the machine can do, measured in the same run as the results: matmul peak (GFLOP/s) and
memory bandwidth (GB/s = 1e9 B/s), each through numpy and torch (all its threads), best call of
repeated calls; the machine's figure is the best library's. "read" = a full reduction over a
float32 array (bytes = array size); "copy" = dst[:] = src (bytes = 2 x array size, as STREAM
counts). The DRAM figures use an array of max(256 MiB, 2 x last-level cache); the read bandwidth
at a graph's weight size reads a buffer that large again and again, as batch-1 inference reads
its weights (the cache's bandwidth when they fit in it). benchmarks/README.md has the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ddad_edge.benchmarks.latency import Budget, repeat_timed
from ddad_edge.benchmarks.machine import llc_bytes, memory_total_gib

READ_CURVE_MIB: tuple[int, ...] = (16, 32, 64, 96, 128, 192, 256, 512)


def _times(
    fn: Callable[[], object], min_reps: int, min_seconds: float, max_seconds: float
) -> list[float]:
    """Durations (s) of fn() after one untimed call (``latency.repeat_timed``)."""

    def once() -> dict[str, float]:
        t0 = time.perf_counter()
        fn()
        return {"call": time.perf_counter() - t0}

    return repeat_timed(once, Budget(1, min_reps, min_seconds, max_seconds))["call"].tolist()


def _per_library(
    measure: Callable[[Any, list[Any]], dict[str, Any]], arrays: list[np.ndarray]
) -> dict[str, Any]:
    """{"numpy": measure(np, arrays), "torch": measure(torch, the same memory as tensors) or
    {"error"} when torch is not importable}."""
    out = {"numpy": measure(np, arrays)}
    try:
        import torch

        out["torch"] = measure(torch, [torch.from_numpy(a) for a in arrays])
    except ImportError as e:
        out["torch"] = {"error": str(e)}
    return out


def _best(out: dict[str, Any], key: str) -> float:
    """The best figure ``key`` among the libraries of ``out``."""
    return max(v[key] for v in (out["numpy"], out["torch"]) if key in v)


def measure_matmul_peak(
    n: int = 2048, *, min_reps: int = 3, min_seconds: float = 1.0, max_seconds: float = 10.0
) -> dict[str, Any]:
    """float32 n x n matmul (2 n^3 FLOPs per call), numpy and torch: {"n", "flops_per_call",
    "numpy": {"best_gflops", "median_gflops", "reps"}, "torch": {... "threads"} or {"error"},
    "peak_gflops"}."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, n), dtype=np.float32) for _ in "ab"]
    flops = 2.0 * n**3

    def measure(xp: Any, t: list[Any]) -> dict[str, Any]:
        times = _times(lambda: xp.matmul(t[0], t[1], out=t[2]), min_reps, min_seconds, max_seconds)
        best, median = flops / min(times) / 1e9, flops / float(np.median(times)) / 1e9
        out = {"best_gflops": best, "median_gflops": median, "reps": len(times)}
        return out if xp is np else out | {"threads": xp.get_num_threads()}

    out = {"n": n, "flops_per_call": flops}
    out |= _per_library(measure, [*arrays, np.empty((n, n), np.float32)])
    return out | {"peak_gflops": _best(out, "best_gflops")}


def default_bandwidth_bytes() -> int:
    """Array size for the DRAM bandwidth: max(256 MiB, 2 x last-level cache), at most 1/8 of
    the installed memory."""
    want = max(256 * 2**20, 2 * (llc_bytes() or 0))
    mem = memory_total_gib()
    return min(want, int(mem * 2**30 / 8)) if mem else want


def _bandwidth(nbytes: int, copy: bool, **budget: Any) -> dict[str, Any]:
    """Best read (and copy) bandwidth of float32 arrays of ``nbytes``, per library, GB/s."""
    src = np.ones(max(1, nbytes // 4), np.float32)
    arrays = [src, np.empty_like(src)] if copy else [src]

    def measure(xp: Any, t: list[Any]) -> dict[str, Any]:
        out = {"read_gbps": src.nbytes / min(_times(lambda: t[0].sum(), **budget)) / 1e9}
        if not copy:
            return out
        copy_s = min(_times(lambda: t[1].__setitem__(..., t[0]), **budget))
        threads = 1 if xp is np else xp.get_num_threads()
        return out | {"copy_gbps": 2 * src.nbytes / copy_s / 1e9, "threads": threads}

    out = _per_library(measure, arrays)
    return out | {"read_gbps": _best(out, "read_gbps")}


def measure_bandwidth(
    nbytes: int | None = None,
    *,
    min_reps: int = 3,
    min_seconds: float = 0.5,
    max_seconds: float = 5.0,
) -> dict[str, Any]:
    """DRAM bandwidth from a full read and a copy of float32 arrays of ``nbytes`` (default
    :func:`default_bandwidth_bytes`): {"nbytes", "llc_bytes", "numpy": {"read_gbps",
    "copy_gbps", "threads"}, "torch": {...}, "read_gbps", "copy_gbps"}, best call of each."""
    n = (nbytes or default_bandwidth_bytes()) // 4
    budget = {"min_reps": min_reps, "min_seconds": min_seconds, "max_seconds": max_seconds}
    out = {"nbytes": int(n * 4), "llc_bytes": llc_bytes(), **_bandwidth(n * 4, True, **budget)}
    return out | {"copy_gbps": _best(out, "copy_gbps")}


def measure_read_bandwidth(
    nbytes: int, *, min_reps: int = 5, min_seconds: float = 0.3, max_seconds: float = 3.0
) -> dict[str, Any]:
    """Read bandwidth of a buffer of ``nbytes`` read repeatedly (cache-resident when it fits in
    the last-level cache), GB/s: {"nbytes", "in_llc", "read_gbps", "numpy", "torch"}."""
    budget = {"min_reps": min_reps, "min_seconds": min_seconds, "max_seconds": max_seconds}
    llc = llc_bytes()
    in_llc = None if llc is None else nbytes <= llc
    return {"nbytes": int(nbytes), "in_llc": in_llc, **_bandwidth(nbytes, False, **budget)}


def measure_read_curve(sizes_mib: tuple[int, ...] = READ_CURVE_MIB) -> list[dict[str, Any]]:
    """Read bandwidth against buffer size (MiB): how much of the last-level cache this process
    really gets (on a VM whose cache is shared with other tenants the bandwidth falls off well
    below the nominal size). [{"mib", "read_gbps", "in_llc"}] in the order of ``sizes_mib``."""
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
