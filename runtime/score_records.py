"""Read image scores back from what the toolkit wrote: result records and calibration files.

- Result records: JSON Lines, one object per image with a ``scores`` mapping ({name: float} or
  null for a failed input), as ``ddad-edge score --json`` prints them. A folder (e.g. a node's
  spool) is read as every ``*.jsonl`` file in it and below, in name order.
- Calibration files: a JSON object whose ``normal_scores`` maps score names to the image scores
  of the known-normal images it was calibrated on ({"inter": [...], ...}).

Records without scores (errors, abstentions) are skipped; they are not scores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class ScoreRecordError(ValueError):
    """A results or calibration file cannot be read; the message names the file and why."""


def _records_in(path: Path) -> list[dict[str, float]]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ScoreRecordError(f"{path}: cannot read: {e}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScoreRecordError(f"{path}:{n}: not a JSON record: {e.msg}") from e
        scores = rec.get("scores") if isinstance(rec, dict) else None
        if isinstance(scores, dict):
            out.append(scores)
    return out


def read_score_records(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Image scores from a JSON Lines file or a folder of them.

    Returns:
        {score name: float64 [n]} over the records that carry scores, in file order.

    Raises:
        ScoreRecordError: missing path, unreadable file, a line that is not JSON, or no record
            with scores at all.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.jsonl") if f.is_file())
    elif p.is_file():
        files = [p]
    else:
        raise ScoreRecordError(f"{p}: no such file or folder")
    values: dict[str, list[float]] = {}
    for f in files:
        for scores in _records_in(f):
            for name, v in scores.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    values.setdefault(name, []).append(float(v))
    if not values:
        raise ScoreRecordError(f"{p}: no scored records (JSON Lines with a 'scores' object)")
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}


def read_reference_scores(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Known-normal reference scores: a calibration JSON's ``normal_scores``, or result records.

    A ``.jsonl`` file or a folder is read with :func:`read_score_records` (e.g. the scores of a
    site's own normal images); any other file must be a calibration JSON with ``normal_scores``.
    """
    p = Path(path)
    if p.is_dir() or p.suffix == ".jsonl":
        return read_score_records(p)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ScoreRecordError(f"{p}: no such file") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScoreRecordError(f"{p}: not a readable JSON file: {e}") from e
    normals = doc.get("normal_scores") if isinstance(doc, dict) else None
    if not isinstance(normals, dict) or not normals:
        raise ScoreRecordError(
            f"{p}: no 'normal_scores' sample in this calibration file; recalibrate with this "
            "version, or pass the normals' result records (.jsonl) instead"
        )
    try:
        return {str(k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in normals.items()}
    except (TypeError, ValueError) as e:
        raise ScoreRecordError(f"{p}: 'normal_scores' must map names to lists of numbers") from e
