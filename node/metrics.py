"""Prometheus metrics of the node (prometheus-client), served on loopback only.

Each node has its own registry, so several nodes (tests) can live in one process.

- ``ddad_node_received_total``: objects stored and acknowledged (re-sent ones not counted again)
- ``ddad_node_duplicates_total``: re-sent objects acknowledged without being processed again
- ``ddad_node_store_failures_total``: C-STORE requests answered with a failure status
- ``ddad_node_transfers_cut_off_total``: C-STOREs whose data set never completed (the sender
  aborted or vanished); their parts removed
- ``ddad_node_scored_total``, ``ddad_node_abstained_total``, ``ddad_node_failed_total``
- ``ddad_node_record_retries_total``: outcomes that could not be stored or recorded (a full
  disk), their objects processed again later
- ``ddad_node_sent_total``: result files delivered; ``ddad_node_dead_lettered_total``;
  ``ddad_node_delivery_pauses_total``: delivery paused after a journal failure
- ``ddad_node_queue_depth``: objects waiting to be processed, ``ddad_node_outbox_depth``:
  result files waiting for delivery
- ``ddad_node_processing_seconds``: histogram, object stored -> results queued
- ``ddad_node_latency_seconds``: histogram, object stored -> its last result delivered
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class NodeMetrics:
    """The node's counters, gauges and histograms in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"ddad_node_{name}", doc, registry=self.registry)

        self.received = counter("received", "Objects stored and acknowledged")
        self.duplicates = counter("duplicates", "Re-sent objects acknowledged, not processed again")
        self.store_failures = counter("store_failures", "C-STORE requests answered with a failure")
        self.cut_off = counter("transfers_cut_off", "C-STOREs whose data set never completed")
        self.scored = counter("scored", "Objects scored")
        self.abstained = counter("abstained", "Objects abstained (input gate or undecodable)")
        self.failed = counter("failed", "Objects whose processing failed")
        self.record_retries = counter(
            "record_retries", "Outcomes not stored or recorded (full disk), processed again later"
        )
        self.sent = counter("sent", "Result files delivered")
        self.dead_lettered = counter("dead_lettered", "Result files given up after N tries")
        self.delivery_pauses = counter("delivery_pauses", "Delivery paused: the journal failed")
        self.queue_depth = Gauge(
            "ddad_node_queue_depth", "Objects waiting to be processed", registry=self.registry
        )
        self.outbox_depth = Gauge(
            "ddad_node_outbox_depth", "Result files waiting for delivery", registry=self.registry
        )
        self.processing = Histogram(
            "ddad_node_processing_seconds",
            "Object stored -> results queued",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "ddad_node_latency_seconds",
            "Object stored -> last result delivered",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._server: Any = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP endpoint (``/metrics``) on ``host:port``; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP endpoint, if started."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
