"""Each lane against the reference, the machine and the targets: speedup ratios to torch, the
graphs' cost (FLOPs, weight bytes), the achieved fraction of the measured limits, and the
issue's performance targets (reported, never asserted), judged on ``MAIN_LANE`` (onnxruntime
CPU FP32, the deployment default on CPU). See benchmarks/README.md, "What each number means".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddad_edge.benchmarks import flops
from ddad_edge.benchmarks.schema import (
    BenchResult,
    LaneEntry,
    LaneLimits,
    Ratio,
    Target,
    lane_point,
    result_point,
)

MAIN_LANE = "ort"


def graph_costs(paths: dict[str, Path], batches: Sequence[int]) -> dict[str, Any]:
    """Graph label -> flops.graph_cost of that ONNX file (batches 1, 64 and the sweep's)."""
    counted = sorted({1, 64, *batches})
    return {
        label: {**flops.graph_cost(p, counted), "graph": label}
        for label, p in sorted(paths.items())
    }


def ratios(lane: LaneEntry, ref: LaneEntry) -> dict[str, Ratio]:
    """Per batch: speedup of the scoring latency (ref p50 / lane p50) and throughput ratio."""
    out = {}
    for b, p in lane.get("sweep", {}).get("points", {}).items():
        if r := lane_point(ref, b):
            out[b] = Ratio(
                speedup=r["scoring_latency"]["p50_ms"] / p["scoring_latency"]["p50_ms"],
                throughput_ratio=p["throughput_ips"] / r["throughput_ips"],
            )
    return out


def lane_limits(
    lane: LaneEntry, graph: dict[str, Any] | None, limits: dict[str, Any] | None
) -> LaneLimits:
    """Achieved fraction of the measured machine limits for one CPU lane. ``floor_ms``: weight
    bytes / read bandwidth of a buffer of the weights' size read repeatedly (what batch-1
    inference does); ``floor_dram_ms``: weight bytes / DRAM read bandwidth."""
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
    if p1 := lane_point(lane, 1):
        lat, inf = p1["scoring_latency"]["p50_ms"], p1["stages"]["inference"]["p50_ms"]
        out["b1_latency_over_floor"] = lat / (floor_s * 1e3)
        out["b1_inference_over_floor"] = inf / (floor_s * 1e3)
        out["b1_latency_over_dram_floor"] = lat / (dram_s * 1e3)
    if p64 := lane_point(lane, 64):
        gflops = graph["flops"]["64"]["flops"] / (p64["stages"]["inference"]["p50_ms"] / 1e3) / 1e9
        out["b64_gflops"] = gflops
        out["b64_fraction_of_peak"] = gflops / limits["matmul"]["peak_gflops"]
    return out


def _target(tid: str, target: str, how: str, value: float | None, met: bool | None, measured: str):
    return Target(id=tid, target=target, how=how, value=value, met=met, measured=measured)


def _speedup_target(result: BenchResult, lane: str, batch: int, need: float) -> Target:
    """Speedup over torch at ``batch``: from the interleaved measurement when the run has one
    for ``lane`` (robust to drift between the lanes' sweeps), else from the two sweeps."""
    tid, target = f"speedup_b{batch}", f"{lane} >= {need}x torch eager at batch {batch}"
    p, ref = result_point(result, lane, batch), result_point(result, "torch", batch)
    # = lane / torch throughput (batch / median latency), as the sweep table shows it
    sweep = ref["scoring_latency"]["p50_ms"] / p["scoring_latency"]["p50_ms"] if p and ref else None
    pr = result.get("paired", {})
    if pb := pr.get("batches", {}).get(str(batch)) if pr.get("lane") == lane else None:
        v = pb["ratio"]
        how = (
            f"torch / {lane} scoring latency (inference + scores) at batch {batch}, median of "
            f"{pb['rounds']} per-round ratios of interleaved turns"
        )
        measured = (
            f"{v:.2f}x (rounds {pb['ratio_min']:.2f}-{pb['ratio_max']:.2f}x, "
            f"quartiles {pb['ratio_q25']:.2f}-{pb['ratio_q75']:.2f}x"
            + (f"; separate sweeps {sweep:.2f}x)" if sweep is not None else ")")
        )
        return _target(tid, target, how, v, v >= need, measured)
    if sweep is not None:
        how = (
            f"torch p50 / {lane} p50 of the batch-1 scoring latency (inference + scores)"
            if batch == 1
            else f"{lane} / torch scoring throughput at batch {batch}"
        )
        return _target(
            tid, target, how + " (separate sweeps)", sweep, sweep >= need, f"{sweep:.2f}x"
        )
    missing = f"not measured (batch {batch} of {lane} and torch needed)"
    return _target(tid, target, "", None, None, missing)


def evaluate_targets(result: BenchResult, lane: str = MAIN_LANE) -> list[Target]:
    """The five targets of the issue, measured on ``lane``; met is None when not measured."""
    out = [_speedup_target(result, lane, b, need) for b, need in ((1, 3.0), (64, 1.5))]
    entry = result.get("lanes", {}).get(lane, {})
    frac = entry.get("limits", {})
    why = "machine limits not measured" if not result.get("limits") else None
    v = frac.get("b64_fraction_of_peak")
    out.append(
        _target(
            "b64_peak_fraction",
            "batch-64 throughput >= 70% of the measured matmul peak",
            "graph FLOPs at batch 64 / median batch-64 inference time, over the matmul peak",
            v,
            None if v is None else v >= 0.70,
            f"{100 * v:.1f}% of peak"
            if v is not None
            else f"not measured ({why or f'batch 64 of {lane} needed'})",
        )
    )
    v, dram = frac.get("b1_latency_over_floor"), frac.get("b1_latency_over_dram_floor")
    where = "in the last-level cache" if frac.get("floor_in_llc") else "read from DRAM"
    out.append(
        _target(
            "b1_floor_ratio",
            "batch-1 latency within 1.3x of the weight-read floor",
            "batch-1 scoring latency p50 / (graph weight bytes / read bandwidth of a buffer of "
            "the weights' size, read repeatedly as batch-1 inference does)",
            v,
            None if v is None else v <= 1.3,
            f"{v:.2f}x the floor (weights {where}); {dram:.2f}x the DRAM-streaming floor"
            if v is not None and dram is not None
            else f"not measured ({why or f'batch 1 of {lane} needed'})",
        )
    )
    e2e = entry.get("end_to_end", {}).get("fullres")
    v = e2e.get("preprocess_over_scoring") if isinstance(e2e, dict) and e2e.get("n_ok") else None
    out.append(
        _target(
            "fullres_preprocess_vs_scoring",
            "end to end on full-resolution images, preprocessing <= scoring",
            "decode + preprocess time / (inference + scores) time over the full-resolution folder",
            v,
            None if v is None else v <= 1.0,
            f"preprocessing = {v:.2f}x scoring"
            if v is not None
            else f"not measured (no full-res end-to-end pass of {lane})",
        )
    )
    return out
