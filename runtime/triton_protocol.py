"""The wire contract between ``ddad-edge score --triton`` (or any Triton client) and the
``ddad_score`` Python-backend model: model and tensor names, and how files travel.

One request carries B >= 1 files (B <= the model's ``max_batch_size``; Triton's dynamic batcher
merges requests into executions of up to ``max_batch_size`` files). Row i of every tensor is
file i:

* ``FILE``: UINT8 [B, n], row i the bytes of file i as stored (DICOM, PNG, JPEG, ...), zero-padded
  to the longest file of the request (n = its length);
* ``SIZE``: INT64 [B, 1], the length of file i in bytes (its padding is not part of it);
* ``NAME``: UINT8 [B, m], the base name of file i in UTF-8, NUL-padded (m may be 0). Decoding uses
  it as local scoring uses the path: a ``.dcm``/``.dicom`` suffix selects the DICOM decoder.

Every file gets a row in the request's one response (a bad file never fails the other files of
its request, nor the batch):

* ``SCORES`` FP32 [B, S], the bundle's image scores (``Bundle.score_names``: rec, intra,
  inter, and asr when the bundle has ASR; the repository's ``score_order`` parameter), NaN
  unless the file was scored;
* ``ERROR`` UINT8 [B, e], UTF-8, NUL-padded: why the file could not be read (empty when it was);
* ``RECORD`` UINT8 [B, r], UTF-8, NUL-padded: the JSON of the record local scoring gives
  (``ScoreResult.to_json()``: status, scores, flag, threshold, operating point, reason, notes,
  error, warnings) without ``source``; the server's copy of the file is written as
  :data:`SOURCE_TOKEN`;
* ``FLAG`` BOOL [B, 1] (true: abnormal), only when the repository was written with a
  calibration.

A Triton-level error therefore means that the server failed or that the request itself was
malformed (its tensors' rows disagree), never that a file was bad.

The tensors are UINT8 rather than BYTES because the Python backend's stub in the
``nvidia-pytriton`` wheel cannot exchange BYTES tensors under numpy 2 (see
``runtime/triton_model.py``); texts are NUL-padded because no name, JSON record or error text
of ours contains a NUL character (JSON escapes it, file names cannot hold it, and
:func:`pad_texts` replaces it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ddad_edge.runtime.scores import SCORE_NAMES

SCORE_MODEL = "ddad_score"
FILE_INPUT, SIZE_INPUT, NAME_INPUT = "FILE", "SIZE", "NAME"
SCORES_OUTPUT, ERROR_OUTPUT, RECORD_OUTPUT, FLAG_OUTPUT = "SCORES", "ERROR", "RECORD", "FLAG"
SOURCE_TOKEN = "\x00source\x00"
"""Stands for the file's path in a record's texts (the server saw only a private copy)."""
SCORE_ORDER: tuple[str, ...] = SCORE_NAMES
"""Order of the image scores in ``SCORES`` for a bundle without ASR (with ASR, ``asr``
follows)."""


def pad_rows(rows: Sequence[bytes]) -> np.ndarray:
    """Byte strings as UINT8 [len(rows), longest], zero-padded, C-contiguous and writable
    (DLPack cannot export a read-only buffer)."""
    width = max((len(r) for r in rows), default=0)
    arr = np.zeros((len(rows), width), np.uint8)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = np.frombuffer(r, np.uint8)
    # numpy may give an empty [B, 0] array other strides than C order's (0, 1), the only ones
    # the Python backend's DLPack import accepts.
    return arr if arr.size else np.lib.stride_tricks.as_strided(arr, strides=(0, 1))


def pad_texts(texts: Sequence[str]) -> np.ndarray:
    """UTF-8 texts as UINT8 [len(texts), longest], NUL-padded (a NUL inside a text would read as
    its end, so it is replaced by U+FFFD)."""
    return pad_rows([t.replace("\x00", "\ufffd").encode("utf-8") for t in texts])


def decode_texts(arr: np.ndarray) -> list[str]:
    """The texts of a NUL-padded UINT8 [B, n] tensor (undecodable bytes replaced)."""
    a = np.ascontiguousarray(arr, np.uint8)
    if a.ndim != 2:
        raise ValueError(f"expected a UINT8 [B, n] text tensor, got shape {a.shape}")
    return [row.tobytes().rstrip(b"\x00").decode("utf-8", "replace") for row in a]


def encode_files(data: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """``FILE`` UINT8 [B, n] (zero-padded) and ``SIZE`` INT64 [B, 1] for files' bytes."""
    return pad_rows(data), np.array([[len(d)] for d in data], np.int64).reshape(len(data), 1)


def decode_files(file: np.ndarray, size: np.ndarray) -> list[bytes | str]:
    """Each file's bytes from ``FILE`` and ``SIZE`` (rows already checked to agree), or the
    reason its row is unusable (a SIZE outside 0..n)."""
    width = file.shape[1]
    out: list[bytes | str] = []
    for row, n in zip(file, size.reshape(-1).tolist(), strict=True):
        ok = 0 <= n <= width
        out.append(row[:n].tobytes() if ok else f"request: SIZE {n} outside 0..{width} (FILE)")
    return out


def encode_names(paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """``NAME`` for paths: their base names, UTF-8, as UINT8 [B, m] (NUL-padded)."""
    raw = [os.path.basename(os.fspath(p)).encode("utf-8", "surrogateescape") for p in paths]
    return pad_rows(raw)


def decode_names(arr: np.ndarray) -> list[str]:
    """The base names carried by ``NAME`` (undecodable bytes replaced, path parts dropped)."""
    return [os.path.basename(t.replace("\\", "/")) for t in decode_texts(arr)]


def scores_tensor(scores: dict[str, float] | None, names: tuple[str, ...]) -> np.ndarray:
    """One file's ``SCORES`` row: FP32 [1, len(names)] in ``names`` order, NaN where absent."""
    s = scores or {}
    return np.array([[s.get(n, np.nan) for n in names]], np.float32)


def _escaped(text: str) -> str:
    """``text`` as it appears inside a JSON string."""
    return json.dumps(text)[1:-1]


def record_text(record: dict[str, Any], server_path: str) -> str:
    """A result's JSON without ``source``, the server's path replaced by :data:`SOURCE_TOKEN`
    (one ``RECORD`` row)."""
    body = {k: v for k, v in record.items() if k != "source"}
    return json.dumps(body).replace(_escaped(server_path), _escaped(SOURCE_TOKEN))


def encode_record(record: dict[str, Any], server_path: str) -> np.ndarray:
    """``RECORD`` of one file: UINT8 [1, r] (see :func:`record_text`)."""
    return pad_texts([record_text(record, server_path)])


def decode_record(text: str, source: str) -> dict[str, Any]:
    """The record carried by one ``RECORD`` row's text, with ``source`` and the file's path put
    back."""
    return {"source": source, **json.loads(text.replace(_escaped(SOURCE_TOKEN), _escaped(source)))}


__all__ = [
    "ERROR_OUTPUT",
    "FILE_INPUT",
    "FLAG_OUTPUT",
    "NAME_INPUT",
    "RECORD_OUTPUT",
    "SCORES_OUTPUT",
    "SCORE_MODEL",
    "SCORE_ORDER",
    "SIZE_INPUT",
    "SOURCE_TOKEN",
    "decode_files",
    "decode_names",
    "decode_record",
    "decode_texts",
    "encode_files",
    "encode_names",
    "encode_record",
    "pad_rows",
    "pad_texts",
    "record_text",
    "scores_tensor",
]
