"""Where the time of one onnxruntime CPU inference goes: the graph run with onnxruntime's
profiler on (the runtime's CPU session settings), kernel time summed per class of operation
(:func:`op_class`: matmul, conv, convtranspose, data movement incl. the decoder's pixel
interleave, other = elementwise and the member mean / std) beside the FLOPs the graph assigns to
each class. The profiler adds a little overhead per node: the split is for diagnosis only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.benchmarks.latency import Budget, repeat_timed

MATMUL_OPS = ("MatMul", "Gemm", "FusedGemm", "FusedMatMul", "MatMulInteger", "QLinearMatMul")
MOVEMENT_OPS = ("DepthToSpace", "Concat", "Split", "Transpose", "Reshape", "Slice", "Squeeze")
MOVEMENT_OPS += ("Unsqueeze", "ReorderInput", "ReorderOutput")
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
        feed = {sess.get_inputs()[0].name: x}

        def run_once() -> dict[str, float]:
            t0 = time.perf_counter()
            sess.run(None, feed)
            return {"run": time.perf_counter() - t0}

        # exactly `reps` timed runs (no minimum time)
        walls = repeat_timed(run_once, Budget(warmup, reps, 0.0, math.inf))["run"]
        events = json.loads(Path(sess.end_profiling()).read_text())
    n_runs, per_class = _kernel_ms(events, reps)
    fl_class: dict[str, int] = dict.fromkeys(CLASSES, 0)
    for op, f in count_flops(load_graph(onnx_path), batch)["by_op"].items():
        fl_class[op_class(op)] += f
    total = sum(per_class.values())
    classes = {
        c: {
            "ms": ms,
            "share": ms / total if total else float("nan"),
            "gflop": fl_class[c] / 1e9,
            "gflops": fl_class[c] / (ms / 1e3) / 1e9 if ms > 0 and fl_class[c] else None,
        }
        for c, ms in per_class.items()
    }
    wall_ms = float(np.median(walls) * 1e3)
    return {
        "batch": batch,
        "reps": n_runs,
        "wall_ms": wall_ms,
        "kernel_ms": total,
        "classes": classes,
    }


def _kernel_ms(events: list[dict[str, Any]], reps: int) -> tuple[int, dict[str, float]]:
    """(runs, {class: kernel ms per run}) over the last ``reps`` runs of an onnxruntime profile."""
    per_class: dict[str, float] = dict.fromkeys(CLASSES, 0.0)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    timed = runs[-reps:] if len(runs) >= reps else runs
    if not timed:
        raise RuntimeError("onnxruntime's profile has no model_run events")
    t0, t1 = timed[0]["ts"], timed[-1]["ts"] + timed[-1]["dur"]
    for e in events:
        if (
            e.get("cat") == "Node"
            and e.get("name", "").endswith("_kernel_time")
            and t0 <= e["ts"] <= t1
        ):
            cls = op_class(e.get("args", {}).get("op_name", ""), e["name"])
            per_class[cls] += e["dur"] / 1e3 / len(timed)
    return len(timed), per_class
