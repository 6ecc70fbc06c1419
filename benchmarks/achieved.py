"""Each lane against the reference and against the machine: speedup ratios to torch, the
graphs' cost (FLOPs, weight bytes), and the achieved fraction of the measured limits
(see benchmarks/README.md, "Machine limits")."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddad_edge.benchmarks import flops
from ddad_edge.benchmarks.schema import LaneEntry, LaneLimits, Ratio, lane_point


def graph_costs(paths: dict[str, Path], batches: Sequence[int]) -> dict[str, Any]:
    """Graph label -> flops.graph_cost of that ONNX file (batches 1, 64 and the sweep's)."""
    counted = sorted({1, 64, *batches})
    out = {}
    for label, p in sorted(paths.items()):
        out[label] = flops.graph_cost(p, counted)
        out[label]["graph"] = label
    return out


def ratios(lane: LaneEntry, ref: LaneEntry) -> dict[str, Ratio]:
    """Per batch: speedup of the scoring latency (ref p50 / lane p50) and throughput ratio."""
    out = {}
    for b, p in lane.get("sweep", {}).get("points", {}).items():
        r = lane_point(ref, b)
        if r:
            out[b] = Ratio(
                speedup=r["scoring_latency"]["p50_ms"] / p["scoring_latency"]["p50_ms"],
                throughput_ratio=p["throughput_ips"] / r["throughput_ips"],
            )
    return out


def lane_limits(
    lane: LaneEntry, graph: dict[str, Any] | None, limits: dict[str, Any] | None
) -> LaneLimits:
    """Achieved fraction of the measured machine limits for one CPU lane.

    Two weight-read floors: ``floor_ms`` = weight bytes / read bandwidth of a buffer of the
    weights' size read repeatedly (cache-resident when the weights fit in the last-level cache:
    the floor that applies to repeated batch-1 inference), and ``floor_dram_ms`` = weight bytes
    / DRAM read bandwidth (weights streamed from memory, e.g. the first call after other work).
    """
    if graph is None or limits is None:
        return {}
    wb = graph["weights"]["total"]
    dram_s = wb / (limits["bandwidth"]["read_gbps"] * 1e9)
    at_size = limits.get("bandwidth_at_weights", {}).get(str(wb))
    floor_s = wb / (at_size["read_gbps"] * 1e9) if at_size else dram_s
    out: LaneLimits = {
        "graph": graph["graph"],
        "weight_bytes": wb,
        "floor_ms": floor_s * 1e3,
        "floor_gbps": (at_size or limits["bandwidth"])["read_gbps"],
        "floor_in_llc": at_size.get("in_llc") if at_size else None,
        "floor_dram_ms": dram_s * 1e3,
    }
    p1, p64 = lane_point(lane, 1), lane_point(lane, 64)
    if p1:
        lat, inf = p1["scoring_latency"]["p50_ms"], p1["stages"]["inference"]["p50_ms"]
        out["b1_latency_over_floor"] = lat / (floor_s * 1e3)
        out["b1_inference_over_floor"] = inf / (floor_s * 1e3)
        out["b1_latency_over_dram_floor"] = lat / (dram_s * 1e3)
    if p64:
        fl = graph["flops"]["64"]["flops"]
        gflops = fl / (p64["stages"]["inference"]["p50_ms"] / 1e3) / 1e9
        out["b64_gflops"] = gflops
        out["b64_fraction_of_peak"] = gflops / limits["matmul"]["peak_gflops"]
    return out
