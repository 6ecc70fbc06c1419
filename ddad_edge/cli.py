"""The ``ddad-edge`` command line. Commands are thin: parse, call the library, print.

Imports only typer and rich at module level, so every command's ``--help`` and the runtime's
commands work in a runtime-only install; commands that need the ``train`` extra say so in one
line and exit 2 (:func:`ddad_edge.cli_common.require_extra`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ddad_edge.cli_common import (
    TRAIN_EXTRA,
    DataRootOpt,
    TorchThreadsOpt,
    console,
    fail,
    note,
    out_console,
    require_extra,
    say,
    warn,
)

app = typer.Typer(
    help="Train DDAD chest X-ray anomaly detectors and deploy them as fused ONNX/TensorRT bundles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def data_note(manifest: dict) -> str:
    """What every figure and table says about the data's origin."""
    return manifest.get("data_note", "")


def load_part_with_progress(manifest: dict, part: str, label: str):
    from ddad_edge.dataset import load_part

    n = len(manifest[part])
    with progress() as p:
        task = p.add_task(f"loading {label}", total=n)
        batch = load_part(manifest, part, on_item=lambda i: p.advance(task))
    for _, path, reason in batch.errors:
        warn(f"skipped {path}: {reason}")
    return batch


@app.command()
def split(
    data: Annotated[
        Path,
        typer.Argument(help="Folder of images (PNG/JPEG/DICOM), labelled by CSV or folder name."),
    ],
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CSV with columns path,label[,split]; paths relative to DATA. "
            "A relative CSV path is looked up in DATA first."
        ),
    ] = None,
    normal_train: Annotated[int, typer.Option(help="|D|: known normal training images.")] = 1000,
    unlabeled: Annotated[int, typer.Option(help="|Du|: unlabeled training images.")] = 853,
    ar: Annotated[
        list[float] | None,
        typer.Option(
            help="Anomaly rate of Du (share of abnormal images); default 0.6. Repeat it for an "
            "anomaly-rate sweep: one manifest per AR, OUTPUT's name + '-ar<AR>', all with the "
            "same D and Dt and the same |Du|, so module B can be shared (`train --reuse-b`)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the shuffles.")] = 0,
    test_fraction: Annotated[
        float,
        typer.Option(help="Share of each class carved out for Dt when the data has no test split."),
    ] = 0.2,
    calibration: Annotated[
        int,
        typer.Option(
            help="Normals held out of training for `calibrate` (drawn after D and Du's normals)."
        ),
    ] = 0,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Split manifest (JSON) to write.")
    ] = Path("split.json"),
) -> None:
    """Draw D (known normal), Du (unlabeled, anomaly rate AR) and Dt (test) from a labelled folder,
    and with --calibration N a set of N normals that no training sees, for `calibrate`.

    Reads DATA (and the CSV); writes the split manifest JSON that `train`, `eval` and `calibrate`
    read.
    """
    from ddad_edge.data import SplitError, read_items, write_splits

    if not data.is_dir():
        fail(f"{data}: not a folder")
    try:
        written = write_splits(
            data,
            read_items(data, labels),
            ar or [0.6],
            output,
            normal_train=normal_train,
            unlabeled=unlabeled,
            seed=seed,
            test_fraction=test_fraction,
            calibration=calibration,
        )
    except SplitError as e:
        fail(e)
    for manifest, out, digest in written:
        c = manifest["counts"]
        say(
            f"wrote {out}: D={c['D']} Du={c['Du']} (abnormal {c['Du_abnormal']}, "
            f"AR {manifest['anomaly_rate']}) Dt={c['Dt']} (abnormal {c['Dt_abnormal']})"
            + (f" calibration={c['calibration']}" if "calibration" in c else "")
            + f"; test from {manifest['test_source']}; sha256 {digest[:12]}"
        )


@app.command()
def train(
    split_path: Annotated[Path, typer.Option("--split", help="Split manifest written by `split`.")],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Run folder to write (config, module_A.pt, module_B.pt, history, curves.png).",
        ),
    ],
    model: Annotated[str, typer.Option(help="Base network: ae, memae or aeu.")] = "ae",
    k: Annotated[int, typer.Option("--k", help="Members per module.")] = 3,
    epochs: Annotated[int, typer.Option(help="Epochs per module.")] = 250,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 5e-4,
    beta1: Annotated[float, typer.Option(help="Adam beta1.")] = 0.5,
    beta2: Annotated[float, typer.Option(help="Adam beta2.")] = 0.999,
    batch_size: Annotated[int, typer.Option(help="Batch size (last partial batch dropped).")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and shuffles.")] = 0,
    threads: TorchThreadsOpt = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run from its last completed epoch.")
    ] = False,
    data_root: DataRootOpt = None,
    reuse_b: Annotated[
        Path | None,
        typer.Option(
            help="Finished run whose module B to reuse (same D, model and K; checked): train "
            "module A only. For anomaly-rate sweeps, where only Du changes."
        ),
    ] = None,
) -> None:
    """Train module A (on D ∪ Du) and module B (on D), K members each, fused.

    Reads the split manifest and its images; writes the run folder. Checkpoints every epoch.
    """
    run_training(
        split_path,
        output,
        kind=model,
        k=k,
        epochs=epochs,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        batch_size=batch_size,
        seed=seed,
        threads=threads,
        resume=resume,
        data_root=data_root,
        reuse_b=reuse_b,
    )


def run_training(
    split_path: Path,
    output: Path,
    *,
    threads: int = 0,
    resume: bool = False,
    data_root: Path | None = None,
    reuse_b: Path | None = None,
    **cfg_kwargs,
) -> None:
    """`train`: load D and Du, train both modules (``train.train_run``), write curves.png and
    skipped.json into the run folder, print a summary."""
    require_extra("train", "train", ("torch", "matplotlib"))
    import torch

    from ddad_edge.checkpoint import CheckpointError
    from ddad_edge.data import SplitError, read_manifest
    from ddad_edge.runtime.fileio import atomic_write_text
    from ddad_edge.train import RunDirError, TrainConfig, check_run_dir, train_run

    cfg = TrainConfig(**cfg_kwargs)
    try:
        cfg.check()
        manifest = read_manifest(split_path, data_root)
        check_run_dir(output, cfg, manifest, resume)
    except (SplitError, RunDirError, ValueError) as e:
        fail(e)
    if threads:
        torch.set_num_threads(threads)
    d = load_part_with_progress(manifest, "normal_train", "D (known normal)")
    du = load_part_with_progress(manifest, "unlabeled", "Du (unlabeled)")
    with progress() as p:
        on_step, on_epoch = training_progress(p, cfg.epochs)
        try:
            states = train_run(
                manifest,
                d.x,
                du.x,
                output,
                cfg,
                resume=resume,
                on_epoch=on_epoch,
                on_step=on_step,
                module_b_from=reuse_b,
            )
        except (RunDirError, CheckpointError, ValueError, FloatingPointError) as e:
            fail(e)
    skipped = [
        {"part": part, "path": path, "reason": reason}
        for part, b in (("normal_train", d), ("unlabeled", du))
        for _, path, reason in b.errors
    ]
    atomic_write_text(output / "skipped.json", json.dumps(skipped, indent=1))
    write_training_curves(states, cfg.k, output / "curves.png", data_note(manifest))
    secs = {m: sum(s["epoch_seconds"]) / max(1, len(s["epoch_seconds"])) for m, s in states.items()}
    say(
        f"trained {cfg.kind} K={cfg.k} for {cfg.epochs} epochs into {output} "
        f"(mean epoch: A {secs['A']:.2f} s, B {secs['B']:.2f} s; skipped {len(skipped)} files)"
        + (f"; module B reused from {reuse_b}" if reuse_b else "")
    )


def training_progress(p: Progress, epochs: int):
    """(on_step, on_epoch) callbacks for ``train.train_run`` that drive one bar per module and,
    when stderr is not a terminal, print one line per epoch."""
    tasks: dict[str, int] = {}
    steps: dict[str, int] = {}

    def on_step(module: str, step: int, n: int) -> None:
        if module not in tasks:
            tasks[module] = p.add_task(f"module {module} epoch 1", total=n * epochs)
            steps[module] = n
        p.advance(tasks[module])

    def on_epoch(module: str, epoch: int, total: int, losses, seconds: float) -> None:
        mean = sum(float(v) for v in losses) / max(1, len(losses))
        line = f"module {module} epoch {epoch}/{total} loss {mean:.5f} ({seconds:.1f} s/epoch)"
        if module in tasks:
            p.update(tasks[module], description=line, completed=epoch * steps[module])
        if not console.is_terminal:  # logs get one line per epoch
            console.print(line, highlight=False)

    return on_step, on_epoch


def write_training_curves(states: dict, k: int, out_png: Path, note: str) -> None:
    """curves.png: each of the k members' loss per epoch, for both modules."""
    from ddad_edge import plots

    series = {
        f"{m}/member{i}": [e[i] for e in s["history"]] for m, s in states.items() for i in range(k)
    }
    plots.plot_training_curves(series, out_png, note)


@app.command("eval")
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder written by `train`.")],
    split_path: Annotated[
        Path, typer.Option("--split", help="Split manifest (its test part is scored).")
    ],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Report folder (default RUN/eval).")
    ] = None,
    data_root: DataRootOpt = None,
    calibration: Annotated[
        Path | None,
        typer.Option(help="Calibration file of this run's bundle: its points on the ROC plot."),
    ] = None,
) -> None:
    """Score the test set with the trained run: AUC/AP per score (rec, intra, inter).

    Reads the run, the split's test images and --calibration; writes metrics.json, scores.csv,
    roc.png, histograms.png and heatmaps.png into the report folder and prints a table. With
    --calibration, each operating point's test specificity and sensitivity are added to
    metrics.json and the table, and marked on the ROC plot.
    """
    run_eval(run, split_path, output, data_root, calibration)


def _calibrated_points(path: Path, run: Path, kind: str) -> list[dict]:
    """The operating points of a calibration file, checked against the run it is used with."""
    from ddad_edge.runtime.calibration import CalibrationError, read_calibration

    try:
        rec = read_calibration(path)
    except CalibrationError as e:
        fail(e)
    if rec.get("model_kind") != kind:
        fail(f"{path}: calibrated for a {rec.get('model_kind')} bundle, the run is {kind}")
    src = rec.get("source_run")
    if src and Path(src).resolve() != run.resolve():
        warn(f"{path} was calibrated on the bundle of {src}")
    return [
        {"score": rec["score"], "threshold": p["threshold"], "specificity": p["specificity"]}
        for p in rec["operating_points"]
    ]


def run_eval(
    run: Path,
    split_path: Path,
    output: Path | None,
    data_root: Path | None = None,
    calibration: Path | None = None,
) -> dict:
    """`eval`: score the split's test part with the run, write the report, print the table."""
    require_extra("eval", "train", ("torch", "matplotlib"))
    import numpy as np

    from ddad_edge.checkpoint import CheckpointError, read_config
    from ddad_edge.data import SplitError, read_manifest
    from ddad_edge.evaluate import evaluate_arrays, write_report

    try:
        manifest = read_manifest(split_path, data_root)
        config = read_config(run)
    except (SplitError, FileNotFoundError, CheckpointError) as e:
        fail(e)
    if config["split_sha256"] != manifest["sha256"]:
        warn("the run was trained on a different split manifest")
    points = (
        None
        if calibration is None
        else _calibrated_points(calibration, run, config["train"]["kind"])
    )
    test = load_part_with_progress(manifest, "test", "Dt (test)")
    labels = np.asarray(manifest["test_labels"])[test.ok]
    paths = [manifest["test"][i] for i in test.ok]
    try:
        stats, scores, metrics = evaluate_arrays(run, test.x, labels)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        fail(e)
    output = output or run / "eval"
    meta = {
        "run": str(run),
        "model": config["train"]["kind"],
        "k": config["train"]["k"],
        "epochs": config["train"]["epochs"],
        "split_sha256": manifest["sha256"],
        "n_test": len(labels),
        "n_test_abnormal": int(labels.sum()),
        "skipped": [{"path": p, "reason": r} for _, p, r in test.errors],
        "data_note": data_note(manifest),
    }
    write_report(
        output,
        x=test.x,
        labels=labels,
        paths=paths,
        stats=stats,
        scores=scores,
        metrics=metrics,
        meta=meta,
        title_note=data_note(manifest),
        operating_points=points,
    )
    _print_eval(metrics, meta, output, bool(points))
    return metrics


def _print_eval(metrics: dict, meta: dict, output: Path, calibrated: bool) -> None:
    """The AUC/AP table on stdout and, when calibrated, each operating point's test
    specificity and sensitivity (from the report's metrics.json)."""
    table = Table(
        title=escape(
            f"{meta['model']} K={meta['k']} on {meta['n_test']} test images ({meta['data_note']})"
        )
    )
    table.add_column("score")
    table.add_column("AUC", justify="right")
    table.add_column("AP", justify="right")
    for name, m in metrics.items():
        table.add_row(name, f"{m['auc']:.4f}", f"{m['ap']:.4f}")
    out_console.print(table)
    if calibrated:
        report = json.loads((output / "metrics.json").read_text())
        for p in report["operating_points"]:
            say(
                f"calibrated {p['score']} > {p['threshold']:.6g} (specificity {p['specificity']:g}"
                f" on the calibration normals): test specificity {p['test_specificity']:.3f}, "
                f"sensitivity {p['test_sensitivity']:.3f}"
            )
    say(f"report in {output}")


@app.command()
def demo(
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Folder for the demo's data, split, run and report."),
    ] = Path("demo-out"),
    data: Annotated[
        Path | None,
        typer.Option(help="Run on this real labelled folder instead of the synthetic phantoms."),
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV for --data.")] = None,
    model: Annotated[str, typer.Option(help="ae, memae or aeu.")] = "ae",
    k: Annotated[int, typer.Option("--k")] = 3,
    epochs: Annotated[int, typer.Option()] = 100,
    normal_train: Annotated[int, typer.Option()] = 300,
    unlabeled: Annotated[int, typer.Option()] = 400,
    ar: Annotated[float, typer.Option()] = 0.6,
    seed: Annotated[int, typer.Option()] = 0,
    threads: TorchThreadsOpt = 0,
    test_per_class: Annotated[
        int, typer.Option(help="Phantom test images per class (normal, abnormal).")
    ] = 200,
    lesions: Annotated[
        str,
        typer.Option(
            help="Phantom lesion kind: lucent (darker, air-like) or opaque (brighter, "
            "pneumonia-like)."
        ),
    ] = "lucent",
) -> None:
    """The whole pipeline in a few minutes on CPU: phantoms -> split -> train -> eval.

    Without --data it generates a SYNTHETIC procedural phantom set (not real patients) in
    OUTPUT/phantoms. Writes OUTPUT/split.json, OUTPUT/run/ and OUTPUT/run/eval/.
    """
    require_extra("demo", "train", TRAIN_EXTRA)
    from ddad_edge.data import SplitError, make_split, read_labels_csv, scan_folder, write_manifest

    output.mkdir(parents=True, exist_ok=True)
    if data is None:
        from ddad_edge.phantom import make_phantom_dataset

        data = output / "phantoms"
        if not (data / "labels.csv").exists():
            note("generating SYNTHETIC phantom images (not real patients)")
            try:
                make_phantom_dataset(
                    data,
                    n_train_normal=normal_train + unlabeled,
                    n_train_abnormal=unlabeled,
                    n_test_normal=test_per_class,
                    n_test_abnormal=test_per_class,
                    seed=seed,
                    kind=lesions,
                )
            except ValueError as e:
                fail(e)
        labels = data / "labels.csv"
    try:
        items = read_labels_csv(data, labels) if labels else scan_folder(data)
        manifest = make_split(
            data, items, normal_train=normal_train, unlabeled=unlabeled, ar=ar, seed=seed
        )
        write_manifest(manifest, output / "split.json")
    except SplitError as e:
        fail(e)
    run_dir = output / "run"
    resume = (run_dir / "config.json").exists()
    run_training(
        output / "split.json",
        run_dir,
        kind=model,
        k=k,
        epochs=epochs,
        seed=seed,
        threads=threads,
        resume=resume,
    )
    run_eval(run_dir, output / "split.json", None)
    run_deploy_demo(run_dir, output, data, manifest)


def run_deploy_demo(run_dir: Path, output: Path, data: Path, manifest: dict) -> None:
    """Demo tail: export the run, then score a few test images with the torch-free runtime."""
    from ddad_edge.export.bundle import export_bundle
    from ddad_edge.runtime import Scorer

    bundle = output / "bundle"
    if not (bundle / "manifest.json").exists():
        # the appliance precisions (INT8) are not what the demo shows; a few-epoch model can miss
        # their tolerance
        export_bundle(run_dir, bundle, split=output / "split.json", int8=False)
    picks = [data / manifest["test"][i] for i in (0, 1, -2, -1)]
    labels = [manifest["test_labels"][i] for i in (0, 1, -2, -1)]
    with Scorer.from_bundle(bundle, backend="auto") as scorer:
        results = scorer.score(picks)
        table = Table(
            title=escape(
                f"runtime ({scorer.backend_name}) on 4 test images ({data_note(manifest)})"
            )
        )
        for col in ("image", "label", "rec", "intra", "inter"):
            table.add_column(col)
        for r, lab in zip(results, labels, strict=True):
            vals = (
                [f"{r.scores[s]:.4f}" for s in ("rec", "intra", "inter")]
                if r.scores
                else [escape(r.error or ""), "", ""]
            )
            table.add_row(escape(Path(r.source).name), "abnormal" if lab else "normal", *vals)
    out_console.print(table)
    say(f"bundle in {bundle}: try `ddad-edge score {bundle} IMAGE --json`")


# Deployment (export, verify, build, score), benchmark (bench, parity), drift and decision
# (calibrate, report) commands live in their own modules and register themselves here.
from ddad_edge import cli_deploy  # noqa: E402

cli_deploy.register(app)
from ddad_edge import cli_bench  # noqa: E402

cli_bench.register(app)
from ddad_edge import cli_drift  # noqa: E402

cli_drift.register(app)
from ddad_edge import cli_decision  # noqa: E402

cli_decision.register(app)
from ddad_edge import cli_triton  # noqa: E402

cli_triton.register(app)
from ddad_edge import cli_node  # noqa: E402

cli_node.register(app)
from ddad_edge import cli_asr  # noqa: E402

cli_asr.register(app)
from ddad_edge import cli_ar  # noqa: E402

cli_ar.register(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
