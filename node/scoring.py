"""Gate, decode and score one stored file: in the node's process, or in child processes.

The node scores in child processes (:class:`ScoringProcesses`, the default of
``load_pipeline``) for two reasons:

- **A file cannot take the node down.** The decoders are C libraries fed with whatever a sender
  stored. One that crashes (segfault, abort), hangs or runs out of memory on a hostile file
  would kill the node, and after a restart meet the same file again. In a child only that
  child dies: the parent notices (or kills it when it has not answered within ``timeout_s``),
  starts a new one and tries the object once more (a child killed from outside is not the
  file's fault); when that child fails too the object is abstained with the reason.
- **Decode and inference get an interpreter of their own.** In the node's process they share
  the GIL with pynetdicom, whose every association runs two threads that wake each
  millisecond; the receiving, persisting and sending of other objects then slow the decode.

:class:`InProcess` runs the same function in the caller's process (tests, tools). Both have one
shape: ``manifest``, ``run(path) -> FileScores``, ``close()``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from ddad_edge.node.heap import keep_freed_memory
from ddad_edge.runtime.dicom_rows import RowDecoder

OVERLAY_MAX_SIDE = 512
"""Longer side of the heat-map capture (a display aid, not the diagnostic image), pixels."""

TIMEOUT_S = 120.0
"""How long a child may take over one file before it is killed."""


@dataclass
class DecisionSR:
    """The decision SR of one file (``runtime.sr_templates``): the encoded DICOM file with its
    SOP Instance and Class UIDs (data None: the header allows no SR, ``note`` says why), and the
    source's Study Instance UID (None when its header is unreadable)."""

    data: bytes | None = field(repr=False)
    uid: str = ""
    sop_class: str = ""
    note: str | None = None
    study: str | None = None
    prepared: bool = False  # finished from an SR prepared while the file arrived


@dataclass
class FileScores:
    """The outcome for one file.

    record: the runtime's ``ScoreResult`` (scores, float32 [64, 64] maps, flag, or the reason it
    was not scored); times: seconds per stage {"gate", "decode", "score", "build"}; image: the
    decoded image, float32 [H, W] in [0, 1] (None unless scored; it stays in the process that
    scored); sr: its decision SR (:func:`decision_sr`).
    """

    record: Any
    times: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)
    sr: DecisionSR | None = None


def score_file(scorer: Any, srs: Any, path: str, early: Followed | None = None) -> FileScores:
    """:func:`gate_and_score` then :func:`decision_sr` (timed as ``build``): what the node
    needs from one file. Built where the file was scored, which has its header at hand and an
    interpreter of its own. ``early``: the file followed while it arrived (its header, the
    rows decoded, the SR prepared).

    Raises:
        Exception: a scored file's SR could not be built (a bug, not the file's fault).
    """
    rows, header, prepared = (early.rows, early.rows.header, early.sr) if early else (None,) * 3
    out = gate_and_score(scorer, path, rows, header)
    t = time.perf_counter()
    out.sr = decision_sr(srs, path, out.record, header, prepared)
    out.times["build"] = time.perf_counter() - t
    return out


def decision_sr(
    srs: Any, path: str, record: Any, header: Any = None, prepared: Any = None
) -> DecisionSR:
    """The SR of every file whose header can be read (scored: the flag, scores and threshold;
    abstained: "not evaluated" with the reason), built by ``srs`` (a ``DecisionSRs``);
    ``header``: the file's header already read (None reads it); ``prepared``: its SR prepared
    before the scores existed (``DecisionSRs.prepare``), finished here when it fits the record.

    Raises:
        Exception: a scored file's SR could not be built.
    """
    import pydicom

    try:  # the header as stored, image or not: an object without one still gets its SR
        source = header or pydicom.dcmread(path, force=True, stop_before_pixels=True)
        study = str(source.StudyInstanceUID)
    except Exception:  # no readable header or no study: no SR either (below)
        source, study = None, None
    try:
        if source is None:
            raise ValueError("no readable DICOM header with a Study Instance UID")
        done = srs.finish(prepared, record) if prepared is not None else None
        data, uid, sop_class = done or srs.build_encoded(source, record)
    except Exception as e:
        if record.status == "scored":
            raise
        why = f"no SR: the object's header does not allow one ({type(e).__name__}: {e})"
        return DecisionSR(None, note=why, study=study)
    return DecisionSR(data, uid, sop_class, study=study, prepared=done is not None)


def overlay_image(image: np.ndarray) -> np.ndarray:
    """The decoded image as the heat map is drawn on: float32 [h, w], longer side at most
    ``OVERLAY_MAX_SIDE``."""
    from ddad_edge.runtime.dicom_results import fit_image

    return fit_image(image, OVERLAY_MAX_SIDE)


def gate_and_score(
    scorer: Any, path: str, early: RowDecoder | None = None, header: Any = None
) -> FileScores:
    """The runtime's input gate, decoder and scorer on one file (``Scorer.check``,
    ``runtime.io.load_image``, ``preprocess``, the backend, ``runtime.scores``); never raises
    for a bad file: its reason goes in the record. ``early``: the file followed while it was
    written (``runtime.dicom_rows``), whose rows are decoded already where they could be;
    ``header``: its header, read then."""
    from ddad_edge.runtime.io import ImageLoadError, load_image
    from ddad_edge.runtime.preprocess import PreprocessError, preprocess
    from ddad_edge.runtime.scorer import ScoreResult

    out = FileScores(ScoreResult(path))
    record, times = out.record, out.times
    t = time.perf_counter()
    try:
        gate = scorer.check(path, header)
    except ImageLoadError as e:
        record.error = e.reason
        return out
    finally:
        times["gate"] = time.perf_counter() - t
    record.notes, record.reason = list(gate.notes), gate.reason
    if not gate.accepted:
        return out
    t = time.perf_counter()
    try:
        got = _finish_early(early, path, times)
        if got is None:
            image = load_image(path)
            x = preprocess(image)[None]
        else:
            image, x = got[0], got[1][None]
    except (ImageLoadError, PreprocessError) as e:
        record.error = getattr(e, "reason", str(e))
        return out
    finally:
        times["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    arr = scorer.scores(x, scorer.infer(x), maps=True)
    record.scores = {n: float(v[0]) for n, v in arr.image.items()}
    record.maps = {n: m[0, 0] for n, m in arr.maps.items()}
    cal = scorer.calibration
    if cal is not None:
        record.flag = cal.point.flag(record.scores)
        record.operating_point = cal.to_json()
    times["score"] = time.perf_counter() - t
    out.image = image
    return out


def _finish_early(
    early: RowDecoder | None, path: str, times: dict[str, float]
) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, network input) of ``path`` from the rows decoded while it arrived, or None;
    when they are used, ``times["decoded_early"]``: the share of its rows decoded before it was
    asked for (0-1)."""
    from ddad_edge.runtime.io import is_dicom, warn_notes

    if early is None:
        return None
    if not is_dicom(path):
        early.close()
        return None
    share = early.rows_done / early.rows if early.rows else 0.0
    notes: list[Any] = []
    got = early.finish(path, notes)
    if got is not None:
        warn_notes(path, notes)
        times["decoded_early"] = share
    return got


def warm(scorer: Any) -> None:
    """One inference, and one small DICOM film decoded both ways (whole, and by rows as if it
    arrived), so that the first file received pays for neither the backend's start nor the
    decoders' imports."""
    import tempfile
    import warnings

    from ddad_edge.runtime.io import load_image
    from ddad_edge.runtime.preprocess import IMAGE_SIZE

    x = np.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    scorer.scores(x, scorer.infer(x), maps=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = _warm_film(tmp, 4 * IMAGE_SIZE)
        load_image(path)
        RowDecoder(path).finish(path, [])


def _warm_film(folder: str, side: int) -> str:
    """A ``side`` x ``side`` 16-bit grey DICOM file (a ramp) in ``folder``; its path."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "CR", side, side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(side * side, dtype=np.uint16) % 4096).tobytes()
    path = f"{folder}/warm.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass(frozen=True)
class ScorerSpec:
    """How to open the scorer (in a child: the arguments of ``Scorer.from_bundle``)."""

    bundle: str
    calibration: str | None = None
    operating_point: float | None = None
    backend: str = "auto"

    def open(self) -> Any:
        from ddad_edge.runtime.scorer import Scorer

        return Scorer.from_bundle(
            self.bundle,
            backend=self.backend,
            max_batch=1,
            calibration=self.calibration,
            operating_point=self.operating_point,
        )


class InProcess:
    """:func:`score_file` with a scorer of this process (thread-safe: the scorer and the SR
    templates are)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.manifest: dict[str, Any] = scorer.bundle.manifest
        self.srs = decision_srs(self.manifest)

    def run(self, path: str) -> FileScores:
        return score_file(self.scorer, self.srs, path)

    def overlay(self, path: str) -> np.ndarray:
        """:func:`overlay_image` of the file (decoded again)."""
        from ddad_edge.runtime.io import load_image

        return overlay_image(load_image(path))

    def close(self) -> None:
        self.scorer.close()


_TIMED_OUT = object()


@dataclass(frozen=True)
class _Failure:
    """No answer from a child: why."""

    why: str


@dataclass(frozen=True)
class _Raised:
    """A child's scoring raised (not a bad file: those are in the record): the exception."""

    text: str


class ScoringError(Exception):
    """Not the file's fault: a child could not start (bundle, calibration or backend) or its
    scorer raised; or the heat map's image could not be made. The reason."""


def _child(conn: Connection, spec: ScorerSpec) -> None:
    """A child's life: open the scorer, say "ready" (with the verified manifest) or why not,
    then serve the parent."""
    # the parent decides when a child ends (a SIGTERM or Ctrl-C to the group is the node's)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()  # each film's arrays reuse the last one's pages: node/heap.py
    try:
        scorer = spec.open()
        warm(scorer)
    except Exception as e:
        conn.send(("error", str(e)))
        return
    conn.send(("ready", scorer.bundle.manifest))
    _serve(conn, scorer, decision_srs(scorer.bundle.manifest))


def decision_srs(manifest: dict[str, Any]) -> Any:
    """The SR builder of a bundle (``runtime.sr_templates.DecisionSRs``; its templates are kept
    per process)."""
    from ddad_edge.runtime.dicom_results import AlgorithmInfo
    from ddad_edge.runtime.sr_templates import DecisionSRs

    return DecisionSRs(AlgorithmInfo.from_manifest(manifest))


FOLLOW_POLL_S = 0.0005
"""How long a child following a file waits for more of it before looking again, seconds."""

FOLLOW_IDLE_S = 10.0
"""A followed file that has not grown for this long is let go (its sender stalled), seconds."""


class Followed:
    """What a child knows of a file it follows while it arrives: its rows and header
    (:class:`~ddad_edge.runtime.dicom_rows.RowDecoder`) and, once the header is in, its SR
    prepared for a record shaped like the last one scored (``DecisionSRs.prepare``)."""

    def __init__(self, path: str) -> None:
        self.rows = RowDecoder(path)
        self.sr: Any = None
        self._prepared = False

    def prepare(self, srs: Any, like: Any) -> None:
        """Prepare the SR once the header is in (at most once; nothing without ``like``)."""
        if self._prepared or self.rows.header is None:
            return
        self._prepared = True
        if like is not None:
            try:
                self.sr = srs.prepare(self.rows.header, like)
            except Exception:  # noqa: BLE001 - built after scoring instead, which reports it
                self.sr = None

    def close(self) -> None:
        self.rows.close()


def _serve(conn: Connection, scorer: Any, srs: Any) -> None:
    """Answer ("score", path) with a FileScores (:func:`score_file`) and ("overlay", path) with
    the heat map's image (or why not), until None or the parent is gone. ("follow", path),
    unanswered: read the file while it is written (:func:`_follow`) until the next request."""
    last: tuple[str, np.ndarray | None] = ("", None)  # the image scored last: the heat map's
    like = None  # the last scored record: the shape the next SR is prepared for
    early: Followed | None = None
    while True:
        if early is not None:
            early = _follow(conn, early, srs, like)
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent died
            return
        if request is None:
            return
        op, path = request
        if op == "follow":
            early = _open_follow(early, path)
            continue
        try:
            if op == "score":
                taken = time.time()
                mine, early = _if_same(early, path), None
                got = score_file(scorer, srs, path, mine)
                last, got.image = (path, got.image), None  # sent on request, after the decision
                like = got.record if got.record.status == "scored" else like
                got.times.update(taken_at=taken, answered_at=time.time())  # wall clock
                conn.send(got)
            else:  # the heat map of the last file: a file being followed goes on arriving
                conn.send(_overlay(path, last[1] if last[0] == path else None))
        except Exception as e:  # a bug or an environment failure, not the file's: say which
            conn.send(_Raised(f"{type(e).__name__}: {e}"))


def _open_follow(old: Followed | None, path: str) -> Followed | None:
    """Start following ``path`` (None when it is already gone), letting ``old`` go."""
    if old is not None:
        old.close()
    try:
        return Followed(path)
    except OSError:  # stored and renamed before we looked, or cut off: nothing to follow
        return None


def _if_same(early: Followed | None, path: str) -> Followed | None:
    """``early`` when it follows the file now at ``path`` (renamed into the spool), else None
    (and it is let go)."""
    if early is None:
        return None
    try:
        if os.stat(path).st_ino == early.rows.inode:
            return early
    except OSError:
        pass
    early.close()
    return None


def _follow(conn: Connection, early: Followed, srs: Any, like: Any) -> Followed | None:
    """Read ``early``'s file as it lands (rows decoded, SR prepared once the header is in)
    until a request waits on ``conn``; returns it, or None when it was let go (the file could
    not be followed, was removed, or stalled)."""
    rows = early.rows
    idle_since = time.monotonic()
    while not conn.poll(0):
        if rows.advance():
            idle_since = time.monotonic()
            continue
        early.prepare(srs, like)  # between pieces (or once they are all in): rows come first
        if rows.done:
            return early
        if rows.failed or rows.gone() or time.monotonic() - idle_since > FOLLOW_IDLE_S:
            early.close()
            return None
        conn.poll(FOLLOW_POLL_S)
    return early


def _overlay(path: str, image: np.ndarray | None) -> np.ndarray | str:
    """The overlay image of ``path`` (decoded again unless given), or why there is none."""
    from ddad_edge.runtime.io import ImageLoadError, load_image

    try:
        return overlay_image(load_image(path) if image is None else image)
    except ImageLoadError as e:
        return e.reason


class _Child:
    """One child process and the parent's end of its pipe."""

    def __init__(self, spec: ScorerSpec) -> None:
        """Start the child (it opens the scorer meanwhile: see :meth:`wait_ready`)."""
        ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(theirs, spec), name="ddad-scoring")
        self.proc.daemon = True
        self.proc.start()
        theirs.close()
        self.manifest: dict[str, Any] = {}
        self.last = ""  # the path scored last: the child keeps its image for the heat map
        self.following: tuple[int, float] | None = None  # (inode, since): the file it follows

    def wait_ready(self, timeout: float) -> _Child:
        """Wait until the child has opened its scorer; returns self.

        Raises:
            ScoringError: it could not (its reason), died or did not answer within ``timeout``.
        """
        got = self._answer(timeout)
        if not (isinstance(got, tuple) and got[0] == "ready"):
            self.kill()
            dead = f"the scoring process ended or hung before it was ready ({self.death()})"
            raise ScoringError(str(got[1]) if isinstance(got, tuple) else dead)
        self.manifest = got[1]
        return self

    def _answer(self, timeout: float) -> Any:
        """The child's next message; None when it died first; :data:`_TIMED_OUT`."""
        ready = wait([self.conn, self.proc.sentinel], timeout)
        if not ready:
            return _TIMED_OUT
        try:
            return self.conn.recv() if self.conn in ready else None
        except (EOFError, OSError):
            return None

    def ask(self, op: str, path: str, timeout: float) -> Any:
        """The child's answer to ``op`` ("score": a FileScores; "overlay": an image or why
        not) for ``path``; or why there is none, as a :class:`_Failure` (the child is dead)."""
        if op == "score":
            self.following = None  # the child uses it for this file or lets it go
        try:
            self.conn.send((op, path))
            got = self._answer(timeout)
        except OSError:
            got = None
        if got is not None and got is not _TIMED_OUT:
            if op == "score":
                self.last = path
            return got
        self.kill()
        return _Failure(self._why(got, timeout))

    def _why(self, got: Any, timeout: float) -> str:
        if got is _TIMED_OUT:
            return f"the scoring process gave no answer within {timeout:g} s and was killed"
        return f"the scoring process died ({self.death()})"

    def death(self) -> str:
        code = self.proc.exitcode
        if code is not None and code < 0:
            return f"signal {signal.Signals(-code).name}"
        return f"exit status {code}"

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        self.conn.close()

    def close(self, timeout: float = 10.0) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout)
        self.kill()


class ScoringProcesses:
    """``n`` child processes, each scoring one file at a time (one per worker thread).

    Raises:
        ScoringError: a child cannot open the scorer (the reason); none is left running.
    """

    def __init__(
        self, spec: ScorerSpec, n: int = 1, timeout_s: float = TIMEOUT_S, start_timeout: float = 600
    ) -> None:
        self.spec, self.timeout_s, self.start_timeout = spec, timeout_s, start_timeout
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._idle: list[_Child] = []
        self._all: list[_Child] = [_Child(spec) for _ in range(max(1, n))]  # side by side
        try:
            for child in self._all:
                self._give(child.wait_ready(start_timeout))
        except ScoringError:
            self.close()
            raise
        self.manifest = self._all[0].manifest
        self.srs = decision_srs(self.manifest)  # for the SR of a file no child could score

    def _spawn(self) -> _Child:
        child = _Child(self.spec).wait_ready(self.start_timeout)
        with self._lock:
            self._all.append(child)
        return child

    def pids(self) -> list[int]:
        """Process ids of the children alive now."""
        with self._lock:
            return [c.proc.pid for c in self._all if c.proc.is_alive() and c.proc.pid]

    def run(self, path: str) -> FileScores:
        """Score ``path`` in an idle child; a child that dies or hangs is replaced and the file
        tried once more; if that fails too the record carries the reason as its error.

        Raises:
            ScoringError: the scorer raised (not a bad file: a bug or the environment).
        """
        from ddad_edge.runtime.scorer import ScoreResult

        got = self._ask("score", path)
        if isinstance(got, _Raised):
            raise ScoringError(got.text)
        if not isinstance(got, _Failure):
            return got
        failed = FileScores(ScoreResult(path, error=got.why))  # its SR from the header, here
        failed.sr = decision_sr(self.srs, path, failed.record)
        return failed

    def overlay(self, path: str) -> np.ndarray:
        """:func:`overlay_image` of ``path`` (the image the child scored last, when it was this
        file; else decoded again), as :meth:`run` treats failures.

        Raises:
            ScoringError: the file could not be decoded, or the children failed (the reason).
        """
        got = self._ask("overlay", path)
        if isinstance(got, np.ndarray):
            return got
        raise ScoringError(got if isinstance(got, str) else getattr(got, "why", got.text))

    def follow(self, path: str) -> None:
        """Have an idle child decode the rows of ``path`` while the file is written (the SCP
        calls this as a C-STORE's data set starts to arrive; ``runtime.dicom_rows``): one that
        follows nothing, else the one following a file for longest. Nothing when all are busy."""
        try:
            inode = os.stat(path).st_ino
        except OSError:
            return
        with self._lock:
            if not self._idle:
                return
            child = min(self._idle, key=lambda c: c.following[1] if c.following else -1.0)
            child.following = (inode, time.monotonic())
            try:
                child.conn.send(("follow", path))
            except OSError:  # a dead child: the next request finds out
                child.following = None

    def _take(self, path: str) -> _Child:
        """An idle child: the one following ``path``'s file (it has decoded rows of it), or the
        one that scored ``path`` last (it has the image), or one following nothing."""
        try:
            inode: int | None = os.stat(path).st_ino
        except OSError:
            inode = None
        with self._freed:
            self._freed.wait_for(lambda: self._idle)
            idle = self._idle
            child = (
                next((c for c in idle if c.following and c.following[0] == inode), None)
                or next((c for c in idle if c.last == path), None)
                or next((c for c in idle if c.following is None), idle[0])
            )
            idle.remove(child)
            return child

    def _give(self, child: _Child) -> None:
        with self._freed:
            self._idle.append(child)
            self._freed.notify()

    def _ask(self, op: str, path: str) -> Any:
        child = self._take(path)
        why: list[str] = []
        try:
            for _ in range(2):
                got = child.ask(op, path, self.timeout_s)
                if not isinstance(got, _Failure):
                    return got
                why.append(got.why)
                child = self._replace(child)
        finally:
            self._give(child)
        return _Failure(f"{why[0]}; on a new one, {why[1]}")

    def _replace(self, dead: _Child) -> _Child:
        with self._lock:
            if dead in self._all:  # a dead child given back after a failed replacement
                self._all.remove(dead)
        return self._spawn()

    def close(self) -> None:
        with self._lock:
            children, self._all = self._all, []
        for c in children:
            c.close()
