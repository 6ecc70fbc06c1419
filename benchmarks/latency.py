"""Timing of the three stages of DDAD scoring through a lane (:mod:`ddad_edge.benchmarks.lanes`):
``load(paths)`` (decode + preprocess), ``infer(x)``, ``scores(x, stats)``, each timed with
``time.perf_counter``: the batch sweep, the interleaved speedup of two lanes and the end-to-end
pass over a folder of files. benchmarks/README.md, "What each number means", defines every figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.benchmarks.schema import EndToEnd, PairedSpeedup, Sweep, SweepPoint
from ddad_edge.benchmarks.stats import summarize_times
from ddad_edge.runtime.io import IMAGE_EXTS

STAGES: tuple[str, ...] = ("preprocess", "inference", "scoring")
Stages = dict[str, float]


@dataclass(frozen=True)
class Budget:
    """``warmup`` untimed repetitions, then at least ``min_reps`` and ``min_seconds`` of timed
    ones, stopping at ``max_seconds`` even below ``min_reps``."""

    warmup: int = 2
    min_reps: int = 5
    min_seconds: float = 1.0
    max_seconds: float = 10.0


def repeat_timed(run_once: Callable[[], Stages], budget: Budget) -> dict[str, np.ndarray]:
    """{stage: float64 [R] seconds} of ``run_once`` (one repetition -> {stage: s}) under budget."""
    for _ in range(budget.warmup):
        run_once()
    samples: dict[str, list[float]] = {}
    t_start = time.perf_counter()
    while True:
        for stage, s in run_once().items():
            samples.setdefault(stage, []).append(s)
        n, elapsed = len(next(iter(samples.values()))), time.perf_counter() - t_start
        if (
            n >= budget.min_reps and elapsed >= budget.min_seconds
        ) or elapsed >= budget.max_seconds:
            return {k: np.asarray(v, np.float64) for k, v in samples.items()}


def timed_stages(lane: Any, paths: Sequence[str | Path]) -> tuple[Stages, Any]:
    """The three stages once on ``paths``: ({stage: s}, the LoadedBatch); inference and scores
    take 0 s when no file could be loaded."""
    t0 = time.perf_counter()
    batch = lane.load(list(paths))
    t1 = t2 = t3 = time.perf_counter()
    if len(batch.ok):
        stats = lane.infer(batch.x)
        t2 = time.perf_counter()
        lane.scores(batch.x, stats)
        t3 = time.perf_counter()
    return {"preprocess": t1 - t0, "inference": t2 - t1, "scoring": t3 - t2}, batch


def stage_runner(lane: Any, paths: Sequence[str | Path]) -> Callable[[], Stages]:
    """One repetition of the three stages on ``paths``; an input that fails to load is an error
    here (the benchmark inputs are known good)."""
    paths = list(paths)

    def run_once() -> Stages:
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
    """Per-stage summaries, scoring latency (inference + scores), end to end and throughputs."""
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
    """Batch sweep of one lane: batch 1 under ``latency_budget``, the others ``sweep_budget``."""
    points: dict[str, SweepPoint] = {}
    for b in batches:
        if on_point is not None:
            on_point(lane.name, b)
        budget = latency_budget if b == 1 else sweep_budget
        samples = repeat_timed(stage_runner(lane, batch_paths(pool, b)), budget)
        points[str(b)] = summarize_stages(samples, b)
    return {"points": points}


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
    """Speedup of ``lane`` over ``ref`` at ``batch`` from ``rounds`` rounds of one turn each
    (order alternating ABBA, so a steady drift favours neither); each turn repeats the stages
    for ``turn_seconds`` and ``min_reps``; ratio = median of the per-round scoring-latency
    ratios (README, "Interleaved speedup")."""
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
        turn = {}
        for k in ("ref", "lane") if r % 2 == 0 else ("lane", "ref"):
            st = repeat_timed(runners[k], Budget(0, min_reps, turn_seconds, math.inf))
            turn[k] = st["inference"] + st["scoring"]
            samples[k].append(turn[k])
        ratios.append(float(np.median(turn["ref"]) / np.median(turn["lane"])))
    ref_all, lane_all = np.concatenate(samples["ref"]), np.concatenate(samples["lane"])
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


def list_files(folder: Path, exts: frozenset[str] = IMAGE_EXTS) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in exts)


def warm_page_cache(paths: Sequence[Path]) -> int:
    """Read every file once (bytes discarded), so the timed passes do not measure the disk."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                total += len(block)
    return total


def run_folder(
    lane: Any, paths: Sequence[Path], batch: int = 16, *, warmup_pass: bool = True
) -> EndToEnd:
    """One timed pass of ``paths`` through ``lane`` in batches of ``batch``, after one untimed
    pass when ``warmup_pass`` (it imports every codec the folder needs); unreadable files are
    skipped by the runtime's loader and listed with its reason."""
    chunks = [list(paths[i : i + batch]) for i in range(0, len(paths), batch)]
    for chunk in chunks if warmup_pass else ():
        timed_stages(lane, chunk)
    totals = dict.fromkeys(STAGES, 0.0)
    errors: list[dict[str, str]] = []
    n_ok = 0
    for chunk in chunks:
        stages, loaded = timed_stages(lane, chunk)
        for k, v in stages.items():
            totals[k] += v
        n_ok += len(loaded.ok)
        errors += [{"path": str(p), "reason": r} for _, p, r in loaded.errors]
    scoring = totals["inference"] + totals["scoring"]
    e2e = scoring + totals["preprocess"]
    per = {**totals, "scoring_total": scoring, "end_to_end": e2e}
    return {
        "n_files": len(paths),
        "n_ok": n_ok,
        "errors": errors,
        "batch": batch,
        "warmup_pass": warmup_pass,
        "seconds": totals,
        "ms_per_image": {k: v / n_ok * 1e3 if n_ok else math.nan for k, v in per.items()},
        "images_per_s": n_ok / e2e if e2e > 0 else math.nan,
        "preprocess_over_scoring": totals["preprocess"] / scoring if scoring > 0 else math.nan,
    }
