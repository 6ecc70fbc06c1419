"""What ``ddad-edge export`` writes into a bundle's ``manifest.json``: the input contract, the
score definitions, one entry per graph, the golden and parity sections, and the whole document
(format checked on reading by ``runtime/manifest.py``).
"""

from __future__ import annotations

from typing import Any

from ddad_edge import __version__
from ddad_edge.export.onnx_graph import INPUT_NAME, OPSET
from ddad_edge.export.parity import SCORE_TOLERANCE_FP32, ParityResult
from ddad_edge.export.sources import ParityImages
from ddad_edge.runtime.bundle import FORMAT_VERSION, GOLDEN, TOLERANCES
from ddad_edge.runtime.manifest import sealed
from ddad_edge.runtime.preprocess import IMAGE_SIZE
from ddad_edge.runtime.scores import (
    ASR_INPUTS,
    ASR_SCORE,
    SCORE_NAMES,
    STD_DEFINITION,
    score_names,
)

IMAGE_SHAPE = ["N", 1, IMAGE_SIZE, IMAGE_SIZE]
COMPUTE = {
    "fp32": "float32",
    "fp16": "float16 weights and activations; reductions, sqrt, exp and MemAE softmax in float32",
    "int8": "the float32 graph with the large bottleneck MatMuls' weights in int8 (per-column "
    "scales) and their activations quantised on the fly (onnxruntime dynamic quantisation)",
}

INPUT_CONTRACT: dict[str, Any] = {
    "tensor": INPUT_NAME,
    "dtype": "float32",
    "layout": "NCHW",
    "shape": ["N", 1, IMAGE_SIZE, IMAGE_SIZE],
    "size": IMAGE_SIZE,
    "colour": "grey; RGB converted to luma with ITU-R BT.601 weights (0.299, 0.587, 0.114)",
    "resize": "bilinear (Pillow BILINEAR on float), to 64x64, aspect ratio not kept",
    "range": "[0, 1] (uint8 / 255, uint16 / 65535), then (x - 0.5) / 0.5 -> [-1, 1]",
    "dicom": (
        "Modality LUT (sequence or rescale slope/intercept), then VOI LUT sequence or the first "
        "Window Center/Width (LINEAR, LINEAR_EXACT, SIGMOID), scaled to [0, 1] against the fixed "
        "output range of that step; MONOCHROME1 inverted against that range; a window that "
        "excludes every pixel is ignored; first frame of multi-frame images"
    ),
    "implementation": (
        "ddad_edge.runtime.preprocess / ddad_edge.runtime.io (numpy + Pillow + pydicom)"
    ),
}

SCORE_DEFINITIONS: dict[str, Any] = {
    "names": list(SCORE_NAMES),
    "rec": "(x - mu_B)^2",
    "intra": "std_B: population std across module B's K members (eq. 3)",
    "inter": "|mu_A - mu_B|",
    "aeu_refinement": (
        "AE-U (eq. 5): var_B = mean over B's members of exp(logvar); rec / var_B, "
        "intra / sqrt(var_B), inter / sqrt(var_B); module A's log-variance is not used"
    ),
    "image_score": "mean of the pixel map over its 64x64 pixels",
    "computed_by": "ddad_edge.runtime.scores (numpy, float32), outside the graphs",
}

ASR_DEFINITION = (
    "bundles with ASR: the dual graph's output asr, the anomaly probability (softmax class 1) "
    "of the refinement network (three 3x3 convolutions, 128 channels) over the [inter, intra] "
    "maps, each divided by its input_scale; trained on D with synthetic anomalies (focal loss)"
)


def score_definitions(run: Any) -> dict[str, Any]:
    """SCORE_DEFINITIONS, with the ``asr`` score named and defined when the run has ASR."""
    if run.asr is None:
        return SCORE_DEFINITIONS
    return {**SCORE_DEFINITIONS, "names": list(score_names(True)), ASR_SCORE: ASR_DEFINITION}


def asr_section(run: Any) -> dict[str, Any] | None:
    """What the bundle's ASR network is: inputs, their scales, channels, training epochs."""
    if run.asr is None:
        return None
    return {
        "output": ASR_SCORE,
        "inputs": list(ASR_INPUTS),
        "input_scale": list(run.asr[1]),
        "channels": int(run.asr[0].conv1.out_channels),
        "batch_norm": bool(run.asr[0].batch_norm),  # folded into the convolutions
        "epochs_trained": run.asr_epochs,
        "trained_on": run.asr_trained_on,
        "inter_agreement": run.asr_agreement,  # train-asr's check (ddad_edge.asr)
        "source": "RUN/asr.pt (ddad-edge train-asr)",
    }


def graph_entry(
    g: Any, kind: str, k: int, files: dict[str, dict[str, Any]], external: list[str]
) -> dict[str, Any]:
    """Manifest entry of one written graph (``export.bundle._Graph``): file, family,
    precision, I/O, members, op counts, its bytes and sha256, and the external-data files that
    hold its weights."""
    return {
        "file": g.file,
        "graph": g.graph,
        "precision": g.precision,
        "compute": COMPUTE[g.precision],
        "inputs": {INPUT_NAME: {"dtype": "float32", "shape": IMAGE_SHAPE}},
        "outputs": {n: {"dtype": "float32", "shape": IMAGE_SHAPE} for n in g.outputs(kind)},
        "members": 2 * k if g.graph == "dual" else k,
        "ops": g.ops,
        "bytes": files[g.file]["bytes"],
        "sha256": files[g.file]["sha256"],
        "external_data": external,
    }


def parity_section(
    imgs: ParityImages, results: list[ParityResult], omitted: list[ParityResult] = ()
) -> dict[str, Any]:
    """The parity gate: which images, the tolerances, the backend, every written graph's result
    and the optional graphs left out because they failed it."""
    import onnxruntime

    return {
        "images": {
            "origin": imgs.origin,
            "synthetic": imgs.synthetic,
            "n": int(len(imgs.x)),
            "sources": imgs.sources,
            "skipped": [{"path": p, "reason": r} for p, r in imgs.skipped],
        },
        "tolerances": {
            "output_rel_range": TOLERANCES,
            "image_score_rel_fp32": SCORE_TOLERANCE_FP32,
        },
        "backend": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
        "results": [r.to_json() for r in results],
        "omitted": [r.to_json() for r in omitted],
    }


def toolkit_section() -> dict[str, Any]:
    """Versions of what wrote the bundle."""
    import onnx
    import onnxruntime
    import torch

    return {
        "name": "ddad-edge",
        "version": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "opset": OPSET,
    }


def build_manifest(
    *,
    run: Any,
    created: str,
    graphs: dict[str, dict[str, Any]],
    golden: dict[str, Any],
    parity: dict[str, Any],
    display: dict[str, Any],
    files: dict[str, dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """The whole manifest, sealed with its ``manifest_sha256``. ``run``: the loaded run
    (``export.bundle._Run``: config, kind, k, epochs, folder)."""
    config = run.config
    return sealed(
        {
            "format_version": FORMAT_VERSION,
            "toolkit": toolkit_section(),
            "created_utc": created,
            "model": {
                "kind": run.kind,
                "k": run.k,
                "members_in_dual_graph": 2 * run.k,
                "epochs_trained": run.epochs,
                "source_run": str(run.folder.resolve()),
                "batchnorm": "folded into the preceding conv / linear (eval-mode statistics)",
            },
            "input_contract": INPUT_CONTRACT,
            "scores": score_definitions(run),
            **({"asr": asr} if (asr := asr_section(run)) is not None else {}),
            "std_definition": STD_DEFINITION,
            "split_sha256": config.get("split_sha256"),
            "training_config": config.get("train", {}),
            "run_config": config,
            "graphs": graphs,
            "golden": golden,
            "parity": parity,
            "display": display,
            "export_seconds": round(seconds, 2),
            "files": files,
        }
    )


def golden_section(n: int, sources: list[str], arrays: list[str]) -> dict[str, Any]:
    """Where the golden vectors are and what they hold."""
    return {
        "file": GOLDEN,
        "n": n,
        "sources": sources,
        "arrays": sorted(arrays),
        "reference": "PyTorch FP32 (ddad_edge.reference, eval mode)",
    }
