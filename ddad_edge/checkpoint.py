"""Module checkpoints in a run directory: atomic save, load, and the run's config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ddad_edge.models import FusedEnsemble
from ddad_edge.runtime.fileio import atomic_write

MODULES = ("A", "B")


def module_path(run_dir: Path, module: str) -> Path:
    """Where module A's or B's checkpoint lives: run_dir/module_<A|B>.pt."""
    return Path(run_dir) / f"module_{module}.pt"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through the toolkit's atomic write (temp file, fsync, rename)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(run_dir: Path, module: str) -> dict[str, Any]:
    """Read a module checkpoint dict (keys: kind, k, epoch, epochs, model, optimizer, history)."""
    path = module_path(run_dir, module)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint for module {module} (train first)")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_module(run_dir: Path, module: str, *, require_complete: bool = True) -> FusedEnsemble:
    """Rebuild a trained module as a FusedEnsemble in eval mode."""
    ck = load_checkpoint(run_dir, module)
    if require_complete and ck["epoch"] < ck["epochs"]:
        raise RuntimeError(
            f"{module_path(run_dir, module)}: training stopped at epoch {ck['epoch']} of "
            f"{ck['epochs']}; finish it with `ddad-edge train ... --resume`"
        )
    model = FusedEnsemble(ck["kind"], ck["k"])
    model.load_state_dict(ck["model"])
    return model.eval()


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a ddad-edge run directory (no config.json)")
    return json.loads(path.read_text())
