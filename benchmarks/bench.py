"""The whole ``ddad-edge bench`` run: machine, limits, lanes (batch sweep, stage split, end to
end), cold start, training, variants and targets, as one JSON-ready dict.

Every lane is measured in the same process and the same run as the PyTorch eager reference
(``torch``), which every ratio is taken against. Lanes that cannot run here are kept in the
result with ``{"available": False, "reason": ...}``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge import __version__
from ddad_edge.benchmarks import endtoend, flops, latency, machine, paired, variants
from ddad_edge.benchmarks.lanes import LANE_SPECS, REFERENCE_LANE, LaneUnavailable, open_lane
from ddad_edge.benchmarks.latency import Budget
from ddad_edge.benchmarks.targets import MAIN_LANE, evaluate_targets

SECTIONS: tuple[str, ...] = (
    "limits",
    "sweep",
    "paired",
    "e2e",
    "profile",
    "coldstart",
    "training",
    "variants",
)
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
    latency_budget: Budget = field(
        default_factory=lambda: Budget(warmup=3, min_reps=20, min_seconds=2.0, max_seconds=10.0)
    )
    sweep_budget: Budget = field(
        default_factory=lambda: Budget(warmup=1, min_reps=3, min_seconds=1.0, max_seconds=8.0)
    )
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images"] = len(self.images)
        d.pop("parity")
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _nothing(_: str) -> None:
    return None


def _graph_costs(paths: dict[str, Path], batches: Sequence[int]) -> dict[str, Any]:
    """Graph label -> flops.graph_cost of that ONNX file (batches 1, 64 and the sweep's)."""
    counted = sorted({1, 64, *batches})
    out = {}
    for label, p in sorted(paths.items()):
        out[label] = flops.graph_cost(p, counted)
        out[label]["graph"] = label
    return out


def _ratios(lane: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Per batch: speedup of the scoring latency (ref p50 / lane p50) and throughput ratio."""
    out = {}
    for b, p in lane.get("sweep", {}).get("points", {}).items():
        r = ref.get("sweep", {}).get("points", {}).get(b)
        if r:
            out[b] = {
                "speedup": r["scoring_latency"]["p50_ms"] / p["scoring_latency"]["p50_ms"],
                "throughput_ratio": p["throughput_ips"] / r["throughput_ips"],
            }
    return out


def _lane_limits(
    lane: dict[str, Any], graph: dict[str, Any] | None, limits: dict[str, Any] | None
) -> dict[str, Any]:
    """Achieved fraction of the measured machine limits for one CPU lane.

    Two weight-read floors: ``floor_ms`` = weight bytes / read bandwidth of a buffer of the
    weights' size read repeatedly (cache-resident when the weights fit in the last-level cache:
    the floor that applies to repeated batch-1 inference), and ``floor_dram_ms`` = weight bytes
    / DRAM read bandwidth (weights streamed from memory, e.g. the first call after other work).
    """
    if graph is None or limits is None:
        return {}
    pts = lane.get("sweep", {}).get("points", {})
    wb = graph["weights"]["total"]
    dram_s = wb / (limits["bandwidth"]["read_gbps"] * 1e9)
    at_size = limits.get("bandwidth_at_weights", {}).get(str(wb))
    floor_s = wb / (at_size["read_gbps"] * 1e9) if at_size else dram_s
    out: dict[str, Any] = {
        "graph": graph["graph"],
        "weight_bytes": wb,
        "floor_ms": floor_s * 1e3,
        "floor_gbps": (at_size or limits["bandwidth"])["read_gbps"],
        "floor_in_llc": at_size.get("in_llc") if at_size else None,
        "floor_dram_ms": dram_s * 1e3,
    }
    if "1" in pts:
        lat, inf = pts["1"]["scoring_latency"]["p50_ms"], pts["1"]["stages"]["inference"]["p50_ms"]
        out["b1_latency_over_floor"] = lat / (floor_s * 1e3)
        out["b1_inference_over_floor"] = inf / (floor_s * 1e3)
        out["b1_latency_over_dram_floor"] = lat / (dram_s * 1e3)
    if "64" in pts:
        fl = graph["flops"]["64"]["flops"]
        gflops = fl / (pts["64"]["stages"]["inference"]["p50_ms"] / 1e3) / 1e9
        out["b64_gflops"] = gflops
        out["b64_fraction_of_peak"] = gflops / limits["matmul"]["peak_gflops"]
    return out


VARIANT_TOLERANCE = 0.003
# a variant must be this much faster than ort FP32 at batch 1 to be kept: on this VM the median
# interleaved torch/ort ratio of the same two lanes moved by -6% to +4% around its mean over six
# runs (2.73x-3.12x, 2026-11-26), so a smaller gain cannot be told from noise
VARIANT_MIN_SPEEDUP = 1.05


def _variant_summary(result: dict[str, Any], parity: dict[str, Any] | None) -> dict[str, Any]:
    """Latency and ΔAUC of each variant lane and which (if any) is kept."""
    ort = result["lanes"].get("ort", {})
    ort_p50 = ort.get("sweep", {}).get("points", {}).get("1", {}).get("scoring_latency", {})
    rows: dict[str, Any] = {}
    for name, e in result["lanes"].items():
        spec = LANE_SPECS[name]
        if spec.family != "variant":
            continue
        row: dict[str, Any] = {"note": variants.VARIANT_NOTES[spec.precision]}
        if not e.get("available"):
            row["decision"] = f"not available: {e.get('reason')}"
            rows[name] = row
            continue
        p1 = e.get("sweep", {}).get("points", {}).get("1")
        row["weight_mb"] = e.get("limits", {}).get("weight_bytes", 0) / 1e6 or None
        if p1:
            row["b1_p50_ms"] = p1["scoring_latency"]["p50_ms"]
            if ort_p50:
                row["speedup_vs_ort"] = ort_p50["p50_ms"] / row["b1_p50_ms"]
                row["speedup_how"] = "separate sweeps"
        pv = result.get("paired", {}).get("variants_vs_main", {}).get(name, {})
        if "ratio" in pv:
            row["speedup_vs_ort"] = pv["ratio"]
            row["speedup_how"] = (
                f"interleaved, median of {pv['rounds']} rounds "
                f"(quartiles {pv['ratio_q25']:.2f}-{pv['ratio_q75']:.2f}x)"
            )
        lane_parity = (parity or {}).get("lanes", {}).get(name)
        if lane_parity is None:
            row["decision"] = "undecided: no parity result (run `ddad-edge parity`, pass --parity)"
        else:
            d = float(lane_parity["max_abs_delta_auc"])
            row["max_abs_delta_auc"] = d
            ci = [
                abs(float(b))
                for sc in lane_parity.get("scores", {}).values()
                for b in sc.get("delta_auc_ci95") or []
            ]
            row["max_abs_delta_auc_ci95"] = max(ci) if ci else None
            if d > VARIANT_TOLERANCE:
                row["decision"] = f"rejected: |ΔAUC| > {VARIANT_TOLERANCE}"
            elif ci and max(ci) > VARIANT_TOLERANCE:
                row["decision"] = (
                    f"rejected: the 95% interval of ΔAUC reaches {max(ci):.4f} "
                    f"> {VARIANT_TOLERANCE}"
                )
            elif row.get("speedup_vs_ort", 0.0) < VARIANT_MIN_SPEEDUP:
                row["decision"] = (
                    f"not kept: less than {VARIANT_MIN_SPEEDUP}x ort FP32 at batch 1 "
                    "(within this machine's run-to-run noise)"
                )
            else:
                row["decision"] = "eligible"
        rows[name] = row
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


def _open_lane(
    cfg: BenchConfig, name: str, variant_bundles: dict[str, Path], max_batch: int
) -> Any:
    """``open_lane`` with this run's bundle, PyTorch run and thread settings."""
    return open_lane(
        name,
        bundle=cfg.bundle,
        run_dir=cfg.run_dir,
        variant_bundles=variant_bundles,
        max_batch=max_batch,
        intra_op_threads=cfg.intra_op_threads,
    )


def _paired(
    cfg: BenchConfig,
    lanes: dict[str, Any],
    variant_bundles: dict[str, Path],
    max_batch: int,
    on: Progress,
) -> dict[str, Any]:
    """Interleaved speedups (``benchmarks/paired.py``): the main lane over the reference at
    ``cfg.paired_batches``, and each measured variant lane over the main lane at batch 1.

    Returns {"lane", "reference", "batches": {str(b): paired_speedup}, "variants_vs_main":
    {variant lane: paired_speedup at batch 1}} or {"skipped": reason}."""
    missing = [n for n in (REFERENCE_LANE, MAIN_LANE) if not lanes.get(n, {}).get("available")]
    if missing:
        return {"skipped": f"lane(s) {', '.join(missing)} not measured in this run"}

    def opened(name: str) -> Any:
        return _open_lane(cfg, name, variant_bundles, max_batch)

    def speedup(ref: Any, lane: Any, batch: int) -> dict[str, Any]:
        on(f"interleaved {lane.name} vs {ref.name}: batch {batch}")
        return paired.paired_speedup(
            ref,
            lane,
            cfg.images,
            batch,
            rounds=cfg.paired_rounds,
            turn_seconds=cfg.paired_turn_seconds,
        )

    out: dict[str, Any] = {"lane": MAIN_LANE, "reference": REFERENCE_LANE, "batches": {}}
    try:
        main = opened(MAIN_LANE)
    except LaneUnavailable as e:
        return {"skipped": f"failed: {e}"}
    with closing(main):
        try:
            with closing(opened(REFERENCE_LANE)) as ref:
                for b in cfg.paired_batches:
                    out["batches"][str(b)] = speedup(ref, main, b)
        except (LaneUnavailable, RuntimeError) as e:
            return {"skipped": f"failed: {type(e).__name__}: {e}"}
        out["variants_vs_main"] = {}
        for name, entry in lanes.items():
            if LANE_SPECS[name].family != "variant" or not entry.get("available"):
                continue
            try:
                with closing(opened(name)) as variant:
                    out["variants_vs_main"][name] = speedup(main, variant, 1)
            except (LaneUnavailable, RuntimeError) as e:
                out["variants_vs_main"][name] = {"error": f"{type(e).__name__}: {e}"}
    return out


def _training(cfg: BenchConfig, kind: str, k: int, on: Progress) -> dict[str, Any]:
    from ddad_edge.benchmarks.training import compare_fused_separate
    from ddad_edge.runtime.batch import load_inputs

    n = cfg.train_batch * (cfg.train_steps + 1)
    data = load_inputs(latency.batch_paths(cfg.images, min(n, len(cfg.images)))).x
    data = np.concatenate([data] * int(np.ceil(n / len(data))))[: max(n, len(data))]
    sizes = None
    if cfg.run_dir is not None:
        try:
            from ddad_edge.checkpoint import read_config

            c = read_config(cfg.run_dir)["counts"]
            sizes = {"A": int(c["D"]) + int(c["Du"]), "B": int(c["D"])}
        except (FileNotFoundError, KeyError):
            sizes = None
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out: dict[str, Any] = {}
    for dev in devices:
        on(f"training: fused vs separate on {dev}")
        out[dev] = compare_fused_separate(
            data,
            kind=kind,
            k=k,
            batch_size=cfg.train_batch,
            steps=cfg.train_steps,
            epoch_sizes=sizes,
            device=dev,
        )
    first = out["cuda" if "cuda" in out else "cpu"]
    return {
        **first,
        "by_device": out,
        "data_note": "timing only: preprocessed benchmark inputs, models discarded",
    }


def run_bench(cfg: BenchConfig, on_progress: Progress = _nothing) -> dict[str, Any]:
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


def _run_bench(cfg: BenchConfig, on: Progress) -> dict[str, Any]:
    from ddad_edge.runtime.bundle import open_bundle

    t_start = time.perf_counter()
    bundle = open_bundle(cfg.bundle, verify=False)
    result: dict[str, Any] = {
        "tool": "ddad-edge bench",
        "toolkit_version": __version__,
        "config": cfg.to_dict(),
        "model": {"kind": bundle.kind, "k": bundle.k},
        "inputs": {"n_pool": len(cfg.images), "note": cfg.images_note, "kermany": cfg.kermany},
    }
    on("describing the machine")
    result["machine"] = machine.describe_machine()
    limits = None
    if "limits" in cfg.sections:
        on("measuring matmul peak and memory bandwidth")
        limits = result["limits"] = machine.measure_limits(quick=cfg.quick_limits)

    variant_bundles: dict[str, Path] = {}
    variant_errors: dict[str, str] = {}
    wanted_variants = [
        LANE_SPECS[n].precision for n in cfg.lanes if LANE_SPECS[n].family == "variant"
    ]
    for v in wanted_variants:
        on(f"building the {v} variant graph")
        try:
            variant_bundles[v] = variants.make_variant_bundle(cfg.bundle, v, cfg.work_dir / v)
        except Exception as e:  # noqa: BLE001 - recorded as the lane's reason
            variant_errors[v] = f"building the {v} variant failed: {type(e).__name__}: {e}"

    max_batch = max([*cfg.batches, cfg.e2e_batch, 1])
    lanes: dict[str, Any] = {}
    graph_of: dict[str, str] = {}  # lane -> graph label
    label_paths: dict[str, Path] = {}  # graph label -> ONNX file
    for name in cfg.lanes:
        spec = LANE_SPECS[name]
        if spec.family == "variant" and spec.precision in variant_errors:
            lanes[name] = {"available": False, "reason": variant_errors[spec.precision]}
            continue
        on(f"opening lane {name}")
        try:
            lane = _open_lane(cfg, name, variant_bundles, max_batch)
        except LaneUnavailable as e:
            lanes[name] = {"available": False, "reason": str(e)}
            continue
        entry: dict[str, Any] = {"available": True, "info": lane.info()}
        gp = lane.graph_path or (
            bundle.graph_path("dual", "fp32") if spec.family == "torch" else None
        )
        if gp is not None:
            label = Path(gp).name + (f" [{spec.precision}]" if spec.family == "variant" else "")
            graph_of[name] = label
            label_paths[label] = Path(gp)
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
                entry["end_to_end"] = {}
                for key, folder in (("fullres", cfg.fullres), ("dicom", cfg.dicom)):
                    if folder is None or not Path(folder).is_dir():
                        entry["end_to_end"][key] = {"skipped": f"no folder ({folder})"}
                        continue
                    files = endtoend.list_files(Path(folder))
                    endtoend.warm_page_cache(files)
                    on(f"lane {name}: end to end on {len(files)} files of {folder}")
                    entry["end_to_end"][key] = endtoend.run_folder(lane, files, cfg.e2e_batch)
        except Exception as e:  # noqa: BLE001 - a lane failing mid-run is recorded, not fatal
            entry = {
                "available": False,
                "reason": f"failed while measuring: {type(e).__name__}: {e}",
                "partial": entry,
            }
        finally:
            lane.close()
        lanes[name] = entry
    result["lanes"] = lanes
    if "paired" in cfg.sections:
        result["paired"] = _paired(cfg, lanes, variant_bundles, max_batch, on)

    on("counting FLOPs and weight bytes of the graphs")
    costs = _graph_costs(label_paths, cfg.batches)
    result["graphs"] = costs
    if limits is not None and not limits.get("quick"):
        on("measuring read bandwidth at each graph's weight size")
        sizes = sorted({g["weights"]["total"] for g in costs.values() if "weights" in g})
        limits["bandwidth_at_weights"] = {str(n): machine.measure_read_bandwidth(n) for n in sizes}
    ref = lanes.get(REFERENCE_LANE, {})
    for name, entry in lanes.items():
        if not entry.get("available"):
            continue
        entry["graph"] = graph_of.get(name)
        if name != REFERENCE_LANE and ref.get("available"):
            entry["vs_torch"] = _ratios(entry, ref)
        if name == REFERENCE_LANE:
            entry["vs_torch"] = _ratios(entry, entry)
        cpu_lane = LANE_SPECS[name].backend in ("cpu", "ort-cpu")
        graph = costs.get(graph_of[name]) if name in graph_of else None
        entry["limits"] = (
            _lane_limits(entry, graph, limits)
            if cpu_lane
            else {"note": "the measured limits are CPU figures; not applied to GPU lanes"}
        )

    main_graph = label_paths.get(graph_of.get(MAIN_LANE, ""))
    if "profile" in cfg.sections and lanes.get(MAIN_LANE, {}).get("available") and main_graph:
        from ddad_edge.benchmarks.opprofile import profile_by_class

        on(f"profiling lane {MAIN_LANE} by op class")
        result["profile"] = {
            "lane": MAIN_LANE,
            "graph": graph_of[MAIN_LANE],
            "batches": {
                str(b): profile_by_class(main_graph, b, intra_op_threads=cfg.intra_op_threads)
                for b in (64,)  # at batch 1 the profiler's own overhead dominates
            },
        }
    if "coldstart" in cfg.sections:
        from ddad_edge.benchmarks.coldstart import measure_cold_start

        on("cold start: runtime and torch in fresh processes")
        result["cold_start"] = measure_cold_start(
            image=Path(cfg.images[0]),
            bundle=cfg.bundle,
            run_dir=cfg.run_dir,
            backend=cfg.coldstart_backend,
            precision="fp32",
            reps=cfg.coldstart_reps,
        )
    if "training" in cfg.sections:
        try:
            result["training"] = _training(cfg, bundle.kind, bundle.k, on)
        except (ValueError, RuntimeError) as e:
            result["training"] = {"error": f"not measured: {e}"}
    if "variants" in cfg.sections and wanted_variants:
        result["variants"] = _variant_summary(result, cfg.parity)
    result["targets"] = evaluate_targets(result, MAIN_LANE)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["machine"]["loadavg_end"] = list(load) if load else None
    result["seconds"] = time.perf_counter() - t_start
    return result
