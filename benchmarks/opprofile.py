"""Where the time of one onnxruntime CPU inference goes, by kind of operation.

Runs a graph with onnxruntime's profiler on (same session settings as the runtime's CPU backend),
sums the kernel time of every node per *class* of operation, and sets the FLOPs that the graph
itself assigns to each class (``flops.count_flops``) against that time:

- ``matmul``: MatMul / Gemm and the fused forms onnxruntime makes of them (FusedGemm,
  FusedMatMul, MatMulInteger, DynamicQuantizeMatMul ...);
- ``conv``: Conv (onnxruntime's blocked NCHWc convolutions included, Relu fused in);
- ``convtranspose``: ConvTranspose;
- ``data movement``: DepthToSpace, Concat, Split, Transpose, Reshape, Slice, layout reorders,
  and the decoder's pixel interleave (a MatMul by a permutation matrix, node ``Interleave_*``);
- ``other``: elementwise ops, reductions, softmax, casts (the member mean / std).

Profiling adds a little overhead per node; the split is for diagnosis, the bench's timings are
taken without it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MATMUL_OPS = ("MatMul", "Gemm", "FusedGemm", "FusedMatMul", "MatMulInteger", "QLinearMatMul")
MOVEMENT_OPS = (
    "DepthToSpace",
    "Concat",
    "Split",
    "Transpose",
    "Reshape",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "ReorderInput",
    "ReorderOutput",
)
CLASSES = ("matmul", "conv", "convtranspose", "data movement", "other")


def op_class(op_type: str, node_name: str = "") -> str:
    """The class (see the module docstring) of an ONNX or onnxruntime op type; nodes named
    ``Interleave_*`` (MatMuls by a permutation matrix in the decoder) are data movement."""
    if node_name.startswith("Interleave"):
        return "data movement"
    if op_type in MATMUL_OPS or "MatMul" in op_type:
        return "matmul"
    if op_type in ("Conv", "FusedConv", "ConvInteger", "QLinearConv"):
        return "conv"
    if op_type == "ConvTranspose":
        return "convtranspose"
    if op_type in MOVEMENT_OPS:
        return "data movement"
    return "other"


def profile_by_class(
    onnx_path: str | os.PathLike[str],
    batch: int,
    *,
    reps: int = 10,
    warmup: int = 3,
    intra_op_threads: int | None = None,
) -> dict[str, Any]:
    """Kernel time per op class of ``reps`` runs at ``batch`` (after ``warmup`` untimed runs).

    Returns {"batch", "reps", "wall_ms" (median run, profiler on), "classes": {class: {"ms" (per
    run), "share" (of the summed kernel time), "gflop", "gflops"}}, "kernel_ms" (per run)}.
    """
    import onnxruntime as ort

    from ddad_edge.benchmarks.flops import count_flops, load_graph
    from ddad_edge.runtime.backends import session_options

    so = session_options(ort, intra_op_threads)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 1, 64, 64)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(warmup):
            sess.run(None, {name: x})
        walls = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            walls.append(time.perf_counter() - t0)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_class: dict[str, float] = dict.fromkeys(CLASSES, 0.0)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    timed = runs[-reps:] if len(runs) >= reps else runs
    if not timed:
        raise RuntimeError("onnxruntime's profile has no model_run events")
    t0, t1 = timed[0]["ts"], timed[-1]["ts"] + timed[-1]["dur"]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not t0 <= e["ts"] <= t1:
            continue
        cls = op_class(e.get("args", {}).get("op_name", ""), e["name"])
        per_class[cls] += e["dur"] / 1e3 / len(timed)
    flops = count_flops(load_graph(onnx_path), batch)["by_op"]
    fl_class: dict[str, int] = dict.fromkeys(CLASSES, 0)
    for op, f in flops.items():
        fl_class[op_class(op)] += f
    total = sum(per_class.values())
    classes = {}
    for c in CLASSES:
        ms = per_class[c]
        classes[c] = {
            "ms": ms,
            "share": ms / total if total else float("nan"),
            "gflop": fl_class[c] / 1e9,
            "gflops": fl_class[c] / (ms / 1e3) / 1e9 if ms > 0 and fl_class[c] else None,
        }
    return {
        "batch": batch,
        "reps": len(timed),
        "wall_ms": float(np.median(walls) * 1e3),
        "kernel_ms": total,
        "classes": classes,
    }
