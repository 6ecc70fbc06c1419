"""Graph variants with smaller weights, to move the batch-1 weight-read floor.

- ``int8``: the fused graph's batched MatMuls ([2K, N, in] x [2K, in, out] initializer) are first
  split into 2K per-member 2-D MatMuls (Split / Squeeze / MatMul / Unsqueeze / Concat: the same
  function, :func:`split_batched_matmuls`), then ``onnxruntime.quantization.quantize_dynamic``
  quantises their weights to QInt8 with one scale per output column of each member
  (``per_channel=True``). Activations are quantised on the fly (DynamicQuantizeLinear) and the
  products run as onnxruntime's integer MatMul kernels; convolutions stay FP32. Why the split:
  on the batched 3-D weights quantize_dynamic can only use one scale for all members of a layer
  (its per-channel mode fails at run time on 3-D weights), and onnxruntime runs that form as a
  generic MatMulInteger without weight prepacking, which was no faster than FP32 at batch 1 in
  our trials.
- ``fp16w``: every large float32 initializer stored as float16 and Cast back to float32 in the
  graph; compute stays FP32. Halves the file, but onnxruntime may constant-fold the Casts at
  session creation, in which case the weights in memory (and the floor) do not change: the
  benchmark measures what actually happens.

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

from ddad_edge.runtime.bundle import MANIFEST, graph_key, read_manifest, sha256_file

VARIANTS: tuple[str, ...] = ("int8", "fp16w")
FP16W_MIN_ELEMENTS = 1024
VARIANT_NOTES: dict[str, str] = {
    "int8": "per-member MatMuls, quantize_dynamic QInt8 per-channel weights; convs FP32",
    "fp16w": "float32 initializers >= 1024 elements stored as float16 + Cast; FP32 compute",
}


def split_batched_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every MatMul whose B is a 3-D initializer W [K, in, out] (A: [K, N, in]) as K
    2-D MatMuls: Split A on axis 0, Squeeze, MatMul with W[k], Unsqueeze, Concat on axis 0.
    The function is unchanged (same products, same order of accumulation per member). Returns a
    new model; ``model`` is not modified."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    replaced: set[str] = set()
    axis0 = "__split_mm_axis0"
    for n in g.node:
        w_t = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if w_t is None or len(w_t.dims) != 3:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(w_t)
        k = w.shape[0]
        sizes = f"__split_mm_ones{k}"
        if sizes not in {t.name for t in added}:
            added.append(numpy_helper.from_array(np.ones(k, np.int64), sizes))
        base = n.name or n.output[0]
        parts = [f"{base}/a{i}" for i in range(k)]
        nodes.append(
            helper.make_node("Split", [n.input[0], sizes], parts, axis=0, name=f"{base}/split")
        )
        outs = []
        for i in range(k):
            wi = f"{w_t.name}/member{i}"
            added.append(numpy_helper.from_array(np.ascontiguousarray(w[i]), wi))
            nodes.append(
                helper.make_node(
                    "Squeeze", [parts[i], axis0], [f"{parts[i]}/2d"], name=f"{base}/squeeze{i}"
                )
            )
            nodes.append(
                helper.make_node(
                    "MatMul", [f"{parts[i]}/2d", wi], [f"{base}/y{i}"], name=f"{base}/matmul{i}"
                )
            )
            nodes.append(
                helper.make_node(
                    "Unsqueeze",
                    [f"{base}/y{i}", axis0],
                    [f"{base}/y{i}/3d"],
                    name=f"{base}/unsqueeze{i}",
                )
            )
            outs.append(f"{base}/y{i}/3d")
        nodes.append(helper.make_node("Concat", outs, [n.output[0]], axis=0, name=f"{base}/concat"))
        replaced.add(w_t.name)
    if not replaced:
        return m
    added.append(numpy_helper.from_array(np.array([0], np.int64), axis0))
    keep = [t for t in g.initializer if t.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(keep + added)
    del g.node[:]
    g.node.extend(nodes)
    return m


def make_int8(src: Path, dst: Path) -> Path:
    """The ``int8`` variant of ONNX graph ``src`` at ``dst`` (see the module docstring)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    split = Path(dst).with_name(Path(dst).name + ".split.onnx")
    onnx.save(split_batched_matmuls(onnx.load(str(src))), str(split))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(
            str(split),
            str(dst),
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    finally:
        root.setLevel(level)
        split.unlink(missing_ok=True)
    return Path(dst)


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


def make_variant_graph(variant: str, src: Path, dst: Path) -> Path:
    """Build variant ``variant`` ("int8" or "fp16w") of graph ``src`` at ``dst``."""
    if variant == "int8":
        return make_int8(src, dst)
    if variant == "fp16w":
        return make_fp16_weights(src, dst)
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def make_variant_bundle(
    bundle: Path, variant: str, out_dir: Path, graph_file: Path | None = None
) -> Path:
    """A variant bundle in ``out_dir`` (created; must not exist or be empty): see the module
    docstring. ``graph_file``: use this ONNX file as the variant instead of building
    ``variant`` (for user-supplied graphs, e.g. a deliberately tampered one in tests).
    Returns ``out_dir``."""
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
            _link_or_copy(item, out_dir / item.name)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".onnx")
    os.close(fd)
    if graph_file is not None:
        shutil.copyfile(graph_file, tmp)
    else:
        make_variant_graph(variant, bundle / graph_name, Path(tmp))
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
    (out_dir / MANIFEST).write_text(json.dumps(new, indent=1))
    return out_dir
