"""The node without its per-object gate, decode and score: what the node costs beyond them.

``python -m ddad_edge.benchmarks.node_floor BUNDLE REFERENCE --port P --spool S --forward
AE@host:port [--calibration C]`` serves exactly as ``ddad-edge serve`` does (the same SCP,
spool, journal, worker, pipeline, SR templates and forwarder, one worker) except that scoring is
:class:`FixedScores`: every object gets the record of ``REFERENCE``, scored once at start, and
its heat map is drawn on ``REFERENCE``'s image, decoded once. Each object is still received,
persisted and journalled, its own SR is built from its own header, persisted, journalled and
sent, then its Secondary Capture.

A benchmark instrument, never a node to deploy: its results are not the objects' own.
``benchmarks/node.py --floor`` runs it after the real node and reports, per file, the e2e
decision that no scorer can go below (``node_floor_ms``): the floor's C-STORE sent -> SR
received, less the persist, which the real node overlaps with decode and score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ddad_edge.node.scoring import FileScores, gate_and_score, overlay_image


class FixedScores:
    """The scoring interface of ``node.scoring`` (``run``, ``overlay``, ``close``,
    ``manifest``) doing no per-object work: ``run`` gives ``reference``'s record (its status
    scored, or ValueError at construction) with no stage times, ``overlay`` ``reference``'s
    overlay image (float32 [h, w] in [0, 1])."""

    def __init__(self, scorer: Any, reference: str) -> None:
        from ddad_edge.runtime.io import load_image

        self.manifest: dict[str, Any] = scorer.bundle.manifest
        self._record = gate_and_score(scorer, reference).record
        if self._record.status != "scored":
            raise ValueError(f"{reference}: not scored ({self._record.reason})")
        self._overlay = overlay_image(load_image(reference))

    def run(self, path: str) -> FileScores:
        return FileScores(self._record)

    def overlay(self, path: str) -> np.ndarray:
        return self._overlay

    def close(self) -> None:
        pass


def main(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    reference: Annotated[Path, typer.Argument(help="The file whose record every object gets.")],
    port: Annotated[int, typer.Option(help="DICOM port on 127.0.0.1.")],
    spool: Annotated[Path, typer.Option(help="Spool folder (created).")],
    forward: Annotated[str, typer.Option(help="Results to AE@host:port.")],
    calibration: Annotated[Path | None, typer.Option(help="Calibration file.")] = None,
) -> None:
    """Serve the floor node until SIGTERM (see the module docstring)."""
    from ddad_edge.node import logs
    from ddad_edge.node.forwarder import Destination
    from ddad_edge.node.pipeline import Pipeline
    from ddad_edge.node.service import Node, NodeConfig, run_until_signalled
    from ddad_edge.runtime.scorer import Scorer

    scorer = Scorer.from_bundle(bundle, backend="ort-cpu", max_batch=1, calibration=calibration)
    pipeline = Pipeline(FixedScores(scorer, str(reference)))
    scorer.close()
    pipeline.warm()
    config = NodeConfig(
        spool=spool, host="127.0.0.1", port=port, destination=Destination.parse(forward)
    )
    logs.configure()
    run_until_signalled(Node(config, pipeline))


if __name__ == "__main__":
    typer.run(main)
