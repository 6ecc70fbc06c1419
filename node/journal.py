"""The node's journal: one SQLite file in the spool recording every object's state.

Objects are keyed by SOP Instance UID, so an object sent twice is known the second time and is
neither stored nor reported again. States (``STATES``)::

    received --> scored ----+--> result-sent
             \\-> abstained -+--> dead-lettered   (a result could not be delivered after N tries)
             \\-> failed                          (processing raised; the reason is kept)

Results waiting for delivery live in the ``outbox`` table (one row per result file: the SR and
the Secondary Capture), each with its attempts, the time of its next try and its last error.
Rows are written in the same transaction as the object's new state, so after a crash an object
either has all its results queued or is still ``received`` and is processed again. A result
that is built after the others (the Secondary Capture, so that the SR, the decision, leaves
first) is queued in that transaction as ``building``: it is not sent and does not let the object
settle until :meth:`Journal.mark_built` makes it ``pending``; after a crash the worker rebuilds
every ``building`` row (:meth:`Journal.building`).

Durability: WAL journal with ``synchronous=FULL`` (a commit is on disk when it returns). One
connection shared by the node's threads behind a lock; every public method is one transaction.
Times are Unix seconds (float).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECEIVED = "received"
SCORED = "scored"
ABSTAINED = "abstained"
FAILED = "failed"
RESULT_SENT = "result-sent"
DEAD_LETTERED = "dead-lettered"
STATES = (RECEIVED, SCORED, ABSTAINED, FAILED, RESULT_SENT, DEAD_LETTERED)

PENDING, SENT, DEAD, BUILDING = "pending", "sent", "dead", "building"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    sop_uid TEXT PRIMARY KEY,
    sop_class TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    record TEXT,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    times TEXT
);
CREATE INDEX IF NOT EXISTS objects_state ON objects(state);
CREATE TABLE IF NOT EXISTS outbox (
    result_uid TEXT PRIMARY KEY,
    sop_uid TEXT NOT NULL REFERENCES objects(sop_uid),
    kind TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_at);
"""


@dataclass(frozen=True)
class ObjectRow:
    """One received object as the journal holds it."""

    sop_uid: str
    sop_class: str
    calling_ae: str
    path: str
    state: str
    reason: str | None
    received_at: float


@dataclass(frozen=True)
class OutboxRow:
    """One result file waiting for (or done with) delivery."""

    result_uid: str
    sop_uid: str
    kind: str
    sop_class: str
    path: str
    attempts: int


@dataclass(frozen=True)
class Result:
    """A result file to queue: its SOP Instance/Class UIDs, kind ("sr", "sc") and path;
    ``ready`` False: the file is still being built (queued as ``building``)."""

    result_uid: str
    sop_class: str
    kind: str
    path: str
    ready: bool = True


def _queued(result: Result) -> str:
    return PENDING if result.ready else BUILDING


class Journal:
    """The SQLite journal at ``path`` (created when missing). Thread-safe."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- objects ----------------------------------------------------------------------------------
    def add_received(
        self,
        sop_uid: str,
        sop_class: str,
        calling_ae: str,
        path: str,
        arrived_at: float | None = None,
    ) -> bool:
        """Record a newly stored object (``arrived_at``: when its C-STORE had arrived, before
        it was written; kept in its ``times``). Returns False (and changes nothing) when the
        SOP Instance UID is already known: a re-sent object."""
        now = time.time()
        times = None if arrived_at is None else json.dumps({"arrived_at": arrived_at})
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO objects (sop_uid, sop_class, calling_ae, path, state,"
                " received_at, updated_at, times) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sop_uid, sop_class, calling_ae, path, RECEIVED, now, now, times),
            )
            return cur.rowcount == 1

    def known(self, sop_uid: str) -> bool:
        """Whether the SOP Instance UID was already received."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM objects WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return row is not None

    def get(self, sop_uid: str) -> ObjectRow | None:
        """The object's row, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT sop_uid, sop_class, calling_ae, path, state, reason, received_at"
                " FROM objects WHERE sop_uid = ?",
                (sop_uid,),
            ).fetchone()
        return ObjectRow(*row) if row else None

    def in_state(self, state: str) -> list[ObjectRow]:
        """Objects in ``state``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_uid, sop_class, calling_ae, path, state, reason, received_at"
                " FROM objects WHERE state = ? ORDER BY received_at",
                (state,),
            ).fetchall()
        return [ObjectRow(*r) for r in rows]

    def finish(
        self,
        sop_uid: str,
        state: str,
        *,
        reason: str | None = None,
        record: dict[str, Any] | None = None,
        times: dict[str, float] | None = None,
        results: Sequence[Result] = (),
    ) -> None:
        """Move a received object to scored/abstained/failed and queue its result files, in
        one transaction (``times`` are added to those it has)."""
        if state not in (SCORED, ABSTAINED, FAILED):
            raise ValueError(f"finish() takes scored, abstained or failed; got {state!r}")
        now = time.time()
        with self._tx() as db:
            if times is not None:
                row = db.execute(
                    "SELECT times FROM objects WHERE sop_uid = ?", (sop_uid,)
                ).fetchone()
                times = {**(json.loads(row[0]) if row and row[0] else {}), **times}
            db.execute(
                "UPDATE objects SET state = ?, reason = ?, record = ?, times = ?, updated_at = ?"
                " WHERE sop_uid = ? AND state = ?",
                (
                    state,
                    reason,
                    json.dumps(record) if record is not None else None,
                    json.dumps(times) if times is not None else None,
                    now,
                    sop_uid,
                    RECEIVED,
                ),
            )
            db.executemany(
                "INSERT OR REPLACE INTO outbox (result_uid, sop_uid, kind, sop_class, path, state,"
                " attempts, next_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                [
                    (r.result_uid, sop_uid, r.kind, r.sop_class, r.path, _queued(r), now)
                    for r in results
                ],
            )

    def mark_built(self, result_uid: str) -> None:
        """A ``building`` result's file is written: it becomes ``pending`` (due now)."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = ?, next_at = ? WHERE result_uid = ? AND state = ?",
                (PENDING, time.time(), result_uid, BUILDING),
            )

    def build_failed(self, result_uid: str, error: str) -> None:
        """A ``building`` result cannot be built: it is dead-lettered with the reason (the
        object then settles as ``dead-lettered`` once its other results are done)."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = ?, last_error = ? WHERE result_uid = ? AND state = ?",
                (DEAD, error, result_uid, BUILDING),
            )
            self._settle(db, result_uid, now)

    def building(self) -> list[OutboxRow]:
        """Results queued as ``building`` (after a crash: to build again), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT result_uid, sop_uid, kind, sop_class, path, attempts FROM outbox"
                " WHERE state = ? ORDER BY next_at, rowid",
                (BUILDING,),
            ).fetchall()
        return [OutboxRow(*r) for r in rows]

    def add_time(self, sop_uid: str, stage: str, seconds: float) -> None:
        """Add one stage's duration to the object's ``times`` (e.g. a result built later)."""
        with self._tx() as db:
            row = db.execute("SELECT times FROM objects WHERE sop_uid = ?", (sop_uid,)).fetchone()
            times = json.loads(row[0]) if row and row[0] else {}
            times[stage] = seconds
            db.execute(
                "UPDATE objects SET times = ? WHERE sop_uid = ?", (json.dumps(times), sop_uid)
            )

    def record(self, sop_uid: str) -> dict[str, Any] | None:
        """The JSON record stored with the object's outcome (None before it is processed)."""
        with self._lock:
            row = self._db.execute(
                "SELECT record, times FROM objects WHERE sop_uid = ?", (sop_uid,)
            ).fetchone()
        if not row or row[0] is None:
            return None
        out = json.loads(row[0])
        out["times"] = json.loads(row[1]) if row[1] else None
        return out

    # -- outbox -----------------------------------------------------------------------------------
    def due(self, now: float | None = None, limit: int = 32) -> list[OutboxRow]:
        """Pending results whose next try is due, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT result_uid, sop_uid, kind, sop_class, path, attempts FROM outbox"
                " WHERE state = ? AND next_at <= ? ORDER BY next_at, rowid LIMIT ?",
                (PENDING, now, limit),
            ).fetchall()
        return [OutboxRow(*r) for r in rows]

    def next_due_at(self) -> float | None:
        """When the earliest pending result is due (None when nothing is pending)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_at) FROM outbox WHERE state = ?", (PENDING,)
            ).fetchone()
        return row[0] if row else None

    def mark_sent(self, result_uid: str) -> bool:
        """A result was delivered. Returns True when it was the object's last one (the object
        is then ``result-sent``)."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = ?, sent_at = ? WHERE result_uid = ? AND state = ?",
                (SENT, now, result_uid, PENDING),
            )
            return self._settle(db, result_uid, now) == RESULT_SENT

    def mark_failed(self, result_uid: str, error: str, retry_at: float | None) -> bool:
        """A delivery try failed: retry at ``retry_at``, or dead-letter the result when it is
        None. Returns True when the result was dead-lettered."""
        now = time.time()
        with self._tx() as db:
            if retry_at is None:
                db.execute(
                    "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?"
                    " WHERE result_uid = ? AND state = ?",
                    (DEAD, error, result_uid, PENDING),
                )
                self._settle(db, result_uid, now)
                return True
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ?"
                " WHERE result_uid = ? AND state = ?",
                (retry_at, error, result_uid, PENDING),
            )
            return False

    @staticmethod
    def _settle(db: sqlite3.Connection, result_uid: str, now: float) -> str | None:
        """Set the object's final state once none of its results is pending."""
        (sop_uid,) = db.execute(
            "SELECT sop_uid FROM outbox WHERE result_uid = ?", (result_uid,)
        ).fetchone()
        states = [
            r[0] for r in db.execute("SELECT state FROM outbox WHERE sop_uid = ?", (sop_uid,))
        ]
        if PENDING in states or BUILDING in states:
            return None
        if DEAD in states:
            errors = [
                r[0]
                for r in db.execute(
                    "SELECT last_error FROM outbox WHERE sop_uid = ? AND state = ?", (sop_uid, DEAD)
                )
            ]
            final, reason = DEAD_LETTERED, "; ".join(e for e in errors if e)
        else:
            final, reason = RESULT_SENT, None
        db.execute(
            "UPDATE objects SET state = ?, updated_at = ?,"
            " reason = COALESCE(?, reason) WHERE sop_uid = ?",
            (final, now, reason, sop_uid),
        )
        return final

    def retry_failed(self) -> tuple[int, int]:
        """Give failed work another go, when an operator has fixed the cause (disk space, the
        destination): every ``failed`` object becomes ``received`` (processed anew; its reason
        stays until then), and every dead-lettered result is queued again with its tries
        reset (``pending``, or ``building`` when its file was never written), its object back
        in the state it was processed to. Returns (objects, results) queued again."""
        now = time.time()
        with self._tx() as db:
            objects = db.execute(
                "UPDATE objects SET state = ?, updated_at = ? WHERE state = ?",
                (RECEIVED, now, FAILED),
            ).rowcount
            dead = db.execute(
                "SELECT result_uid, sop_uid, path FROM outbox WHERE state = ?", (DEAD,)
            ).fetchall()
            for result_uid, _, path in dead:
                db.execute(
                    "UPDATE outbox SET state = ?, attempts = 0, next_at = ? WHERE result_uid = ?",
                    (PENDING if Path(path).is_file() else BUILDING, now, result_uid),
                )
            for sop_uid in {row[1] for row in dead}:
                (record,) = db.execute(
                    "SELECT record FROM objects WHERE sop_uid = ?", (sop_uid,)
                ).fetchone()
                status = json.loads(record).get("status") if record else None
                db.execute(
                    "UPDATE objects SET state = ?, updated_at = ? WHERE sop_uid = ? AND state = ?",
                    (status if status == ABSTAINED else SCORED, now, sop_uid, DEAD_LETTERED),
                )
        return objects, len(dead)

    def sent_results(self) -> list[tuple[str, str, str]]:
        """(source SOP Instance UID, result UID, kind) of every delivered result."""
        with self._lock:
            return self._db.execute(
                "SELECT sop_uid, result_uid, kind FROM outbox WHERE state = ?", (SENT,)
            ).fetchall()

    # -- summaries --------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Objects per state (every state listed, zeros included) and outbox rows per state
        (as ``outbox-building``, ``outbox-pending``, ``outbox-sent``, ``outbox-dead``)."""
        with self._lock:
            objs = dict(self._db.execute("SELECT state, COUNT(*) FROM objects GROUP BY state"))
            box = dict(self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"))
        out = {s: int(objs.get(s, 0)) for s in STATES}
        out.update({f"outbox-{s}": int(box.get(s, 0)) for s in (BUILDING, PENDING, SENT, DEAD)})
        return out

    def dead_letters(self) -> list[tuple[str, str, str]]:
        """(source SOP Instance UID, result kind, last error) of every dead-lettered result."""
        with self._lock:
            return self._db.execute(
                "SELECT sop_uid, kind, COALESCE(last_error, '') FROM outbox WHERE state = ?",
                (DEAD,),
            ).fetchall()
