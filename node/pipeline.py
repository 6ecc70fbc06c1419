"""One stored object -> gate, decode, score, decide, and its DICOM results.

Stages (each timed, seconds, in ``Outcome.times``):

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
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.node.journal import ABSTAINED, SCORED, ObjectRow
from ddad_edge.node.worker import Later, Outcome, ResultFile

OVERLAY_SCORE = "inter"
OVERLAY_MAX_SIDE = 512
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage


class PipelineError(Exception):
    """The pipeline cannot be set up (bundle, calibration or backend)."""


class Pipeline:
    """Callable ``row -> Outcome`` for the worker (thread-safe: the scorer is)."""

    def __init__(self, scorer: Any) -> None:
        from ddad_edge.runtime.dicom_results import AlgorithmInfo
        from ddad_edge.runtime.sr_templates import DecisionSRs

        self.scorer = scorer
        self.algorithm = AlgorithmInfo.from_manifest(scorer.bundle.manifest)
        self.srs = DecisionSRs(self.algorithm)
        # The bundle's fixed colour scale (as `score --heatmaps` uses), so maps compare.
        display = scorer.bundle.manifest.get("display", {}).get("heatmap_vmax", {})
        self.vmax: float | None = display.get(OVERLAY_SCORE)

    def warm(self) -> None:
        """Import what the first object would import (highdicom, the heat-map overlay) and run one
        inference, so that the first image received does not pay for them."""
        import highdicom  # noqa: F401

        from ddad_edge.runtime.heatmaps import overlay_heatmap
        from ddad_edge.runtime.preprocess import IMAGE_SIZE

        overlay_heatmap(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32))
        x = np.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32)
        self.scorer.scores(x, self.scorer.infer(x), maps=True)

    def __call__(self, row: ObjectRow) -> Outcome:
        from ddad_edge.runtime.scorer import ScoreResult

        times: dict[str, float] = {}
        record = ScoreResult(row.path)
        image = self._gate_and_score(row.path, record, times)
        t = time.perf_counter()
        results, later, note, study = self._build(row.path, record, image)
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

    def _gate_and_score(self, path: str, record: Any, times: dict[str, float]) -> np.ndarray | None:
        """Fill ``record`` (reason / error / scores / maps / flag); returns the decoded image
        float32 [H, W] in [0, 1] when scored."""
        from ddad_edge.runtime.io import ImageLoadError, load_image
        from ddad_edge.runtime.preprocess import PreprocessError, preprocess

        t = time.perf_counter()
        try:
            gate = self.scorer.check(path)
        except ImageLoadError as e:
            record.error = e.reason
            return None
        finally:
            times["gate"] = time.perf_counter() - t
        record.notes, record.reason = list(gate.notes), gate.reason
        if not gate.accepted:
            return None
        t = time.perf_counter()
        try:
            image = load_image(path)
            x = preprocess(image)[None]
        except (ImageLoadError, PreprocessError) as e:
            record.error = getattr(e, "reason", str(e))
            return None
        finally:
            times["decode"] = time.perf_counter() - t
        t = time.perf_counter()
        arr = self.scorer.scores(x, self.scorer.infer(x), maps=True)
        record.scores = {n: float(v[0]) for n, v in arr.image.items()}
        record.maps = {n: m[0, 0] for n, m in arr.maps.items()}
        cal = self.scorer.calibration
        if cal is not None:
            record.flag = cal.point.flag(record.scores)
            record.operating_point = cal.to_json()
        times["score"] = time.perf_counter() - t
        return image

    def _build(
        self, path: str, record: Any, image: np.ndarray | None
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
        if record.status == "scored" and record.maps is not None and image is not None:

            def build_sc(uid: str) -> bytes:
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
) -> Pipeline:
    """A pipeline over ``bundle`` (hash-verified) with its calibration.

    Raises:
        PipelineError: the bundle, the calibration or the backend cannot be used, with the reason.
    """
    from ddad_edge.runtime.backends import BackendUnavailable
    from ddad_edge.runtime.bundle import BundleError
    from ddad_edge.runtime.calibration import CalibrationError
    from ddad_edge.runtime.scorer import Scorer

    try:
        scorer = Scorer.from_bundle(
            Path(bundle),
            backend=backend,
            max_batch=1,
            calibration=calibration,
            operating_point=operating_point,
        )
    except (BundleError, CalibrationError, BackendUnavailable, OSError, ValueError) as e:
        raise PipelineError(str(e)) from e
    pipeline = Pipeline(scorer)
    pipeline.warm()
    return pipeline
