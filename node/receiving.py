"""Where and how the SCP writes a C-STORE's data set while it arrives (pynetdicom's chunked
receive, ``_config.STORE_RECV_CHUNKED_DATASET``).

pynetdicom writes each arriving data set (preamble and file meta first) to a temporary file in
the system's temporary folder, hands its path to the C-STORE handler and removes it after.
Three things about that would hurt a node that runs for months; this module changes them:

- the folder: :func:`receive_into` puts the files in the spool's ``receiving/``, on the same
  file system as ``incoming/`` (the handler's rename never becomes a copy where /tmp is a
  tmpfs), where the node can find what a killed process left (``Spool.clear_receiving``);
- a transfer cut off mid data set (the sender aborted or vanished) leaves its part open and on
  disk: :func:`drop_partial` removes it when the connection ends;
- a write that fails (disk full) is raised in pynetdicom's network thread, which dies: the
  association drops without a response and the part stays, keeping the disk full for every
  later object. :class:`ReceivingFile` instead drops the part, discards the rest of the data
  set and lets the transfer complete, so that the handler answers Out of Resources
  (:func:`write_error`) and the next object finds the space free again. A file that cannot
  even be created (the folder gone, no inode or directory block left) is handled the same way.

pynetdicom has no setting for any of this; :func:`receive_into` replaces the file factory its
``dimse_messages`` module calls, for the whole process.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from pynetdicom import dimse_messages

log = logging.getLogger("ddad_edge.node.scp")


class ReceivingFile:
    """A file in ``folder`` taking an arriving data set; the file object pynetdicom writes to
    (it calls ``write``, ``file.flush``, ``close`` and reads ``name``).

    The creation, or the first write or flush, that fails (OSError: folder gone, disk full,
    quota, I/O error) is kept in :attr:`error`; the file is then closed and removed (``name``
    is empty when it was never created), and every later write is discarded (reported as
    written, so that pynetdicom completes the message).
    """

    def __init__(self, folder: Path) -> None:
        self._file: Any = None
        self.name: str = ""
        self.error: OSError | None = None
        try:
            self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (pynetdicom closes it)
                mode="wb", suffix=".dcm", dir=folder, delete=False
            )
        except OSError as e:
            self.error = e
            return
        self.name = self._file.name

    @property
    def file(self) -> ReceivingFile:
        return self

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                return self._file.write(data)
            except OSError as e:
                self._fail(e)
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._file.flush()
            except OSError as e:
                self._fail(e)

    def close(self) -> None:
        if self.error is not None:
            return  # already closed and removed, or never created
        try:
            self._file.close()
        except OSError as e:  # the buffered tail could not be written
            self._fail(e)

    def discard(self) -> None:
        """Close and remove the file (what it held is dropped)."""
        if self._file is None:
            return  # never created
        try:
            self._file.close()
        except OSError:
            pass  # its buffer is lost with the file
        Path(self.name).unlink(missing_ok=True)

    def _fail(self, error: OSError) -> None:
        self.error = error
        self.discard()


def receive_into(folder: Path) -> None:
    """Have pynetdicom write arriving data sets as :class:`ReceivingFile` in ``folder``."""
    dimse_messages.NamedTemporaryFile = lambda **_: ReceivingFile(folder)  # type: ignore[attr-defined]


def write_error(request: Any) -> OSError | None:
    """Why a C-STORE request's data set could not be written, or None (written, or received
    some other way)."""
    received = getattr(request, "_dataset_file", None)
    return received.error if isinstance(received, ReceivingFile) else None


def drop_partial(event: Any) -> bool:
    """On EVT_CONN_CLOSE: remove the file of a C-STORE whose data set was still arriving when
    the connection ended; True when there was one. Runs on the association's network thread,
    the one that writes the file, so it cannot race a write."""
    message = getattr(event.assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if not isinstance(partial, ReceivingFile):  # none arriving (or not written by this module)
        return False
    partial.discard()
    log.warning(
        "transfer cut off",
        extra={"calling_ae": str(event.assoc.requestor.ae_title or "").strip()},
    )
    return True
