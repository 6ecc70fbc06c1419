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


def _step_seconds(
    net: Any, cfg: TrainConfig, data: Any, perms: list[np.ndarray], steps: int, warmup: int
) -> float:
    """Seconds per optimisation step of ``net`` (a fresh optimizer), after ``warmup`` steps."""
    import torch

    opt = make_optimizer(net, cfg)

    def run(n: int) -> None:
        train_epoch(net, opt, data, perms, cfg.batch_size, max_steps=n)
        if data.device.type == "cuda":
            torch.cuda.synchronize()

    if warmup:
        run(warmup)
    t0 = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t0) / steps


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
    """Per-step and projected epoch times of fused vs separate training (module docstring).

    data: float32 [M, 1, 64, 64], M >= batch_size * steps; epoch_sizes: images per epoch of
    each module for the projection, e.g. {"A": |D| + |Du|, "B": |D|} (default {"data": M}).
    Returns {"kind", "k", "batch_size", "steps", "device", "torch_threads", "epoch_sizes",
    "fused": {"step_s", "epoch_s_per_module"}, "separate": {... "member_step_s": [K]},
    "speedup": separate / fused}.
    """
    import torch

    from ddad_edge.models import FusedEnsemble

    m = len(data)
    if m < batch_size * max(steps, warmup_steps):
        raise ValueError(f"{m} images are fewer than {steps} steps of {batch_size}")
    dev = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(data, np.float32)).to(dev)
    cfg = TrainConfig(kind=kind, k=k, batch_size=batch_size, seed=seed)
    perms = [member_permutation(seed, "A", i, 0, m) for i in range(k)]

    def step_s(members: int, model_seed: int, member_perms: list[np.ndarray]) -> float:
        net = FusedEnsemble.seeded(kind, members, model_seed).to(dev)
        return _step_seconds(net, cfg, x, member_perms, steps, warmup_steps)

    fused_s = step_s(k, seed, perms)
    member_s = [step_s(1, seed * 100 + i, [perms[i]]) for i in range(k)]
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
