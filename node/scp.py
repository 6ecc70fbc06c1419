"""The Storage SCP: accept CR, DX and Secondary Capture objects and answer C-ECHO (pynetdicom).

Persist before success: each C-STORE's data set is written as received (preamble, file meta and
the data set bytes exactly as they came off the wire, written by pynetdicom as they arrive and
renamed into the spool; ``Event.dataset_path``) and fsynced, then recorded in the journal, and
only then is the response Success (0x0000). Processing may start while the file is being
fsynced (``on_staged``); its results are committed only once the object is journalled. When
either step fails the response is 0xA700 (Refused: Out of Resources, PS3.4 GG.4), never a
false Success. The data set is not decoded here: a malformed object is stored like any other
and abstained by the worker with its reason.

An object whose SOP Instance UID the journal already knows is answered Success without being
stored or processed again (the sender re-sent it, e.g. after a lost response).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydicom import config, uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)

from ddad_edge.node import sockets
from ddad_edge.node.journal import RECEIVED, Journal, ObjectRow
from ddad_edge.node.metrics import NodeMetrics
from ddad_edge.node.receiving import drop_partial, receive_into, write_error
from ddad_edge.node.spool import Spool

log = logging.getLogger("ddad_edge.node.scp")

STORAGE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
TRANSFER_SYNTAXES = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)
# pynetdicom writes each C-STORE's data set to a file as its PDUs arrive (preamble and file meta
# first): the node moves that file into its spool instead of assembling the object in memory
# and writing it again. A pynetdicom setting for the whole process: it only changes how an SCP
# receives (``Event.dataset_path``; ``Event.dataset`` reads the file). Where and how that file
# is written: ``node.receiving``.
_config.STORE_RECV_CHUNKED_DATASET = True
sockets.install()  # one-buffer reads with quick ACKs (node.sockets)


SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
LISTEN_BACKLOG = 64
MAX_PDU = 1 << 20
"""Largest PDU we receive (bytes): a full-resolution film arrives in a few PDUs instead of
hundreds of pynetdicom's default 16 KiB ones (benchmarks/README.md, the node section)."""


Settle = Callable[[bool], None]
"""Called once with True when a staged object is journalled (durable, answered Success), or
with False when it will not be."""


class StoreHandler:
    """The C-STORE handler: persist, journal, then answer.

    ``on_staged(row)``, when given, is called as soon as a new object's bytes are written, before
    they are fsynced: it starts processing (the worker scores while the disk syncs) and returns
    the :data:`Settle` to call once the object is journalled or abandoned. Without it,
    ``on_stored(uid)`` is called for each object once it is journalled.
    """

    def __init__(
        self,
        spool: Spool,
        journal: Journal,
        metrics: NodeMetrics,
        on_stored: Callable[[str], None],
        on_staged: Callable[[ObjectRow], Settle] | None = None,
    ) -> None:
        self.spool = spool
        self.journal = journal
        self.metrics = metrics
        self.on_stored = on_stored
        self.on_staged = on_staged

    def __call__(self, event: Any) -> int:
        arrived = time.time()
        req = event.request
        uid = str(req.AffectedSOPInstanceUID or "")
        sop_class = str(req.AffectedSOPClassUID or "")
        calling = str(event.assoc.requestor.ae_title or "").strip()
        if not uid:
            self.metrics.store_failures.inc()
            log.warning("refused", extra={"calling_ae": calling, "reason": "no SOP Instance UID"})
            return OUT_OF_RESOURCES
        settle: Settle | None = None
        try:
            if self.journal.known(uid):
                self.metrics.duplicates.inc()
                log.info("duplicate", extra={"sop_uid": uid, "calling_ae": calling})
                return SUCCESS
            if (failed := write_error(req)) is not None:  # e.g. the disk filled as it arrived
                raise failed
            path = self.spool.adopt_incoming(uid, event.dataset_path)
            if self.on_staged is not None:
                row = ObjectRow(uid, sop_class, calling, str(path), RECEIVED, None, arrived)
                settle = self.on_staged(row)
            self.spool.make_durable(path)
            new = self.journal.add_received(uid, sop_class, calling, str(path), arrived)
        except Exception as e:  # disk full, permissions, journal errors: never a false Success
            if settle is not None:
                settle(False)
            self.metrics.store_failures.inc()
            log.error(
                "store failed", extra={"sop_uid": uid, "calling_ae": calling, "reason": str(e)}
            )
            return OUT_OF_RESOURCES
        return self._stored(uid, calling, new, settle)

    def connection_closed(self, event: Any) -> None:
        """EVT_CONN_CLOSE: a transfer cut off leaves no file (``receiving.drop_partial``)."""
        if drop_partial(event):
            self.metrics.cut_off.inc()

    def _stored(self, uid: str, calling: str, new: bool, settle: Settle | None) -> int:
        """Answer a stored object: a new one is counted and handed on (settled, or submitted)."""
        if settle is not None:
            settle(new)
        if not new:  # two associations sent the same object at once: the first one recorded it
            self.metrics.duplicates.inc()
            return SUCCESS
        self.metrics.received.inc()
        log.info("received", extra={"sop_uid": uid, "calling_ae": calling})
        if settle is None:
            self.on_stored(uid)
        return SUCCESS


def make_ae(ae_title: str) -> AE:
    """A pynetdicom AE accepting the storage classes in every listed transfer syntax, and
    Verification (C-ECHO)."""
    ae = AE(ae_title=ae_title)
    for sop in STORAGE_CLASSES:
        ae.add_supported_context(sop, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)
    # Big objects over slow links; a stalled peer is still dropped after a minute.
    ae.network_timeout = 60
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.maximum_associations = 32
    ae.maximum_pdu_size = MAX_PDU
    return ae


@contextmanager
def uid_checks_once() -> Iterator[None]:
    """Within: pydicom does not check the UIDs it makes against its rules for the UI value
    representation (its reading validation set to IGNORE, for the whole process).

    pynetdicom makes a pydicom UID of every UID of an association request, twice each, and
    checks each itself (its length, and its conformance, which it logs). ``storescu`` proposes
    every storage SOP class in three transfer syntaxes, so pydicom's own check, a regular
    expression per UID that only ever warns, was a large part of the node's time to accept an
    association (``benchmarks/README.md``, the node section). Nothing refused before is
    accepted now. The scoring children are spawned and keep pydicom's default, so the decoder
    and the gate see what they always saw.
    """
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = previous


def start_scp(ae_title: str, host: str, port: int, handler: StoreHandler) -> tuple[AE, Any]:
    """Start the SCP in background threads; returns (AE, server). ``server.server_address``
    gives the bound port (useful with port 0)."""
    ae = make_ae(ae_title)
    receive_into(handler.spool.receiving)
    handlers = [
        (evt.EVT_C_STORE, handler),
        (evt.EVT_C_ECHO, lambda event: SUCCESS),
        (evt.EVT_CONN_CLOSE, handler.connection_closed),
    ]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    # socketserver listens with a backlog of 5: a burst of modalities connecting while the node
    # is busy (e.g. resuming after a restart) would have connections wait for SYN retries
    server.socket.listen(LISTEN_BACKLOG)
    return ae, server
