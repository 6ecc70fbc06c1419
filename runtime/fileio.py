"""Atomic file writes, the one implementation every writer in the toolkit uses; and the one
reader of the JSON files the toolkit writes (manifests, run configs) with a one-line error.

A file is written to a unique sibling temp name (opened exclusively, so it gets the usual
umask permissions), flushed and fsynced, then renamed over the target. A reader never sees a
half-written file, and an interrupted write leaves the old file untouched.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def orphan_temps(path: str | os.PathLike) -> list[Path]:
    """Temp files that interrupted atomic writes of ``path`` left beside it (a process killed
    between open and rename; ``.<name>.<pid>.<hex>.tmp``)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], *, sync: bool = True
) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it onto ``path``.

    ``sync=False`` renames before the data is on disk: readers see the whole file at once, but
    it is durable only after the caller fsyncs it (the node's spool does, before it answers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, sync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (``sync``: as :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), sync=sync)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (newlines as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike, error: type[Exception], what: str) -> Any:
    """The parsed JSON of file ``path``; raises ``error("<path>: unreadable <what>: <reason>")``
    (one line) when it cannot be read or is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        lines = str(e).strip().splitlines()
        raise error(f"{path}: unreadable {what}: {lines[0] if lines else type(e).__name__}") from e
