"""Checkpoints are data, not code: crafted, truncated and foreign checkpoints are refused with
one clear line by export, resume and eval, and nothing in them runs; resume cleans the temp
files a killed write left; bad output folders and counts are refused."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddad_edge.checkpoint import CheckpointError, load_checkpoint, module_path
from ddad_edge.cli import app
from ddad_edge.data import MANIFEST_VERSION, write_manifest
from ddad_edge.evaluate import evaluate_arrays
from ddad_edge.runtime.fileio import atomic_write
from ddad_edge.train import RunDirError, TrainConfig, check_run_dir, train_run

runner = CliRunner()
CFG = TrainConfig(kind="ae", k=2, epochs=1, batch_size=16, seed=3)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """(D, Du): 16 known-normal and 16 unlabeled images."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(32, 1, 8, 8, generator=g), size=64) * 2 - 1
    return x[:16], x[16:]


def _manifest(root: Path) -> dict:
    return {"sha256": "0" * 64, "root": str(root), "counts": {}}


@functools.cache
def _trained(root: Path) -> Path:
    """A one-epoch K=2 run (built once per test session folder)."""
    run = root / "run"
    train_run(_manifest(root), *_data(), run, CFG)
    return run


@pytest.fixture
def run(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of a small trained run."""
    src = _trained(tmp_path_factory.getbasetemp())
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


class _Payload:
    """Unpickling this object opens (creates) the marker file: a stand-in for any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant_payload(run: Path, marker: Path) -> None:
    ck = load_checkpoint(run, "A")
    ck["history"] = [_Payload(marker)]
    torch.save(ck, module_path(run, "A"))
    # the payload is live: the unsafe loader runs it
    torch.load(module_path(run, "A"), weights_only=False)
    assert marker.exists()
    marker.unlink()


def _one_line(res) -> str:
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def test_crafted_pickle_runs_nothing_in_export_resume_eval(run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    _plant_payload(run, marker)
    err = _one_line(runner.invoke(app, ["export", "--ckpt", str(run), "-o", str(tmp_path / "b")]))
    assert "module_A.pt: refused: not a plain-data checkpoint" in err
    with pytest.raises(CheckpointError, match="nothing in it was run"):
        train_run(
            _manifest(tmp_path),
            *_data(),
            run,
            TrainConfig(**{**vars(CFG), "epochs": 2}),
            resume=True,
        )
    with pytest.raises(CheckpointError, match="refused"):
        evaluate_arrays(run, np.zeros((2, 1, 64, 64), np.float32), np.array([0, 1]))
    assert not marker.exists()
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign bytes", "foreign object"])
def test_truncated_or_foreign_checkpoint_is_one_clear_error(
    run: Path, tmp_path: Path, damage: str
) -> None:
    path = module_path(run, "A")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign bytes":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    else:
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    with pytest.raises(CheckpointError, match=r"module_A\.pt: "):
        load_checkpoint(run, "A")
    err = _one_line(runner.invoke(app, ["export", "--ckpt", str(run), "-o", str(tmp_path / "b")]))
    assert "module_A.pt" in err
    cfg2 = TrainConfig(**{**vars(CFG), "epochs": 2})
    with pytest.raises(CheckpointError, match=r"module_A\.pt"):
        train_run(_manifest(tmp_path), *_data(), run, cfg2, resume=True)


def test_checkpoint_with_wrong_kind_or_shapes_is_refused(run: Path) -> None:
    ck = load_checkpoint(run, "A")
    torch.save({**ck, "k": 10**6}, module_path(run, "A"))
    with pytest.raises(CheckpointError, match="1 <= k <= 64"):
        evaluate_arrays(run, np.zeros((2, 1, 64, 64), np.float32), np.array([0, 1]))
    torch.save({**ck, "k": 3}, module_path(run, "A"))
    with pytest.raises(CheckpointError, match="weights do not fit a ae K=3 model"):
        evaluate_arrays(run, np.zeros((2, 1, 64, 64), np.float32), np.array([0, 1]))


def test_resume_removes_temps_of_a_killed_write_and_keeps_other_files(
    run: Path, tmp_path: Path
) -> None:
    # what kill -9 between open and rename leaves: a temp beside the checkpoint
    orphan = run / ".module_A.pt.4242.0123456789ab.tmp"
    orphan.write_bytes(b"x" * 1000)
    orphan_cfg = run / ".config.json.4242.0123456789ab.tmp"
    orphan_cfg.write_text("{")
    mine = run / ".notes.tmp"
    mine.write_text("user file")
    cfg2 = TrainConfig(**{**vars(CFG), "epochs": 2})
    states = train_run(_manifest(tmp_path), *_data(), run, cfg2, resume=True)
    assert states["A"]["epoch"] == 2
    assert not orphan.exists() and not orphan_cfg.exists()
    assert mine.read_text() == "user file"
    assert not list(run.glob(".module_*.tmp"))


def test_atomic_write_leaves_no_temp_when_the_writer_fails(tmp_path: Path) -> None:
    def boom(f) -> None:
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "module_A.pt", boom)
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_file_or_a_bad_config_is_refused(tmp_path: Path, run: Path) -> None:
    f = tmp_path / "some_file"
    f.write_text("precious")
    with pytest.raises(RunDirError, match="not a folder"):
        check_run_dir(f, CFG, _manifest(tmp_path), resume=False)
    with pytest.raises(RunDirError, match="not a folder"):
        check_run_dir(f, CFG, _manifest(tmp_path), resume=True)
    assert f.read_text() == "precious"
    (run / "config.json").write_text("{not json")
    with pytest.raises(RunDirError, match="unreadable run config"):
        check_run_dir(run, CFG, _manifest(tmp_path), resume=True)
    (run / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(RunDirError, match="not a ddad-edge run config"):
        check_run_dir(run, CFG, _manifest(tmp_path), resume=True)


def test_train_cli_refuses_a_file_as_output(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    split = tmp_path / "split.json"
    write_manifest({"version": MANIFEST_VERSION, "root": str(root), "counts": {}}, split)
    f = tmp_path / "some_file"
    f.write_text("precious")
    err = _one_line(runner.invoke(app, ["train", "--split", str(split), "-o", str(f)]))
    assert "some_file: exists and is not a folder" in err
    assert f.read_text() == "precious"
