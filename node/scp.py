"""The Storage SCP: accept CR, DX and Secondary Capture objects and answer C-ECHO (pynetdicom).

Persist before success: each C-STORE's data set is written as received (preamble, file meta and
the data set bytes exactly as they came off the wire; ``Event.encoded_dataset``) with an atomic,
fsynced write, then recorded in the journal, and only then is the response Success (0x0000).
When either step fails the response is 0xA700 (Refused: Out of Resources, PS3.4 GG.4), never a
false Success. The data set is not decoded here: a malformed object is stored like any other
and abstained by the worker with its reason.

An object whose SOP Instance UID the journal already knows is answered Success without being
stored or processed again (the sender re-sent it, e.g. after a lost response).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pydicom import uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)

from ddad_edge.node.journal import Journal
from ddad_edge.node.metrics import NodeMetrics
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
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
MAX_PDU = 1 << 20
"""Largest PDU we receive (bytes): a full-resolution film arrives in a few PDUs instead of
hundreds of pynetdicom's default 16 KiB ones (benchmarks/README.md, the node section)."""


class StoreHandler:
    """The C-STORE handler: persist, journal, then answer. ``on_stored(uid)`` is called for each
    newly stored object (the worker's wake-up)."""

    def __init__(
        self,
        spool: Spool,
        journal: Journal,
        metrics: NodeMetrics,
        on_stored: Callable[[str], None],
    ) -> None:
        self.spool = spool
        self.journal = journal
        self.metrics = metrics
        self.on_stored = on_stored

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
        try:
            if self.journal.known(uid):
                self.metrics.duplicates.inc()
                log.info("duplicate", extra={"sop_uid": uid, "calling_ae": calling})
                return SUCCESS
            path = self.spool.write_incoming(uid, event.encoded_dataset(include_meta=True))
            new = self.journal.add_received(uid, sop_class, calling, str(path), arrived)
        except Exception as e:  # disk full, permissions, journal errors: never a false Success
            self.metrics.store_failures.inc()
            log.error(
                "store failed", extra={"sop_uid": uid, "calling_ae": calling, "reason": str(e)}
            )
            return OUT_OF_RESOURCES
        if new:
            self.metrics.received.inc()
            log.info("received", extra={"sop_uid": uid, "calling_ae": calling})
            self.on_stored(uid)
        else:  # two associations sent the same object at once: the first one recorded it
            self.metrics.duplicates.inc()
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


def start_scp(ae_title: str, host: str, port: int, handler: StoreHandler) -> tuple[AE, Any]:
    """Start the SCP in background threads; returns (AE, server). ``server.server_address``
    gives the bound port (useful with port 0)."""
    ae = make_ae(ae_title)
    handlers = [
        (evt.EVT_C_STORE, handler),
        (evt.EVT_C_ECHO, lambda event: SUCCESS),
    ]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    return ae, server
