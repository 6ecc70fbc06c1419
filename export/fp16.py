"""FP16 checks that run on a CPU.

onnxruntime's CPU provider has no float16 kernels for Conv, ConvTranspose or MatMul on x86: when
it loads an FP16 graph its InsertCastTransformer converts the float16 weights to float32 and runs
those ops in float32, keeping only a few activations in float16 (around Reshape/Transpose). So
"ORT CPU on the FP16 graph" measures the effect of FP16 *weights* only.

:func:`emulate_fp16_storage` gives a stricter CPU check of what a GPU does with the graph: an
FP32 graph in which every weight holds its float16 value and the output of every arithmetic op in
the float16 region is rounded to float16 (a Cast to float16 and back), i.e. float16 storage of
all weights and activations with float32 arithmetic inside each op -- the behaviour of TensorRT's
FP16 kernels that accumulate in FP32. The graph must be run with graph optimisations disabled so
that onnxruntime keeps the rounding casts.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Ops whose float16 output equals one of their (already float16) inputs element-wise: rounding
# after them changes nothing.
_EXACT_OPS = {
    "Reshape",
    "Transpose",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Relu",
    "Identity",
    "Split",
    "Concat",
}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named value in the graph (after ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in [*g.input, *g.output, *g.value_info]:
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def emulate_fp16_storage(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP32 emulation of an FP16 graph's storage rounding (see the module docstring).

    Args:
        model: a graph with float16 weights/compute and Cast nodes at its float32 boundaries
            (as ``onnx_graph.build_model(..., precision="fp16")`` makes).

    Returns:
        A new float32 model with the same inputs and outputs.
    """
    types = _elem_types(model)
    g = model.graph
    inits = []
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float16:
            a = a.astype(np.float32)
        inits.append(numpy_helper.from_array(a, t.name))

    nodes: list[onnx.NodeProto] = []

    def round_trip(src: str, dst: str, tag: str) -> None:
        half = f"{dst}__as_fp16"
        nodes.append(
            helper.make_node("Cast", [src], [half], name=f"{tag}_to16", to=TensorProto.FLOAT16)
        )
        nodes.append(
            helper.make_node("Cast", [half], [dst], name=f"{tag}_to32", to=TensorProto.FLOAT)
        )

    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Cast":
            if attrs.get("to") == TensorProto.FLOAT16:
                round_trip(n.input[0], n.output[0], n.name)
            else:
                nodes.append(
                    helper.make_node("Identity", list(n.input), list(n.output), name=n.name)
                )
            continue
        half_outs = [o for o in n.output if types.get(o) == TensorProto.FLOAT16]
        if not half_outs or n.op_type in _EXACT_OPS:
            nodes.append(n)
            continue
        outs = [f"{o}__fp32" if o in half_outs else o for o in n.output]
        new = helper.make_node(n.op_type, list(n.input), outs, name=n.name, domain=n.domain)
        new.attribute.extend(n.attribute)
        nodes.append(new)
        for o in half_outs:
            round_trip(f"{o}__fp32", o, f"{n.name}_{o}")

    graph = helper.make_graph(
        nodes, f"{g.name}_fp16_emulated", list(g.input), list(g.output), initializer=inits
    )
    out = helper.make_model(
        graph, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    out.producer_name = model.producer_name
    return out
