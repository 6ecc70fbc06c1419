"""Deliver queued results to the destination by C-STORE SCU, from the persisted outbox.

A background thread takes the results that are due (``Journal.due``) and sends them one by one
on an association to the destination, marking each as sent the moment its C-STORE response
says Success (or Warning). The association stays open while results keep coming (released
after ``IDLE_RELEASE_S`` without any, at stop, and whenever a result needs a SOP class it did
not negotiate), so a result does not pay for a new association each time. A result that fails
(association refused or lost, failure status, unreadable file) is retried after an exponential
backoff: ``backoff * 2**(tries - 1)`` seconds, at most ``max_backoff``; after ``max_tries``
tries it is dead-lettered with the last reason. Nothing is removed from the spool: sent and
dead-lettered files stay where they are.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt

from ddad_edge.node.journal import Journal, OutboxRow
from ddad_edge.node.metrics import NodeMetrics
from ddad_edge.node.sockets import install, no_delay

log = logging.getLogger("ddad_edge.node.forwarder")
install()  # quick ACKs: a peer with Nagle's algorithm on answers at once (node.sockets)

# Send result files as stored, straight from disk (no decode and re-encode per try). A
# pynetdicom setting for the whole process: it only changes C-STOREs given a file path.
_config.STORE_SEND_CHUNKED_DATASET = True

_DEST = re.compile(r"(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>[0-9]{1,5})")


@dataclass(frozen=True)
class Destination:
    """Where results go: called AE title, host, port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AE@host:port`` -> Destination. Raises ValueError naming what is wrong."""
        m = _DEST.fullmatch(text.strip())
        if not m or not (0 < int(m["port"]) < 65536):
            raise ValueError(
                f"destination must be AE@host:port (AE at most 16 chars); got {text!r}"
            )
        return cls(m["ae"], m["host"], int(m["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class RetryPolicy:
    """Tries before dead-lettering and the backoff between them (seconds)."""

    max_tries: int = 10
    backoff: float = 1.0
    max_backoff: float = 60.0

    def retry_at(self, tries_so_far: int, now: float) -> float | None:
        """When to try again after ``tries_so_far`` failed tries; None = dead-letter."""
        if tries_so_far >= self.max_tries:
            return None
        return now + min(self.backoff * 2 ** (tries_so_far - 1), self.max_backoff)


IDLE_RELEASE_S = 2.0
"""An open association with nothing to send is released after this many seconds."""
PAUSE_S = 10.0
"""Delivery pauses this many seconds when the journal fails (a full disk), then goes on. A
result sent whose success could not be recorded is sent again under its UID."""


_SUCCESS_OR_WARNING = {0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007}


class Forwarder:
    """Background delivery of the outbox to ``destination``. Call :meth:`wake` when results
    were queued; :meth:`stop` finishes the C-STORE in progress and returns."""

    def __init__(
        self,
        journal: Journal,
        destination: Destination,
        metrics: NodeMetrics,
        *,
        calling_ae: str = "DDAD",
        policy: RetryPolicy | None = None,
        pause_s: float = PAUSE_S,
    ) -> None:
        self.journal = journal
        self.destination = destination
        self.metrics = metrics
        self.calling_ae = calling_ae
        self.policy = policy or RetryPolicy()
        self.pause_s = pause_s
        self._wake = threading.Event()
        self._idle = threading.Event()  # nothing due: every result queued so far was tried
        self._stop = threading.Event()
        self._assoc: Any = None  # only the forwarder thread touches it
        self._classes: frozenset[str] = frozenset()
        self._last_used = 0.0
        self._thread = threading.Thread(target=self._run, name="ddad-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()
        self._idle.clear()

    def wait_idle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every result queued before the last :meth:`wake`
        was tried; True when it was. The worker builds the heat map after this, so that the SR
        (the decision) is sent without competing with it for the interpreter."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                except Exception as e:  # the journal failed (a full disk): try again later
                    reason = f"{type(e).__name__}: {e}"
                    log.error("delivery paused", extra={"reason": reason, "for_s": self.pause_s})
                    self.metrics.delivery_pauses.inc()
                    self._release()
                    self._stop.wait(self.pause_s)
        finally:
            self._idle.set()
            self._release()

    def _step(self) -> None:
        """Send what is due, or wait for new results, the next retry or the idle release."""
        rows = self.journal.due()
        if rows:
            self._send(rows)
            return
        if self._wake.is_set():  # results were queued since: look again
            self._wake.clear()
            return
        self._idle.set()
        nxt = self.journal.next_due_at()
        wait = 5.0 if nxt is None else min(5.0, max(0.0, nxt - time.time()))
        if self._assoc is not None:
            idle = time.monotonic() - self._last_used
            if idle >= IDLE_RELEASE_S:
                self._release()
            else:
                wait = min(wait, IDLE_RELEASE_S - idle)
        self._wake.wait(wait)
        self._wake.clear()

    def _release(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()

    def _association(self, classes: set[str]) -> Any:
        """The open association if it is alive and negotiated ``classes``, else a new one.
        Raises ConnectionError with the reason when none can be had."""
        if self._assoc is not None and self._assoc.is_established and classes <= self._classes:
            return self._assoc
        self._release()
        ae = AE(ae_title=self.calling_ae)
        # One context per transfer syntax: results are explicit VR little endian files, sent as
        # stored when the peer accepts that, else converted to implicit VR (the default).
        wanted = classes | self._classes
        for sop in sorted(wanted):
            ae.add_requested_context(sop, ExplicitVRLittleEndian)
            ae.add_requested_context(sop, ImplicitVRLittleEndian)
        # generous: a timeout on a store that did arrive means sending it again
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        d = self.destination
        try:
            assoc = ae.associate(
                d.host, d.port, ae_title=d.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)]
            )
        except Exception as e:  # socket errors surface here on some platforms
            raise ConnectionError(f"association with {d} failed: {e}") from e
        if not assoc.is_established:
            raise ConnectionError(f"association with {d} was rejected or aborted")
        self._assoc, self._classes = assoc, frozenset(wanted)
        return assoc

    def _send(self, rows: list[OutboxRow]) -> None:
        """Send ``rows`` on the association; each row's outcome goes to the journal."""
        try:
            assoc = self._association({r.sop_class for r in rows})
        except ConnectionError as e:
            self._failed_all(rows, str(e))
            return
        for i, row in enumerate(rows):
            if self._stop.is_set():
                return
            if not assoc.is_established:
                self._release()
                self._failed_all(rows[i:], f"association with {self.destination} was lost")
                return
            self._send_one(assoc, row)
        self._last_used = time.monotonic()

    def _send_one(self, assoc: Any, row: OutboxRow) -> None:
        try:
            try:
                status = assoc.send_c_store(Path(row.path))
            except ValueError as e:  # no context for the file's own transfer syntax
                if "presentation context" not in str(e):
                    raise
                status = assoc.send_c_store(dcmread(row.path))  # pynetdicom converts it
        except Exception as e:  # unreadable file, or the association failed mid-send
            self._failed(row, f"C-STORE of {row.path} failed: {type(e).__name__}: {e}")
            return
        code = int(getattr(status, "Status", -1)) if status else -1
        if code in _SUCCESS_OR_WARNING:
            done = self.journal.mark_sent(row.result_uid)
            self.metrics.sent.inc()
            log.info("sent", extra={"sop_uid": row.sop_uid, "result_uid": row.result_uid})
            if done:
                obj = self.journal.get(row.sop_uid)
                if obj is not None:
                    self.metrics.latency.observe(max(0.0, time.time() - obj.received_at))
        else:
            reason = "no response" if code == -1 else f"status 0x{code:04X}"
            self._failed(row, f"C-STORE to {self.destination}: {reason}")

    def _failed_all(self, rows: list[OutboxRow], reason: str) -> None:
        for row in rows:
            self._failed(row, reason)

    def _failed(self, row: OutboxRow, reason: str) -> None:
        retry = self.policy.retry_at(row.attempts + 1, time.time())
        dead = self.journal.mark_failed(row.result_uid, reason, retry)
        if dead:
            self.metrics.dead_lettered.inc()
            log.error("dead-lettered", extra={"sop_uid": row.sop_uid, "reason": reason})
        else:
            log.warning("send failed", extra={"sop_uid": row.sop_uid, "reason": reason})
