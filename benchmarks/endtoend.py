"""End-to-end throughput on a folder of real files: decode + preprocess + infer + score.

Every file of the folder goes through a lane in batches of ``batch`` files, once untimed and
once timed; the three stages are timed per batch (as in :mod:`ddad_edge.benchmarks.latency`)
and summed. Files the runtime cannot read are skipped by its loader and listed with its reason.
Before the timed pass the files are read once (bytes only), so the figures measure decoding,
not the disk, and the untimed pass loads every codec the folder needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddad_edge.benchmarks.latency import STAGES, timed_stages
from ddad_edge.benchmarks.schema import EndToEnd
from ddad_edge.runtime.io import IMAGE_EXTS


def list_files(folder: Path, exts: frozenset[str] = IMAGE_EXTS) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in exts)


def warm_page_cache(paths: Sequence[Path]) -> int:
    """Read every file once (bytes discarded); returns the total bytes read."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                total += len(block)
    return total


def run_folder(
    lane: Any, paths: Sequence[Path], batch: int = 16, *, warmup_pass: bool = True
) -> EndToEnd:
    """One timed pass of ``paths`` through ``lane`` (after one untimed pass when
    ``warmup_pass``: the first file of each DICOM transfer syntax otherwise pays for importing
    its codec, hundreds of ms, which a long-running scorer pays once).

    Returns {"n_files", "n_ok", "errors": [{"path", "reason"}], "warmup_pass",
    "seconds": {stage: total s},
    "ms_per_image": {stage: ms, "scoring_total", "end_to_end"}, "images_per_s" (end to end),
    "preprocess_over_scoring": preprocessing time / (inference + scoring) time}.
    """
    chunks = [list(paths[i : i + batch]) for i in range(0, len(paths), batch)]
    if warmup_pass:
        for chunk in chunks:
            timed_stages(lane, chunk)
    totals = dict.fromkeys(STAGES, 0.0)
    errors: list[dict[str, str]] = []
    n_ok = 0
    for chunk in chunks:
        stages, loaded = timed_stages(lane, chunk)
        for k, v in stages.items():
            totals[k] += v
        n_ok += len(loaded.ok)
        errors += [{"path": str(p), "reason": r} for _, p, r in loaded.errors]
    per = {k: (v / n_ok * 1e3 if n_ok else float("nan")) for k, v in totals.items()}
    scoring = totals["inference"] + totals["scoring"]
    e2e = scoring + totals["preprocess"]
    per["scoring_total"] = scoring / n_ok * 1e3 if n_ok else float("nan")
    per["end_to_end"] = e2e / n_ok * 1e3 if n_ok else float("nan")
    return {
        "n_files": len(paths),
        "n_ok": n_ok,
        "errors": errors,
        "batch": batch,
        "warmup_pass": warmup_pass,
        "seconds": totals,
        "ms_per_image": per,
        "images_per_s": n_ok / e2e if e2e > 0 else float("nan"),
        "preprocess_over_scoring": totals["preprocess"] / scoring if scoring > 0 else float("nan"),
    }
