"""The shape of a bench result (``bench.json``), as typed dicts, and the lookups the report,
the targets and the CLI share.

The result stays plain JSON-ready dicts (what ``bench.json`` holds); these types name every
level so that code reads ``lane_point(entry, 1)["scoring_latency"]["p50_ms"]`` against a
declared shape instead of guessing nested paths. Times are ms unless the key ends in ``_s``.
"""

from __future__ import annotations

from typing import Any, TypedDict


class TimeSummary(TypedDict):
    """``stats.summarize_times``: repetitions and their distribution, ms."""

    n: int
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


class SweepPoint(TypedDict):
    """``latency.summarize_stages``: one batch size of a lane's sweep."""

    batch: int
    stages: dict[str, TimeSummary]  # preprocess, inference, scoring
    scoring_latency: TimeSummary  # inference + scoring
    end_to_end: TimeSummary
    throughput_ips: float  # batch / median scoring latency
    throughput_e2e_ips: float


class Sweep(TypedDict):
    points: dict[str, SweepPoint]  # str(batch) ->


class Ratio(TypedDict):
    """One batch size of a lane against torch: latency speedup and throughput ratio."""

    speedup: float
    throughput_ratio: float


class EndToEnd(TypedDict, total=False):
    """``latency.run_folder`` (or {"skipped": reason})."""

    n_files: int
    n_ok: int
    errors: list[dict[str, str]]
    batch: int
    warmup_pass: bool
    seconds: dict[str, float]
    ms_per_image: dict[str, float]
    images_per_s: float
    preprocess_over_scoring: float
    skipped: str


class LaneLimits(TypedDict, total=False):
    """Achieved fraction of the machine's measured limits (CPU lanes; else only ``note``)."""

    graph: str
    weight_bytes: int
    floor_ms: float
    floor_gbps: float
    floor_in_llc: bool | None
    floor_dram_ms: float
    b1_latency_over_floor: float
    b1_inference_over_floor: float
    b1_latency_over_dram_floor: float
    b64_gflops: float
    b64_fraction_of_peak: float
    note: str


class LaneEntry(TypedDict, total=False):
    """One lane of ``result["lanes"]``: {"available": False, "reason"} when it could not run."""

    available: bool
    reason: str
    partial: dict[str, Any]
    info: dict[str, Any]
    sweep: Sweep
    end_to_end: dict[str, EndToEnd]  # "fullres", "dicom"
    graph: str | None
    vs_torch: dict[str, Ratio]  # str(batch) ->
    limits: LaneLimits


class PairedSpeedup(TypedDict, total=False):
    """``latency.paired_speedup`` (or {"error"} for a variant that failed)."""

    batch: int
    rounds: int
    turn_seconds: float
    ratio: float
    ratio_q25: float
    ratio_q75: float
    ratio_min: float
    ratio_max: float
    per_round: list[float]
    pooled_ratio: float
    ref_p50_ms: float
    lane_p50_ms: float
    reps: dict[str, int]
    error: str


class Paired(TypedDict, total=False):
    """The interleaved section, or {"skipped": reason}."""

    lane: str
    reference: str
    batches: dict[str, PairedSpeedup]
    variants_vs_main: dict[str, PairedSpeedup]
    skipped: str


class VariantRow(TypedDict, total=False):
    note: str
    weight_mb: float | None
    b1_p50_ms: float
    speedup_vs_ort: float
    speedup_how: str
    max_abs_delta_auc: float
    max_abs_delta_auc_ci95: float | None
    decision: str


class Variants(TypedDict):
    lanes: dict[str, VariantRow]
    kept: str | None
    rule: str


class Target(TypedDict):
    """``achieved.evaluate_targets``: met is None when it could not be measured."""

    id: str
    target: str
    how: str
    value: float | None
    met: bool | None
    measured: str


class BenchResult(TypedDict, total=False):
    """The whole ``bench.json``."""

    tool: str
    toolkit_version: str
    config: dict[str, Any]  # BenchConfig.to_dict()
    model: dict[str, Any]  # {"kind", "k"}
    inputs: dict[str, Any]  # {"n_pool", "note", "kermany"}
    machine: dict[str, Any]  # machine.describe_machine() + "loadavg_end"
    limits: dict[str, Any]  # limits.measure_limits() + "bandwidth_at_weights"
    lanes: dict[str, LaneEntry]
    paired: Paired
    graphs: dict[str, dict[str, Any]]  # graph label -> flops.graph_cost
    profile: dict[str, Any]
    cold_start: dict[str, Any]  # coldstart.measure_cold_start
    training: dict[str, Any]  # training.compare_fused_separate (+ "by_device") or {"error"}
    variants: Variants
    triton: dict[str, Any]  # triton_load.measure_triton
    targets: list[Target]
    seconds: float


def lane_point(entry: LaneEntry, batch: int | str) -> SweepPoint | None:
    """The sweep point of a lane at ``batch`` (None when not measured)."""
    return entry.get("sweep", {}).get("points", {}).get(str(batch))


def result_point(result: BenchResult, lane: str, batch: int | str) -> SweepPoint | None:
    """The sweep point of lane ``lane`` of a result at ``batch`` (None when not measured)."""
    return lane_point(result.get("lanes", {}).get(lane, {}), batch)


def available_lanes(result: BenchResult) -> dict[str, LaneEntry]:
    """The lanes that ran, in the result's order."""
    return {n: e for n, e in result["lanes"].items() if e.get("available")}
