"""Which smaller-weight variant (``benchmarks/variants.py``) a bench run keeps, if any.

A variant is kept only if, for each score, |ΔAUC| and both ends of its 95% bootstrap interval
(from ``ddad-edge parity``) are within ``VARIANT_TOLERANCE``, and it is at least
``VARIANT_MIN_SPEEDUP`` x as fast as ort FP32 at batch 1; of several, the fastest.
"""

from __future__ import annotations

from typing import Any

from ddad_edge.benchmarks.lanes import LANE_SPECS
from ddad_edge.benchmarks.schema import BenchResult, LaneEntry, VariantRow, Variants, lane_point
from ddad_edge.benchmarks.variants import VARIANT_NOTES

VARIANT_TOLERANCE = 0.003
# a smaller gain than this cannot be told from this VM's run-to-run noise of the same two lanes
# (benchmarks/README.md, decision log)
VARIANT_MIN_SPEEDUP = 1.05


def _speed(row: VariantRow, e: LaneEntry, ort: LaneEntry, paired: dict[str, Any]) -> None:
    """Batch-1 latency and the speedup over ort: interleaved when measured, else the sweeps'."""
    p1, ort_p1 = lane_point(e, 1), lane_point(ort, 1)
    if p1:
        row["b1_p50_ms"] = p1["scoring_latency"]["p50_ms"]
        if ort_p1:
            row["speedup_vs_ort"] = ort_p1["scoring_latency"]["p50_ms"] / row["b1_p50_ms"]
            row["speedup_how"] = "separate sweeps"
    if "ratio" in paired:
        row["speedup_vs_ort"] = paired["ratio"]
        row["speedup_how"] = (
            f"interleaved, median of {paired['rounds']} rounds "
            f"(quartiles {paired['ratio_q25']:.2f}-{paired['ratio_q75']:.2f}x)"
        )


def _judge(row: VariantRow, lane_parity: dict[str, Any] | None) -> str:
    """The decision for one measured variant from its parity entry and its speed."""
    if lane_parity is None:
        return "undecided: no parity result (run `ddad-edge parity`, pass --parity)"
    d = float(lane_parity["max_abs_delta_auc"])
    row["max_abs_delta_auc"] = d
    ci = [
        abs(float(b))
        for sc in lane_parity.get("scores", {}).values()
        for b in sc.get("delta_auc_ci95") or []
    ]
    row["max_abs_delta_auc_ci95"] = max(ci) if ci else None
    if d > VARIANT_TOLERANCE:
        return f"rejected: |ΔAUC| > {VARIANT_TOLERANCE}"
    if ci and max(ci) > VARIANT_TOLERANCE:
        return f"rejected: the 95% interval of ΔAUC reaches {max(ci):.4f} > {VARIANT_TOLERANCE}"
    if row.get("speedup_vs_ort", 0.0) < VARIANT_MIN_SPEEDUP:
        return (
            f"not kept: less than {VARIANT_MIN_SPEEDUP}x ort FP32 at batch 1 "
            "(within this machine's run-to-run noise)"
        )
    return "eligible"


def choose_variant(result: BenchResult, parity: dict[str, Any] | None) -> Variants:
    """Latency and ΔAUC of each variant lane of ``result`` and which (if any) is kept."""
    ort = result["lanes"].get("ort", {})
    paired = result.get("paired", {}).get("variants_vs_main", {})
    rows: dict[str, VariantRow] = {}
    for name, e in result["lanes"].items():
        spec = LANE_SPECS[name]
        if not spec.smaller_weights:
            continue
        row: VariantRow = {"note": VARIANT_NOTES[spec.precision]}
        rows[name] = row
        if not e.get("available"):
            row["decision"] = f"not available: {e.get('reason')}"
            continue
        row["weight_mb"] = e.get("limits", {}).get("weight_bytes", 0) / 1e6 or None
        _speed(row, e, ort, paired.get(name, {}))
        row["decision"] = _judge(row, (parity or {}).get("lanes", {}).get(name))
    eligible = [n for n, r in rows.items() if r.get("decision") == "eligible"]
    kept = max(eligible, key=lambda n: rows[n]["speedup_vs_ort"]) if eligible else None
    if kept:
        rows[kept]["decision"] = "kept"
    return {
        "lanes": rows,
        "kept": kept,
        "rule": f"A variant is kept only if, for each of the three scores, |ΔAUC| and both ends "
        f"of its 95% bootstrap interval are <= {VARIANT_TOLERANCE}, and it is at least "
        f"{VARIANT_MIN_SPEEDUP}x as fast as ort FP32 at batch 1 (interleaved measurement when "
        "the run has one); of several, the fastest.",
    }
