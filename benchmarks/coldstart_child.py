"""Child process of the cold-start measurement (run by :mod:`ddad_edge.benchmarks.coldstart`).

    python -m ddad_edge.benchmarks.coldstart_child runtime --bundle B --image F --t0 T \
        [--backend ort-cpu --precision fp32]
    python -m ddad_edge.benchmarks.coldstart_child torch --run R --image F --t0 T

Imports only what its path needs (the runtime path never imports torch), scores one image, and
writes one JSON line to stdout: seconds since ``--t0`` (the parent's wall clock just before it
spawned this process) at three points (imports done, model ready, first score), its peak RSS
(VmHWM and ru_maxrss, KiB) and whether torch was imported. This is a program entry point, not
library code: printing the JSON line is its protocol.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


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
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
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
    out = {f"{k}_s": v - args.t0 for k, v in marks.items()}
    out["self_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["vmhwm_kib"] = _vmhwm_kib()
    out["torch_imported"] = "torch" in sys.modules
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
