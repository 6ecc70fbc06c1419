"""The spool folder: received objects, result files, the journal and the optional JSON lines.

Layout::

    spool/
      journal.sqlite      object states and the outbox (``node.journal``)
      receiving/*.dcm     objects while their C-STOREs arrive (written by the network layer)
      incoming/<uid>.dcm  each object as received: preamble, file meta and data set bytes
      outbox/<uid>.dcm    each result (SR, Secondary Capture) until and after delivery
      results.jsonl       one JSON record per processed object (when enabled)

Every file is written atomically and fsynced (``runtime.fileio.atomic_write``) and its folder
is fsynced after the rename, so a file the node has acknowledged survives a crash of the
process and of the machine. A received object is renamed into place first and fsynced after
(:meth:`Spool.stage_incoming`, :meth:`Spool.make_durable`), so that scoring can read it while
it goes to disk; it is acknowledged and journalled only once durable, and a staged file with
no journal row is never used (the sender, never answered Success, sends it again). A file in
``receiving/`` was never answered Success either: one left by a stopped node is removed when
the next one starts (:meth:`Spool.clear_receiving`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from ddad_edge.runtime.fileio import atomic_write_bytes

JOURNAL = "journal.sqlite"
INCOMING = "incoming"
RECEIVING = "receiving"
OUTBOX = "outbox"
JSONL = "results.jsonl"

# A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1). Anything else that arrives
# as a SOP Instance UID is not used as a file name.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def file_stem(uid: str) -> str:
    """A safe file name stem for a UID: the UID itself when it is a valid DICOM UID, else
    ``x-`` + its SHA-256 (so a hostile UID can never name a path outside the spool)."""
    if len(uid) <= 64 and _UID.fullmatch(uid):
        return uid
    return "x-" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder so that a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool folder at ``root`` (created with its subfolders when missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.incoming = self.root / INCOMING
        self.receiving = self.root / RECEIVING
        self.outbox = self.root / OUTBOX
        for d in (self.root, self.incoming, self.receiving, self.outbox):
            d.mkdir(parents=True, exist_ok=True)
        self.journal_path = self.root / JOURNAL
        self._jsonl_lock = threading.Lock()

    def clear_receiving(self) -> int:
        """Remove the files of C-STOREs that never completed (a node killed while they arrived);
        for a node starting on this spool only, never beside a running one. Returns how many.

        Raises:
            OSError: one could not be removed.
        """
        leftovers = [p for p in self.receiving.iterdir() if p.is_file()]
        for p in leftovers:
            p.unlink()
        return len(leftovers)

    def write_incoming(self, uid: str, data: bytes) -> Path:
        """Store a received object's bytes durably; returns its path.

        Raises:
            OSError: it could not be stored (disk full, permissions, ...).
        """
        return self.make_durable(self.stage_incoming(uid, data))

    def stage_incoming(self, uid: str, data: bytes) -> Path:
        """Write a received object's bytes in one piece (renamed into place, not yet fsynced:
        readable at once, durable only after :meth:`make_durable`); returns its path.

        Raises:
            OSError: it could not be written.
        """
        return atomic_write_bytes(self.incoming / f"{file_stem(uid)}.dcm", data, sync=False)

    def adopt_incoming(self, uid: str, received: str | os.PathLike[str]) -> Path:
        """Move a received object's file, written by the network layer as it arrived, into
        place (renamed, not yet fsynced: as :meth:`stage_incoming`); copied when it lies on
        another file system. Returns its path.

        Raises:
            OSError: it could not be moved or written.
        """
        target = self.incoming / f"{file_stem(uid)}.dcm"
        try:
            os.replace(received, target)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            return self.stage_incoming(uid, Path(received).read_bytes())
        return target

    @staticmethod
    def make_durable(path: Path) -> Path:
        """fsync a staged file and its folder; returns ``path``.

        Raises:
            OSError: it could not be synced (the object is then not stored).
        """
        fsync_path(path)
        fsync_path(path.parent)
        return path

    def result_path(self, uid: str) -> Path:
        """Where the result file of SOP Instance UID ``uid`` is (or will be) stored."""
        return self.outbox / f"{file_stem(uid)}.dcm"

    def write_result(self, uid: str, data: bytes) -> Path:
        """Store a result file's bytes durably in the outbox; returns its path."""
        return self._write(self.result_path(uid), data)

    @staticmethod
    def _write(path: Path, data: bytes) -> Path:
        atomic_write_bytes(path, data)
        fsync_path(path.parent)
        return path

    def append_jsonl(self, record: dict[str, Any]) -> None:
        """Append one JSON record (one line) to ``results.jsonl`` and fsync it."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._jsonl_lock, open(self.root / JSONL, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
