"""The whole ``ddad-edge parity`` run: load the split's test set once, open the reference and the
lanes (building the smaller-weight variants and any user-supplied graphs as variant bundles),
compare (:func:`ddad_edge.benchmarks.parity.run_parity`) and return a JSON-ready dict."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge import __version__
from ddad_edge.benchmarks import machine, variants
from ddad_edge.benchmarks.lanes import (
    LANE_SPECS,
    REFERENCE_LANE,
    Lane,
    LaneSpec,
    LaneUnavailable,
    RuntimeLane,
    open_lane,
)
from ddad_edge.benchmarks.parity import TOLERANCES, run_parity

Progress = Callable[[str], None]


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
            vb = variants.make_variant_bundle(cfg.bundle, n, cfg.work_dir / f"graph-{n}", graph)
            lanes.append(RuntimeLane(spec, vb, graph_precision="fp32", max_batch=64))
        except (LaneUnavailable, OSError, ValueError) as e:
            unavailable[n] = str(e)
    return lanes, unavailable


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
    for n, lane in zip([ln.name for ln in lanes], lanes, strict=True):
        result["lanes"][n]["info"] = lane.info()
    result["tool"] = "ddad-edge parity"
    result["toolkit_version"] = __version__
    result["config"] = {
        "bundle": str(cfg.bundle),
        "run_dir": str(cfg.run_dir),
        "split": str(cfg.split),
        "lanes": cfg.lanes,
        "extra_graphs": {k: str(v) for k, v in cfg.extra_graphs.items()},
        "n_boot": cfg.n_boot,
        "seed": cfg.seed,
        "max_images": cfg.max_images,
        "tolerances": TOLERANCES,
        "kermany": "kermany" in str(test.manifest.get("root", "")).lower(),
        "data_note": test.manifest.get("data_note", ""),
    }
    result["machine"] = {**described, "loadavg_end": machine.load_average()}
    result["test_set"] = {
        "n_listed": len(test.manifest["test"]),
        "n_scored": len(test.labels),
        "skipped": [{"path": p, "reason": r} for p, r in test.skipped],
    }
    result["unavailable"] = unavailable
    result["variants"] = {
        n: {
            "max_abs_delta_auc": e["max_abs_delta_auc"],
            "eligible": bool(e["max_abs_delta_auc"] <= 0.003),
        }
        for n, e in result["lanes"].items()
        if n in LANE_SPECS and LANE_SPECS[n].smaller_weights
    }
    result["seconds"] = time.perf_counter() - t0
    return result
