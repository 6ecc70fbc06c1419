"""Write a deployment bundle from a trained run, gated on parity with the PyTorch reference.

``export_bundle(run_dir, out_dir)``:

1. loads modules A and B (``checkpoint.load_module``), folds BatchNorm (``fold``);
2. builds the graphs (``onnx_graph``): ``dual_fp32``, ``dual_fp16`` and, unless disabled,
   ``module_A_fp32`` / ``module_B_fp32`` (``module_*_fp16`` on request); each passes
   ``onnx.checker.check_model(full_check=True)``;
3. runs every graph on onnxruntime CPU over real preprocessed images (``sources``) and compares
   with ``reference.module_stats`` / ``dual_stats`` (``parity``); FP32 graphs must match to
   ``TOLERANCES["fp32"]`` of each output's range and their image scores to
   ``SCORE_TOLERANCE_FP32`` relative; FP16 graphs to ``TOLERANCES["fp16"]``, also checked under
   FP16-storage emulation (``fp16``);
4. only then writes everything into a temporary sibling folder and renames it to ``out_dir``:
   the ONNX files, ``golden.npz`` (the first ``n_golden`` parity images and the PyTorch FP32
   outputs and image scores for them) and ``manifest.json`` (provenance, contracts, hashes,
   parity results). A failed gate raises :class:`ParityError` and leaves ``out_dir`` untouched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge import __version__
from ddad_edge.export.fold import FoldedEnsemble, concat_members, fold_ensemble
from ddad_edge.export.fp16 import emulate_fp16_storage
from ddad_edge.export.onnx_graph import (
    INPUT_NAME,
    OPSET,
    OutputGroup,
    build_model,
    check,
    dual_groups,
    module_groups,
    op_counts,
)
from ddad_edge.export.parity import (
    SCORE_TOLERANCE_FP32,
    ParityError,
    ParityResult,
    compare,
    format_table,
    run_onnx,
)
from ddad_edge.export.sources import ParityImages, parity_images
from ddad_edge.runtime.bundle import (
    FORMAT_VERSION,
    GOLDEN,
    MANIFEST,
    TOLERANCES,
    sha256_file,
)
from ddad_edge.runtime.manifest import sealed
from ddad_edge.runtime.preprocess import IMAGE_SIZE
from ddad_edge.runtime.scores import (
    SCORE_NAMES,
    STD_DEFINITION,
    dual_from_modules,
    maps_from_stats,
    scores_from_stats,
)
from ddad_edge.runtime.signature import sign_bundle

INPUT_CONTRACT: dict[str, Any] = {
    "tensor": INPUT_NAME,
    "dtype": "float32",
    "layout": "NCHW",
    "shape": ["N", 1, IMAGE_SIZE, IMAGE_SIZE],
    "size": IMAGE_SIZE,
    "colour": "grey; RGB converted to luma with ITU-R BT.601 weights (0.299, 0.587, 0.114)",
    "resize": "bilinear (Pillow BILINEAR on float), to 64x64, aspect ratio not kept",
    "range": "[0, 1] (uint8 / 255, uint16 / 65535), then (x - 0.5) / 0.5 -> [-1, 1]",
    "dicom": (
        "Modality LUT (sequence or rescale slope/intercept), then VOI LUT sequence or the first "
        "Window Center/Width (LINEAR, LINEAR_EXACT, SIGMOID), scaled to [0, 1] against the fixed "
        "output range of that step; MONOCHROME1 inverted against that range; a window that "
        "excludes every pixel is ignored; first frame of multi-frame images"
    ),
    "implementation": (
        "ddad_edge.runtime.preprocess / ddad_edge.runtime.io (numpy + Pillow + pydicom)"
    ),
}

SCORE_DEFINITIONS: dict[str, Any] = {
    "names": list(SCORE_NAMES),
    "rec": "(x - mu_B)^2",
    "intra": "std_B: population std across module B's K members (eq. 3)",
    "inter": "|mu_A - mu_B|",
    "aeu_refinement": (
        "AE-U (eq. 5): var_B = mean over B's members of exp(logvar); rec / var_B, "
        "intra / sqrt(var_B), inter / sqrt(var_B); module A's log-variance is not used"
    ),
    "image_score": "mean of the pixel map over its 64x64 pixels",
    "computed_by": "ddad_edge.runtime.scores (numpy, float32), outside the graphs",
}


class ExportError(RuntimeError):
    """The export cannot proceed (bad run folder, output exists, no images)."""


@dataclass
class ExportResult:
    """What was written: the bundle folder, its manifest, and the parity results."""

    out_dir: Path
    manifest: dict[str, Any]
    parity: list[ParityResult]


@dataclass
class _Graph:
    key: str
    file: str
    graph: str
    precision: str
    groups: list[OutputGroup]
    model_bytes: bytes
    ops: dict[str, int]


def _utc_now() -> str:
    return (
        dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    )


def _metadata(
    base: dict[str, str], graph: str, precision: str, outputs: list[str]
) -> dict[str, str]:
    return {
        **base,
        "ddad.graph": graph,
        "ddad.precision": precision,
        "ddad.outputs": ",".join(outputs),
    }


def _build(
    key: str,
    folded: FoldedEnsemble,
    groups: list[OutputGroup],
    precision: str,
    meta: dict[str, str],
) -> _Graph:
    graph = key.rsplit("_", 1)[0]
    outputs = [n for g in groups for n in g.names(folded.kind)]
    model = build_model(
        folded,
        groups,
        precision=precision,
        graph_name=f"ddad_{key}",
        metadata=_metadata(meta, graph, precision, outputs),
    )
    check(model)
    return _Graph(
        key, f"{key}.onnx", graph, precision, groups, model.SerializeToString(), op_counts(model)
    )


def _reference(model_a: Any, model_b: Any, x: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """PyTorch FP32 outputs per graph family: "A", "B" (module stats) and "dual"."""
    from ddad_edge.reference import module_stats

    a = module_stats(model_a, x)
    b = module_stats(model_b, x)
    return {"A": a, "B": b, "dual": dual_from_modules(a, b)}


def _gate(
    graphs: list[_Graph], x: np.ndarray, ref: dict[str, dict[str, np.ndarray]]
) -> list[ParityResult]:
    results = []
    for g in graphs:
        fam = "dual" if g.graph == "dual" else g.graph[-1]
        tol = TOLERANCES[g.precision]
        dual_x = x if fam == "dual" else None
        stol = SCORE_TOLERANCE_FP32 if (fam == "dual" and g.precision == "fp32") else None
        got, secs = run_onnx(g.model_bytes, x)
        note = (
            ""
            if g.precision == "fp32"
            else (
                "onnxruntime CPU: float16 weights, float32 arithmetic (no x86 FP16 kernels; "
                "InsertCastTransformer)"
            )
        )
        results.append(
            compare(
                g.key,
                g.precision,
                got,
                ref[fam],
                tol,
                x=dual_x,
                score_tolerance=stol,
                note=note,
                seconds=secs,
            )
        )
        if g.precision == "fp16" and fam == "dual":
            import onnx

            emu = emulate_fp16_storage(onnx.load_from_string(g.model_bytes)).SerializeToString()
            got, secs = run_onnx(emu, x, optimize=False)
            results.append(
                compare(
                    f"{g.key} (fp16 storage emulation)",
                    "fp16",
                    got,
                    ref[fam],
                    tol,
                    x=x,
                    note="float16 rounding of every weight and activation, float32 arithmetic",
                    seconds=secs,
                )
            )
    return results


def _display_vmax(x: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, float]:
    """A fixed colour-scale top per map (99.5th percentile over the parity images) so heatmaps
    of different calls are comparable."""
    maps = maps_from_stats(x, stats)
    return {k: float(np.percentile(v, 99.5)) for k, v in maps.items()}


def _write_atomic_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished temp folder to out (replacing an old bundle when overwrite)."""
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif overwrite:
            old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
            os.replace(out, old)
        else:  # pragma: no cover - checked before the work starts
            raise ExportError(f"{out} exists; pass overwrite/--force to replace it")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    images: list[Path] | None = None,
    split: Path | None = None,
    n_parity: int = 32,
    n_golden: int = 8,
    module_graphs: bool = True,
    fp16_module_graphs: bool = False,
    overwrite: bool = False,
    allow_incomplete: bool = False,
    sign_key: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Export a trained run as a bundle (see the module docstring).

    Args:
        run_dir: run folder written by ``ddad-edge train`` (config.json, module_A.pt, module_B.pt).
        out_dir: bundle folder to create (must not exist or be empty, unless ``overwrite``).
        images, split: where the parity images come from (``sources.parity_images``).
        n_parity: images in the parity gate; n_golden: how many of them go into golden.npz.
        module_graphs: also write module_A_fp32.onnx / module_B_fp32.onnx.
        fp16_module_graphs: also write module_A_fp16.onnx / module_B_fp16.onnx.
        overwrite: replace an existing bundle at out_dir (only after the gate passed).
        allow_incomplete: export a run whose training has not reached its last epoch.
        sign_key: PEM elliptic-curve private key: sign the bundle (``bundle.sig``, OpenSSF
            model-signing; the ``signing`` extra) before it is moved into place.

    Returns:
        ExportResult.

    Raises:
        ExportError: unusable run folder or output folder, no parity images.
        ParityError: a graph failed the gate (nothing is written).
    """
    from ddad_edge.checkpoint import load_checkpoint, load_module, read_config
    from ddad_edge.export.sources import SourceError

    t_start = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out_dir)
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; choose another -o or pass --force")
    if n_golden < 1 or n_parity < n_golden:
        raise ExportError("need 1 <= n_golden <= n_parity")
    if sign_key is not None and not Path(sign_key).is_file():
        raise ExportError(f"{sign_key}: signing key file not found")
    try:
        config = read_config(run_dir)
        model_a = load_module(run_dir, "A", require_complete=not allow_incomplete)
        model_b = load_module(run_dir, "B", require_complete=not allow_incomplete)
        epochs = {m: int(load_checkpoint(run_dir, m)["epoch"]) for m in ("A", "B")}
    except (FileNotFoundError, RuntimeError, KeyError) as e:
        raise ExportError(str(e)) from e
    if (model_a.kind, model_a.k) != (model_b.kind, model_b.k):
        raise ExportError(f"{run_dir}: modules A and B differ in kind or K")
    kind, k = model_a.kind, model_a.k
    try:
        imgs: ParityImages = parity_images(config, n_parity, images=images, split=split)
    except SourceError as e:
        raise ExportError(str(e)) from e

    import onnx
    import onnxruntime
    import torch

    created = _utc_now()
    meta = {
        "ddad.toolkit_version": __version__,
        "ddad.model_kind": kind,
        "ddad.k": str(k),
        "ddad.std_definition": STD_DEFINITION,
        "ddad.input_contract": json.dumps(INPUT_CONTRACT, sort_keys=True),
        "ddad.score_definitions": json.dumps(SCORE_DEFINITIONS, sort_keys=True),
        "ddad.split_sha256": str(config.get("split_sha256", "")),
        "ddad.training_config": json.dumps(config.get("train", {}), sort_keys=True),
        "ddad.created_utc": created,
    }

    fa, fb = fold_ensemble(model_a), fold_ensemble(model_b)
    dual = concat_members(fa, fb)
    graphs = [
        _build("dual_fp32", dual, dual_groups(k), "fp32", meta),
        _build("dual_fp16", dual, dual_groups(k), "fp16", meta),
    ]
    precs = ["fp32"] + (["fp16"] if fp16_module_graphs else [])
    if module_graphs or fp16_module_graphs:
        for name, f in (("A", fa), ("B", fb)):
            for p in precs if module_graphs else ["fp16"]:
                graphs.append(_build(f"module_{name}_{p}", f, module_groups(k), p, meta))

    ref = _reference(model_a, model_b, imgs.x)
    results = _gate(graphs, imgs.x, ref)
    if not all(r.passed for r in results):
        raise ParityError(
            f"export of {run_dir} failed the parity gate on {len(imgs.x)} images "
            f"({imgs.origin}); nothing written:\n{format_table(results)}"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        for g in graphs:
            (tmp / g.file).write_bytes(g.model_bytes)
        ng = min(n_golden, len(imgs.x))
        golden = {"x": imgs.x[:ng]}
        golden.update({k2: v[:ng] for k2, v in ref["dual"].items()})
        if kind == "aeu":
            golden["var_a"] = ref["A"]["var"][:ng]
        ref_dual = {k2: v[:ng] for k2, v in ref["dual"].items()}
        for n, s in scores_from_stats(imgs.x[:ng], ref_dual).items():
            golden[f"score_{n}"] = s
        golden["sources"] = np.asarray(imgs.sources[:ng], dtype=str)
        with open(tmp / GOLDEN, "wb") as f:
            np.savez(f, **golden)
        files = {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.iterdir())
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "toolkit": {
                "name": "ddad-edge",
                "version": __version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "torch": torch.__version__,
                "opset": OPSET,
            },
            "created_utc": created,
            "model": {
                "kind": kind,
                "k": k,
                "members_in_dual_graph": 2 * k,
                "epochs_trained": epochs,
                "source_run": str(run_dir.resolve()),
                "batchnorm": "folded into the preceding conv / linear (eval-mode statistics)",
            },
            "input_contract": INPUT_CONTRACT,
            "scores": SCORE_DEFINITIONS,
            "std_definition": STD_DEFINITION,
            "split_sha256": config.get("split_sha256"),
            "training_config": config.get("train", {}),
            "run_config": config,
            "graphs": {
                g.key: {
                    "file": g.file,
                    "graph": g.graph,
                    "precision": g.precision,
                    "compute": "float16 weights and activations; reductions, sqrt, exp and "
                    "MemAE softmax in float32"
                    if g.precision == "fp16"
                    else "float32",
                    "inputs": {
                        INPUT_NAME: {"dtype": "float32", "shape": ["N", 1, IMAGE_SIZE, IMAGE_SIZE]}
                    },
                    "outputs": {
                        n: {"dtype": "float32", "shape": ["N", 1, IMAGE_SIZE, IMAGE_SIZE]}
                        for grp in g.groups
                        for n in grp.names(kind)
                    },
                    "members": 2 * k if g.graph == "dual" else k,
                    "ops": g.ops,
                    "bytes": len(g.model_bytes),
                    "sha256": files[g.file]["sha256"],
                }
                for g in graphs
            },
            "golden": {
                "file": GOLDEN,
                "n": ng,
                "sources": imgs.sources[:ng],
                "arrays": sorted(golden),
                "reference": "PyTorch FP32 (ddad_edge.reference, eval mode)",
            },
            "parity": {
                "images": {
                    "origin": imgs.origin,
                    "synthetic": imgs.synthetic,
                    "n": int(len(imgs.x)),
                    "sources": imgs.sources,
                    "skipped": [{"path": p, "reason": r} for p, r in imgs.skipped],
                },
                "tolerances": {
                    "output_rel_range": TOLERANCES,
                    "image_score_rel_fp32": SCORE_TOLERANCE_FP32,
                },
                "backend": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
                "results": [r.to_json() for r in results],
            },
            "display": {"heatmap_vmax": _display_vmax(imgs.x, ref["dual"])},
            "export_seconds": round(time.perf_counter() - t_start, 2),
            "files": files,
        }
        manifest = sealed(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if sign_key is not None:
            sign_bundle(tmp, sign_key)
        _write_atomic_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, manifest, results)
