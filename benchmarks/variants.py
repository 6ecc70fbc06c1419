"""Smaller-weight graph variants (the batch-1 weight-read floor) and which one a bench run keeps.

``fp16w``: every large float32 initializer stored as float16 and Cast back to float32 in the
graph (FP32 compute). It runs through the real ``Scorer`` in a *variant bundle*: a folder whose
files link to the original bundle's, except ``dual_fp32.onnx`` (the variant) and the manifest
(that file's hash and size updated, a ``variant`` note); the original is not modified. The other
smaller-weight lane, ``ort-int8``, runs the bundle's own ``int8`` precision (``export/int8.py``).
A variant is kept only if, for each score, |ΔAUC| and both ends of its 95% interval (from
``ddad-edge parity``) are within ``VARIANT_TOLERANCE``, and it is at least ``VARIANT_MIN_SPEEDUP``
x as fast as ort FP32 at batch 1; of several, the fastest (benchmarks/README.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ddad_edge.benchmarks.lanes import LANE_SPECS, REDUCED_TOLERANCE
from ddad_edge.benchmarks.schema import BenchResult, LaneEntry, VariantRow, Variants, lane_point
from ddad_edge.export.weights import link_or_copy
from ddad_edge.runtime.bundle import MANIFEST, graph_key, read_manifest, sha256_file
from ddad_edge.runtime.manifest import sealed

VARIANTS: tuple[str, ...] = ("fp16w",)
FP16W_MIN_ELEMENTS = 1024
VARIANT_NOTES: dict[str, str] = {
    "int8": "the bundle's dual_int8: QInt8 per-channel weights of the MatMuls >= 1 MiB; rest FP32",
    "fp16w": "float32 initializers >= 1024 elements stored as float16 + Cast; FP32 compute",
}


def make_fp16_weights(src: Path, dst: Path, min_elements: int = FP16W_MIN_ELEMENTS) -> Path:
    """Store every float32 initializer with >= ``min_elements`` elements as float16, followed
    by a Cast to float32 under the original name; the rest of the graph is unchanged."""
    model = onnx.load(str(src))
    g = model.graph
    kept, casts = [], []
    for t in g.initializer:
        if t.data_type != TensorProto.FLOAT or int(np.prod(t.dims)) < min_elements:
            kept.append(t)
            continue
        half = numpy_helper.from_array(
            numpy_helper.to_array(t).astype(np.float16), f"{t.name}__fp16"
        )
        kept.append(half)
        casts.append(
            helper.make_node(
                "Cast", [half.name], [t.name], name=f"Cast_{t.name}_to_fp32", to=TensorProto.FLOAT
            )
        )
    nodes = list(g.node)
    del g.initializer[:], g.node[:]
    g.initializer.extend(kept)
    g.node.extend(casts + nodes)
    onnx.save(model, str(dst))
    return Path(dst)


def make_variant_bundle(
    bundle: Path, variant: str, out_dir: Path, graph_file: Path | None = None
) -> Path:
    """A variant bundle in ``out_dir`` (created; must not exist or be empty): see the module
    docstring. ``graph_file``: use this ONNX file as the variant instead of building
    ``variant`` (for user-supplied graphs, e.g. a deliberately tampered one in tests).
    Returns ``out_dir``. ValueError for an unknown variant without ``graph_file``."""
    if graph_file is None and variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    bundle, out_dir = Path(bundle), Path(out_dir)
    manifest = read_manifest(bundle)
    key = graph_key("dual", "fp32")
    if (entry := manifest["graphs"].get(key)) is None:
        raise ValueError(
            f"{bundle}: bundle has no {key} graph to derive the {variant} variant from"
        )
    graph_name, path = entry["file"], out_dir / entry["file"]
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty")
    for item in bundle.iterdir():
        if item.name not in (MANIFEST, graph_name):
            link_or_copy(item.resolve(), out_dir / item.name)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".onnx")
    os.close(fd)
    if graph_file is not None:
        shutil.copyfile(graph_file, tmp)
    else:
        make_fp16_weights(bundle / graph_name, Path(tmp))
    os.replace(tmp, path)
    new = json.loads(json.dumps(manifest))
    digest, size = sha256_file(path), path.stat().st_size
    new["files"][graph_name] = {"sha256": digest, "bytes": size}
    new["graphs"][key].update(sha256=digest, bytes=size)
    new["variant"] = {
        "kind": variant,
        "derived_from": str(bundle.resolve()),
        "graph": graph_name,
        "note": VARIANT_NOTES.get(variant, f"user-supplied graph {graph_file}"),
    }
    (out_dir / MANIFEST).write_text(json.dumps(sealed(new), indent=1))
    return out_dir


# --- which variant a bench run keeps ------------------------------------------------------

VARIANT_TOLERANCE = REDUCED_TOLERANCE
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
