"""The ASR refinement network (``ddad_edge.asr``) fused after the dual graph's statistics.

From the dual graph's outputs the subgraph forms the [inter, intra] maps as
``runtime.scores.score_maps`` defines them (inter = |mean_a - mean_b|, intra = std_b; for AE-U
both divided by sqrt(var_b)), divides each by its fixed input scale (``runtime.scores.asr_input``;
float32 in every precision), runs the three 3x3 convolutions (ReLU after the first two) and a
softmax over the 2 classes, and emits the anomaly probability of class 1 as output ``asr``,
float32 [N, 1, 64, 64]. Its image score (the mean) is computed in numpy, like every other.

FP16 graphs run the convolutions in float16 (weights and activations) and the softmax in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import TensorProto, numpy_helper

from ddad_edge.runtime.scores import ASR_INPUTS, ASR_SCORE

if TYPE_CHECKING:
    from ddad_edge.export.onnx_graph import _Builder

ASR_OUTPUT = ASR_SCORE


@dataclass(frozen=True)
class AsrWeights:
    """The ASR network as numpy: three (weight [cout, cin, 3, 3], bias [cout]) float32 pairs and
    the input scales (ASR_INPUTS order)."""

    convs: tuple[tuple[np.ndarray, np.ndarray], ...]
    scale: tuple[float, ...]


def asr_weights(net: Any, scale: list[float]) -> AsrWeights:
    """AsrWeights of a trained ``ddad_edge.asr.AsrNet``, each batch normalisation (eval mode:
    y = gamma (x - mean) / sqrt(var + eps) + beta) folded into the convolution before it."""
    convs = []
    for conv, norm in ((net.conv1, net.norm1), (net.conv2, net.norm2), (net.conv3, None)):
        w = conv.weight.detach().cpu().double().numpy()
        b = conv.bias.detach().cpu().double().numpy()
        if hasattr(norm, "running_var"):  # a BatchNorm2d, not an Identity
            g = norm.weight.detach().double().numpy() / np.sqrt(
                norm.running_var.double().numpy() + norm.eps
            )
            w = w * g[:, None, None, None]
            b = (b - norm.running_mean.double().numpy()) * g + norm.bias.detach().double().numpy()
        convs.append((w.astype(np.float32), b.astype(np.float32)))
    return AsrWeights(tuple(convs), tuple(float(s) for s in scale))


def add_asr(b: _Builder, asr: AsrWeights, kind: str, fp16: bool) -> str:
    """Append the ASR subgraph to builder ``b`` (``onnx_graph._Builder``) reading the dual
    outputs mean_a, mean_b, std_b (and var_b for AE-U). Returns the output name ``asr``."""
    inter = b.op("Abs", [b.op("Sub", ["mean_a", "mean_b"])])
    intra = "std_b"
    if kind == "aeu":
        sigma = b.op("Sqrt", ["var_b"])
        inter = b.op("Div", [inter, sigma])
        intra = b.op("Div", [intra, sigma])
    named = {"inter": inter, "intra": intra}
    scale = np.asarray(asr.scale, np.float32).reshape(1, len(ASR_INPUTS), 1, 1)
    b.inits.append(numpy_helper.from_array(scale, "asr.input_scale"))
    m = b.op("Concat", [named[n] for n in ASR_INPUTS], axis=1)
    h = b.op("Div", [m, "asr.input_scale"])
    if fp16:
        h = b.op("Cast", [h], to=TensorProto.FLOAT16)
    for i, (w, bias) in enumerate(asr.convs):
        wn = b.weight(f"asr.conv{i + 1}.weight", w)
        bn = b.weight(f"asr.conv{i + 1}.bias", bias)
        h = b.op("Conv", [h, wn, bn], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        if i < len(asr.convs) - 1:
            h = b.op("Relu", [h])
    if fp16:
        h = b.op("Cast", [h], to=TensorProto.FLOAT)
    p = b.op("Softmax", [h], axis=1)
    one, two = b.const_i64("asr.c1", [1]), b.const_i64("asr.c2", [2])
    return b.op("Slice", [p, one, two, b.const_i64("asr.axis", [1])], ASR_OUTPUT)
