"""Read and verify a deployment bundle written by ``ddad-edge export`` (torch-free, onnx-free).

Bundle layout (a folder)::

    manifest.json          provenance, input contract, score/std definitions, graphs, file hashes
    dual_fp32.onnx         A's and B's members in one graph: x -> mean_a, std_a, mean_b, std_b (+var_b)
    dual_fp16.onnx         the same in float16 compute (float32 I/O and reductions)
    module_A_fp32.onnx     one module: x -> mean, std (+var)   (optional, same for B)
    golden.npz             preprocessed images x [n,1,64,64] and the PyTorch FP32 outputs for them
    engines/               TensorRT plans + JSON sidecars + timing cache (added by ``build``)

Every file listed in ``manifest["files"]`` carries its sha256; :func:`open_bundle` refuses a
bundle whose files are missing or do not match, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
GOLDEN = "golden.npz"
ENGINES_DIR = "engines"
FORMAT_VERSION = 1
GRAPHS = ("dual", "module_A", "module_B")
PRECISIONS = ("fp32", "fp16")

TOLERANCES: dict[str, float] = {"fp32": 1e-5, "fp16": 2e-2}
"""Largest allowed max-abs error of each output, relative to the range (max - min) of the
reference output, by graph precision. FP32 graphs must match the PyTorch FP32 reference to
1e-5 of the range; the FP16 bound is ~20x the error measured with FP16-storage emulation on real
images (see docs / export report), leaving room for GPU kernels that accumulate in FP16."""


class BundleError(Exception):
    """A bundle cannot be used: missing or modified file, bad manifest, unknown graph.

    ``str(e)`` is one line that names the file and the reason.
    """


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
        """Path of one ONNX graph file."""
        return self.root / self.graph(graph, precision)["file"]

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
            path = self.root / GOLDEN
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
    """Parse ``root/manifest.json``; BundleError when absent or malformed."""
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise BundleError(f"{root}: not a folder (expected a bundle written by `ddad-edge export`)")
    if not path.is_file():
        raise BundleError(f"{path}: missing; not a ddad-edge bundle (run `ddad-edge export`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: unreadable manifest: {e}") from e
    for key in ("format_version", "model", "graphs", "files"):
        if key not in manifest:
            raise BundleError(f"{path}: manifest lacks {key!r}; not a ddad-edge bundle")
    if manifest["format_version"] > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {manifest['format_version']} is newer than this runtime "
            f"supports ({FORMAT_VERSION}); upgrade ddad-edge"
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
        path = root / name
        if entry is None:
            raise BundleError(f"{path}: not listed in {MANIFEST}")
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (re-export it)")
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise BundleError(
                f"{path}: size {size} bytes differs from the manifest's {entry['bytes']}; the file "
                "was modified or truncated (re-export the bundle)"
            )
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise BundleError(
                f"{path}: sha256 {digest[:16]}... does not match the manifest "
                f"({str(entry['sha256'])[:16]}...); the file was modified (re-export the bundle)"
            )


def open_bundle(root: str | os.PathLike[str], *, verify: bool | list[str] = True) -> Bundle:
    """Open a bundle folder.

    Args:
        root: the bundle folder.
        verify: True checks every file's sha256; a list checks only those files (e.g. the one
            graph about to be loaded plus golden.npz); False checks none.

    Raises:
        BundleError: missing/malformed manifest, or a file that does not match its hash.
    """
    root = Path(root)
    manifest = read_manifest(root)
    if verify is True:
        verify_files(root, manifest)
    elif verify:
        verify_files(root, manifest, list(verify))
    return Bundle(root, manifest, verified=bool(verify))


def relative_errors(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per output: max abs error, the reference's range, and their ratio.

    Args:
        got, ref: output name -> float array (same shapes); only names in both are compared.

    Returns:
        {name: {"max_abs": float, "range": float, "rel": float}} (rel = max_abs / range; range 0
        is replaced by 1 so a constant output compares absolutely).
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
        out[name] = {"max_abs": err, "range": span, "rel": err / (span if span > 0 else 1.0)}
    return out
