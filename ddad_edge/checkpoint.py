"""Module checkpoints in a run directory: atomic save, load, and the run's config.

Checkpoints are data, not code: they are read with ``torch.load(weights_only=True)``, which
unpickles only tensors and plain containers and refuses anything else (a pickle that would
import or call something), so a crafted ``module_A.pt`` cannot run code in export, resume or
eval. A file that is truncated, foreign or not shaped like our checkpoint is a
:class:`CheckpointError` naming the file and the reason.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ddad_edge.models import KINDS, FusedEnsemble
from ddad_edge.runtime.fileio import atomic_write, read_json

MODULES = ("A", "B")
MAX_K = 64
"""Largest K a checkpoint may declare (bounds what a foreign file can make us allocate)."""
CHECKPOINT_KEYS = ("kind", "k", "epoch", "epochs", "model")
RESUME_KEYS = ("optimizer", "history", "epoch_seconds")
"""What a resume needs beyond the model (training state)."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: truncated, foreign, refused by the safe loader, or missing
    fields. ``str(e)`` is one line naming the file and the reason."""


def module_path(run_dir: Path, module: str) -> Path:
    """Where module A's or B's checkpoint lives: run_dir/module_<A|B>.pt."""
    return Path(run_dir) / f"module_{module}.pt"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through the toolkit's atomic write (temp file, fsync, rename)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(run_dir: Path, module: str) -> dict[str, Any]:
    """Read a module checkpoint dict (keys: kind, k, epoch, epochs, model, optimizer, history,
    and more) with the safe loader.

    Raises:
        FileNotFoundError: no checkpoint file.
        CheckpointError: truncated, foreign, unsafe (code in the pickle) or incomplete file.
    """
    path = module_path(run_dir, module)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint for module {module} (train first)")
    ck = read_plain(path)
    if not isinstance(ck, dict) or any(key not in ck for key in CHECKPOINT_KEYS):
        have = sorted(ck) if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(
            f"{path}: not a ddad-edge module checkpoint (expected keys "
            f"{', '.join(CHECKPOINT_KEYS)}; found {have})"
        )
    return ck


def read_plain(path: Path) -> Any:
    """torch.load a checkpoint file with the safe loader (plain data only); CheckpointError
    naming the file when it is refused, truncated or foreign."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: not a plain-data checkpoint (the safe loader said "
            f"{_first_line(e)!r}); "
            "it may be foreign or crafted, nothing in it was run"
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path}: unreadable checkpoint (truncated or not written by ddad-edge train): "
            f"{_first_line(e)}"
        ) from e


def load_module(run_dir: Path, module: str, *, require_complete: bool = True) -> FusedEnsemble:
    """Rebuild a trained module as a FusedEnsemble in eval mode."""
    ck = load_checkpoint(run_dir, module)
    if require_complete and ck["epoch"] < ck["epochs"]:
        raise RuntimeError(
            f"{module_path(run_dir, module)}: training stopped at epoch {ck['epoch']} of "
            f"{ck['epochs']}; finish it with `ddad-edge train ... --resume`"
        )
    return ensemble_from(ck, module_path(run_dir, module)).eval()


def ensemble_from(ck: dict[str, Any], path: Path) -> FusedEnsemble:
    """The FusedEnsemble a checkpoint dict describes, with its weights; CheckpointError when
    kind, K or the state dict do not fit together."""
    kind, k = ck["kind"], ck["k"]
    if kind not in KINDS or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise CheckpointError(
            f"{path}: kind {kind!r} / k {k!r} is not a ddad-edge model "
            f"(kind one of {', '.join(KINDS)}, 1 <= k <= {MAX_K})"
        )
    try:
        model = FusedEnsemble(kind, k)
        model.load_state_dict(ck["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(
            f"{path}: weights do not fit a {kind} K={k} model: {_first_line(e)}"
        ) from e
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a ddad-edge run directory (no config.json)")
    config = read_json(path, CheckpointError, "run config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a ddad-edge run config (not a JSON object)")
    return config
