"""Cold start and peak memory: a fresh Python process, from spawn to its first image score.

The parent spawns ``python -m ddad_edge.benchmarks.coldstart runtime|torch ...`` (this module's
``main``), which imports only what its path needs (the runtime path never imports torch), scores
one image and prints one JSON line: seconds since the parent's ``--t0`` at imports done, model
ready and first score, its VmHWM and whether torch was imported. Peak RSS is the child's VmHWM;
its ``ru_maxrss`` is recorded but not used (benchmarks/README.md, "Cold start"). Heavy imports
stay inside the functions, so the child loads nothing the measurement does not name.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


def run_child(args: list[str], timeout_s: float = 300.0) -> dict[str, Any]:
    """Spawn one child with ``args`` and wait: its JSON plus ``exit_s`` (spawn to exit) and
    ``maxrss_kib`` (``os.wait4``'s ru_maxrss). RuntimeError when it fails or times out."""
    import subprocess
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.time()
        cmd = [sys.executable, "-m", "ddad_edge.benchmarks.coldstart", *args, "--t0", repr(t0)]
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout_s
        while not (waited := os.wait4(proc.pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise RuntimeError(f"cold-start child timed out after {timeout_s:.0f} s")
            time.sleep(0.005)
        exit_s = time.time() - t0
        proc.returncode = os.waitstatus_to_exitcode(waited[1])
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"cold-start child failed (exit {proc.returncode}): {stderr.strip()[-800:]}"
        )
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "exit_s": exit_s, "maxrss_kib": int(waited[2].ru_maxrss)}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the runs' times and peak RSS (VmHWM, else the inflated ru_maxrss)."""
    import numpy as np

    def median(key: str) -> float:
        return float(np.median([r[key] for r in runs]))

    peak = [int(r.get("vmhwm_kib") or r["maxrss_kib"]) for r in runs]
    return {
        "first_score_s": median("first_score_s"),
        "ready_s": median("ready_s"),
        "imports_s": median("imports_s"),
        "peak_rss_mib": float(np.median(peak)) / 1024.0,
        "peak_rss_source": "VmHWM" if runs[0].get("vmhwm_kib") else "ru_maxrss (inflated)",
        "torch_imported": any(r["torch_imported"] for r in runs),
        "runs": runs,
    }


def measure_cold_start(
    *,
    image: Path,
    bundle: Path | None,
    run_dir: Path | None,
    backend: str = "ort-cpu",
    precision: str = "fp32",
    reps: int = 3,
) -> dict[str, Any]:
    """Cold start of the runtime (bundle, backend, precision) and of the PyTorch reference (run),
    median of ``reps`` fresh processes each: {"runtime", "torch": summary or {"error"}, "ratio":
    torch / runtime for first score and peak RSS}."""
    rt = ["--bundle", str(bundle), "--backend", backend, "--precision", precision]
    paths = {
        "runtime": ["runtime", *rt] if bundle else None,
        "torch": ["torch", "--run", str(run_dir)] if run_dir else None,
    }
    out: dict[str, Any] = {"reps": reps, "backend": backend, "precision": precision}
    for name, args in paths.items():
        if args is None:
            out[name] = {"error": "not available: no " + ("bundle" if name == "runtime" else "run")}
            continue
        try:
            out[name] = _summary([run_child([*args, "--image", str(image)]) for _ in range(reps)])
        except RuntimeError as e:
            out[name] = {"error": str(e)}
    if "first_score_s" in out.get("runtime", {}) and "first_score_s" in out.get("torch", {}):
        rt, tr = out["runtime"], out["torch"]
        out["ratio"] = {
            "first_score_torch_over_runtime": tr["first_score_s"] / rt["first_score_s"],
            "peak_rss_torch_over_runtime": tr["peak_rss_mib"] / rt["peak_rss_mib"],
        }
    return out


# --- the child process --------------------------------------------------------------------


def _runtime(args: argparse.Namespace) -> dict[str, float]:
    from ddad_edge.runtime.scorer import Scorer

    t_import = time.time()
    scorer = Scorer.from_bundle(args.bundle, backend=args.backend, precision=args.precision)
    t_ready = time.time()
    scorer.score([args.image])
    return {"imports": t_import, "ready": t_ready, "first_score": time.time()}


def _torch(args: argparse.Namespace) -> dict[str, float]:
    from ddad_edge.checkpoint import load_module
    from ddad_edge.reference import dual_stats
    from ddad_edge.runtime.batch import load_inputs
    from ddad_edge.runtime.scores import scores_from_stats

    t_import = time.time()
    model_a, model_b = load_module(args.run, "A"), load_module(args.run, "B")
    t_ready = time.time()
    x = load_inputs([args.image]).x
    scores_from_stats(x, dual_stats(model_a, model_b, x))
    return {"imports": t_import, "ready": t_ready, "first_score": time.time()}


def _vmhwm_kib() -> int | None:
    """Peak resident set of this process image (VmHWM, Linux), KiB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), None)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    """The child: score one image by one path and print its JSON line (its protocol)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("path", choices=("runtime", "torch"))
    p.add_argument("--t0", type=float, required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--bundle")
    p.add_argument("--run")
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--precision", default="fp32")
    args = p.parse_args(argv)
    marks = _runtime(args) if args.path == "runtime" else _torch(args)
    out: dict[str, Any] = {f"{k}_s": v - args.t0 for k, v in marks.items()}
    out["self_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["vmhwm_kib"] = _vmhwm_kib()
    out["torch_imported"] = "torch" in sys.modules
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
