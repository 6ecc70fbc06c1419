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
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from ddad_edge.node.heap import keep_freed_memory

OVERLAY_MAX_SIDE = 512
"""Longer side of the heat-map capture (a display aid, not the diagnostic image), pixels."""

TIMEOUT_S = 120.0
"""How long a child may take over one file before it is killed."""


@dataclass
class FileScores:
    """The outcome for one file.

    record: the runtime's ``ScoreResult`` (scores, float32 [64, 64] maps, flag, or the reason it
    was not scored); times: seconds per stage {"gate", "decode", "score"}; image: the decoded
    image, float32 [H, W] in [0, 1] (None unless scored; it stays in the process that scored).
    """

    record: Any
    times: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)


def overlay_image(image: np.ndarray) -> np.ndarray:
    """The decoded image as the heat map is drawn on: float32 [h, w], longer side at most
    ``OVERLAY_MAX_SIDE``."""
    from ddad_edge.runtime.dicom_results import fit_image

    return fit_image(image, OVERLAY_MAX_SIDE)


def gate_and_score(scorer: Any, path: str) -> FileScores:
    """The runtime's input gate, decoder and scorer on one file (``Scorer.check``,
    ``runtime.io.load_image``, ``preprocess``, the backend, ``runtime.scores``); never raises
    for a bad file: its reason goes in the record."""
    from ddad_edge.runtime.io import ImageLoadError, load_image
    from ddad_edge.runtime.preprocess import PreprocessError, preprocess
    from ddad_edge.runtime.scorer import ScoreResult

    out = FileScores(ScoreResult(path))
    record, times = out.record, out.times
    t = time.perf_counter()
    try:
        gate = scorer.check(path)
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
        image = load_image(path)
        x = preprocess(image)[None]
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


def warm(scorer: Any) -> None:
    """One inference, so that the first file received does not pay for the backend's start."""
    from ddad_edge.runtime.preprocess import IMAGE_SIZE

    x = np.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    scorer.scores(x, scorer.infer(x), maps=True)


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
    """:func:`gate_and_score` with a scorer of this process (thread-safe: the scorer is)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.manifest: dict[str, Any] = scorer.bundle.manifest

    def run(self, path: str) -> FileScores:
        return gate_and_score(self.scorer, path)

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
    _serve(conn, scorer)


def _serve(conn: Connection, scorer: Any) -> None:
    """Answer ("score", path) with a FileScores and ("overlay", path) with the heat map's image
    (or why not), until None or the parent is gone."""
    last: tuple[str, np.ndarray | None] = ("", None)  # the image scored last: the heat map's
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent died
            return
        if request is None:
            return
        op, path = request
        try:
            if op == "score":
                got = gate_and_score(scorer, path)
                last, got.image = (path, got.image), None  # sent on request, after the decision
                conn.send(got)
            else:
                conn.send(_overlay(path, last[1] if last[0] == path else None))
        except Exception as e:  # a bug or an environment failure, not the file's: say which
            conn.send(_Raised(f"{type(e).__name__}: {e}"))


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
        return FileScores(ScoreResult(path, error=got.why)) if isinstance(got, _Failure) else got

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

    def _take(self, path: str) -> _Child:
        """An idle child, the one that scored ``path`` last if it is idle (it has the image)."""
        with self._freed:
            self._freed.wait_for(lambda: self._idle)
            child = next((c for c in self._idle if c.last == path), self._idle[0])
            self._idle.remove(child)
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
