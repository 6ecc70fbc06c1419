"""The issue's performance targets, evaluated on a bench result (reported, never asserted).

Each target is {"id", "target", "measured", "value", "met" (True/False, or None when it could not
be measured), "how"}. The lane the targets are judged on is ``ort`` (onnxruntime CPU, FP32), the
deployment default on CPU; ``torch`` is the PyTorch eager reference.
"""

from __future__ import annotations

from ddad_edge.benchmarks.schema import BenchResult, Target, result_point

MAIN_LANE = "ort"


def _target(
    tid: str, target: str, how: str, value: float | None, ok: bool | None, measured: str
) -> Target:
    return {
        "id": tid,
        "target": target,
        "how": how,
        "value": value,
        "met": ok,
        "measured": measured,
    }


def _speedup_target(result: BenchResult, lane: str, batch: int, need: float) -> Target:
    """Speedup over torch at ``batch``: from the interleaved measurement when the run has one
    for ``lane`` (robust to drift between the lanes' sweeps), else from the two sweeps."""
    tid, target = f"speedup_b{batch}", f"{lane} >= {need}x torch eager at batch {batch}"
    p, ref = result_point(result, lane, batch), result_point(result, "torch", batch)
    sweep = None
    if p and ref:
        # = lane / torch throughput (batch / median latency), as the sweep table shows it
        sweep = ref["scoring_latency"]["p50_ms"] / p["scoring_latency"]["p50_ms"]
    pr = result.get("paired", {})
    pb = pr.get("batches", {}).get(str(batch)) if pr.get("lane") == lane else None
    if pb:
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
    return _target(
        tid, target, "", None, None, f"not measured (batch {batch} of {lane} and torch needed)"
    )


def evaluate_targets(result: BenchResult, lane: str = MAIN_LANE) -> list[Target]:
    """The five targets of the issue, measured on ``lane`` (see the module docstring)."""
    out = []
    for batch, need in ((1, 3.0), (64, 1.5)):
        out.append(_speedup_target(result, lane, batch, need))
    frac = result.get("lanes", {}).get(lane, {}).get("limits", {})
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
    v = frac.get("b1_latency_over_floor")
    dram = frac.get("b1_latency_over_dram_floor")
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
    e2e = result.get("lanes", {}).get(lane, {}).get("end_to_end", {}).get("fullres")
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
