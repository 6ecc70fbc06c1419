"""One stored object -> gate, decode, score, decide, and its DICOM results.

Stages (each timed, seconds, in ``Outcome.times``); the first three run in a child process
(``node.scoring``: a file that crashes or hangs a decoder costs that child, not the node, and
is abstained with the reason):

1. ``gate``: the runtime's input gate on the header (``Scorer.check``): modality, view, body
   part, photometry, size. A rejected object is abstained with the gate's reason.
2. ``decode``: ``runtime.io.load_image`` (the one decoder; reduced-resolution where the codec
   allows it) then ``runtime.preprocess.preprocess``. An object that cannot be decoded is
   abstained with the decoder's reason.
3. ``score``: the scorer's backend and ``runtime.scores`` (the one scoring implementation);
   the calibrated operating point gives the flag.
4. ``build``: a TID 1500 SR for every object (scored: the flag, scores and threshold;
   abstained: "not evaluated" with the reason), encoded as a DICOM file and delivered first.
   A scored object's SR comes from a template (``runtime.sr_templates``): highdicom builds
   the SR of the first object of each header shape, later ones fill in their own values, so
   the decision does not wait for per-object highdicom work;
   for scored objects the heat-map Secondary Capture (``runtime.dicom_results``) follows as a
   :class:`~ddad_edge.node.worker.Later`, built by the worker once the SR is queued, at most
   ``OVERLAY_MAX_SIDE`` pixels on its longer side (a display aid, not the diagnostic image).

An object whose header cannot even be read as DICOM gets no SR (there is no study to put it in):
it is abstained with the reason, recorded in the journal and the JSON line.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ddad_edge.node.journal import ABSTAINED, SCORED, ObjectRow
from ddad_edge.node.scoring import (
    OVERLAY_MAX_SIDE,
    TIMEOUT_S,
    ScorerSpec,
    ScoringError,
    ScoringProcesses,
)
from ddad_edge.node.worker import Later, Outcome, ResultFile

OVERLAY_SCORE = "inter"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage


class PipelineError(Exception):
    """The pipeline cannot be set up (bundle, calibration or backend)."""


class Pipeline:
    """Callable ``row -> Outcome`` for the worker (thread-safe). ``scoring`` gates, decodes and
    scores files (``node.scoring``: child processes, or :class:`~ddad_edge.node.scoring.InProcess`
    over a scorer of this process)."""

    def __init__(self, scoring: Any) -> None:
        from ddad_edge.runtime.dicom_results import AlgorithmInfo
        from ddad_edge.runtime.sr_templates import DecisionSRs

        self.scoring = scoring
        self.algorithm = AlgorithmInfo.from_manifest(scoring.manifest)
        self.srs = DecisionSRs(self.algorithm)
        # The bundle's fixed colour scale (as `score --heatmaps` uses), so maps compare.
        display = scoring.manifest.get("display", {}).get("heatmap_vmax", {})
        self.vmax: float | None = display.get(OVERLAY_SCORE)

    def warm(self) -> None:
        """Import what the first object would import (highdicom, the heat-map overlay), so that
        the first image received does not pay for them."""
        import highdicom  # noqa: F401

        from ddad_edge.runtime.heatmaps import overlay_heatmap

        overlay_heatmap(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32))

    def close(self) -> None:
        self.scoring.close()

    def __call__(self, row: ObjectRow) -> Outcome:
        scored = self.scoring.run(row.path)
        record, times = scored.record, dict(scored.times)
        t = time.perf_counter()
        results, later, note, study = self._build(row.path, record)
        times["build"] = time.perf_counter() - t  # the SR; the SC is timed by the worker
        state = SCORED if record.status == "scored" else ABSTAINED
        reason = None if state == SCORED else (record.reason or record.error)
        out = record.to_json()
        out["status"] = state  # the node's word: an undecodable object is abstained too
        out["study_instance_uid"] = study
        out["results"] = [{"kind": r.kind, "sop_instance_uid": r.uid} for r in [*results, *later]]
        if note:
            out["notes"] = [*out.get("notes", []), note]
        return Outcome(state, reason, out, results, times, later)

    def _build(
        self, path: str, record: Any
    ) -> tuple[list[ResultFile], list[Later], str | None, str | None]:
        """The SR as a result file now, the heat-map SC (scored objects) as a :class:`Later`, a
        note when no SR could be made for an abstained object, and the source's Study Instance
        UID (None when unreadable)."""
        import pydicom
        from pydicom.uid import generate_uid

        from ddad_edge.runtime.dicom_results import encode

        try:  # the header as stored, image or not: an object without one still gets its SR
            source = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            study = str(source.StudyInstanceUID)
        except Exception:  # no readable header or no study: no SR either (below)
            source, study = None, None
        try:
            if source is None:
                raise ValueError("no readable DICOM header with a Study Instance UID")
            data, uid, sop_class = self.srs.build_encoded(source, record)
        except Exception as e:
            if record.status == "scored":
                raise
            why = f"no SR: the object's header does not allow one ({type(e).__name__}: {e})"
            return [], [], why, study
        results = [ResultFile(uid, sop_class, "sr", data)]
        later = []
        if record.status == "scored" and record.maps is not None:

            def build_sc(uid: str) -> bytes:
                image = self.scoring.overlay(path)  # in the scoring process, after the decision
                return encode(self._heatmap_sc(source, record, image, uid))

            later.append(Later(generate_uid(), SC_CLASS, "sc", build_sc))
        return results, later, None, study

    def _heatmap_sc(self, source: Any, record: Any, image: np.ndarray, uid: str) -> Any:
        from ddad_edge.runtime.dicom_results import build_heatmap_sc, heatmap_caption

        return build_heatmap_sc(
            source,
            image,
            record.maps[OVERLAY_SCORE],
            caption=heatmap_caption(record, OVERLAY_SCORE),
            vmax=self.vmax,
            max_side=OVERLAY_MAX_SIDE,
            sop_instance_uid=uid,
        )


def load_pipeline(
    bundle: str | os.PathLike[str],
    calibration: str | os.PathLike[str] | None = None,
    *,
    operating_point: float | None = None,
    backend: str = "auto",
    processes: int = 1,
    timeout_s: float = TIMEOUT_S,
) -> Pipeline:
    """A pipeline over ``bundle`` with its calibration, scoring in ``processes`` child processes
    (``node.scoring``; each opens and hash-verifies the bundle), each given ``timeout_s``
    seconds per file. Close it to end the children.

    Raises:
        PipelineError: the bundle, the calibration or the backend cannot be used, with the reason.
    """
    cal = None if calibration is None else os.fspath(calibration)
    spec = ScorerSpec(os.fspath(bundle), cal, operating_point, backend)
    try:
        scoring = ScoringProcesses(spec, processes, timeout_s)
    except ScoringError as e:
        raise PipelineError(str(e)) from e
    pipeline = Pipeline(scoring)
    pipeline.warm()
    return pipeline
