"""Latency and throughput harness: time-bounded repetition of the three stages of DDAD scoring.

One repetition on a batch of B image files runs, through a lane
(:class:`ddad_edge.benchmarks.lanes.Lane`):

1. preprocessing: ``lane.load(paths)`` (decode + grey + resize + normalise, the runtime's code),
2. inference: ``lane.infer(x)`` (both modules, x float32 [B, 1, 64, 64] -> member statistics),
3. scoring: ``lane.scores(x, stats)`` (the score maps and image scores, the runtime's code),

each timed with ``time.perf_counter`` (lanes return host numpy arrays, so GPU work is finished
when a stage returns). "scoring latency" below is inference + scoring (full DDAD scoring of an
already-preprocessed batch); "end to end" adds preprocessing.

Repetition is time-bounded: after ``warmup`` untimed repetitions, at least ``min_reps`` and at
least ``min_seconds`` of timed repetitions, never more than ``max_seconds`` (after which it stops
even below ``min_reps``, and the summary says how many it got).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.benchmarks.schema import Sweep, SweepPoint
from ddad_edge.benchmarks.stats import summarize_times

STAGES: tuple[str, ...] = ("preprocess", "inference", "scoring")


@dataclass(frozen=True)
class Budget:
    """How long to repeat one measurement: see the module docstring."""

    warmup: int = 2
    min_reps: int = 5
    min_seconds: float = 1.0
    max_seconds: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def repeat_timed(run_once: Callable[[], dict[str, float]], budget: Budget) -> dict[str, np.ndarray]:
    """Call ``run_once`` under ``budget``; it returns {stage: seconds} for one repetition.

    Returns {stage: float64 [R] seconds} over the R timed repetitions (warm-up excluded).
    """
    for _ in range(budget.warmup):
        run_once()
    samples: dict[str, list[float]] = {}
    t_start = time.perf_counter()
    while True:
        for stage, s in run_once().items():
            samples.setdefault(stage, []).append(s)
        n = len(next(iter(samples.values())))
        elapsed = time.perf_counter() - t_start
        if (
            n >= budget.min_reps and elapsed >= budget.min_seconds
        ) or elapsed >= budget.max_seconds:
            return {k: np.asarray(v, np.float64) for k, v in samples.items()}


def timed_stages(lane: Any, paths: Sequence[str | Path]) -> tuple[dict[str, float], Any]:
    """The three stages once on ``paths`` through ``lane``: ({stage: seconds}, the LoadedBatch).
    Inference and scores are skipped (0 s) when no file could be loaded."""
    t0 = time.perf_counter()
    batch = lane.load(list(paths))
    t1 = time.perf_counter()
    t2 = t3 = t1
    if len(batch.ok):
        stats = lane.infer(batch.x)
        t2 = time.perf_counter()
        lane.scores(batch.x, stats)
        t3 = time.perf_counter()
    return {"preprocess": t1 - t0, "inference": t2 - t1, "scoring": t3 - t2}, batch


def stage_runner(lane: Any, paths: Sequence[str | Path]) -> Callable[[], dict[str, float]]:
    """One repetition of the three stages on ``paths`` through ``lane`` (see module docstring);
    an input that fails to load is an error here (the benchmark inputs are known good)."""
    paths = list(paths)

    def run_once() -> dict[str, float]:
        stages, batch = timed_stages(lane, paths)
        if batch.errors:
            raise RuntimeError(
                f"{len(batch.errors)} benchmark input(s) failed to load, e.g. "
                f"{batch.errors[0][1]}: {batch.errors[0][2]}"
            )
        return stages

    return run_once


def batch_paths(pool: Sequence[str | Path], batch: int) -> list[str | Path]:
    """The first ``batch`` paths of ``pool``, cycling through it when the pool is smaller."""
    if not pool:
        raise ValueError("no benchmark input files")
    return [pool[i % len(pool)] for i in range(batch)]


def summarize_stages(samples: dict[str, np.ndarray], batch: int) -> SweepPoint:
    """Per-stage timing summaries plus the two composite figures of a batch size.

    Returns {"batch", "stages": {stage: summarize_times}, "scoring_latency": summary of
    inference + scoring, "end_to_end": summary of all three, "throughput_ips": images/s of
    scoring (batch / median scoring latency), "throughput_e2e_ips": the same end to end}.
    """
    scoring = samples["inference"] + samples["scoring"]
    e2e = scoring + samples["preprocess"]
    return {
        "batch": int(batch),
        "stages": {k: summarize_times(samples[k]) for k in STAGES},
        "scoring_latency": summarize_times(scoring),
        "end_to_end": summarize_times(e2e),
        "throughput_ips": float(batch / np.median(scoring)),
        "throughput_e2e_ips": float(batch / np.median(e2e)),
    }


def measure_lane(
    lane: Any,
    pool: Sequence[str | Path],
    batches: Sequence[int],
    *,
    latency_budget: Budget,
    sweep_budget: Budget,
    on_point: Callable[[str, int], None] | None = None,
) -> Sweep:
    """Batch sweep of one lane.

    Batch 1 runs under ``latency_budget`` (more repetitions, for stable p95/p99); every other
    batch size under ``sweep_budget``. ``on_point(lane_name, batch)`` is called before each point.

    Returns {"points": {str(batch): summarize_stages(...)}}.
    """
    points: dict[str, SweepPoint] = {}
    for b in batches:
        if on_point is not None:
            on_point(lane.name, b)
        budget = latency_budget if b == 1 else sweep_budget
        samples = repeat_timed(stage_runner(lane, batch_paths(pool, b)), budget)
        points[str(b)] = summarize_stages(samples, b)
    return {"points": points}
