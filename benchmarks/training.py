"""Training cost: K members fused in one module vs K separately trained members, same data.

Both sides run ``ddad_edge.train.train_epoch`` on the same tensor with the same per-member
permutations: fused = one ``FusedEnsemble(kind, K)`` stepping all members at once; separate = K
``FusedEnsemble(kind, 1)`` each stepped on its own permutation (the reference's K processes, run
one after the other here). After ``warmup_steps`` untimed steps, ``steps`` steps are timed; the
epoch time of each module is projected as per-step time x (n // batch_size).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.train import TrainConfig, make_optimizer, member_permutation, train_epoch


def _timed_steps(
    model: Any, opt: Any, data: Any, perms: list[np.ndarray], batch: int, steps: int, sync: Any
) -> float:
    t0 = time.perf_counter()
    train_epoch(model, opt, data, perms, batch, max_steps=steps)
    sync()
    return time.perf_counter() - t0


def compare_fused_separate(
    data: np.ndarray,
    *,
    kind: str,
    k: int,
    batch_size: int = 64,
    steps: int = 5,
    warmup_steps: int = 1,
    epoch_sizes: dict[str, int] | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Per-step and projected epoch times of fused vs separate training.

    Args:
        data: float32 [M, 1, 64, 64] training images, M >= batch_size * steps.
        kind, k: network kind and members per module.
        batch_size: images per member per step.
        steps: timed optimisation steps per side (after ``warmup_steps`` untimed ones).
        epoch_sizes: images per epoch of each module for the projection, e.g.
            {"A": |D| + |Du|, "B": |D|} (default {"data": M}).
        device: torch device ("cpu" or "cuda").
        seed: seed of initialisation and permutations.

    Returns:
        {"kind", "k", "batch_size", "steps", "device", "torch_threads", "epoch_sizes",
         "fused": {"step_s", "epoch_s_per_module"}, "separate": {"step_s" (all K members),
         "epoch_s_per_module", "member_step_s": [K]}, "speedup": separate / fused}.
    """
    import torch

    from ddad_edge.models import FusedEnsemble

    m = len(data)
    if m < batch_size * max(steps, warmup_steps):
        raise ValueError(f"{m} images are fewer than {steps} steps of {batch_size}")
    dev = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(data, np.float32)).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cfg = TrainConfig(kind=kind, k=k, batch_size=batch_size, seed=seed)
    perms = [member_permutation(seed, "A", i, 0, m) for i in range(k)]

    fused = FusedEnsemble.seeded(kind, k, seed).to(dev)
    opt = make_optimizer(fused, cfg)
    if warmup_steps:
        _timed_steps(fused, opt, x, perms, batch_size, warmup_steps, sync)
    fused_s = _timed_steps(fused, opt, x, perms, batch_size, steps, sync) / steps
    del fused, opt

    member_s = []
    for i in range(k):
        net = FusedEnsemble.seeded(kind, 1, seed * 100 + i).to(dev)
        opt = make_optimizer(net, cfg)
        if warmup_steps:
            _timed_steps(net, opt, x, [perms[i]], batch_size, warmup_steps, sync)
        member_s.append(_timed_steps(net, opt, x, [perms[i]], batch_size, steps, sync) / steps)
        del net, opt
    sizes = dict(epoch_sizes or {"data": m})
    sep_s = float(sum(member_s))

    def per_module(step_s: float) -> dict[str, float]:
        return {mod: step_s * (n // batch_size) for mod, n in sizes.items()}

    return {
        "kind": kind,
        "k": k,
        "batch_size": batch_size,
        "steps": steps,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "epoch_sizes": sizes,
        "fused": {"step_s": fused_s, "epoch_s_per_module": per_module(fused_s)},
        "separate": {
            "step_s": sep_s,
            "epoch_s_per_module": per_module(sep_s),
            "member_step_s": member_s,
        },
        "speedup": sep_s / fused_s if fused_s > 0 else float("nan"),
    }


def _epoch_sizes(run_dir: Path | None) -> dict[str, int] | None:
    """{"A": |D| + |Du|, "B": |D|} from the run's config (None when unknown)."""
    if run_dir is None:
        return None
    try:
        from ddad_edge.checkpoint import read_config

        c = read_config(run_dir)["counts"]
        return {"A": int(c["D"]) + int(c["Du"]), "B": int(c["D"])}
    except (FileNotFoundError, KeyError):
        return None


def measure_training(
    images: Sequence[Path],
    run_dir: Path | None,
    *,
    kind: str,
    k: int,
    batch: int,
    steps: int,
    on: Callable[[str], None],
) -> dict[str, Any]:
    """:func:`compare_fused_separate` on the preprocessed ``images`` (cycled to enough steps),
    on CPU and on CUDA when available; epoch times projected with the run's module sizes.

    Returns the CUDA comparison when there is one (else the CPU one), plus "by_device"
    {device: comparison} and "data_note"."""
    import torch

    from ddad_edge.benchmarks.latency import batch_paths
    from ddad_edge.runtime.batch import load_inputs

    n = batch * (steps + 1)
    data = load_inputs(batch_paths(images, min(n, len(images)))).x
    data = np.concatenate([data] * int(np.ceil(n / len(data))))[: max(n, len(data))]
    sizes = _epoch_sizes(run_dir)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out: dict[str, Any] = {}
    for dev in devices:
        on(f"training: fused vs separate on {dev}")
        out[dev] = compare_fused_separate(
            data, kind=kind, k=k, batch_size=batch, steps=steps, epoch_sizes=sizes, device=dev
        )
    first = out["cuda" if "cuda" in out else "cpu"]
    return {
        **first,
        "by_device": out,
        "data_note": "timing only: preprocessed benchmark inputs, models discarded",
    }
