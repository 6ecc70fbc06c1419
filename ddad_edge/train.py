"""The training loop: module A on D ∪ Du, module B on D, K members each in one fused module.

Each member sees its own shuffle of the data (a permutation seeded by (seed, module, member,
epoch), so resuming reproduces the order), its own BatchNorm statistics and its own Adam state.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddad_edge import __version__
from ddad_edge.checkpoint import (
    RESUME_KEYS,
    CheckpointError,
    atomic_torch_save,
    ensemble_from,
    load_checkpoint,
    module_path,
)
from ddad_edge.models import KINDS, FusedEnsemble, member_losses
from ddad_edge.runtime.fileio import atomic_write_bytes, atomic_write_text, orphan_temps

MODULE_IDS = {"A": 1, "B": 2}
EpochCallback = Callable[[str, int, int, np.ndarray, float], None]
StepCallback = Callable[[str, int, int], None]


@dataclass
class TrainConfig:
    """Hyper-parameters (paper Sec. 3.2 defaults)."""

    kind: str = "ae"
    k: int = 3
    epochs: int = 250
    lr: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 64
    seed: int = 0

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.k < 1 or self.epochs < 1 or self.batch_size < 2:
            raise ValueError("k and epochs must be >= 1 and batch size >= 2")


class RunDirError(RuntimeError):
    """The output folder holds a different run, or a resume does not match it."""


def member_permutation(seed: int, module: str, member: int, epoch: int, n: int) -> np.ndarray:
    """The order in which one member visits the n training images in one epoch (0-based)."""
    return np.random.default_rng([seed, MODULE_IDS[module], member, epoch]).permutation(n)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (no weight decay). Elementwise, so stacked members keep independent states.

    PyTorch's fused Adam kernel (one pass over parameter, gradient and both moments instead of
    one pass per arithmetic step) where every parameter is on the CPU or a CUDA device: the
    same update rule (checked against plain ``torch.optim.Adam`` in the tests), and the same
    state, so runs checkpointed with the plain implementation resume. Chosen because it was
    faster per step (benchmarks/README.md, decision log).
    """
    params = list(model.parameters())
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params
    )
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def train_epoch(
    model: FusedEnsemble,
    opt: torch.optim.Optimizer,
    data: torch.Tensor,
    perms: list[np.ndarray],
    batch_size: int,
    on_step: Callable[[int, int], None] | None = None,
    max_steps: int | None = None,
) -> np.ndarray:
    """One epoch. data float32 [M, 1, 64, 64]; perms[i] is member i's order (len M).

    The last partial batch is dropped. Returns the members' mean losses, float64 [K].
    """
    model.train()
    n_batches = len(data) // batch_size
    if max_steps is not None:
        n_batches = min(n_batches, max_steps)
    if n_batches == 0:
        raise ValueError(f"{len(data)} images are fewer than one batch of {batch_size}")
    order = torch.from_numpy(np.stack(perms))  # [K, M]
    total = torch.zeros(model.k, dtype=torch.float64)
    for b in range(n_batches):
        idx = order[:, b * batch_size : (b + 1) * batch_size]
        xb = data[idx]  # [K, B, 1, 64, 64]
        losses = member_losses(model(xb), xb)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        total += losses.detach().double()
        if on_step is not None:
            on_step(b + 1, n_batches)
    return (total / n_batches).numpy()


def train_module(
    module: str,
    data: torch.Tensor,
    cfg: TrainConfig,
    ckpt: Path,
    *,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Train (or resume) one module's K members on data [M, 1, 64, 64]; checkpoint every epoch.

    Returns the final checkpoint dict (history: per-epoch member losses, epoch seconds).
    """
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt.parent, module)
        missing = [key for key in RESUME_KEYS if key not in state]
        if missing:
            raise CheckpointError(f"{ckpt}: cannot resume: no {', '.join(missing)} in it")
        model = ensemble_from(state, ckpt)
        opt = make_optimizer(model, cfg)
        try:
            opt.load_state_dict(state["optimizer"])
        except (TypeError, ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt}: optimizer state does not fit the model: {e}") from e
        state["epochs"] = cfg.epochs
    else:
        model = FusedEnsemble.seeded(cfg.kind, cfg.k, cfg.seed * 10 + MODULE_IDS[module])
        opt = make_optimizer(model, cfg)
        state = {
            "kind": cfg.kind,
            "k": cfg.k,
            "epoch": 0,
            "epochs": cfg.epochs,
            "history": [],
            "epoch_seconds": [],
            "n_train": len(data),
            "config": asdict(cfg),
        }
    for epoch in range(state["epoch"], cfg.epochs):
        perms = [member_permutation(cfg.seed, module, i, epoch, len(data)) for i in range(cfg.k)]
        t0 = time.perf_counter()
        step_cb = (lambda s, n: on_step(module, s, n)) if on_step else None
        losses = train_epoch(model, opt, data, perms, cfg.batch_size, step_cb)
        if not np.all(np.isfinite(losses)):
            raise FloatingPointError(f"module {module} epoch {epoch + 1}: loss is not finite")
        seconds = time.perf_counter() - t0
        state.update(epoch=epoch + 1, model=model.state_dict(), optimizer=opt.state_dict())
        state["history"].append(losses.tolist())
        state["epoch_seconds"].append(seconds)
        atomic_torch_save(state, ckpt)
        if on_epoch is not None:
            on_epoch(module, epoch + 1, cfg.epochs, losses, seconds)
    return state


def normal_train_digest(manifest: dict[str, Any]) -> str | None:
    """sha256 of D's file list (None without one): equal digests mean B saw the same images."""
    if "normal_train" not in manifest:
        return None
    return hashlib.sha256(json.dumps(manifest["normal_train"]).encode()).hexdigest()


def _run_config(
    cfg: TrainConfig, manifest: dict[str, Any], module_b_from: Path | None
) -> dict[str, Any]:
    out = {
        "toolkit_version": __version__,
        "train": asdict(cfg),
        "split_sha256": manifest["sha256"],
        "normal_train_sha256": normal_train_digest(manifest),
        "data_root": manifest["root"],
        "counts": manifest["counts"],
        "torch_version": torch.__version__,
    }
    if module_b_from is not None:
        out["module_b_from"] = str(Path(module_b_from).resolve())
    return out


def adopt_module_b(src: Path, out: Path, cfg: TrainConfig, manifest: dict[str, Any]) -> None:
    """Copy run ``src``'s finished module B into run ``out`` (for sweeps that change only Du,
    e.g. the anomaly rate: B trains on D alone, so one B serves every split with the same D).

    Raises:
        RunDirError: src is not a finished run of the same model kind and K, or its D differs.
    """
    src = Path(src)
    try:
        old = json.loads((src / "config.json").read_text())
        state = load_checkpoint(src, "B")
    except (OSError, ValueError) as e:
        raise RunDirError(f"{src}: cannot reuse its module B: {e}") from e
    digest = normal_train_digest(manifest)
    if digest is None or old.get("normal_train_sha256") != digest:
        raise RunDirError(
            f"{src}: its module B was trained on another D (or the run predates D digests); "
            "module B can only be shared between splits with the same D"
        )
    if (state["kind"], state["k"]) != (cfg.kind, cfg.k):
        raise RunDirError(
            f"{src}: module B is {state['kind']} K={state['k']}, this run is {cfg.kind} K={cfg.k}"
        )
    if state["epoch"] < state["epochs"]:
        raise RunDirError(f"{src}: module B stopped at epoch {state['epoch']} of {state['epochs']}")
    atomic_write_bytes(module_path(out, "B"), module_path(src, "B").read_bytes())


def check_run_dir(out: Path, cfg: TrainConfig, manifest: dict[str, Any], resume: bool) -> None:
    """Refuse to overwrite another run; on resume, require the same model, K, seed and split."""
    cfg_path = out / "config.json"
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a folder; choose a new output folder")
    if not cfg_path.exists():
        if out.exists() and any(out.iterdir()):
            raise RunDirError(f"{out} exists and is not empty; choose a new output folder")
        return
    if not resume:
        raise RunDirError(
            f"{out} already holds a run; pass --resume to continue it, or pick a new -o"
        )
    try:
        old = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{cfg_path}: unreadable run config ({e}); cannot resume") from e
    if not isinstance(old, dict) or not isinstance(old.get("train"), dict):
        raise RunDirError(f"{cfg_path}: not a ddad-edge run config (no 'train'); cannot resume")
    for key in ("kind", "k", "seed", "lr", "beta1", "beta2", "batch_size"):
        if old["train"].get(key) != getattr(cfg, key):
            raise RunDirError(
                f"{out}: cannot resume with {key}={getattr(cfg, key)!r}; "
                f"the run used {old['train'].get(key)!r}"
            )
    if old.get("split_sha256") != manifest["sha256"]:
        raise RunDirError(f"{out}: cannot resume with a different split manifest")


def module_data(d: np.ndarray | torch.Tensor, du: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """DDAD's data roles (method.md): module A trains on D ∪ Du, module B on D alone.

    d: the known-normal images D, float32 [N, 1, 64, 64]; du: the unlabeled images Du, float32
    [M, 1, 64, 64] (M may be 0). Returns {"A": D then Du [N + M, ...], "B": D [N, ...]} as
    torch tensors.
    """
    d_t, du_t = torch.as_tensor(d), torch.as_tensor(du)
    if d_t.shape[1:] != du_t.shape[1:]:
        raise ValueError(f"D and Du differ in image shape: {tuple(d_t.shape)}, {tuple(du_t.shape)}")
    return {"A": torch.cat([d_t, du_t]), "B": d_t}


RUN_FILES = ("config.json", "module_A.pt", "module_B.pt", "history.json", "skipped.json")


def remove_orphan_temps(out: Path) -> list[Path]:
    """Delete the temp files that writes killed mid-way (kill -9) left in a run folder; only
    ``fileio.atomic_write``'s temps of the run's own files are touched. Returns them."""
    found = [t for name in RUN_FILES for t in orphan_temps(out / name)]
    for t in found:
        t.unlink(missing_ok=True)
    return found


def train_run(
    manifest: dict[str, Any],
    d: np.ndarray | torch.Tensor,
    du: np.ndarray | torch.Tensor,
    out: Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
    module_b_from: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Train module A on D ∪ Du and module B on D (:func:`module_data`) into run folder ``out``.

    d, du: float32 [N, 1, 64, 64] and [M, 1, 64, 64], preprocessed (runtime.preprocess).

    Writes out/config.json, out/module_A.pt, out/module_B.pt (checkpointed every epoch) and
    out/history.json. Returns {module: final checkpoint dict}. With ``module_b_from`` (a
    finished run with the same D, kind and K) module B is copied from there, not trained.
    """
    cfg.check()
    data = module_data(d, du)
    out = Path(out)
    check_run_dir(out, cfg, manifest, resume)
    if module_b_from is None and resume and (out / "config.json").is_file():
        shared = json.loads((out / "config.json").read_text()).get("module_b_from")
        module_b_from = Path(shared) if shared else None  # a resumed sweep run keeps its B
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        remove_orphan_temps(out)
    config = _run_config(cfg, manifest, module_b_from)
    if module_b_from is not None and not module_path(out, "B").is_file():
        adopt_module_b(module_b_from, out, cfg, manifest)
    atomic_write_text(out / "config.json", json.dumps(config, indent=1))
    states = {}
    for module in ("A", "B"):
        if module == "B" and module_b_from is not None:
            states[module] = load_checkpoint(out, "B")
            continue
        states[module] = train_module(
            module,
            data[module],
            cfg,
            module_path(out, module),
            resume=resume,
            on_epoch=on_epoch,
            on_step=on_step,
        )
    history = {
        m: {
            "loss_per_epoch": s["history"],
            "epoch_seconds": s["epoch_seconds"],
            "n_train": s["n_train"],
        }
        for m, s in states.items()
    }
    atomic_write_text(out / "history.json", json.dumps(history, indent=1))
    return states
