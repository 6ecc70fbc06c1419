"""How strongly a run's DDAD maps respond to each kind of ASR synthetic anomaly, on known normals
only (no test image is read): the signal the ASR network can learn from.

``python -m ddad_edge.benchmarks.asr_trace RUN --split split.json [--part normal_train]``

Every image of the split part (D by default; ``calibration``: the held-out normals) gets one
synthetic anomaly of each kind (``asr.synthesize``, seeded, the default strengths), both frozen
modules score the corrupted images, and for each map (inter, intra, rec) this reports the pixel
AUC of the anomaly's pixels against all other pixels, and the map's mean inside the anomaly over
its mean outside. Needs the ``train`` extra (torch).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ddad_edge.asr import ANOMALIES, AsrConfig, synthesize
from ddad_edge.runtime.metrics import roc_auc

MAPS = ("inter", "intra", "rec")


def trace(
    models: tuple, d: np.ndarray, cfg: AsrConfig, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per map {"pixel_auc", "inside_over_outside"} for one synthetic anomaly on every image
    of ``d`` (float32 [N, 1, 64, 64], N >= 2), scored by ``models`` (A, B)."""
    from ddad_edge.reference import dual_stats
    from ddad_edge.runtime.scores import maps_from_stats

    x, mask, _ = synthesize(d, np.random.default_rng(seed), replace(cfg, corrupt_fraction=1.0))
    maps = maps_from_stats(x, dual_stats(models[0], models[1], x))
    inside = mask > 0
    return {
        n: {
            "pixel_auc": roc_auc(inside.ravel().astype(np.int64), maps[n].ravel()),
            "inside_over_outside": float(maps[n][inside].mean() / maps[n][~inside].mean()),
        }
        for n in MAPS
    }


def main(
    run: Annotated[Path, typer.Argument(help="Finished run folder written by `train`.")],
    split: Annotated[Path, typer.Option(help="The run's split manifest.")],
    part: Annotated[str, typer.Option(help="normal_train (D) or calibration.")] = "normal_train",
    seed: Annotated[int, typer.Option(help="Seed of the synthetic anomalies.")] = 0,
) -> None:
    from ddad_edge.checkpoint import load_module
    from ddad_edge.data import read_manifest
    from ddad_edge.dataset import load_part

    d = load_part(read_manifest(split), part).x
    models = (load_module(run, "A"), load_module(run, "B"))
    out = {kind: trace(models, d, AsrConfig(anomaly=kind), seed) for kind in ANOMALIES}
    print(json.dumps({"run": str(run), "part": part, "n": len(d), **out}, indent=1))


if __name__ == "__main__":
    typer.run(main)
