"""Interleaved timing of a lane against the reference: speedup ratios that the machine's drift
does not move.

The batch sweep measures one lane after the other, tens of seconds apart. On a shared virtual
machine the speed of both lanes drifts over such spans (cache shared with other tenants, host
load), and a ratio of two medians taken at different times carries that drift. Here the two
lanes take turns instead: ``rounds`` rounds, each one turn of the reference and one of the lane
(order alternating from round to round, ABBA, so a steady drift favours neither), each turn
``turn_seconds`` of repetitions of the same stages the sweep times (``latency.stage_runner``:
load, infer, scores). Each round gives one ratio, reference p50 / lane p50 of the scoring
latency (inference + scores), and the figure reported is the median over rounds, with the
spread of the per-round ratios beside it.

Speedup at batch B = reference latency / lane latency = lane throughput / reference throughput,
so one figure serves both batch-1 and batch-64 targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.benchmarks.latency import Budget, batch_paths, repeat_timed, stage_runner
from ddad_edge.benchmarks.schema import PairedSpeedup


def timed_turn(
    run_once: Callable[[], dict[str, float]], seconds: float, min_reps: int
) -> np.ndarray:
    """Repeat ``run_once`` for at least ``seconds`` and ``min_reps`` repetitions.

    Returns float64 [R] scoring latencies (inference + scoring), seconds."""
    stages = repeat_timed(run_once, Budget(0, min_reps, seconds, math.inf))
    return stages["inference"] + stages["scoring"]


def paired_speedup(
    ref: Any,
    lane: Any,
    paths: Sequence[str | Path],
    batch: int,
    *,
    rounds: int = 10,
    turn_seconds: float = 0.3,
    min_reps: int = 3,
    warmup: int = 2,
) -> PairedSpeedup:
    """Speedup of ``lane`` over ``ref`` at ``batch``, from interleaved turns (module docstring).

    Both lanes run the same ``batch`` paths drawn from ``paths``. Returns
    {"batch", "rounds", "turn_seconds", "ratio" (median of the per-round ratios), "ratio_q25",
    "ratio_q75", "ratio_min", "ratio_max", "per_round": [ratio], "pooled_ratio" (median of all
    reference reps / median of all lane reps), "ref_p50_ms", "lane_p50_ms", "reps": {"ref",
    "lane"}}.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    chosen = batch_paths(paths, batch)
    runners = {"ref": stage_runner(ref, chosen), "lane": stage_runner(lane, chosen)}
    for run in runners.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[np.ndarray]] = {"ref": [], "lane": []}
    ratios = []
    for r in range(rounds):
        order = ("ref", "lane") if r % 2 == 0 else ("lane", "ref")
        turn = {k: timed_turn(runners[k], turn_seconds, min_reps) for k in order}
        for k, v in turn.items():
            samples[k].append(v)
        ratios.append(float(np.median(turn["ref"]) / np.median(turn["lane"])))
    ref_all = np.concatenate(samples["ref"])
    lane_all = np.concatenate(samples["lane"])
    arr = np.asarray(ratios)
    return {
        "batch": int(batch),
        "rounds": int(rounds),
        "turn_seconds": float(turn_seconds),
        "ratio": float(np.median(arr)),
        "ratio_q25": float(np.percentile(arr, 25)),
        "ratio_q75": float(np.percentile(arr, 75)),
        "ratio_min": float(arr.min()),
        "ratio_max": float(arr.max()),
        "per_round": ratios,
        "pooled_ratio": float(np.median(ref_all) / np.median(lane_all)),
        "ref_p50_ms": float(np.median(ref_all) * 1e3),
        "lane_p50_ms": float(np.median(lane_all) * 1e3),
        "reps": {"ref": int(ref_all.size), "lane": int(lane_all.size)},
    }
