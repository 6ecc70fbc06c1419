"""A report folder (``ddad-edge report``): each input's DICOM results next to its JSON record.

For every DICOM input, ``<stem>.sr.dcm`` (the Structured Report) and, when it was scored,
``<stem>.sc.dcm`` (the heat-map Secondary Capture), built by ``runtime.dicom_results``; a stem
that two inputs share gets ``-2``, ``-3``, ... Non-DICOM inputs get the JSON record only. Last,
``results.jsonl``: one record per input, in input order, with what was written for it under
``"dicom"``. Every file is written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddad_edge.runtime.dicom_results import AlgorithmInfo, ReportUnavailable, build_results
from ddad_edge.runtime.fileio import atomic_write, atomic_write_text
from ddad_edge.runtime.io import ImageLoadError, is_dicom
from ddad_edge.runtime.loaderrors import one_line

__all__ = ["unique_stem", "write_report_folder"]


def unique_stem(path: str, used: set[str]) -> str:
    """The file name stem of ``path`` (``input`` when it has none), made unique among ``used``
    by a ``-2``, ``-3``, ... suffix; the stem returned is added to ``used``."""
    stem = Path(path).stem or "input"
    cand, n = stem, 1
    while cand in used:
        n += 1
        cand = f"{stem}-{n}"
    used.add(cand)
    return cand


def write_report_folder(
    results: Sequence[Any],
    output: Path,
    info: AlgorithmInfo,
    *,
    heat: str = "inter",
    vmax: float | None = None,
) -> list[dict[str, Any]]:
    """Write the DICOM results of scored inputs and ``results.jsonl`` into ``output``.

    Args:
        results: ``ScoreResult`` per input, scored with maps (``Scorer.score(..., maps=True)``).
        output: the folder (created when missing).
        info: the algorithm and bundle the SR names (``AlgorithmInfo.from_manifest``).
        heat: the map drawn in the Secondary Capture; vmax: its colour-scale top (None: the
            image's own).

    Returns:
        The JSON records written, one per input: ``ScoreResult.to_json()`` plus ``"dicom"``,
        the file names written, or why there are none (not DICOM; the reason it failed).
    """
    output.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    records = []
    for r in results:
        rec = r.to_json()
        if not is_dicom(r.source):
            rec["dicom"] = "not DICOM: JSON record only"
        else:
            stem = unique_stem(r.source, used)
            try:
                objs = build_results(r.source, r, info, heat=heat, vmax=vmax)
            except (ImageLoadError, ReportUnavailable) as e:
                rec["dicom"] = f"no DICOM result: {one_line(e)}"
            else:
                names = [f"{stem}.sr.dcm", f"{stem}.sc.dcm"][: len(objs)]
                for obj, name in zip(objs, names, strict=True):
                    atomic_write(
                        output / name, lambda f, o=obj: o.save_as(f, enforce_file_format=True)
                    )
                rec["dicom"] = names
        records.append(rec)
    atomic_write_text(output / "results.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    return records
