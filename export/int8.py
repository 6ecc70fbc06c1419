"""The ``int8`` precision: the dual FP32 graph with the weights of its large bottleneck MatMuls
quantised to 8 bits by onnxruntime's dynamic quantisation.

``quantize_dynamic`` quantises the weights of the graph's 2-D MatMuls whose weight has at least
``INT8_MIN_ELEMENTS`` elements (the two big bottleneck linears of each member) to QInt8 with
one scale per output column (``per_channel=True``). The small MatMuls (16-d code, MemAE
memory) stay FP32, since quantising them costs AUC (benchmarks/README.md, decision log), and
so do the decoder's pixel-interleave MatMuls (permutation matrices that only move data:
quantising them would round every decoder activation to 8 bits). Activations are quantised on
the fly (DynamicQuantizeLinear) and the products run as onnxruntime's integer MatMul kernels;
convolutions stay FP32. Export gates the result like FP16 (``TOLERANCES["int8"]``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

INT8_MIN_ELEMENTS = 2**18
"""Weights of at least this many elements (1 MiB of FP32) are quantised."""


def permutation_initializers(model: onnx.ModelProto) -> set[str]:
    """Names of square 2-D initializers that are permutation matrices (0/1, one 1 per row and
    column). A MatMul by one only reorders elements (the graph's pixel interleave): it is data
    movement, not arithmetic: never quantised, and not counted as FLOPs (benchmarks/flops.py)."""
    out = set()
    for t in model.graph.initializer:
        if len(t.dims) != 2 or t.dims[0] != t.dims[1] or t.dims[0] > 4096:
            continue
        if t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
            continue
        a = numpy_helper.to_array(t)
        if np.isin(a, (0, 1)).all() and (a.sum(axis=0) == 1).all() and (a.sum(axis=1) == 1).all():
            out.add(t.name)
    return out


def is_permutation_matmul(node: onnx.NodeProto, perms: set[str]) -> bool:
    """True for a MatMul whose B is one of ``perms`` (from :func:`permutation_initializers`)."""
    return node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in perms


def int8_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose weights ``quantize_int8`` quantises."""
    perms = permutation_initializers(model)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul"
        and not is_permutation_matmul(n, perms)
        and any(sizes.get(i, 0) >= INT8_MIN_ELEMENTS for i in n.input)
    ]


def quantize_int8(model_bytes: bytes) -> bytes:
    """The int8 graph of a serialized FP32 graph (weights inline), serialized.

    Raises:
        ValueError: the graph has no MatMul with a weight large enough to quantise.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load_from_string(model_bytes)
    big = int8_matmuls(model)
    if not big:
        raise ValueError(f"no MatMul with a weight of >= {INT8_MIN_ELEMENTS} elements")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="ddad-int8-") as d:
            src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
            src.write_bytes(model_bytes)
            quantize_dynamic(
                str(src),
                str(dst),
                op_types_to_quantize=["MatMul"],
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_quantize=big,
            )
            return dst.read_bytes()
    finally:
        root.setLevel(level)
