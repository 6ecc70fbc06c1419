"""Cold start and peak memory: a fresh Python process from spawn to its first image score.

The parent notes its wall clock, spawns ``python -m ddad_edge.benchmarks.coldstart_child``
(the deployed runtime path, or the PyTorch reference path) and reads back when the child had
finished its imports, had its model ready and had scored one image, all measured from the spawn.
Peak RSS is the child's VmHWM (/proc/self/status, read by the child after its first score; it
includes the interpreter itself). The child's ru_maxrss, as ``os.wait4`` reports it to the parent,
is recorded too but NOT used: on Linux, fork + exec carries the parent's high-water mark into the
child's ru_maxrss (the kernel folds the pre-exec memory map's peak into it), so a child spawned by
a large benchmark process reports at least the parent's size. VmHWM belongs to the new process
image only. Where VmHWM is unavailable (non-Linux), ru_maxrss is used and flagged.
Repeated ``reps`` times (the OS file cache is warm after the first); the median is reported with
every run's figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def run_child(args: list[str], timeout_s: float = 300.0) -> dict[str, Any]:
    """Spawn one child with ``args`` (after the module name) and wait for it.

    Returns the child's JSON (``imports_s``, ``ready_s``, ``first_score_s``, ``self_maxrss_kib``,
    ``vmhwm_kib``, ``torch_imported``) plus ``exit_s`` (spawn to exit, parent clock) and
    ``maxrss_kib`` (ru_maxrss from ``os.wait4``; see the module docstring for why it is not
    used). Raises RuntimeError when the child fails or exceeds ``timeout_s``.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ddad_edge.benchmarks.coldstart_child", *args, "--t0", repr(t0)],
            stdout=out,
            stderr=err,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise RuntimeError(f"cold-start child timed out after {timeout_s:.0f} s")
            time.sleep(0.005)
        exit_s = time.time() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"cold-start child failed (exit {proc.returncode}): {stderr.strip()[-800:]}"
        )
    result = json.loads(stdout.strip().splitlines()[-1])
    result["exit_s"] = exit_s
    result["maxrss_kib"] = int(usage.ru_maxrss)
    return result


def _peak_kib(run: dict[str, Any]) -> int:
    return int(run.get("vmhwm_kib") or run["maxrss_kib"])


def measure_cold_start(
    *,
    image: Path,
    bundle: Path | None,
    run_dir: Path | None,
    backend: str = "ort-cpu",
    precision: str = "fp32",
    reps: int = 3,
) -> dict[str, Any]:
    """Cold start of the runtime (bundle, backend, precision) and of the PyTorch reference (run).

    Returns {"runtime": summary or {"error"}, "torch": summary or {"error"}, "ratio": {...}}
    where a summary is {"first_score_s", "ready_s", "imports_s", "peak_rss_mib" (medians),
    "torch_imported", "runs": [...]}, and "ratio" gives torch / runtime for first score and RSS.
    """
    paths: dict[str, list[str] | None] = {
        "runtime": [
            "runtime",
            "--bundle",
            str(bundle),
            "--image",
            str(image),
            "--backend",
            backend,
            "--precision",
            precision,
        ]
        if bundle
        else None,
        "torch": ["torch", "--run", str(run_dir), "--image", str(image)] if run_dir else None,
    }
    out: dict[str, Any] = {"reps": reps, "backend": backend, "precision": precision}
    for name, args in paths.items():
        if args is None:
            out[name] = {"error": "not available: no " + ("bundle" if name == "runtime" else "run")}
            continue
        try:
            runs = [run_child(args) for _ in range(reps)]
        except RuntimeError as e:
            out[name] = {"error": str(e)}
            continue
        out[name] = {
            "first_score_s": float(np.median([r["first_score_s"] for r in runs])),
            "ready_s": float(np.median([r["ready_s"] for r in runs])),
            "imports_s": float(np.median([r["imports_s"] for r in runs])),
            "peak_rss_mib": float(np.median([_peak_kib(r) for r in runs])) / 1024.0,
            "peak_rss_source": "VmHWM" if runs[0].get("vmhwm_kib") else "ru_maxrss (inflated)",
            "torch_imported": any(r["torch_imported"] for r in runs),
            "runs": runs,
        }
    if "first_score_s" in out.get("runtime", {}) and "first_score_s" in out.get("torch", {}):
        rt, tr = out["runtime"], out["torch"]
        out["ratio"] = {
            "first_score_torch_over_runtime": tr["first_score_s"] / rt["first_score_s"],
            "peak_rss_torch_over_runtime": tr["peak_rss_mib"] / rt["peak_rss_mib"],
        }
    return out
