"""The node: SCP, worker, forwarder and metrics over one spool, started and stopped together.

``Node(config, process).start()`` opens the spool and journal, resumes every unfinished object
(``received`` ones are processed again, pending results are delivered), then listens.
:meth:`Node.stop` is the graceful shutdown SIGTERM triggers (:func:`run_until_signalled`): stop
accepting associations, let the ones in progress finish (up to ``drain_s``, then abort them:
their senders were not answered and send again), finish the object each worker thread holds,
finish the C-STORE in progress, close the journal. Everything not finished stays in the spool
for the next start.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddad_edge.node.forwarder import Destination, Forwarder, RetryPolicy
from ddad_edge.node.journal import Journal
from ddad_edge.node.metrics import NodeMetrics
from ddad_edge.node.scp import StoreHandler, start_scp, uid_checks_once
from ddad_edge.node.spool import JOURNAL, Spool
from ddad_edge.node.worker import Process, Worker

log = logging.getLogger("ddad_edge.node")


@dataclass
class NodeConfig:
    """How the node runs.

    spool: the spool folder; ae_title: our AE title; host/port: where the SCP listens (port 0:
    any free port); destination: where results go (None: they wait in the outbox);
    metrics_port: Prometheus endpoint on 127.0.0.1 (None: off; 0: any free port); workers:
    processing threads; jsonl: also append one JSON line per object to the spool; retry: the
    delivery retry policy; drain_s: how long a stop waits for associations in progress;
    retry_failed: at start, queue failed objects and dead-lettered results again
    (``Journal.retry_failed``).
    """

    spool: Path
    ae_title: str = "DDAD"
    host: str = "0.0.0.0"
    port: int = 11112
    destination: Destination | None = None
    metrics_port: int | None = None
    workers: int = 1
    jsonl: bool = False
    retry: RetryPolicy = RetryPolicy()
    drain_s: float = 10.0
    retry_failed: bool = False


class Node:
    """A running node (see the module docstring)."""

    def __init__(self, config: NodeConfig, process: Process) -> None:
        self.config = config
        self.process = process
        self.spool: Spool | None = None
        self.journal: Journal | None = None
        self.metrics = NodeMetrics()
        self.worker: Worker | None = None
        self.forwarder: Forwarder | None = None
        self._ae: Any = None
        self._server: Any = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    def start(self) -> Node:
        """Open the spool, resume unfinished work, start listening. Returns self."""
        cfg = self.config
        self.spool = spool = Spool(cfg.spool)
        cut_off = spool.clear_receiving()  # transfers a stopped node never answered
        self.journal = journal = Journal(spool.journal_path)
        requeued = journal.retry_failed() if cfg.retry_failed else (0, 0)
        if cfg.destination is not None:
            self.forwarder = Forwarder(
                journal, cfg.destination, self.metrics, calling_ae=cfg.ae_title, policy=cfg.retry
            )
        fwd = self.forwarder
        self.worker = Worker(
            journal, spool, self.metrics, self.process,
            on_results=fwd.wake if fwd else (lambda: None),
            results_sent=fwd.wait_idle if fwd else (lambda timeout: None),
            threads=cfg.workers, jsonl=cfg.jsonl,
        )  # fmt: skip
        self.metrics.queue_depth.set_function(self.worker.depth)
        self.metrics.outbox_depth.set_function(lambda: _outbox_depth(journal))
        resumed = self.worker.start()
        if self.forwarder is not None:
            self.forwarder.start()
        handler = StoreHandler(
            spool, journal, self.metrics, self.worker.submit, on_staged=self.worker.early
        )
        self._ae, self._server = start_scp(cfg.ae_title, cfg.host, cfg.port, handler)
        self.port = int(self._server.server_address[1])
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_port)
        log.info(
            "listening",
            extra={
                "ae_title": cfg.ae_title,
                "port": self.port,
                "metrics_port": self.metrics_port,
                "destination": str(cfg.destination) if cfg.destination else None,
                "resumed": resumed,
                "cut_off_removed": cut_off,
                "retried": {"objects": requeued[0], "results": requeued[1]},
                "counts": journal.counts(),
            },
        )
        return self

    def stop(self) -> None:
        """Graceful shutdown (see the module docstring). Safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            deadline = time.monotonic() + self.config.drain_s
            while self._ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in self._ae.active_associations:
                assoc.abort()
            self._ae.shutdown()
        if self.worker is not None:
            self.worker.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        self.metrics.close()
        if self.journal is not None:
            log.info("stopped", extra={"counts": self.journal.counts()})
            self.journal.close()
            self.journal = None

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _outbox_depth(journal: Journal) -> int:
    c = journal.counts()
    return c["outbox-pending"] + c["outbox-building"]


def run_until_signalled(node: Node) -> None:
    """Start ``node``, serve until SIGTERM or SIGINT, then stop it gracefully. Call from the
    main thread (Python delivers signals there). pydicom's own UID checks are off meanwhile
    (``scp.uid_checks_once``)."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    with uid_checks_once():
        try:
            node.start()
            while not stop.wait(1.0):
                pass
            log.info("signal received: stopping")
        finally:
            node.stop()
            for s, h in previous.items():
                signal.signal(s, h)


def spool_status(spool: str | os.PathLike[str]) -> dict[str, Any]:
    """What a spool holds: {"counts": objects per state and outbox rows per state,
    "dead_letters": [{"sop_instance_uid", "result", "reason"}, ...]}. Safe while a node runs on
    the same spool (SQLite WAL readers do not block it).

    Raises:
        FileNotFoundError: ``spool`` has no journal (not a node's spool).
    """
    path = Path(spool) / JOURNAL
    if not path.is_file():
        raise FileNotFoundError(f"{spool}: no {JOURNAL} here (not a node spool)")
    journal = Journal(path)
    try:
        dead = [
            {"sop_instance_uid": uid, "result": kind, "reason": reason}
            for uid, kind, reason in journal.dead_letters()
        ]
        return {"counts": journal.counts(), "dead_letters": dead}
    finally:
        journal.close()
