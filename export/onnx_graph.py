"""Build the fused ONNX inference graph of a K-member ensemble from folded numpy weights.

Built directly with ``onnx.helper`` (no torch tracing): deterministic, exact control over where
FP16 casts go, and independent of torch's exporters.

Graph (K members, opset 17, input ``x`` float32 [N, 1, 64, 64], N dynamic):

* Conv(x, [K*16, 1, 4, 4], group 1) + bias, Relu   -- all members read the same x: one conv
* 3 x Conv(group K) + bias, Relu                     -> [N, K*64, 4, 4]
* Reshape [N, K*1024], Split into K chains [N, 1024]; per member k:
  MatMul [1024, 2048] + bias, Relu; MatMul [2048, 16] + bias (bare code);
  MemAE: Softmax(z M_k^T) M_k ([25, 16] memory); MatMul [16, 2048] + bias, Relu;
  MatMul [2048, 1024] + bias; then Concat -> [N, K*1024], Reshape [N, K*64, 4, 4]
* 3 x transposed conv (group K) + bias, Relu, each as its four sub-pixel phases (below)
* ConvTranspose(group K) -> [N, K*out, 64, 64]
* Reshape [N, K, out, 64, 64]; then per output group (a contiguous range of members, e.g. module
  A = members 0..K-1 and B = K..2K-1 in the dual graph): Slice, ReduceMean over members -> mean,
  population std sqrt(mean((r - mean)^2)) -> std, and (AE-U) mean(exp(logvar)) -> var.
  All outputs float32 [N, 1, 64, 64].
* with ASR (dual graph, ``export.asr_graph``): the refinement network over the [inter, intra]
  maps, output ``asr`` (anomaly probability) [N, 1, 64, 64].

Why this form (the forms tried and their timings are in benchmarks/README.md, decision log):
the bottleneck is 2-D MatMuls per member because onnxruntime prepacks 2-D constant weights only
(a batched 3-D MatMul was slower at batch 64, equal at batch 1). A transposed conv with kernel
4, stride 2, pad 1 is exactly four 2x2 convs, one per output phase (a, c) in {0,1}^2: output
pixel (2i+a, 2j+c) reads input rows (i-1, i) if a = 0 else (i, i+1) with kernel rows (3, 1) or
(2, 0), columns likewise; the four results are interleaved into the 2x larger map
(:func:`interleave_phases`). Same multiply-adds as the transposed conv, but onnxruntime runs
them with its faster blocked convolution kernels. The last layer (16 -> 1 or 2 channels per
member) stays a ConvTranspose, which is faster there.

Precision ``fp16``: weights and compute in float16, graph input/outputs float32; a Cast to
float16 right after ``x``, the MemAE softmax in float32, and a Cast to float32 of the decoder
output before any reduction, square root or exp (they stay float32, as method.md asks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ddad_edge.export.asr_graph import AsrWeights, add_asr
from ddad_edge.export.fold import FoldedEnsemble
from ddad_edge.runtime.bundle import PRECISIONS
from ddad_edge.runtime.preprocess import IMAGE_SIZE

OPSET = 17
INPUT_NAME = "x"


@dataclass(frozen=True)
class OutputGroup:
    """Members [start, start + count) reduced into outputs ``mean{suffix}``, ``std{suffix}``
    (and ``var{suffix}`` for AE-U when ``with_var``)."""

    start: int
    count: int
    suffix: str = ""
    with_var: bool = True

    def names(self, kind: str) -> list[str]:
        """Output tensor names of this group, in graph order."""
        out = [f"mean{self.suffix}", f"std{self.suffix}"]
        if kind == "aeu" and self.with_var:
            out.append(f"var{self.suffix}")
        return out


def module_groups(k: int) -> list[OutputGroup]:
    """Output groups of a one-module graph: mean, std (+ var)."""
    return [OutputGroup(0, k)]


def dual_groups(k: int) -> list[OutputGroup]:
    """Output groups of the dual graph over 2K members (A first): mean_a, std_a, mean_b, std_b
    (+ var_b for AE-U; A's log-variance is not used by the scores)."""
    return [OutputGroup(0, k, "_a", with_var=False), OutputGroup(k, k, "_b", with_var=True)]


# Kernel taps of a k4/s2/p1 transposed conv that output phase a (0 even, 1 odd) uses, ordered
# as the taps of the equivalent 2x2 convolution (input offsets i-1, i for a = 0; i, i+1 for a = 1).
_PHASE_TAPS = {0: [3, 1], 1: [2, 0]}


def subpixel_weights(w: np.ndarray, groups: int) -> dict[tuple[int, int], np.ndarray]:
    """The four 2x2 convolution weights equivalent to a grouped transposed conv.

    Args:
        w: ConvTranspose weight [groups*cin, cout, 4, 4] (kernel 4, stride 2, pad 1).
        groups: the transposed conv's group count.

    Returns:
        {(a, c): Conv weight [groups*cout, cin, 2, 2]} for output row phase a and column phase
        c; the Conv for (a, c) uses pads [1-a, 1-c, a, c] (top, left, bottom, right), stride 1.
    """
    gcin, cout = w.shape[:2]
    if w.shape[2:] != (4, 4) or gcin % groups:
        raise ValueError(f"expected a [groups*cin, cout, 4, 4] weight, got {w.shape}")
    wg = w.reshape(groups, gcin // groups, cout, 4, 4)
    out = {}
    for a in (0, 1):
        for c in (0, 1):
            sub = wg[:, :, :, _PHASE_TAPS[a]][:, :, :, :, _PHASE_TAPS[c]]  # [g, cin, cout, 2, 2]
            out[(a, c)] = np.ascontiguousarray(
                sub.transpose(0, 2, 1, 3, 4).reshape(groups * cout, gcin // groups, 2, 2)
            )
    return out


class _Builder:
    """Accumulates nodes and initializers with unique, readable names."""

    def __init__(self, wdtype: np.dtype) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.wdtype = wdtype
        self._n = 0

    def weight(self, name: str, a: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(a, self.wdtype), name))
        return name

    def const_i64(self, name: str, values: Sequence[int]) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        out: str | None = None,
        *,
        name: str | None = None,
        **attrs: object,
    ) -> str:
        self._n += 1
        out = out or f"{op_type.lower()}_{self._n}"
        name = f"{name or op_type}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out


def _column_interleave_matrix(width: int, dtype: np.dtype) -> np.ndarray:
    """[2W, 2W] 0/1 matrix M with (v @ M)[2j + c] = v[c*W + j]: interleaves two rows of W."""
    m = np.zeros((2 * width, 2 * width), dtype)
    j = np.arange(width)
    m[j, 2 * j] = 1
    m[width + j, 2 * j + 1] = 1
    return m


def interleave_phases(b: _Builder, phases: list[str], channels: int, side: int) -> str:
    """Y [N, C, 2H, 2W] with Y[:, :, 2i+a, 2j+c] = phase (a, c) [N, C, H, W] (H = W = side).

    ``phases`` in the order (0,0), (0,1), (1,0), (1,1). Stacked row by row: one Concat along
    the width axis gives [N, C, H, 4W], whose row h is row h of each phase in turn, i.e. the
    memory of [N, C, H, (a, c), W]. That is viewed as [N, C, H, a, (c, W)], and the columns of
    the two column phases are interleaved by a MatMul with a 0/1 permutation matrix: exact (one
    product by 1 per output, the rest +0). Concatenating the 4-D phases directly (no Unsqueeze
    to a 5-D stack first) saves twelve copies per image. On onnxruntime's CPU provider this form
    is faster than DepthToSpace, whose kernel runs on one thread, and than stacking whole planes
    and transposing them (benchmarks/README.md, decision log).
    """
    rows = b.op("Concat", phases, axis=3)  # [N, C, H, 4W] = [N, C, H, (a, c), W]
    rows = b.op(
        "Reshape", [rows, b.const_i64(f"shape_rows{side}", [0, channels, side, 2, 2 * side])]
    )
    m = b.weight(f"interleave{side}", _column_interleave_matrix(side, b.wdtype))
    y = b.op("MatMul", [rows, m], name=f"Interleave_{side}")  # [N, C, H, 2, 2W]: (W, c) order
    return b.op("Reshape", [y, b.const_i64(f"shape_up{side}", [0, channels, 2 * side, 2 * side])])


_CONV = dict(kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1])


def _encoder(b: _Builder, f: FoldedEnsemble, h: str) -> str:
    """The convolutions; the first reads the shared single-channel input with group 1."""
    for i, (w, bias) in enumerate(zip(f.enc_w, f.enc_b, strict=True)):
        wn, bn = b.weight(f"enc{i}.weight", w), b.weight(f"enc{i}.bias", bias)
        h = b.op("Conv", [h, wn, bn], group=1 if i == 0 else f.k, **_CONV)
        h = b.op("Relu", [h])
    return h


def _linear(b: _Builder, f: FoldedEnsemble, h: str, m: int, j: int, relu: bool) -> str:
    """Member m's linear layer j: MatMul [in, out] + bias (+ Relu)."""
    wn = b.weight(f"fc{j + 1}.weight.member{m}", f.fc_w[j][m])  # [in, out]
    bn = b.weight(f"fc{j + 1}.bias.member{m}", f.fc_b[j][m])  # [out]
    h = b.op("Add", [b.op("MatMul", [h, wn]), bn])
    return b.op("Relu", [h]) if relu else h


def _memory(b: _Builder, f: FoldedEnsemble, h: str, m: int, fp16: bool) -> str:
    """MemAE addressing of member m's code [N, 16]: Softmax(z M^T) M, the softmax in float32."""
    mem_t = b.weight(f"memory.transposed.member{m}", f.memory[m].T)  # [16, 25]
    logits = b.op("MatMul", [h, mem_t])  # [N, 25]
    if fp16:
        logits = b.op("Cast", [logits], to=TensorProto.FLOAT)
    addr = b.op("Softmax", [logits], axis=-1)
    if fp16:
        addr = b.op("Cast", [addr], to=TensorProto.FLOAT16)
    return b.op("MatMul", [addr, b.weight(f"memory.member{m}", f.memory[m])])  # [N, 16]


def _bottleneck(b: _Builder, f: FoldedEnsemble, h: str, fp16: bool) -> tuple[str, int]:
    """One chain of 2-D MatMuls per member (see the module docstring for why).

    Returns (the decoder input [N, K*64, side, side], side)."""
    k, flat = f.k, f.fc_w[0].shape[1]  # 1024
    h = b.op("Reshape", [h, b.const_i64("shape_n_kflat", [0, k * flat])])
    parts = [f"member{m}.flat" for m in range(k)]
    sizes = b.const_i64("split_members", [flat] * k)
    b.nodes.append(helper.make_node("Split", [h, sizes], parts, name="Split_members", axis=1))
    codes = []
    for m, h in enumerate(parts):
        h = _linear(b, f, h, m, 0, True)
        h = _linear(b, f, h, m, 1, False)  # bare 16-d code [N, 16]
        if f.memory is not None:
            h = _memory(b, f, h, m, fp16)
        h = _linear(b, f, h, m, 2, True)
        codes.append(_linear(b, f, h, m, 3, False))  # [N, 1024]
    h = b.op("Concat", codes, axis=1)  # [N, K*1024]
    dec_in = f.dec_w[0].shape[0]  # K*64
    side = int(round((flat * k / dec_in) ** 0.5))  # 4
    return b.op("Reshape", [h, b.const_i64("shape_dec_in", [0, dec_in, side, side])]), side


def _decoder(b: _Builder, f: FoldedEnsemble, h: str, side: int) -> str:
    """Every transposed conv but the last as four sub-pixel convs, interleaved."""
    k, last = f.k, len(f.dec_w) - 1
    for i, (w, bias) in enumerate(zip(f.dec_w, f.dec_b, strict=True)):
        if i == last:
            ins = [h, b.weight(f"dec{i}.weight", w)]
            if bias is not None:
                ins.append(b.weight(f"dec{i}.bias", bias))
            h = b.op("ConvTranspose", ins, group=k, **_CONV)
            if bias is not None:
                h = b.op("Relu", [h])
            continue
        phases = []
        for (a, c), wp in subpixel_weights(w, k).items():
            ins = [h, b.weight(f"dec{i}.weight.phase{a}{c}", wp)]
            if bias is not None:
                ins.append(b.weight(f"dec{i}.bias", bias))
            p = b.op("Conv", ins, group=k, kernel_shape=[2, 2], pads=[1 - a, 1 - c, a, c])
            phases.append(b.op("Relu", [p]) if bias is not None else p)
        h = interleave_phases(b, phases, k * w.shape[1], side * 2**i)
    return h


def _group_stats(
    b: _Builder, f: FoldedEnsemble, r: str, groups: Sequence[OutputGroup]
) -> list[str]:
    """Mean, population std (and AE-U variance) over each group's members of r [N, K, out, H, W].

    Returns the output names, in graph order."""
    outputs: list[str] = []
    ax1 = b.const_i64("axis_members", [1])
    ax2 = b.const_i64("axis_channels", [2])
    for g in groups:
        names = g.names(f.kind)
        starts = b.const_i64(f"slice_start{g.suffix}", [g.start])
        ends = b.const_i64(f"slice_end{g.suffix}", [g.start + g.count])
        rg = r
        if (g.start, g.count) != (0, f.k):
            rg = b.op("Slice", [r, starts, ends, ax1])  # [N, Kg, out, 64, 64]
        rec = rg
        if f.out == 2:
            rec = b.op("Slice", [rg, b.const_i64("c0", [0]), b.const_i64("c1", [1]), ax2])
        mean_k = b.op("ReduceMean", [rec], axes=[1], keepdims=1)  # [N, 1, 1, 64, 64]
        b.op("Squeeze", [mean_k, ax1], names[0])
        d = b.op("Sub", [rec, mean_k])
        var_k = b.op("ReduceMean", [b.op("Mul", [d, d])], axes=[1], keepdims=0)
        b.op("Sqrt", [var_k], names[1])
        if len(names) == 3:
            lv = b.op("Slice", [rg, b.const_i64("c1", [1]), b.const_i64("c2", [2]), ax2])
            b.op("ReduceMean", [b.op("Exp", [lv])], names[2], axes=[1], keepdims=0)
        outputs += names
    return outputs


def _model(
    b: _Builder, outputs: list[str], graph_name: str, metadata: dict[str, str] | None
) -> onnx.ModelProto:
    """The ModelProto of the built nodes, float32 I/O [N, 1, 64, 64], with ``metadata``."""
    # Shared constants (slice bounds, phase biases) are registered more than once: keep one
    # initializer per name, and only those a node reads.
    used = {i for n in b.nodes for i in n.input}
    seen: dict[str, onnx.TensorProto] = {}
    for t in b.inits:
        if t.name in used:
            seen.setdefault(t.name, t)
    dims = ["N", 1, IMAGE_SIZE, IMAGE_SIZE]
    graph = helper.make_graph(
        b.nodes,
        graph_name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in outputs],
        initializer=list(seen.values()),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ddad-edge",
        ir_version=8,
    )
    for key, value in sorted((metadata or {}).items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def build_model(
    f: FoldedEnsemble,
    groups: Sequence[OutputGroup],
    *,
    precision: str = "fp32",
    graph_name: str = "ddad",
    metadata: dict[str, str] | None = None,
    asr: AsrWeights | None = None,
) -> onnx.ModelProto:
    """The fused inference graph of ensemble ``f`` (see the module docstring).

    Args:
        f: folded weights of K members (for the dual graph: A's and B's members concatenated).
        groups: which member ranges are reduced into which outputs.
        precision: "fp32" or "fp16" (weights and compute; I/O and reductions stay float32).
        graph_name: the ONNX graph's name.
        metadata: string key/values stored in the model's ``metadata_props``.
        asr: dual graphs only: the ASR network, fused after the statistics as output ``asr``
            (``export.asr_graph``).

    Returns:
        onnx.ModelProto, opset 17, IR version compatible with onnxruntime >= 1.18.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for g in groups:
        if g.start < 0 or g.count < 1 or g.start + g.count > f.k:
            raise ValueError(f"output group {g} does not fit {f.k} members")
    fp16 = precision == "fp16"
    b = _Builder(np.dtype(np.float16 if fp16 else np.float32))
    h = INPUT_NAME
    if fp16:
        h = b.op("Cast", [h], "x_fp16", to=TensorProto.FLOAT16)
    h, side = _bottleneck(b, f, _encoder(b, f, h), fp16)
    h = _decoder(b, f, h, side)
    if fp16:
        h = b.op("Cast", [h], "decoder_out_fp32", to=TensorProto.FLOAT)
    shape = b.const_i64("shape_members", [0, f.k, f.out, IMAGE_SIZE, IMAGE_SIZE])
    r = b.op("Reshape", [h, shape], "members")
    outputs = _group_stats(b, f, r, groups)
    if asr is not None:
        if not {"mean_a", "mean_b", "std_b"} <= set(outputs):
            raise ValueError("the ASR network is fused after a dual graph's statistics only")
        outputs.append(add_asr(b, asr, f.kind, fp16))
    return _model(b, outputs, graph_name, metadata)


def check(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model(full_check=True)`` (structure + shape inference)."""
    onnx.checker.check_model(model, full_check=True)


def output_names(model: onnx.ModelProto) -> list[str]:
    """The graph's output names, in order."""
    return [o.name for o in model.graph.output]


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph has (for the manifest and reports)."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))
