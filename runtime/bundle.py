"""Read and verify a deployment bundle written by ``ddad-edge export`` (torch-free, onnx-free).

Bundle layout (a folder)::

    manifest.json          provenance, input contract, score/std definitions, graphs, file
                           hashes, and manifest_sha256 over all of it
    dual_fp32.onnx         A's and B's members in one graph: x -> mean_a, std_a, mean_b, std_b
                           (+ var_b for AE-U)
    dual_fp16.onnx         the same in float16 compute (float32 I/O and reductions)
    dual_int8.onnx         dual_fp32 with 8-bit bottleneck weights (optional)
                           (each dual graph + output asr when the run had ASR: the refinement
                           network's anomaly probability map, ``export/asr_graph.py``)
    module_A_fp32.onnx     one module: x -> mean, std (+var)   (optional, same for B)
    weights_fp32.bin       the weights of every fp32 (and int8) graph, each stored once: graphs
    weights_fp16.bin       point into these files (ONNX external data), module graphs at the
                           dual graph's bytes
    golden.npz             preprocessed images x [n,1,64,64] and the PyTorch FP32 outputs for them
    bundle.sig             signature (optional; ``runtime/signature.py``)
    engines/               TensorRT plans + JSON sidecars + timing cache (added by ``build``)

Every file in the folder (but the manifest, the signature and ``engines/``) is listed in
``manifest["files"]`` with its sha256; the manifest carries a digest of itself and every path
is confined to the folder (``runtime/manifest.py``). :func:`open_bundle` refuses a bundle whose
manifest is malformed or edited, that holds an unlisted file, or whose files are missing or do
not match, naming the field or file; with ``public_key`` it also checks the bundle's signature
(``runtime/signature.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.runtime.fileio import read_json
from ddad_edge.runtime.manifest import (
    ENGINES_DIR,
    FORMAT_VERSION,
    GRAPHS,
    MANIFEST,
    PRECISIONS,
    BundleError,
    check_manifest,
    safe_relpath,
    unlisted_files,
)
from ddad_edge.runtime.scores import ASR_SCORE, score_names

GOLDEN = "golden.npz"
__all__ = ["FORMAT_VERSION", "GRAPHS", "PRECISIONS", "Bundle", "BundleError", "open_bundle"]

TOLERANCES: dict[str, float] = {"fp32": 1e-5, "fp16": 2e-2, "int8": 2e-2}
"""Largest allowed max-abs error of each output, relative to the reference output's scale
(its range max - min, or its magnitude max |value| when larger; see :func:`relative_errors`), by
graph precision. FP32 graphs must match the PyTorch FP32 reference to 1e-5 of the range; the
FP16 bound sits above the error of FP16-storage emulation on real images, leaving room for GPU
kernels that accumulate in FP16. The int8 graph (8-bit bottleneck weights, ``export/int8.py``)
is held to the FP16 bound. The margins, measured: benchmarks/README.md, decision log."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def graph_key(graph: str, precision: str) -> str:
    """Manifest key of a graph, e.g. ``dual_fp16``."""
    return f"{graph}_{precision}"


@dataclass
class Bundle:
    """An opened bundle: its folder and parsed manifest."""

    root: Path
    manifest: dict[str, Any]
    verified: bool = False
    _golden: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """Model kind: "ae", "memae" or "aeu"."""
        return str(self.manifest["model"]["kind"])

    @property
    def k(self) -> int:
        """Members per module."""
        return int(self.manifest["model"]["k"])

    @property
    def has_asr(self) -> bool:
        """Whether the dual graph carries the ASR refinement output ``asr`` (then every image
        gets the ``asr`` score too; not with ``graph="modules"``)."""
        dual = self.manifest["graphs"].get(graph_key("dual", "fp32"), {})
        return ASR_SCORE in dual.get("outputs", {})

    @property
    def score_names(self) -> tuple[str, ...]:
        """The image scores the dual graph gives: rec, intra, inter (and asr)."""
        return score_names(self.has_asr)

    def graphs(self) -> dict[str, dict[str, Any]]:
        """Manifest entries of every graph, keyed like ``dual_fp32``."""
        return dict(self.manifest["graphs"])

    def graph(self, graph: str = "dual", precision: str = "fp32") -> dict[str, Any]:
        """Manifest entry of one graph (file, inputs, outputs, precision, ...)."""
        key = graph_key(graph, precision)
        entry = self.manifest["graphs"].get(key)
        if entry is None:
            have = ", ".join(sorted(self.manifest["graphs"]))
            raise BundleError(f"{self.root / MANIFEST}: bundle has no {key} graph (it has {have})")
        return entry

    def graph_path(self, graph: str = "dual", precision: str = "fp32") -> Path:
        """Path of one ONNX graph file (confined to the bundle folder)."""
        key = graph_key(graph, precision)
        return safe_relpath(
            self.root, self.graph(graph, precision)["file"], f"graphs[{key!r}].file"
        )

    def file_sha256(self, name: str) -> str:
        """The manifest's sha256 of a bundle file (relative name)."""
        try:
            return str(self.manifest["files"][name]["sha256"])
        except KeyError as e:
            raise BundleError(f"{self.root / MANIFEST}: no hash recorded for {name}") from e

    def golden(self) -> dict[str, np.ndarray]:
        """golden.npz as a dict: x float32 [n,1,64,64], reference outputs float32 [n,1,64,64]
        (mean_a, std_a, mean_b, std_b, var_a/var_b for AE-U), image scores ``score_<name>``
        float32 [n] and ``sources`` (str [n])."""
        if self._golden is None:
            if GOLDEN not in self.manifest["files"]:
                raise BundleError(f"{self.root / MANIFEST}: files: {GOLDEN} is not listed")
            path = safe_relpath(self.root, GOLDEN, f"files[{GOLDEN!r}]")
            try:
                with np.load(path, allow_pickle=False) as z:
                    self._golden = {k: z[k] for k in z.files}
            except (OSError, ValueError) as e:
                raise BundleError(f"{path}: cannot read golden vectors: {e}") from e
        return self._golden

    @property
    def engines_dir(self) -> Path:
        """Folder for TensorRT engines built for this bundle."""
        return self.root / ENGINES_DIR


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check ``root/manifest.json`` (``manifest.check_manifest``); BundleError when
    absent, malformed, edited, or when the folder holds a file the manifest does not list."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a folder (expected a bundle written by `ddad-edge export`)")
    if not path.is_file():
        raise BundleError(f"{path}: missing; not a ddad-edge bundle (run `ddad-edge export`)")
    manifest = read_json(path, BundleError, "manifest")
    check_manifest(root, manifest)
    stray = unlisted_files(root, manifest["files"])
    if stray:
        raise BundleError(
            f"{root / stray[0]}: not listed in {MANIFEST} ({len(stray)} unlisted); a bundle "
            "holds only the files its manifest hashes (remove it, or re-export)"
        )
    return manifest


def verify_files(root: Path, manifest: dict[str, Any], names: list[str] | None = None) -> None:
    """Check size and sha256 of the listed bundle files (default: all of them).

    Raises:
        BundleError: naming the first file that is missing or differs from its recorded hash.
    """
    files = manifest["files"]
    for name in names if names is not None else sorted(files):
        entry = files.get(name)
        if entry is None:
            raise BundleError(f"{root / MANIFEST}: files: {name!r} is not listed")
        path = safe_relpath(root, name, f"files[{name!r}]")
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (re-export it)")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(
                f"{path}: size {size} bytes differs from the manifest's {entry['bytes']}; the file "
                "was modified or truncated (re-export the bundle)"
            )
        if sha256_file(path) != entry["sha256"]:
            raise BundleError(
                f"{path}: sha256 does not match the manifest; the file was modified "
                "(re-export the bundle)"
            )


def open_bundle(
    root: str | os.PathLike[str],
    *,
    verify: bool | list[str] = True,
    public_key: str | os.PathLike[str] | None = None,
) -> Bundle:
    """Open a bundle folder.

    The manifest is always checked (schema, self-digest, confined paths, no unlisted files).

    Args:
        root: the bundle folder.
        verify: True checks every file's size and sha256; a list checks only those files (e.g.
            the one graph about to be loaded plus golden.npz); False checks none.
        public_key: PEM public key file: the bundle must carry a valid signature made with its
            private key (``runtime/signature.py``; needs the ``signing`` extra). None: no
            signature check.

    Raises:
        BundleError: missing/malformed/edited manifest, an unlisted file, a file that does not
            match its hash, or (with ``public_key``) a missing or wrong signature.
    """
    root = Path(root)
    manifest = read_manifest(root)
    if public_key is not None:
        from ddad_edge.runtime.signature import verify_signature

        verify_signature(root, public_key)
    if verify is True:
        verify_files(root, manifest)
    elif verify:
        verify_files(root, manifest, list(verify))
    return Bundle(root, manifest, verified=bool(verify))


def relative_errors(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per output: max abs error, the reference's range and scale, and the relative error.

    The scale is max(range, max |reference|): the range (max - min) of the reference output, or
    its magnitude when that is larger (an output like AE-U's variance can sit near 1.0 with a
    range of 0.03, where one float32 ulp already is 1e-5 of the range).

    Args:
        got, ref: output name -> float array (same shapes); only names in both are compared.

    Returns:
        {name: {"max_abs", "range", "scale", "rel"}} with rel = max_abs / scale (non-finite
        outputs give rel = inf; a zero scale is replaced by 1).
    """
    out = {}
    for name in ref:
        if name not in got:
            continue
        r = np.asarray(ref[name], np.float64)
        g = np.asarray(got[name], np.float64)
        if g.shape != r.shape:
            raise ValueError(f"{name}: shape {g.shape} differs from the reference {r.shape}")
        err = float(np.max(np.abs(g - r))) if r.size else 0.0
        if not np.all(np.isfinite(g)):
            err = float("inf")
        span = float(r.max() - r.min()) if r.size else 0.0
        scale = max(span, float(np.max(np.abs(r))) if r.size else 0.0)
        out[name] = {
            "max_abs": err,
            "range": span,
            "scale": scale,
            "rel": err / (scale if scale > 0 else 1.0),
        }
    return out


# ----------------------------------------------------------------------------------------------
# TensorRT engines: naming and sidecar matching (pure logic; no TensorRT import)
# ----------------------------------------------------------------------------------------------
class EngineMismatch(BundleError):
    """An engine exists but was built for another TensorRT, GPU or ONNX graph."""


def slugify(text: str) -> str:
    """Lower-case file-name-safe slug: runs of anything but [a-z0-9.] become one '-'.

    >>> slugify("NVIDIA GeForce RTX 4090")
    'nvidia-geforce-rtx-4090'
    """
    out, dash = [], False
    for ch in text.lower():
        if ch.isascii() and (ch.isalnum() or ch == "."):
            out.append(ch)
            dash = False
        elif not dash:
            out.append("-")
            dash = True
    return "".join(out).strip("-.") or "gpu"


def engine_stem(gpu_name: str, trt_version: str, precision: str) -> str:
    """File stem of an engine: ``<gpu-slug>-trt<version>-<precision>``."""
    return f"{slugify(gpu_name)}-trt{trt_version}-{precision}"


def engine_files(root: Path, gpu_name: str, trt_version: str, precision: str) -> tuple[Path, Path]:
    """(plan, sidecar JSON) paths of the engine for this GPU, TensorRT version and precision."""
    stem = engine_stem(gpu_name, trt_version, precision)
    d = Path(root) / ENGINES_DIR
    return d / f"{stem}.plan", d / f"{stem}.json"


def engine_mismatches(
    sidecar: dict[str, Any],
    *,
    trt_version: str,
    gpu: dict[str, str],
    onnx_sha256: str,
    precision: str | None = None,
) -> list[str]:
    """What differs between an engine's sidecar and this machine/bundle (empty: usable).

    Args:
        sidecar: the engine's JSON sidecar (keys tensorrt_version, gpu_name,
            compute_capability, onnx_sha256, precision).
        trt_version: the installed TensorRT version.
        gpu: {"name", "compute_capability"} of this machine's GPU.
        onnx_sha256: the bundle's hash of the graph the engine must come from.
        precision: the precision asked for (None: any).
    """
    problems = []
    if sidecar.get("tensorrt_version") != trt_version:
        problems.append(
            f"built with TensorRT {sidecar.get('tensorrt_version')}, installed is {trt_version}"
        )
    if sidecar.get("gpu_name") != gpu.get("name"):
        problems.append(
            f"built for GPU {sidecar.get('gpu_name')!r}, this GPU is {gpu.get('name')!r}"
        )
    if sidecar.get("compute_capability") != gpu.get("compute_capability"):
        problems.append(
            f"built for compute capability {sidecar.get('compute_capability')}, this GPU has "
            f"{gpu.get('compute_capability')}"
        )
    if sidecar.get("onnx_sha256") != onnx_sha256:
        problems.append("built from a different ONNX graph (sha256 differs from the bundle's)")
    if precision is not None and sidecar.get("precision") != precision:
        problems.append(f"precision {sidecar.get('precision')}, asked for {precision}")
    return problems


def rebuild_hint(root: Path, precision: str) -> str:
    """The command that (re)builds an engine for this machine."""
    return f"rebuild it with `ddad-edge build {root} --precision {precision} --force`"


def check_engine(
    bundle: Bundle, precision: str, trt_version: str, gpu: dict[str, str]
) -> tuple[Path, dict[str, Any]]:
    """Find and validate the engine for this machine.

    Returns:
        (plan path, sidecar dict).

    Raises:
        BundleError: no engine built for this GPU/TensorRT/precision (says how to build one).
        EngineMismatch: the sidecar or the plan's hash does not match (says how to rebuild).
    """
    plan, side = engine_files(bundle.root, gpu["name"], trt_version, precision)
    if not plan.is_file() or not side.is_file():
        raise BundleError(
            f"{plan}: no TensorRT engine for this GPU ({gpu['name']}), TensorRT {trt_version} and "
            f"{precision}; build it with `ddad-edge build {bundle.root} --precision {precision}`"
        )
    try:
        sidecar = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise EngineMismatch(
            f"{side}: unreadable sidecar ({e}); {rebuild_hint(bundle.root, precision)}"
        ) from e
    graph_file = bundle.graph("dual", precision)["file"]
    problems = engine_mismatches(
        sidecar,
        trt_version=trt_version,
        gpu=gpu,
        onnx_sha256=bundle.file_sha256(graph_file),
        precision=precision,
    )
    if not problems and sidecar.get("plan_sha256") and sha256_file(plan) != sidecar["plan_sha256"]:
        problems.append("the plan file does not match the sha256 in its sidecar")
    if problems:
        raise EngineMismatch(
            f"{plan}: engine does not match this machine/bundle: {'; '.join(problems)}; "
            f"{rebuild_hint(bundle.root, precision)}"
        )
    return plan, sidecar
