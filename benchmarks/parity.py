"""AUC parity of every lane against the PyTorch FP32 eager reference (``ddad-edge parity``).

The split's test images are loaded ONCE with the runtime's loader, so every lane scores the very
same x float32 [N, 1, 64, 64]; only the backend and precision differ. Per lane and score (rec,
intra, inter, and asr when the run and bundle have ASR): AUC, AP, ΔAUC with a paired bootstrap 95%
interval (``stats.paired_bootstrap_delta``), Spearman correlation of the image scores and the max
/ mean absolute error of the score maps. A lane passes when |ΔAUC| <= ``TOLERANCES`` of its
precision for every score. Smaller-weight variants and user-supplied graphs run as variant
bundles (:mod:`ddad_edge.benchmarks.variants`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge import __version__
from ddad_edge.benchmarks import machine
from ddad_edge.benchmarks.lanes import (
    LANE_SPECS,
    REDUCED_TOLERANCE,
    REFERENCE_LANE,
    TOLERANCES,
    Lane,
    LaneSpec,
    LaneUnavailable,
    RuntimeLane,
    open_lane,
)
from ddad_edge.benchmarks.stats import paired_bootstrap_delta
from ddad_edge.benchmarks.variants import make_variant_bundle
from ddad_edge.runtime.metrics import average_precision, roc_auc, spearman

Outputs = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (score maps, image scores)
Progress = Callable[[str], None]


def lane_outputs(lane: Lane, x: np.ndarray, chunk: int = 64) -> Outputs:
    """Score maps {name: float32 [N, 1, 64, 64]} and image scores {name: float32 [N]} of x."""
    maps: dict[str, list[np.ndarray]] = {}
    scores: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        stats = lane.infer(xb)
        for out, got in ((maps, lane.maps(xb, stats)), (scores, lane.scores(xb, stats))):
            for k, v in got.items():
                out.setdefault(k, []).append(np.asarray(v, np.float32))
    return (
        {k: np.concatenate(v) for k, v in maps.items()},
        {k: np.concatenate(v) for k, v in scores.items()},
    )


def _agreement(labels: np.ndarray, rs: np.ndarray, ns: np.ndarray, **boot: Any) -> dict[str, Any]:
    """AUC, AP, ΔAUC and its interval, ΔAP and Spearman of scores ``ns`` against ``rs`` (a
    non-finite score gives ΔAUC = inf, which fails any tolerance)."""
    if not np.all(np.isfinite(ns)):
        nan = float("nan")
        out = dict.fromkeys(("auc", "ap", "delta_ap", "spearman"), nan)
        return {**out, "delta_auc": float("inf"), "delta_auc_ci95": [nan, nan]}
    b = paired_bootstrap_delta(labels, rs, ns, **boot)
    ap = average_precision(labels, ns)
    return {
        "auc": roc_auc(labels, ns),
        "ap": ap,
        "delta_auc": b["delta"],
        "delta_auc_ci95": [b["lo"], b["hi"]],
        "delta_ap": ap - average_precision(labels, rs),
        "spearman": spearman(rs, ns),
    }


def compare_scores(
    labels: np.ndarray, ref: Outputs, new: Outputs, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per score name: the lane's metrics and its agreement with the reference."""
    out: dict[str, dict[str, Any]] = {}
    for name in [n for n in ref[1] if n in new[1]]:
        rs, ns, rm = ref[1][name], new[1][name], ref[0][name]
        finite = bool(np.all(np.isfinite(ns)))
        err = np.abs(new[0][name].astype(np.float64) - rm.astype(np.float64))
        out[name] = {
            "auc_ref": roc_auc(labels, rs),
            "ap_ref": average_precision(labels, rs),
            "finite": finite,
            "map_max_abs_err": float(err.max()) if finite else float("inf"),
            "map_mean_abs_err": float(err.mean()) if finite else float("inf"),
            "map_ref_range": float(rm.max() - rm.min()),
            **_agreement(labels, rs, ns, n_boot=n_boot, seed=seed),
        }
    return out


def run_parity(
    x: np.ndarray,
    labels: np.ndarray,
    reference: Lane,
    lanes: list[Lane],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    on_lane: Progress = lambda _: None,
) -> dict[str, Any]:
    """Parity of each lane in ``lanes`` against ``reference`` on x [N, 1, 64, 64], labels [N]:
    {"reference", "lanes": {name: {"precision", "backend", "tolerance", "scores",
    "max_abs_delta_auc", "passed"}}, "passed", "violations": [one line per failing lane]}."""
    labels = np.asarray(labels).astype(np.int64)
    on_lane(reference.name)
    ref = lane_outputs(reference, x)
    ref_scores = {
        n: {"auc": roc_auc(labels, s), "ap": average_precision(labels, s)}
        for n, s in ref[1].items()
    }
    result: dict[str, Any] = {
        "n_images": int(len(labels)),
        "n_abnormal": int(labels.sum()),
        "n_boot": n_boot,
        "reference": {"lane": reference.name, "scores": ref_scores},
        "lanes": {},
        "violations": [],
    }
    for lane in lanes:
        on_lane(lane.name)
        rows = compare_scores(labels, ref, lane_outputs(lane, x), n_boot=n_boot, seed=seed)
        prec = lane.spec.precision
        tol = TOLERANCES.get(prec, REDUCED_TOLERANCE)
        worst = max(abs(r["delta_auc"]) for r in rows.values())
        result["lanes"][lane.name] = {
            "precision": prec,
            "backend": lane.spec.backend,
            "tolerance": tol,
            "scores": rows,
            "max_abs_delta_auc": worst,
            "passed": bool(worst <= tol),
        }
        if not result["lanes"][lane.name]["passed"]:
            bad = max(rows, key=lambda n: abs(rows[n]["delta_auc"]))
            result["violations"].append(
                f"{lane.name}: |ΔAUC| {worst:.4f} ({bad}) exceeds the {prec} tolerance {tol:.3f}"
            )
    result["passed"] = not result["violations"]
    return result


# --- the whole run: test set, lanes, result ------------------------------------------------


@dataclass
class ParityConfig:
    """What to compare.

    lanes: lane names (the reference ``torch`` is always run and need not be listed).
    extra_graphs: lane name -> ONNX file with the dual graph's inputs/outputs, run through the
        Scorer on onnxruntime CPU with the FP32 tolerance (e.g. a candidate or tampered graph).
    max_images: score only this many test images, evenly spaced within each class (smoke runs).
    """

    bundle: Path
    run_dir: Path | None
    split: Path
    lanes: list[str]
    work_dir: Path
    extra_graphs: dict[str, Path] = field(default_factory=dict)
    n_boot: int = 1000
    seed: int = 0
    max_images: int | None = None
    data_root: Path | None = None


@dataclass
class TestSet:
    """x float32 [n, 1, 64, 64]; labels int [n]; paths [n]; skipped (path, reason)."""

    x: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: list[tuple[str, str]]
    manifest: dict[str, Any]


def _stratified(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of about n items, evenly spaced within each class, class shares kept."""
    keep = []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        m = max(1, int(round(n * len(idx) / len(labels))))
        keep.append(idx[np.unique(np.linspace(0, len(idx) - 1, min(m, len(idx))).astype(int))])
    return np.sort(np.concatenate(keep))


def load_test_set(
    split: Path, data_root: Path | None = None, max_images: int | None = None
) -> TestSet:
    """The split's test images through the runtime loader (unreadable files are skipped)."""
    from ddad_edge.data import read_manifest
    from ddad_edge.runtime.batch import load_inputs

    manifest = read_manifest(split, data_root)
    labels = np.asarray(manifest["test_labels"], dtype=np.int64)
    rel = list(manifest["test"])
    idx = np.arange(len(rel))
    if max_images is not None and max_images < len(rel):
        idx = _stratified(labels, max_images)
    paths = [str(Path(manifest["root"]) / rel[i]) for i in idx]
    lb = load_inputs(paths)
    return TestSet(
        x=lb.x,
        labels=labels[idx][lb.ok],
        paths=[paths[i] for i in lb.ok],
        skipped=[(p, r) for _, p, r in lb.errors],
        manifest=manifest,
    )


def _open_all(cfg: ParityConfig, on: Progress) -> tuple[list[Lane], dict[str, str]]:
    """The lanes to compare (opened), and why each of the others cannot run here."""
    lanes: list[Lane] = []
    unavailable: dict[str, str] = {}
    for n in (n for n in cfg.lanes if n != REFERENCE_LANE):
        on(f"opening lane {n}")
        try:
            lanes.append(
                open_lane(
                    n, bundle=cfg.bundle, run_dir=cfg.run_dir, work_dir=cfg.work_dir, max_batch=64
                )
            )
        except LaneUnavailable as e:
            unavailable[n] = str(e)
    for n, graph in cfg.extra_graphs.items():
        on(f"preparing user graph {n} ({graph})")
        spec = LaneSpec(n, "custom", "ort-cpu", "fp32")
        try:
            vb = make_variant_bundle(cfg.bundle, n, cfg.work_dir / f"graph-{n}", graph)
            lanes.append(RuntimeLane(spec, vb, graph_precision="fp32", max_batch=64))
        except (LaneUnavailable, OSError, ValueError) as e:
            unavailable[n] = str(e)
    return lanes, unavailable


def _described(cfg: ParityConfig, test: TestSet) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's "config" and "test_set" sections."""
    root = str(test.manifest.get("root", ""))
    return (
        {
            "bundle": str(cfg.bundle),
            "run_dir": str(cfg.run_dir),
            "split": str(cfg.split),
            "lanes": cfg.lanes,
            "extra_graphs": {k: str(v) for k, v in cfg.extra_graphs.items()},
            "n_boot": cfg.n_boot,
            "seed": cfg.seed,
            "max_images": cfg.max_images,
            "tolerances": TOLERANCES,
            "kermany": "kermany" in root.lower(),
            "data_note": test.manifest.get("data_note", ""),
        },
        {
            "n_listed": len(test.manifest["test"]),
            "n_scored": len(test.labels),
            "skipped": [{"path": p, "reason": r} for p, r in test.skipped],
        },
    )


def run_parity_bundle(cfg: ParityConfig, on_progress: Progress | None = None) -> dict[str, Any]:
    """Run the parity comparison described by ``cfg``; see :func:`run_parity` for the result,
    extended with "config", "machine", "test_set", "unavailable" and "variants"."""
    on = on_progress or (lambda _: None)
    t0 = time.perf_counter()
    described = machine.describe_machine()  # the load average before the run
    on(f"loading the test set of {cfg.split}")
    test = load_test_set(cfg.split, cfg.data_root, cfg.max_images)
    if len(test.labels) == 0 or test.labels.min() == test.labels.max():
        raise ValueError(f"{cfg.split}: the loaded test images do not contain both classes")
    on("opening the PyTorch reference")
    reference = open_lane(REFERENCE_LANE, bundle=cfg.bundle, run_dir=cfg.run_dir)
    lanes, unavailable = _open_all(cfg, on)
    try:
        result = run_parity(
            test.x,
            test.labels,
            reference,
            lanes,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
            on_lane=lambda n: on(f"scoring {len(test.x)} images with {n}"),
        )
    finally:
        for lane in [reference, *lanes]:
            lane.close()
    for lane in lanes:
        result["lanes"][lane.name]["info"] = lane.info()
    config, test_set = _described(cfg, test)
    result |= {"tool": "ddad-edge parity", "toolkit_version": __version__, "config": config}
    result["machine"] = {**described, "loadavg_end": machine.load_average()}
    result |= {"test_set": test_set, "unavailable": unavailable}
    result["variants"] = {
        n: {"max_abs_delta_auc": e["max_abs_delta_auc"]}
        | {"eligible": bool(e["max_abs_delta_auc"] <= REDUCED_TOLERANCE)}
        for n, e in result["lanes"].items()
        if n in LANE_SPECS and LANE_SPECS[n].smaller_weights
    }
    result["seconds"] = time.perf_counter() - t0
    return result
