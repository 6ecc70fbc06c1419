"""The export parity gate: run candidate ONNX graphs on onnxruntime (CPU) and compare them with
the PyTorch FP32 reference on real preprocessed images.

Errors are reported per output as max |onnx - torch| relative to the range (max - min) of the
reference output, and per image score as max |onnx - torch| / |torch| over the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddad_edge.runtime.bundle import relative_errors
from ddad_edge.runtime.scores import relative_score_errors, scores_from_stats

SCORE_TOLERANCE_FP32 = 1e-5
"""Largest allowed relative error of an FP32 graph's image scores (per image) in the gate."""


class ParityError(RuntimeError):
    """A graph's outputs differ from the PyTorch reference by more than the tolerance."""


@dataclass
class ParityResult:
    """Comparison of one graph with the reference on n images."""

    graph: str
    precision: str
    tolerance: float
    errors: dict[str, dict[str, float]]
    score_errors: dict[str, float] = field(default_factory=dict)
    score_tolerance: float | None = None
    note: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        ok = all(e["rel"] <= self.tolerance for e in self.errors.values())
        if self.score_tolerance is not None:
            ok = ok and all(v <= self.score_tolerance for v in self.score_errors.values())
        return ok

    @property
    def worst(self) -> float:
        """Largest relative output error."""
        return max((e["rel"] for e in self.errors.values()), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "precision": self.precision,
            "tolerance": self.tolerance,
            "errors": self.errors,
            "score_errors": self.score_errors,
            "score_tolerance": self.score_tolerance,
            "passed": self.passed,
            "note": self.note,
            "seconds": round(self.seconds, 3),
        }


def run_onnx(
    model_bytes: bytes | str, x: np.ndarray, *, optimize: bool = True, threads: int | None = None
) -> tuple[dict[str, np.ndarray], float]:
    """Run a serialized ONNX model on onnxruntime's CPU provider.

    Args:
        model_bytes: the serialized model, or the path of a model file (its external data
            beside it).
        x: float32 [N, 1, 64, 64].
        optimize: graph optimisation level ALL (True) or disabled (False; needed by the FP16
            storage emulation, whose rounding casts must survive).

    Returns:
        (outputs by name, seconds of the run call).
    """
    import time

    import onnxruntime as ort

    from ddad_edge.runtime.backends import session_options

    so = session_options(ort, threads)
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    outs = sess.run(None, {"x": np.ascontiguousarray(x, np.float32)})
    seconds = time.perf_counter() - t0
    return dict(zip([o.name for o in sess.get_outputs()], outs, strict=True)), seconds


def compare(
    graph: str,
    precision: str,
    got: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    tolerance: float,
    *,
    x: np.ndarray | None = None,
    score_tolerance: float | None = None,
    note: str = "",
    seconds: float = 0.0,
) -> ParityResult:
    """Compare a graph's outputs with the reference; with x (dual graphs) also image scores."""
    errs = relative_errors(got, ref)
    missing = sorted(set(got) ^ set(ref))
    if missing:
        raise ParityError(f"{graph}: outputs {missing} are not in both the graph and the reference")
    serr: dict[str, float] = {}
    if x is not None:
        serr = relative_score_errors(scores_from_stats(x, got), scores_from_stats(x, ref))
    return ParityResult(graph, precision, tolerance, errs, serr, score_tolerance, note, seconds)


def format_table(results: list[ParityResult]) -> str:
    """One line per graph: worst relative error, tolerance, pass/fail (for error messages)."""
    lines = []
    for r in results:
        per = ", ".join(f"{k} {v['rel']:.2e}" for k, v in r.errors.items())
        sc = ", ".join(f"{k} {v:.1e}" for k, v in r.score_errors.items())
        status = "ok" if r.passed else "FAILED"
        lines.append(
            f"{r.graph}: {status} (tol {r.tolerance:g}) {per}" + (f"; scores {sc}" if sc else "")
        )
    return "\n".join(lines)
