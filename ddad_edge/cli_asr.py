"""The train-asr command: train a finished run's ASR refinement network on the split's known
normals (D, or the held-out ones).
Thin: parse, call ``ddad_edge.asr``, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddad_edge.cli_common import (
    TRAIN_EXTRA,
    DataRootOpt,
    TorchThreadsOpt,
    command_help,
    console,
    fail,
    require_extra,
    say,
    warn,
)

# The solver's options (defaults in the signature; the journal's values in the help).
BatchSizeOpt = Annotated[int, typer.Option(help="Crops per Adam step.", min=1)]
LrOpt = Annotated[float, typer.Option(help="Adam learning rate.")]
WeightDecayOpt = Annotated[
    float, typer.Option(help="Adam's L2 weight decay (the journal's code: 1e-4).")
]
Beta1Opt = Annotated[float, typer.Option(help="Adam beta1 (the journal's code: 0.5).")]
BlendMinOpt = Annotated[float, typer.Option(help="Least patch blend factor (the journal's: 0).")]
BlendMaxOpt = Annotated[float, typer.Option(help="Largest patch blend factor.")]
CropOpt = Annotated[
    int,
    typer.Option(
        help="Side of the map crops it trains on (64: whole maps, as the authors).", min=1
    ),
]
BatchNormOpt = Annotated[
    bool,
    typer.Option(
        "--batch-norm/--no-batch-norm",
        help="Batch normalisation after the first two convolutions (the authors' network).",
    ),
]


def train_asr(
    run: Annotated[Path, typer.Argument(help="Finished run folder written by `train`.")],
    split_path: Annotated[
        Path, typer.Option("--split", help="The split manifest the run was trained on (its D).")
    ],
    epochs: Annotated[int, typer.Option(help="Epochs (fixed; the last is kept).", min=1)] = 15,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, anomalies and order.")] = 0,
    threads: TorchThreadsOpt = 0,
    held_out: Annotated[
        bool,
        typer.Option(
            "--held-out",
            help="Train on the split's held-out normals (`split --calibration N`), which neither "
            "module saw, instead of on D.",
        ),
    ] = False,
    anomaly: Annotated[
        str,
        typer.Option(
            help="Synthetic anomaly: patch (another image's square blended in, cut anywhere), "
            "journal (as the authors' code: cut from the same place, centred in the middle 80%) "
            "or opacity (ours: a soft, textured brightening).",
        ),
    ] = "patch",
    batch_size: BatchSizeOpt = 32,
    lr: LrOpt = 1e-3,
    weight_decay: WeightDecayOpt = 0.0,
    beta1: Beta1Opt = 0.9,
    blend_min: BlendMinOpt = 0.5,
    blend_max: BlendMaxOpt = 1.0,
    crop: CropOpt = 32,
    batch_norm: BatchNormOpt = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted ASR training from its last epoch.")
    ] = False,
    data_root: DataRootOpt = None,
) -> None:
    """Train the ASR refinement network (method.md, DDAD-ASR) of a finished run, on known
    normals only.

    Reads the run's modules A and B (frozen) and the split's known normals D (with --held-out
    its held-out normals, which neither module was trained on); writes RUN/asr.pt (every
    epoch). Each epoch, synthetic anomalies (square patches of other such images blended in;
    with --anomaly opacity, soft textured brightenings) are scored by both modules and the
    network learns to find them in the (inter, intra) maps (focal loss). `eval` and `export`
    then add the `asr` score.
    """
    require_extra("train-asr", "train", TRAIN_EXTRA)
    import json

    import torch

    from ddad_edge.asr import TRAINED_ON, AsrConfig
    from ddad_edge.asr import train_asr as train
    from ddad_edge.checkpoint import CheckpointError
    from ddad_edge.cli import load_part_with_progress

    manifest = _run_split(run, split_path, data_root)
    if threads:
        torch.set_num_threads(threads)
    if held_out and not manifest.get("calibration"):
        fail(f"{split_path}: no held-out normals; make the split with `split --calibration N`")
    part = "calibration" if held_out else "normal_train"
    label = TRAINED_ON[part]
    d = load_part_with_progress(manifest, part, label)

    def on_epoch(epoch: int, total: int, loss: float, seconds: float) -> None:
        console.print(f"ASR epoch {epoch}/{total} focal loss {loss:.5f} ({seconds:.1f} s/epoch)")

    try:
        state = train(
            run,
            d.x,
            AsrConfig(
                epochs=epochs,
                seed=seed,
                anomaly=anomaly,
                batch_size=batch_size,
                lr=lr,
                weight_decay=weight_decay,
                beta1=beta1,
                blend_min=blend_min,
                blend_max=blend_max,
                crop=crop,
                batch_norm=batch_norm,
            ),
            split_sha256=manifest["sha256"],
            trained_on=part,
            resume=resume,
            on_epoch=on_epoch,
        )
    except (CheckpointError, FileNotFoundError, RuntimeError, ValueError) as e:
        fail(e)
    say(
        f"trained ASR for {state['epoch']} epochs on {state['n_train']} images ({label}) into "
        f"{run / 'asr.pt'} (input scales {json.dumps([round(s, 6) for s in state['input_scale']])})"
    )
    _report_agreement(state["inter_agreement"], label)


def _report_agreement(rho: float, label: str) -> None:
    """Print how closely the asr score follows inter over the training normals; warn when it
    does not (``asr.agreement_problem``)."""
    from ddad_edge.asr import agreement_problem

    say(f"asr vs inter over {label}: Spearman {rho:.3f}")
    problem = agreement_problem(rho, label)
    if problem:
        warn(
            f"{problem}. Check it on labelled images before deploying it, or export with --no-asr."
        )


def _run_split(run: Path, split_path: Path, data_root: Path | None) -> dict:
    """The split manifest, checked to be the one the run was trained on (the same D); a
    one-line failure otherwise."""
    from ddad_edge.checkpoint import CheckpointError, read_config
    from ddad_edge.data import SplitError, read_manifest
    from ddad_edge.train import normal_train_digest

    try:
        manifest = read_manifest(split_path, data_root)
        config = read_config(run)
    except (SplitError, FileNotFoundError, CheckpointError) as e:
        fail(e)
    same_d = config.get("split_sha256") == manifest["sha256"] or (
        config.get("normal_train_sha256") is not None
        and config.get("normal_train_sha256") == normal_train_digest(manifest)
    )
    if not same_d:
        fail(f"{run} was trained on another split (another D); pass the run's own split")
    return manifest


def register(app: typer.Typer) -> None:
    """Add train-asr to the app."""
    app.command("train-asr", help=command_help(train_asr))(train_asr)
