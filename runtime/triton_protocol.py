"""The wire contract between ``ddad-edge score --triton`` (or any Triton client) and the
``ddad_score`` Python-backend model: model and tensor names, and how a file travels.

One request carries one file:

* ``FILE``: UINT8 [1, n], the file's bytes as stored (DICOM, PNG, JPEG, ...).
* ``NAME``: UINT8 [1, m], its base name in UTF-8 (m may be 0). Decoding uses it as local scoring
  uses the path: a ``.dcm``/``.dicom`` suffix selects the DICOM decoder.

Every input gets a successful response (one bad file never fails the batch) with:

* ``SCORES`` FP32 [1, S], the bundle's image scores (``Bundle.score_names``: rec, intra,
  inter, and asr when the bundle has ASR; the repository's ``score_order`` parameter), NaN
  unless the input was scored;
* ``ERROR`` UINT8 [1, e], UTF-8: why the input could not be read (e = 0 when it was);
* ``RECORD`` UINT8 [1, r], the UTF-8 JSON of the record local scoring gives
  (``ScoreResult.to_json()``: status, scores, flag, threshold, operating point, reason, notes,
  error, warnings) without ``source``; the server's copy of the file is written as
  :data:`SOURCE_TOKEN`;
* ``FLAG`` BOOL [1, 1] (true: abnormal), only when the repository was written with a
  calibration.

A Triton-level error therefore always means the server failed, never the input.

The tensors are UINT8 rather than BYTES because the Python backend's stub in the
``nvidia-pytriton`` wheel cannot exchange BYTES tensors under numpy 2 (see
``runtime/triton_model.py``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ddad_edge.runtime.scores import SCORE_NAMES

SCORE_MODEL = "ddad_score"
FILE_INPUT, NAME_INPUT = "FILE", "NAME"
SCORES_OUTPUT, ERROR_OUTPUT, RECORD_OUTPUT, FLAG_OUTPUT = "SCORES", "ERROR", "RECORD", "FLAG"
SOURCE_TOKEN = "\x00source\x00"
"""Stands for the file's path in a record's texts (the server saw only a private copy)."""
SCORE_ORDER: tuple[str, ...] = SCORE_NAMES
"""Order of the image scores in ``SCORES`` for a bundle without ASR (with ASR, ``asr``
follows)."""


def scores_tensor(scores: dict[str, float] | None, names: tuple[str, ...]) -> np.ndarray:
    """``SCORES`` of one input: FP32 [1, len(names)] in ``names`` order, NaN where absent."""
    s = scores or {}
    return np.array([[s.get(n, np.nan) for n in names]], np.float32)


def encode_name(path: str | os.PathLike[str]) -> np.ndarray:
    """``NAME`` for a path: its base name, UTF-8, as UINT8 [1, m]."""
    raw = os.path.basename(os.fspath(path)).encode("utf-8", "surrogateescape")
    return np.frombuffer(raw, np.uint8).reshape(1, -1)


def encode_file(data: bytes) -> np.ndarray:
    """``FILE`` for a file's bytes: UINT8 [1, n]."""
    return np.frombuffer(data, np.uint8).reshape(1, -1)


def encode_text(text: str) -> np.ndarray:
    """UTF-8 text as UINT8 [1, n] (writable: DLPack cannot export a read-only buffer)."""
    arr = np.frombuffer(text.encode("utf-8"), np.uint8).reshape(1, -1).copy()
    # numpy gives an empty [1, 0] array the strides (1, 1); the Python backend's DLPack import
    # accepts only the C-order ones, (0, 1).
    return arr if arr.size else np.lib.stride_tricks.as_strided(arr, strides=(0, 1))


def decode_text(arr: np.ndarray) -> str:
    """The UTF-8 text of a UINT8 tensor (undecodable bytes replaced)."""
    return np.ascontiguousarray(arr, np.uint8).tobytes().decode("utf-8", "replace")


def _escaped(text: str) -> str:
    """``text`` as it appears inside a JSON string."""
    return json.dumps(text)[1:-1]


def encode_record(record: dict[str, Any], server_path: str) -> np.ndarray:
    """``RECORD``: a result's JSON without ``source``, the server's path replaced by
    :data:`SOURCE_TOKEN`; UINT8 [1, r]."""
    body = {k: v for k, v in record.items() if k != "source"}
    return encode_text(json.dumps(body).replace(_escaped(server_path), _escaped(SOURCE_TOKEN)))


def decode_record(arr: np.ndarray, source: str) -> dict[str, Any]:
    """The record carried by ``RECORD``, with ``source`` and the file's path put back."""
    text = decode_text(arr).replace(_escaped(SOURCE_TOKEN), _escaped(source))
    return {"source": source, **json.loads(text)}


def decode_name(arr: np.ndarray) -> str:
    """The base name carried by ``NAME`` (undecodable bytes replaced, path parts dropped)."""
    return os.path.basename(decode_text(arr).replace("\\", "/"))


__all__ = [
    "ERROR_OUTPUT",
    "FILE_INPUT",
    "FLAG_OUTPUT",
    "NAME_INPUT",
    "RECORD_OUTPUT",
    "SCORES_OUTPUT",
    "SOURCE_TOKEN",
    "SCORE_MODEL",
    "SCORE_ORDER",
    "decode_name",
    "decode_record",
    "decode_text",
    "encode_file",
    "encode_name",
    "encode_record",
    "encode_text",
    "scores_tensor",
]
