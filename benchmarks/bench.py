"""The whole ``ddad-edge bench`` run: machine, limits, lanes (batch sweep, stage split, end to
end), cold start, training, variants and targets, as one JSON-ready dict (``schema.BenchResult``).

Every lane is measured in the same process and the same run as the PyTorch eager reference
(``torch``), which every ratio is taken against. Lanes that cannot run here are kept in the
result with ``{"available": False, "reason": ...}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ddad_edge import __version__
from ddad_edge.benchmarks import achieved, latency, machine
from ddad_edge.benchmarks.achieved import MAIN_LANE, evaluate_targets
from ddad_edge.benchmarks.lanes import LANE_SPECS, REFERENCE_LANE, LaneUnavailable, open_lane
from ddad_edge.benchmarks.latency import Budget
from ddad_edge.benchmarks.limits import measure_limits, measure_read_bandwidth
from ddad_edge.benchmarks.schema import BenchResult, LaneEntry, Paired, PairedSpeedup
from ddad_edge.benchmarks.variants import choose_variant

SECTIONS = ("limits", "sweep", "paired", "e2e", "profile", "coldstart", "training", "variants")
SECTIONS += ("triton",)
Progress = Callable[[str], None]


@dataclass
class BenchConfig:
    """What to measure (see benchmarks/README.md for the meaning of each figure).

    images: the pool of files the batch sweep draws from (cycled when smaller than a batch).
    fullres, dicom: folders for the end-to-end passes (None: skipped, and the report says so).
    work_dir: scratch folder for the variant bundles.
    parity: a parity result (``ddad-edge parity``'s JSON) to judge the variants with.
    """

    bundle: Path
    run_dir: Path | None
    lanes: list[str]
    batches: list[int]
    images: list[Path]
    images_note: str
    work_dir: Path
    kermany: bool = False
    fullres: Path | None = None
    dicom: Path | None = None
    latency_budget: Budget = field(default_factory=lambda: Budget(3, 20, 2.0, 10.0))
    sweep_budget: Budget = field(default_factory=lambda: Budget(1, 3, 1.0, 8.0))
    e2e_batch: int = 16
    paired_batches: tuple[int, ...] = (1, 64)
    paired_rounds: int = 10
    paired_turn_seconds: float = 0.3
    coldstart_reps: int = 3
    coldstart_backend: str = "ort-cpu"
    train_steps: int = 5
    train_batch: int = 64
    quick_limits: bool = False
    intra_op_threads: int | None = None
    torch_threads: int | None = None
    parity: dict[str, Any] | None = None
    sections: tuple[str, ...] = SECTIONS
    triton_clients: tuple[int, ...] = (1, 2, 4, 8, 16)
    triton_instances: tuple[int, ...] = (1, 2)
    triton_files: int = 1024
    triton_files_per_request: tuple[int, ...] = (1, 8, 16)
    triton_queue_delay_us: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images"] = len(self.images)
        d.pop("parity")
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    def open(self, name: str, max_batch: int) -> Any:
        """``open_lane`` with this run's bundle, PyTorch run, scratch folder and threads."""
        return open_lane(
            name,
            bundle=self.bundle,
            run_dir=self.run_dir,
            work_dir=self.work_dir,
            max_batch=max_batch,
            intra_op_threads=self.intra_op_threads,
        )


def _paired(cfg: BenchConfig, lanes: dict[str, LaneEntry], max_batch: int, on: Progress) -> Paired:
    """Interleaved speedups (``latency.paired_speedup``): the main lane over the reference at
    ``cfg.paired_batches``, and each measured smaller-weight lane over the main lane at batch 1."""
    missing = [n for n in (REFERENCE_LANE, MAIN_LANE) if not lanes.get(n, {}).get("available")]
    if missing:
        return {"skipped": f"lane(s) {', '.join(missing)} not measured in this run"}

    def speedup(ref: Any, lane: Any, batch: int) -> PairedSpeedup:
        on(f"interleaved {lane.name} vs {ref.name}: batch {batch}")
        rounds, seconds = cfg.paired_rounds, cfg.paired_turn_seconds
        return latency.paired_speedup(
            ref, lane, cfg.images, batch, rounds=rounds, turn_seconds=seconds
        )

    out: Paired = {"lane": MAIN_LANE, "reference": REFERENCE_LANE, "batches": {}}
    try:
        main = cfg.open(MAIN_LANE, max_batch)
    except LaneUnavailable as e:
        return {"skipped": f"failed: {e}"}
    with closing(main):
        try:
            with closing(cfg.open(REFERENCE_LANE, max_batch)) as ref:
                for b in cfg.paired_batches:
                    out["batches"][str(b)] = speedup(ref, main, b)
        except (LaneUnavailable, RuntimeError) as e:
            return {"skipped": f"failed: {type(e).__name__}: {e}"}
        out["variants_vs_main"] = {}
        for name, entry in lanes.items():
            if not LANE_SPECS[name].smaller_weights or not entry.get("available"):
                continue
            try:
                with closing(cfg.open(name, max_batch)) as variant:
                    out["variants_vs_main"][name] = speedup(main, variant, 1)
            except (LaneUnavailable, RuntimeError) as e:
                out["variants_vs_main"][name] = {"error": f"{type(e).__name__}: {e}"}
    return out


def _end_to_end(cfg: BenchConfig, lane: Any, on: Progress) -> dict[str, Any]:
    """``latency.run_folder`` on the full-resolution and DICOM folders (or why skipped)."""
    out: dict[str, Any] = {}
    for key, folder in (("fullres", cfg.fullres), ("dicom", cfg.dicom)):
        if folder is None or not Path(folder).is_dir():
            out[key] = {"skipped": f"no folder ({folder})"}
            continue
        files = latency.list_files(Path(folder))
        latency.warm_page_cache(files)
        on(f"lane {lane.name}: end to end on {len(files)} files of {folder}")
        out[key] = latency.run_folder(lane, files, cfg.e2e_batch)
    return out


def _measure(cfg: BenchConfig, lane: Any, on: Progress) -> LaneEntry:
    """The sweep and end-to-end sections of one open lane; a failure mid-run is recorded."""
    entry: LaneEntry = {"available": True, "info": lane.info()}
    try:
        if "sweep" in cfg.sections:
            entry["sweep"] = latency.measure_lane(
                lane,
                cfg.images,
                cfg.batches,
                latency_budget=cfg.latency_budget,
                sweep_budget=cfg.sweep_budget,
                on_point=lambda n, b: on(f"lane {n}: batch {b}"),
            )
        if "e2e" in cfg.sections:
            entry["end_to_end"] = _end_to_end(cfg, lane, on)
    except Exception as e:  # noqa: BLE001 - a lane failing mid-run is recorded, not fatal
        reason = f"failed while measuring: {type(e).__name__}: {e}"
        return {"available": False, "reason": reason, "partial": dict(entry)}
    finally:
        lane.close()
    return entry


@dataclass
class _LaneRuns:
    """The lanes' entries, and which graph (label -> ONNX file) each one ran."""

    entries: dict[str, LaneEntry] = field(default_factory=dict)
    graph_of: dict[str, str] = field(default_factory=dict)  # lane -> graph label
    paths: dict[str, Path] = field(default_factory=dict)  # graph label -> ONNX file


def _run_lanes(cfg: BenchConfig, bundle: Any, max_batch: int, on: Progress) -> _LaneRuns:
    """Open and measure every requested lane in turn (one open at a time)."""
    runs = _LaneRuns()
    for name in cfg.lanes:
        spec = LANE_SPECS[name]
        on(f"opening lane {name}")
        try:
            lane = cfg.open(name, max_batch)
        except LaneUnavailable as e:
            runs.entries[name] = {"available": False, "reason": str(e)}
            continue
        gp = lane.graph_path or (
            bundle.graph_path("dual", "fp32") if spec.family == "torch" else None
        )
        if gp is not None:
            label = Path(gp).name + (f" [{spec.precision}]" if spec.family == "variant" else "")
            runs.graph_of[name] = label
            runs.paths[label] = Path(gp)
        runs.entries[name] = _measure(cfg, lane, on)
    return runs


def _compare(runs: _LaneRuns, costs: dict[str, Any], limits: dict[str, Any] | None) -> None:
    """Add each available lane's graph, ratios to torch and achieved limits to its entry."""
    ref = runs.entries.get(REFERENCE_LANE, {})
    for name, entry in runs.entries.items():
        if not entry.get("available"):
            continue
        entry["graph"] = runs.graph_of.get(name)
        if name == REFERENCE_LANE or ref.get("available"):
            entry["vs_torch"] = achieved.ratios(entry, ref)
        graph = costs.get(runs.graph_of[name]) if name in runs.graph_of else None
        entry["limits"] = (
            achieved.lane_limits(entry, graph, limits)
            if LANE_SPECS[name].backend in ("cpu", "ort-cpu")
            else {"note": "the measured limits are CPU figures; not applied to GPU lanes"}
        )


def _profile(cfg: BenchConfig, runs: _LaneRuns, on: Progress) -> dict[str, Any] | None:
    """Kernel time per op class of the main lane's graph at batch 64 (the profiler's own
    overhead dominates at batch 1), or None when that lane did not run."""
    main_graph = runs.paths.get(runs.graph_of.get(MAIN_LANE, ""))
    if not runs.entries.get(MAIN_LANE, {}).get("available") or not main_graph:
        return None
    from ddad_edge.benchmarks.opprofile import profile_by_class

    on(f"profiling lane {MAIN_LANE} by op class")
    profile = profile_by_class(main_graph, 64, intra_op_threads=cfg.intra_op_threads)
    return {"lane": MAIN_LANE, "graph": runs.graph_of[MAIN_LANE], "batches": {"64": profile}}


def _lane_free(cfg: BenchConfig, kind: str, k: int, on: Progress) -> dict[str, Any]:
    """The requested sections that measure no lane: cold start, training, the Triton server."""
    out: dict[str, Any] = {}
    if "coldstart" in cfg.sections:
        from ddad_edge.benchmarks.coldstart import measure_cold_start

        on("cold start: runtime and torch in fresh processes")
        out["cold_start"] = measure_cold_start(
            image=Path(cfg.images[0]),
            bundle=cfg.bundle,
            run_dir=cfg.run_dir,
            backend=cfg.coldstart_backend,
            reps=cfg.coldstart_reps,
        )
    if "training" in cfg.sections:
        from ddad_edge.benchmarks.training import measure_training

        batch, steps = cfg.train_batch, cfg.train_steps
        try:
            out["training"] = measure_training(
                cfg.images, cfg.run_dir, kind=kind, k=k, batch=batch, steps=steps, on=on
            )
        except (ValueError, RuntimeError) as e:
            out["training"] = {"error": f"not measured: {e}"}
    if "triton" in cfg.sections:
        from ddad_edge.benchmarks.triton_load import measure_triton

        out["triton"] = measure_triton(
            cfg.bundle,
            cfg.images,
            clients=cfg.triton_clients,
            instances=cfg.triton_instances,
            files=cfg.triton_files,
            files_per_request=cfg.triton_files_per_request,
            queue_delay_us=cfg.triton_queue_delay_us,
            on=on,
        )
    return out


def _limits_at_weights(limits: dict[str, Any], costs: dict[str, Any], on: Progress) -> None:
    """Read bandwidth at each graph's weight size (not in quick mode)."""
    if not limits.get("quick"):
        on("measuring read bandwidth at each graph's weight size")
        sizes = sorted({g["weights"]["total"] for g in costs.values() if "weights" in g})
        limits["bandwidth_at_weights"] = {str(n): measure_read_bandwidth(n) for n in sizes}


def run_bench(cfg: BenchConfig, on_progress: Progress = lambda _: None) -> BenchResult:
    """Run every requested section (``cfg.sections``) and return the result dict.

    ``cfg.torch_threads`` applies to this call only (the previous setting is restored)."""
    if not cfg.torch_threads:
        return _run_bench(cfg, on_progress)
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    try:
        return _run_bench(cfg, on_progress)
    finally:
        torch.set_num_threads(previous)


def _run_bench(cfg: BenchConfig, on: Progress) -> BenchResult:
    from ddad_edge.runtime.bundle import open_bundle

    t_start, sections = time.perf_counter(), cfg.sections
    bundle = open_bundle(cfg.bundle, verify=False)
    result: BenchResult = {
        "tool": "ddad-edge bench",
        "toolkit_version": __version__,
        "config": cfg.to_dict(),
        "model": {"kind": bundle.kind, "k": bundle.k},
        "inputs": {"n_pool": len(cfg.images), "note": cfg.images_note, "kermany": cfg.kermany},
    }
    on("describing the machine")
    result["machine"] = machine.describe_machine()
    limits = None
    if "limits" in sections:
        on("measuring matmul peak and memory bandwidth")
        limits = result["limits"] = measure_limits(quick=cfg.quick_limits)
    max_batch = max([*cfg.batches, cfg.e2e_batch, 1])
    runs = _run_lanes(cfg, bundle, max_batch, on)
    result["lanes"] = runs.entries
    if "paired" in sections:
        result["paired"] = _paired(cfg, runs.entries, max_batch, on)
    on("counting FLOPs and weight bytes of the graphs")
    costs = result["graphs"] = achieved.graph_costs(runs.paths, cfg.batches)
    if limits is not None:
        _limits_at_weights(limits, costs, on)
    _compare(runs, costs, limits)
    if "profile" in sections and (profile := _profile(cfg, runs, on)) is not None:
        result["profile"] = profile
    if "variants" in sections and any(LANE_SPECS[n].smaller_weights for n in cfg.lanes):
        result["variants"] = choose_variant(result, cfg.parity)
    result.update(_lane_free(cfg, bundle.kind, bundle.k, on))  # type: ignore[typeddict-item]
    result["targets"] = evaluate_targets(result, MAIN_LANE)
    result["machine"]["loadavg_end"] = machine.load_average()
    result["seconds"] = time.perf_counter() - t_start
    return result
