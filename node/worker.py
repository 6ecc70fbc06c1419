"""Process stored objects: gate, score, decide, build the results, queue them for delivery.

The worker takes SOP Instance UIDs from an in-memory queue that the SCP feeds; at start it
queues every object the journal still holds as ``received`` (a restart resumes them); a new
object comes from the SCP as soon as its file is written (:meth:`Worker.early`) and is scored
while the file is fsynced, its outcome committed only once the object is journalled. Each
object goes through ``process(row) -> Outcome`` (``node.pipeline``), its result files are
written to the outbox durably, and the journal moves the object to its new state and queues the
results in one transaction. An exception from ``process`` marks the object ``failed`` with the
reason; the worker goes on with the next one. When the outcome cannot be stored or recorded (a
full disk: the result files, the JSON line or the journal), the object stays ``received`` and
is processed again after ``RETRY_S``.

Results the outcome lists as ``later`` (the heat-map Secondary Capture) are queued in that
transaction as ``building`` under their final UID and built once the forwarder has sent the
others (the SR, i.e. the decision; waiting at most ``LATER_WAIT_S``, so that the two do not
compete for the interpreter): they then become ``pending``. After a
crash the first thread builds every ``building`` result again from a new ``process`` of its
object before taking new work; a result that cannot be built is dead-lettered with the reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ddad_edge.node.journal import ABSTAINED, FAILED, RECEIVED, SCORED, Journal, ObjectRow, Result
from ddad_edge.node.metrics import NodeMetrics
from ddad_edge.node.spool import Spool

log = logging.getLogger("ddad_edge.node.worker")


@dataclass
class ResultFile:
    """One result object to deliver: SOP Instance/Class UIDs, kind ("sr"/"sc"), encoded bytes
    (a DICOM file with file meta)."""

    uid: str
    sop_class: str
    kind: str
    data: bytes = field(repr=False)


@dataclass
class Later:
    """A result built after the object's state is committed: UIDs and kind as
    :class:`ResultFile`; ``build(uid)`` returns its encoded bytes under SOP Instance UID ``uid``
    (the UID reserved in the journal, also when built again after a crash)."""

    uid: str
    sop_class: str
    kind: str
    build: Callable[[str], bytes] = field(repr=False)


@dataclass
class Outcome:
    """What processing one object gave.

    state: "scored" or "abstained"; reason: why abstained (None when scored); record: the JSON
    record (scores, flag, threshold, notes, ...); results: files to deliver now; times: seconds
    per stage ({"read", "gate", "decode", "score", "build"}); later: results to build once the
    others are queued.
    """

    state: str
    reason: str | None
    record: dict[str, Any]
    results: list[ResultFile]
    times: dict[str, float] = field(default_factory=dict)
    later: list[Later] = field(default_factory=list)


Process = Callable[[ObjectRow], Outcome]


@dataclass
class _Early:
    """An object queued while it is being stored (:meth:`Worker.early`)."""

    row: ObjectRow
    settled: threading.Event = field(default_factory=threading.Event)
    durable: bool = False

    def settle(self, durable: bool) -> None:
        self.durable = durable
        self.settled.set()


LATER_WAIT_S = 1.0
"""How long the worker waits for the results queued now to be sent before it builds the later
ones (a destination that is down does not hold it up longer)."""


RETRY_S = 30.0
"""Seconds before an object whose outcome could not be recorded is processed again."""


class Worker:
    """``threads`` background threads running ``process`` on queued objects.

    When an outcome cannot be recorded (the journal or the spool fails: a full disk), the
    object stays ``received``, the failure is logged and the object is processed again after
    ``retry_s``; the thread goes on with the next one.
    """

    def __init__(
        self,
        journal: Journal,
        spool: Spool,
        metrics: NodeMetrics,
        process: Process,
        *,
        on_results: Callable[[], None] = lambda: None,
        results_sent: Callable[[float], object] = lambda timeout: None,
        threads: int = 1,
        jsonl: bool = False,
        retry_s: float = RETRY_S,
    ) -> None:
        self.journal = journal
        self.spool = spool
        self.metrics = metrics
        self.process = process
        self.on_results = on_results
        self.results_sent = results_sent
        self.jsonl = jsonl
        self.retry_s = retry_s
        self._queue: queue.Queue[str | _Early] = queue.Queue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"ddad-worker-{i}", daemon=True)
            for i in range(max(1, threads))
        ]

    def start(self) -> int:
        """Queue every object still ``received`` and start the threads; returns how many were
        resumed."""
        pending = self.journal.in_state(RECEIVED)
        for row in pending:
            self.submit(row.sop_uid)
        for t in self._threads:
            t.start()
        return len(pending)

    def submit(self, sop_uid: str) -> None:
        self._queue.put(sop_uid)

    def early(self, row: ObjectRow) -> Callable[[bool], None]:
        """Queue an object whose file is written but not yet journalled: it is processed at once
        and its outcome committed only once the returned function is called with True (the
        object is journalled as ``received``); with False it is dropped unrecorded."""
        job = _Early(row)
        self._queue.put(job)
        return job.settle

    def depth(self) -> int:
        """Objects queued, not yet taken by a thread."""
        return self._queue.qsize()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the object in progress in each thread and return; queued objects stay
        ``received`` in the journal for the next start."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        if threading.current_thread() is self._threads[0]:
            self._rebuild_unfinished()
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._take(item)
            except Exception as e:  # the journal or the spool failed: keep serving
                uid = item.row.sop_uid if isinstance(item, _Early) else item
                reason = f"{type(e).__name__}: {e}"
                log.error("not recorded, will retry", extra={"sop_uid": uid, "reason": reason})
                self.metrics.record_retries.inc()
                retry = threading.Timer(self.retry_s, self.submit, (uid,))
                retry.daemon = True
                retry.start()

    def _take(self, item: str | _Early) -> None:
        if isinstance(item, _Early):
            self._handle_early(item)
            return
        row = self.journal.get(item)
        if row is not None and row.state == RECEIVED:
            self.handle(row)

    def handle(self, row: ObjectRow) -> str:
        """Process one received object to its new state (returned).

        Raises:
            OSError, sqlite3.Error: the outcome could not be stored or recorded (it stays
                ``received``).
        """
        t0 = time.time()
        return self._complete(row, self._attempt(row), t0)

    def _handle_early(self, job: _Early) -> None:
        """Process a staged object while it is being made durable; commit once it is journalled
        (a stop before that leaves it ``received`` for the next start)."""
        t0 = time.time()
        out = self._attempt(job.row)
        while not job.settled.wait(0.2):
            if self._stop.is_set():
                return
        row = self.journal.get(job.row.sop_uid) if job.durable else None
        if row is not None and row.state == RECEIVED:
            self._complete(row, out, t0, received_at=job.row.received_at)

    def _attempt(self, row: ObjectRow) -> Outcome | Exception:
        try:
            return self.process(row)
        except Exception as e:  # a bug or an environment failure: recorded by _complete
            return e

    def _complete(
        self,
        row: ObjectRow,
        out: Outcome | Exception,
        t0: float,
        received_at: float | None = None,
    ) -> str:
        """Store the results of ``out`` and commit the object's new state (returned);
        ``received_at``: when the C-STORE arrived, for an object processed while it was being
        stored (else the journal's time)."""
        received_at = row.received_at if received_at is None else received_at
        if isinstance(out, Exception):  # from process: a bug, or the scoring process failed
            reason = f"{type(out).__name__}: {out}"
            self.journal.finish(row.sop_uid, FAILED, reason=reason)
            self.metrics.failed.inc()
            log.error("failed", extra={"sop_uid": row.sop_uid, "reason": reason})
            return FAILED
        # An OSError here (a full disk) reaches _run, which processes the object again later.
        queued = [
            Result(r.uid, r.sop_class, r.kind, str(self.spool.write_result(r.uid, r.data)))
            for r in out.results
        ]
        queued += [
            Result(r.uid, r.sop_class, r.kind, str(self.spool.result_path(r.uid)), ready=False)
            for r in out.later
        ]
        times = {**out.times, "wait": t0 - received_at, "started_at": t0, "done_at": time.time()}
        if self.jsonl:  # before the commit: after a crash the line repeats, the last one counts
            self.spool.append_jsonl({"sop_instance_uid": row.sop_uid, **out.record})
        self.journal.finish(
            row.sop_uid,
            out.state,
            reason=out.reason,
            record=out.record,
            times=times,
            results=queued,
        )
        self.metrics.processing.observe(time.time() - received_at)
        (self.metrics.scored if out.state == SCORED else self.metrics.abstained).inc()
        log.info(
            out.state,
            extra={"sop_uid": row.sop_uid, "reason": out.reason, "flag": out.record.get("flag")},
        )
        if queued:
            self.on_results()
        if out.later:  # the decision leaves first, without the heat map competing with it
            self.results_sent(LATER_WAIT_S)
        for later in out.later:
            self._build_later(row.sop_uid, later, later.uid)
        return out.state if out.state in (SCORED, ABSTAINED) else FAILED

    def _build_later(self, sop_uid: str, later: Later, uid: str) -> None:
        """Build a ``building`` result, store it and make it ``pending`` (or dead-letter it)."""
        t = time.perf_counter()
        try:
            self.spool.write_result(uid, later.build(uid))
        except Exception as e:
            reason = f"{later.kind} could not be built: {type(e).__name__}: {e}"
            self.journal.build_failed(uid, reason)
            log.error("result not built", extra={"sop_uid": sop_uid, "reason": reason})
            return
        self.journal.mark_built(uid)
        self.journal.add_time(sop_uid, f"build_{later.kind}", time.perf_counter() - t)
        self.on_results()

    def _rebuild_unfinished(self) -> None:
        """After a crash: build every ``building`` result again (a new ``process`` of its
        object gives the builder; the result keeps its reserved UID)."""
        for res in self.journal.building():
            row = self.journal.get(res.sop_uid)
            try:
                if row is None:
                    raise LookupError("its source object is not in the journal")
                later = next(x for x in self.process(row).later if x.kind == res.kind)
            except Exception as e:  # StopIteration too: the object no longer gives one
                reason = f"{res.kind} could not be rebuilt: {type(e).__name__}: {e}"
                self.journal.build_failed(res.result_uid, reason)
                continue
            self._build_later(res.sop_uid, later, res.result_uid)
