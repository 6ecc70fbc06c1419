"""The scanner-side DICOM node (``ddad-edge serve``): receive over DICOM, score, decide, report.

Torch-free (pynetdicom, pydicom, highdicom, prometheus-client and the runtime). One job per
module:

- ``scp``: the Storage SCP (C-STORE, C-ECHO); persist before success.
- ``spool``: the spool folder (received objects, result files, JSON lines), durable writes.
- ``journal``: the SQLite journal of object states and the outbox.
- ``heap``: keeps freed memory in the scoring processes (no page faults per film).
- ``pipeline``: one object -> gate, score, decision, SR + Secondary Capture.
- ``worker``: runs the pipeline on stored objects and queues their results.
- ``sockets``: how both read and write their TCP sockets (one-buffer reads, quick ACKs).
- ``forwarder``: delivers results by C-STORE SCU with retries, backoff and dead letters.
- ``metrics``: Prometheus metrics on loopback.
- ``logs``: structured (JSON line) logs.
- ``service``: the node: all of the above over one spool, started and stopped together.
"""
