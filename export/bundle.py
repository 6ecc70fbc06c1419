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
   the ONNX files, whose weights live in one shared file per precision (``weights_fp32.bin``,
   ``weights_fp16.bin``: each weight stored once per precision, ``export.weights``; every
   written graph is re-run from the folder and must give the gated outputs bit for bit),
   ``golden.npz`` (the first ``n_golden`` parity images and the PyTorch FP32
   outputs and image scores for them) and ``manifest.json`` (provenance, contracts, hashes,
   parity results; ``export.manifest``), signed with ``sign_key`` when given. A failed gate
   raises :class:`ParityError` and leaves ``out_dir`` untouched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge import __version__
from ddad_edge.export.asr_graph import ASR_OUTPUT, AsrWeights, asr_weights
from ddad_edge.export.fold import FoldedEnsemble, concat_members, fold_ensemble
from ddad_edge.export.fp16 import emulate_fp16_storage
from ddad_edge.export.int8 import quantize_int8
from ddad_edge.export.manifest import (
    INPUT_CONTRACT,
    SCORE_DEFINITIONS,
    build_manifest,
    golden_section,
    graph_entry,
    parity_section,
)
from ddad_edge.export.onnx_graph import (
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
from ddad_edge.export.weights import share_weights, weights_file
from ddad_edge.runtime.bundle import GOLDEN, MANIFEST, TOLERANCES, sha256_file
from ddad_edge.runtime.scores import (
    STD_DEFINITION,
    dual_from_modules,
    maps_from_stats,
    scores_from_stats,
)
from ddad_edge.runtime.signature import sign_bundle

__all__ = ["INPUT_CONTRACT", "SCORE_DEFINITIONS", "ExportError", "ExportResult", "export_bundle"]


class ExportError(RuntimeError):
    """The export cannot proceed (bad run folder, output exists, no images)."""


@dataclass
class ExportResult:
    """What was written: the bundle folder, its manifest, and the parity results (of the
    written graphs; ``omitted``: those of the optional graphs left out)."""

    out_dir: Path
    manifest: dict[str, Any]
    parity: list[ParityResult]
    omitted: list[ParityResult] = field(default_factory=list)
    """Optional graphs (INT8) not written because they failed their gate."""


@dataclass
class _Graph:
    key: str
    file: str
    graph: str
    precision: str
    groups: list[OutputGroup]
    model_bytes: bytes
    ops: dict[str, int]
    extra_outputs: tuple[str, ...] = ()
    """Outputs after the groups' statistics (``asr`` in a dual graph with ASR)."""

    def outputs(self, kind: str) -> list[str]:
        """The graph's output names, in order."""
        return [n for grp in self.groups for n in grp.names(kind)] + list(self.extra_outputs)


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
    asr: AsrWeights | None = None,
) -> _Graph:
    graph = key.rsplit("_", 1)[0]
    extra = (ASR_OUTPUT,) if asr is not None else ()
    outputs = [n for g in groups for n in g.names(folded.kind)] + list(extra)
    model = build_model(
        folded,
        groups,
        precision=precision,
        graph_name=f"ddad_{key}",
        metadata=_metadata(meta, graph, precision, outputs),
        asr=asr,
    )
    check(model)
    data = model.SerializeToString()
    return _Graph(key, f"{key}.onnx", graph, precision, groups, data, op_counts(model), extra)


def _reference(run: _Run, x: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """PyTorch FP32 outputs per graph family: "A", "B" (module stats) and "dual" (with the ASR
    probability map ``asr`` when the run has ASR)."""
    from ddad_edge.reference import module_stats

    a = module_stats(run.model_a, x)
    b = module_stats(run.model_b, x)
    dual = dual_from_modules(a, b)
    if run.asr is not None:
        from ddad_edge.asr import asr_probability

        dual[ASR_OUTPUT] = asr_probability(*run.asr, maps_from_stats(x, dual))
    return {"A": a, "B": b, "dual": dual}


GATE_NOTES = {
    "fp32": "",
    "fp16": "onnxruntime CPU: float16 weights, float32 arithmetic (no x86 FP16 kernels; "
    "InsertCastTransformer)",
    "int8": "onnxruntime CPU: int8 bottleneck weights, integer MatMul kernels",
}


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
        note = GATE_NOTES[g.precision]
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


@dataclass
class _Run:
    """A trained run, loaded: its folder, config.json, both modules (eval mode), kind, K and
    the epochs each module trained."""

    folder: Path
    config: dict[str, Any]
    model_a: Any
    model_b: Any
    kind: str
    k: int
    epochs: dict[str, int]
    asr: tuple[Any, list[float]] | None = None
    """The run's ASR network and input scales (``ddad_edge.asr.load_asr``), when it has one."""
    asr_epochs: int = 0
    asr_trained_on: dict[str, Any] | None = None
    """What the ASR network was trained on: {"part": split part, "split_sha256": ...}."""
    asr_agreement: float | None = None
    """train-asr's check (``ddad_edge.asr.inter_agreement``); None when absent or undefined."""


def _check_request(out: Path, overwrite: bool, n_parity: int, n_golden: int, sign_key: Any) -> None:
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; choose another -o or pass --force")
    if n_golden < 1 or n_parity < n_golden:
        raise ExportError("need 1 <= n_golden <= n_parity")
    if sign_key is not None and not Path(sign_key).is_file():
        raise ExportError(f"{sign_key}: signing key file not found")


def _load_run(run_dir: Path, allow_incomplete: bool, with_asr: bool = True) -> _Run:
    """Both modules of a run folder and, when it has one and ``with_asr``, its ASR network
    (checkpoints read as data only)."""
    from ddad_edge.asr import has_asr, load_asr, load_asr_checkpoint
    from ddad_edge.checkpoint import load_checkpoint, load_module, read_config

    try:
        config = read_config(run_dir)
        model_a = load_module(run_dir, "A", require_complete=not allow_incomplete)
        model_b = load_module(run_dir, "B", require_complete=not allow_incomplete)
        epochs = {m: int(load_checkpoint(run_dir, m)["epoch"]) for m in ("A", "B")}
    except (FileNotFoundError, RuntimeError, KeyError) as e:
        raise ExportError(str(e)) from e
    if (model_a.kind, model_a.k) != (model_b.kind, model_b.k):
        raise ExportError(f"{run_dir}: modules A and B differ in kind or K")
    run = _Run(run_dir, config, model_a, model_b, model_a.kind, model_a.k, epochs)
    if with_asr and has_asr(run_dir):
        try:
            run.asr = load_asr(run_dir, require_complete=not allow_incomplete)
            ck = load_asr_checkpoint(run_dir)
            run.asr_epochs = int(ck["epoch"])
            rho = ck.get("inter_agreement")
            run.asr_agreement = float(rho) if rho is not None and np.isfinite(rho) else None
            run.asr_trained_on = {
                "part": ck.get("trained_on", "normal_train"),
                "split_sha256": ck.get("split_sha256"),
            }
        except (FileNotFoundError, RuntimeError) as e:
            raise ExportError(str(e)) from e
    return run


def _graph_metadata(run: _Run, created: str) -> dict[str, str]:
    """ONNX metadata_props every graph carries (provenance and contracts)."""
    return {
        "ddad.toolkit_version": __version__,
        "ddad.model_kind": run.kind,
        "ddad.k": str(run.k),
        "ddad.std_definition": STD_DEFINITION,
        "ddad.input_contract": json.dumps(INPUT_CONTRACT, sort_keys=True),
        "ddad.score_definitions": json.dumps(SCORE_DEFINITIONS, sort_keys=True),
        "ddad.split_sha256": str(run.config.get("split_sha256", "")),
        "ddad.training_config": json.dumps(run.config.get("train", {}), sort_keys=True),
        "ddad.created_utc": created,
    }


def _int8_graph(fp32: _Graph) -> _Graph:
    """The int8 graph of an FP32 graph (``export.int8``)."""
    import onnx

    data = quantize_int8(fp32.model_bytes)
    key = f"{fp32.graph}_int8"
    ops = op_counts(onnx.load_from_string(data))
    return _Graph(
        key, f"{key}.onnx", fp32.graph, "int8", fp32.groups, data, ops, fp32.extra_outputs
    )


def _build_graphs(
    run: _Run,
    meta: dict[str, str],
    module_graphs: bool,
    fp16_module_graphs: bool,
    int8: bool,
) -> list[_Graph]:
    """dual_fp32, dual_fp16 (and dual_int8), then the module graphs asked for (inline
    weights)."""
    fa, fb = fold_ensemble(run.model_a), fold_ensemble(run.model_b)
    dual = concat_members(fa, fb)
    k = run.k
    asr = asr_weights(*run.asr) if run.asr is not None else None
    graphs = [_build(f"dual_{p}", dual, dual_groups(k), p, meta, asr) for p in ("fp32", "fp16")]
    if int8:
        graphs.append(_int8_graph(graphs[0]))
    precs = (["fp32"] if module_graphs else []) + (["fp16"] if fp16_module_graphs else [])
    for name, f in (("A", fa), ("B", fb)):
        for p in precs:
            graphs.append(_build(f"module_{name}_{p}", f, module_groups(k), p, meta))
    return graphs


def _golden_arrays(
    imgs: ParityImages, ref: dict[str, dict[str, np.ndarray]], n: int, kind: str
) -> dict[str, np.ndarray]:
    """golden.npz: the first n parity images x, the PyTorch FP32 dual outputs for them (and
    module A's var for AE-U), their image scores ``score_<name>`` and ``sources``."""
    golden = {"x": imgs.x[:n]}
    golden.update({name: v[:n] for name, v in ref["dual"].items()})
    if kind == "aeu":
        golden["var_a"] = ref["A"]["var"][:n]
    for name, s in scores_from_stats(
        imgs.x[:n], {k: v[:n] for k, v in ref["dual"].items()}
    ).items():
        golden[f"score_{name}"] = s
    golden["sources"] = np.asarray(imgs.sources[:n], dtype=str)
    return golden


STORAGE = {"fp32": "fp32", "fp16": "fp16", "int8": "fp32"}
"""Weights file of each precision: the int8 graph keeps its unquantised tensors (convolutions,
small MatMuls) in FP32, the same bytes as the FP32 graph's, so it shares the FP32 file."""


def _write_graphs(folder: Path, graphs: list[_Graph]) -> dict[str, list[str]]:
    """Write the graphs with one shared weights file per storage precision
    (``export.weights``); returns {graph key: [external-data files it reads]}."""
    external: dict[str, list[str]] = {}
    for prec in sorted({STORAGE[g.precision] for g in graphs}):
        same = [g for g in graphs if STORAGE[g.precision] == prec]
        dual = next(g for g in same if g.graph == "dual" and g.precision == prec)
        rest = {g.key: g.model_bytes for g in same if g is not dual}
        location = weights_file(prec)
        dual_bytes, rest_bytes, blob, _ = share_weights(dual.model_bytes, rest, location)
        (folder / location).write_bytes(blob)
        for g in same:
            (folder / g.file).write_bytes(dual_bytes if g is dual else rest_bytes[g.key])
            external[g.key] = [location]
    return external


def _check_written(folder: Path, graphs: list[_Graph], x: np.ndarray) -> None:
    """Each written graph, loaded from the folder (shared weights), gives bit for bit the
    outputs of the graph the gate passed."""
    for g in graphs:
        want, _ = run_onnx(g.model_bytes, x)
        got, _ = run_onnx(str(folder / g.file), x)
        if any(not np.array_equal(want[n], got[n]) for n in want):
            raise ExportError(f"{g.file}: the written graph differs from the gated one")


def _write_contents(
    folder: Path,
    run: _Run,
    graphs: list[_Graph],
    imgs: ParityImages,
    ref: dict[str, dict[str, np.ndarray]],
    results: list[ParityResult],
    n_golden: int,
    created: str,
    t_start: float,
    omitted: list[ParityResult],
) -> dict[str, Any]:
    """Write the gated graphs (checked bit for bit once written), golden.npz and, last,
    manifest.json (which hashes the others) into ``folder``; returns the manifest."""
    external = _write_graphs(folder, graphs)
    _check_written(folder, graphs, imgs.x[:n_golden])
    golden = _golden_arrays(imgs, ref, n_golden, run.kind)
    with open(folder / GOLDEN, "wb") as f:
        np.savez(f, **golden)
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
    }
    manifest = build_manifest(
        run=run,
        created=created,
        graphs={g.key: graph_entry(g, run.kind, run.k, files, external[g.key]) for g in graphs},
        golden=golden_section(n_golden, imgs.sources[:n_golden], list(golden)),
        parity=parity_section(imgs, results, omitted),
        display={"heatmap_vmax": _display_vmax(imgs.x, ref["dual"])},
        files=files,
        seconds=time.perf_counter() - t_start,
    )
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


OPTIONAL_PRECISIONS = ("int8",)
"""Precisions a bundle can do without: a graph of one that fails its gate is left out (and
named in the manifest's parity section) instead of failing the export."""


def _omit_failed_optional(
    graphs: list[_Graph], results: list[ParityResult]
) -> tuple[list[_Graph], list[ParityResult], list[ParityResult]]:
    """Split off the optional graphs that failed the gate: (graphs kept, their results, the
    failed optional results)."""
    dropped = {r.graph for r in results if not r.passed and r.precision in OPTIONAL_PRECISIONS}
    return (
        [g for g in graphs if g.key not in dropped],
        [r for r in results if r.graph not in dropped],
        [r for r in results if r.graph in dropped],
    )


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
    int8: bool = True,
    overwrite: bool = False,
    allow_incomplete: bool = False,
    sign_key: str | os.PathLike[str] | None = None,
    asr: bool = True,
) -> ExportResult:
    """Export a trained run as a bundle (see the module docstring).

    Args:
        run_dir: run folder written by ``ddad-edge train`` (config.json, module_A.pt, module_B.pt).
        out_dir: bundle folder to create (must not exist or be empty, unless ``overwrite``).
        images, split: where the parity images come from (``sources.parity_images``).
        n_parity: images in the parity gate; n_golden: how many of them go into golden.npz.
        module_graphs: also write module_A_fp32.onnx / module_B_fp32.onnx.
        fp16_module_graphs: also write module_A_fp16.onnx / module_B_fp16.onnx.
        int8: also write dual_int8.onnx (``export.int8``), gated like FP16; when it fails
            the gate it is left out (``ExportResult.omitted``, the manifest's parity section).
        overwrite: replace an existing bundle at out_dir (only after the gate passed).
        allow_incomplete: export a run whose training has not reached its last epoch.
        sign_key: PEM elliptic-curve private key: sign the bundle (``bundle.sig``, OpenSSF
            model-signing; the ``signing`` extra) before it is moved into place.
        asr: fuse the run's ASR network (``RUN/asr.pt``, from ``ddad-edge train-asr``) after
            the dual graphs' statistics, when the run has one (output ``asr``, score ``asr``).

    Returns:
        ExportResult.

    Raises:
        ExportError: unusable run folder or output folder, no parity images.
        ParityError: an FP32 or FP16 graph failed the gate (nothing is written).
    """
    from ddad_edge.export.sources import SourceError

    t_start = time.perf_counter()
    out = Path(out_dir)
    _check_request(out, overwrite, n_parity, n_golden, sign_key)
    run = _load_run(Path(run_dir), allow_incomplete, asr)
    try:
        imgs: ParityImages = parity_images(run.config, n_parity, images=images, split=split)
    except SourceError as e:
        raise ExportError(str(e)) from e
    created = _utc_now()
    meta = _graph_metadata(run, created)
    graphs = _build_graphs(run, meta, module_graphs, fp16_module_graphs, int8)
    ref = _reference(run, imgs.x)
    results = _gate(graphs, imgs.x, ref)
    graphs, results, omitted = _omit_failed_optional(graphs, results)
    if not all(r.passed for r in results):
        raise ParityError(
            f"export of {run_dir} failed the parity gate on {len(imgs.x)} images "
            f"({imgs.origin}); nothing written:\n{format_table(results)}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        ng = min(n_golden, len(imgs.x))
        manifest = _write_contents(
            tmp, run, graphs, imgs, ref, results, ng, created, t_start, omitted
        )
        if sign_key is not None:
            sign_bundle(tmp, sign_key)
        _write_atomic_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, manifest, results, omitted)
