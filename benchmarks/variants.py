"""A graph variant with smaller stored weights, to move the batch-1 weight-read floor.

``fp16w``: every large float32 initializer stored as float16 and Cast back to float32 in the
graph; compute stays FP32. Halves the file, but onnxruntime may constant-fold the Casts at session
creation, in which case the weights in memory (and the floor) do not change: the benchmark
measures what actually happens. (The other smaller-weight lane, ``ort-int8``, runs the bundle's
own ``int8`` precision, built at export by ``export/int8.py``.)

A variant is run through the real runtime ``Scorer`` by putting it in a *variant bundle*: a folder
whose files link to the original bundle's, except ``dual_fp32.onnx`` (the variant) and
``manifest.json`` (the same manifest with that file's hash and size updated and a ``variant``
note). Nothing in the original bundle is modified.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ddad_edge.export.weights import link_or_copy
from ddad_edge.runtime.bundle import MANIFEST, graph_key, read_manifest, sha256_file
from ddad_edge.runtime.manifest import sealed

VARIANTS: tuple[str, ...] = ("fp16w",)
FP16W_MIN_ELEMENTS = 1024
VARIANT_NOTES: dict[str, str] = {
    "int8": "the bundle's dual_int8: QInt8 per-channel weights of the MatMuls >= 1 MiB; rest FP32",
    "fp16w": "float32 initializers >= 1024 elements stored as float16 + Cast; FP32 compute",
}


def make_fp16_weights(src: Path, dst: Path, min_elements: int = FP16W_MIN_ELEMENTS) -> Path:
    """Store every float32 initializer with >= ``min_elements`` elements as float16, followed
    by a Cast to float32 under the original name; the rest of the graph is unchanged."""
    model = onnx.load(str(src))
    g = model.graph
    kept, casts = [], []
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT and int(np.prod(t.dims)) >= min_elements:
            a = numpy_helper.to_array(t)
            kept.append(numpy_helper.from_array(a.astype(np.float16), f"{t.name}__fp16"))
            casts.append(
                helper.make_node(
                    "Cast",
                    [f"{t.name}__fp16"],
                    [t.name],
                    name=f"Cast_{t.name}_to_fp32",
                    to=TensorProto.FLOAT,
                )
            )
        else:
            kept.append(t)
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    onnx.save(model, str(dst))
    return Path(dst)


def make_variant_bundle(
    bundle: Path, variant: str, out_dir: Path, graph_file: Path | None = None
) -> Path:
    """A variant bundle in ``out_dir`` (created; must not exist or be empty): see the module
    docstring. ``graph_file``: use this ONNX file as the variant instead of building
    ``variant`` (for user-supplied graphs, e.g. a deliberately tampered one in tests).
    Returns ``out_dir``. ValueError for an unknown variant without ``graph_file``."""
    if graph_file is None and variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    bundle, out_dir = Path(bundle), Path(out_dir)
    manifest = read_manifest(bundle)
    key = graph_key("dual", "fp32")
    entry = manifest["graphs"].get(key)
    if entry is None:
        raise ValueError(
            f"{bundle}: bundle has no {key} graph to derive the {variant} variant from"
        )
    graph_name = entry["file"]
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty")
    for item in bundle.iterdir():
        if item.name not in (MANIFEST, graph_name):
            link_or_copy(item.resolve(), out_dir / item.name)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".onnx")
    os.close(fd)
    if graph_file is not None:
        shutil.copyfile(graph_file, tmp)
    else:
        make_fp16_weights(bundle / graph_name, Path(tmp))
    os.replace(tmp, out_dir / graph_name)
    new = json.loads(json.dumps(manifest))
    path = out_dir / graph_name
    digest, size = sha256_file(path), path.stat().st_size
    new["files"][graph_name] = {"sha256": digest, "bytes": size}
    new["graphs"][key].update(sha256=digest, bytes=size)
    new["variant"] = {
        "kind": variant,
        "derived_from": str(bundle.resolve()),
        "graph": graph_name,
        "note": VARIANT_NOTES.get(variant, f"user-supplied graph {graph_file}"),
    }
    (out_dir / MANIFEST).write_text(json.dumps(sealed(new), indent=1))
    return out_dir
