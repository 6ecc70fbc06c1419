"""Arithmetic and weight traffic of an ONNX graph, counted from the graph itself.

FLOPs (one multiply-add = 2 FLOPs; bias adds, BatchNorm, activations and the score arithmetic are
not counted: they are O(activations), negligible next to the convolutions and matmuls):

- Conv / ConvInteger / QLinearConv:
  2 * N * C_out * prod(out spatial) * (C_in / group) * prod(kernel)
- ConvTranspose: 2 * N * C_in * prod(in spatial) * (C_out / group) * prod(kernel)
- MatMul / MatMulInteger / QLinearMatMul: 2 * prod(output shape) * K (batch dims broadcast)
- Gemm: 2 * M * N * K
- a MatMul by a constant permutation matrix (the decoder's pixel interleave) is data movement:
  0 FLOPs

Shapes come from ONNX shape inference with the batch dimension of every graph input fixed to the
requested size (symbolic dims elsewhere resolved by data propagation); when a shape stays unknown,
the graph is run once in onnxruntime on zeros with the needed tensors exposed as outputs.

Weight bytes: the size of every initializer (and Constant node tensor) as stored in the graph, by
data type: what one inference must read from memory at least once.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

from ddad_edge.export.int8 import is_permutation_matmul, permutation_initializers

COUNTED_OPS = frozenset(("Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MatMul", "Gemm"))
COUNTED_OPS |= {"MatMulInteger", "QLinearMatMul", "FusedMatMul"}
UNCOUNTED_COMPUTE_OPS: frozenset[str] = frozenset({"Einsum", "Attention", "LSTM", "GRU", "RNN"})
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "ConvInteger": 1, "QLinearConv": 3}
_STRIP_ABOVE = 4096  # initializers with more elements lose their data in the shape-only copy


def load_graph(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model with its weights (external data included)."""
    return onnx.load(str(path), load_external_data=True)


def _tensor_nbytes(t: TensorProto) -> int:
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return int(math.prod(t.dims)) * itemsize


def _all_weights(model: onnx.ModelProto) -> list[TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    tensors.append(a.t)
    return tensors


def weight_bytes(model: onnx.ModelProto) -> dict[str, Any]:
    """Stored weights of the graph (main graph only).

    Returns:
        {"total": bytes, "by_dtype": {numpy dtype name: bytes}, "n_tensors", "n_elements"}.
    """
    by_dtype: dict[str, int] = defaultdict(int)
    n_el = 0
    tensors = _all_weights(model)
    for t in tensors:
        by_dtype[np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).name] += _tensor_nbytes(t)
        n_el += int(math.prod(t.dims))
    return {
        "total": int(sum(by_dtype.values())),
        "by_dtype": dict(sorted(by_dtype.items())),
        "n_tensors": len(tensors),
        "n_elements": n_el,
    }


def _shape_only_copy(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy with large initializer data dropped (dims kept), stale value_info cleared and the
    leading dimension of every real graph input set to ``batch``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if math.prod(t.dims) > _STRIP_ABOVE:
            t.ClearField("raw_data")
            for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(f)
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
    del m.graph.value_info[:]
    inits = {t.name for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch
    for vi in m.graph.output:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.Clear()
    return m


def _static_shapes(model: onnx.ModelProto, batch: int) -> dict[str, tuple[int, ...] | None]:
    """name -> shape (None when unknown) for every tensor ONNX shape inference can see."""
    m = _shape_only_copy(model, batch)
    try:
        m = shape_inference.infer_shapes(m, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; the ORT fallback takes over
        pass
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            shapes[vi.name] = None
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        shapes[vi.name] = None if any(d is None for d in dims) else tuple(dims)
    for t in model.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    return shapes


def _shapes_via_ort(
    model: onnx.ModelProto, batch: int, names: set[str]
) -> dict[str, tuple[int, ...]]:
    """Run the graph once on zeros (batch fixed) with ``names`` exposed as outputs."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for n in sorted(names - known):
        m.graph.output.append(helper.ValueInfoProto(name=n))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inits = {t.name for t in m.graph.initializer}
    feeds = {}
    for i in sess.get_inputs():
        if i.name in inits:
            continue
        shape = [
            batch if j == 0 else (d if isinstance(d, int) else 1) for j, d in enumerate(i.shape)
        ]
        dtype = np.float16 if "float16" in i.type else np.float32
        feeds[i.name] = np.zeros(shape, dtype)
    outs = [o.name for o in sess.get_outputs()]
    values = sess.run(outs, feeds)
    return {n: tuple(np.shape(v)) for n, v in zip(outs, values, strict=True)}


def _node_flops(node: onnx.NodeProto, shape: dict[str, tuple[int, ...] | None]) -> int:
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape[node.input[_WEIGHT_INPUT[op]]]
        y = shape[node.output[0]]
        return 2 * y[0] * y[1] * math.prod(y[2:]) * w[1] * math.prod(w[2:])
    if op == "ConvTranspose":
        x = shape[node.input[0]]
        w = shape[node.input[1]]
        return 2 * x[0] * x[1] * math.prod(x[2:]) * w[1] * math.prod(w[2:])
    if op == "Gemm":
        a = shape[node.input[0]]
        y = shape[node.output[0]]
        k = a[0] if attrs.get("transA", 0) else a[1]
        return 2 * math.prod(y) * k
    # MatMul family: A is input 0 (QLinearMatMul: input 0 too), K = last dim of A
    a = shape[node.input[0]]
    y = shape[node.output[0]]
    return 2 * math.prod(y) * a[-1]


def _needed(node: onnx.NodeProto) -> list[str]:
    op = node.op_type
    if op in _WEIGHT_INPUT:
        return [node.input[_WEIGHT_INPUT[op]], node.input[0], node.output[0]]
    return [node.input[0], node.output[0]]


def count_flops(model: onnx.ModelProto, batch: int) -> dict[str, Any]:
    """FLOPs of one forward pass of the graph at the given batch size.

    Returns:
        {"batch", "flops" (int), "by_op": {op type: flops}, "n_nodes": counted nodes,
         "uncounted_ops": compute-heavy op types present but not counted,
         "shape_source": "onnx" or "onnxruntime"}.
    """
    perms = permutation_initializers(model)
    nodes = [
        n
        for n in model.graph.node
        if n.op_type in COUNTED_OPS and not is_permutation_matmul(n, perms)
    ]
    shapes = _static_shapes(model, batch)
    source = "onnx"
    missing = {name for n in nodes for name in _needed(n) if shapes.get(name) is None}
    if missing:
        shapes.update(_shapes_via_ort(model, batch, missing))
        source = "onnxruntime"
    by_op: dict[str, int] = defaultdict(int)
    for n in nodes:
        by_op[n.op_type] += _node_flops(n, shapes)
    uncounted = sorted({n.op_type for n in model.graph.node if n.op_type in UNCOUNTED_COMPUTE_OPS})
    return {
        "batch": int(batch),
        "flops": int(sum(by_op.values())),
        "by_op": dict(sorted(by_op.items())),
        "n_nodes": len(nodes),
        "uncounted_ops": uncounted,
        "shape_source": source,
    }


def graph_cost(path: str | os.PathLike[str], batches: list[int]) -> dict[str, Any]:
    """FLOPs per batch size and weight bytes of the ONNX graph at ``path``.

    Returns {"graph": file name, "weights": weight_bytes(...), "flops": {str(batch): count_flops}}.
    """
    model = load_graph(path)
    return {
        "graph": Path(path).name,
        "weights": weight_bytes(model),
        "flops": {str(b): count_flops(model, b) for b in batches},
    }
