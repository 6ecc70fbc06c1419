"""The wire contract between ``ddad-edge score --triton`` (or any Triton client) and the
``ddad_score`` Python-backend model: model and tensor names, and how a file travels.

One request carries one file:

* ``FILE``: UINT8 [1, n], the file's bytes as stored (DICOM, PNG, JPEG, ...).
* ``NAME``: UINT8 [1, m], its base name in UTF-8 (m may be 0). Decoding uses it as local scoring
  uses the path: a ``.dcm``/``.dicom`` suffix selects the DICOM decoder.

The response carries ``SCORES`` FP32 [1, 3] in :data:`SCORE_ORDER` and, when the repository was
written with a calibration, ``FLAG`` BOOL [1, 1]; or, for an input that cannot be scored, a
per-request Triton error whose message is the reason (the same text local scoring records).

The tensors are UINT8 rather than BYTES because the Python backend's stub in the
``nvidia-pytriton`` wheel cannot exchange BYTES tensors under numpy 2 (see
``runtime/triton_model.py``).
"""

from __future__ import annotations

import os

import numpy as np

from ddad_edge.runtime.scores import SCORE_NAMES

SCORE_MODEL = "ddad_score"
FILE_INPUT, NAME_INPUT = "FILE", "NAME"
SCORES_OUTPUT, FLAG_OUTPUT = "SCORES", "FLAG"
SCORE_ORDER: tuple[str, ...] = SCORE_NAMES
"""Order of the image scores in ``SCORES``."""


def encode_name(path: str | os.PathLike[str]) -> np.ndarray:
    """``NAME`` for a path: its base name, UTF-8, as UINT8 [1, m]."""
    raw = os.path.basename(os.fspath(path)).encode("utf-8", "surrogateescape")
    return np.frombuffer(raw, np.uint8).reshape(1, -1)


def encode_file(data: bytes) -> np.ndarray:
    """``FILE`` for a file's bytes: UINT8 [1, n]."""
    return np.frombuffer(data, np.uint8).reshape(1, -1)


def decode_name(arr: np.ndarray) -> str:
    """The base name carried by ``NAME`` (undecodable bytes replaced, path parts dropped)."""
    text = np.ascontiguousarray(arr, np.uint8).tobytes().decode("utf-8", "replace")
    return os.path.basename(text.replace("\\", "/"))


__all__ = [
    "FILE_INPUT",
    "FLAG_OUTPUT",
    "NAME_INPUT",
    "SCORES_OUTPUT",
    "SCORE_MODEL",
    "SCORE_ORDER",
    "decode_name",
    "encode_file",
    "encode_name",
]
