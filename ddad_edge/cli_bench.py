"""Benchmark commands of the ddad-edge CLI: ``bench`` (latency, throughput, machine limits, cold
start, training) and ``parity`` (AUC parity of every backend against the PyTorch reference).

Thin: parse, call ``ddad_edge.benchmarks``, print.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ddad_edge.cli_common import (
    TRAIN_EXTRA,
    BundleArg,
    DataRootOpt,
    console,
    out_console,
    require_extra,
    say,
)
from ddad_edge.cli_common import fail as _fail
from ddad_edge.cli_common import note as _progress

if TYPE_CHECKING:
    from ddad_edge.benchmarks.bench import BenchConfig
    from ddad_edge.benchmarks.schema import BenchResult

PARITY_FAILED_EXIT = 3
"""Exit status of ``parity`` when a lane's |ΔAUC| exceeds its tolerance (1: usage/run error)."""


def _opt(help: str, *names: str, **kw: object) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help, **kw)


# The commands' arguments and options (shared by bench and parity where they mean the same).
Ckpt = Annotated[
    Path | None, _opt("PyTorch run folder for the reference (default: the bundle's source run).")
]
BACKENDS_HELP = (
    "Lanes, comma-separated: torch, ort, ort-fp16, ort-int8, ort-fp16w, "
    "torch-cuda[-fp16][-graphs], ort-cuda[-fp16], ort-trt[-fp16], trt[-fp16]; groups: cpu, "
    "gpu, default (all; lanes that cannot run here are reported as not available). torch is "
    "always included."
)
BenchOutput = Annotated[
    Path, _opt("Report folder (bench.json, bench.md, PNG plots).", "-o", "--output")
]
Images = Annotated[
    Path | None,
    _opt(
        "Folder of input images for the sweep (default: ../shared/data/kermany-cxr/test when "
        "present, else SYNTHETIC phantoms)."
    ),
]
Fullres = Annotated[
    Path | None,
    _opt(
        "Folder of full-resolution images for the end-to-end pass (default: "
        "../shared/data/kermany-fullres)."
    ),
]
Dicom = Annotated[
    Path | None,
    _opt("Folder of DICOM files for the end-to-end pass (default: ../shared/data/dicom-cxr)."),
]
Skip = Annotated[
    str,
    _opt(
        "Sections to skip, comma-separated: limits, sweep, paired, e2e, profile, coldstart, "
        "training, variants, triton (the Triton server lane)."
    ),
]
ParityJson = Annotated[
    Path | None,
    _opt("parity.json from `ddad-edge parity`, to decide which smaller-weight variant is kept."),
]
PairedRounds = Annotated[
    int, _opt("Interleaved rounds of torch and ort turns for the batch-1/64 speedups.", min=1)
]
PairedSeconds = Annotated[
    float, _opt("...each turn at least this many seconds (and 3 repetitions).", min=0.0)
]
Threads = Annotated[
    int, _opt("onnxruntime intra-op threads (0: the runtime's default, physical cores).")
]
TorchThreads = Annotated[
    int, _opt("torch CPU threads for the reference and training (0: torch's default).")
]
Quick = Annotated[bool, _opt("Smoke test: tiny machine-limit sizes (limits then NOT meaningful).")]
ParityOutput = Annotated[
    Path, _opt("Report folder (parity.json, parity.md, delta_auc.png).", "-o", "--output")
]
Split = Annotated[Path, _opt("Split manifest; its test part is scored.", "--split")]
ParityBackends = Annotated[str, _opt("Lanes to compare with torch FP32 (same names as `bench`).")]
Precision = Annotated[
    str,
    _opt(
        "Keep only the lanes of these precisions, comma-separated: fp32, fp16, int8 (the "
        "bundle's dual_int8 graph), fp16w, or all. torch is always included."
    ),
]
Graphs = Annotated[
    list[str] | None,
    _opt(
        "NAME=PATH: also compare this ONNX dual graph (run by the Scorer on onnxruntime CPU, "
        "FP32 tolerance). Repeatable."
    ),
]
MaxImages = Annotated[
    int | None,
    _opt("Score only this many test images, evenly spaced within each class (smoke runs)."),
]


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        _fail(f"{what}: expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        _fail(f"{what}: expected positive integers, got {text!r}")
    return values


def _run_dir(bundle: Path, ckpt: Path | None) -> Path | None:
    """--ckpt, else the run recorded in the bundle manifest (model.source_run) when it exists."""
    from ddad_edge.runtime.bundle import BundleError, read_manifest

    if ckpt is not None:
        return ckpt
    try:
        src = read_manifest(bundle).get("model", {}).get("source_run")
    except BundleError as e:
        _fail(str(e))
    if src and (Path(src) / "config.json").is_file():
        return Path(src)
    console.print(
        f"[yellow]warning:[/] the bundle's source run {escape(repr(src))} is not here; pass "
        "--ckpt RUN for the PyTorch reference",
        highlight=False,
    )
    return None


def _lanes(text: str, precision: str) -> list[str]:
    from ddad_edge.benchmarks.lanes import parse_lanes

    try:
        return parse_lanes(text, precision)
    except ValueError as e:
        _fail(str(e))
    return []


def _sections(skip: str) -> tuple[str, ...]:
    """The bench sections to run: all but those --skip names (an unknown name fails)."""
    from ddad_edge.benchmarks.bench import SECTIONS

    skipped = {s.strip() for s in skip.split(",") if s.strip()}
    if skipped - set(SECTIONS):
        _fail(f"--skip: unknown section(s) {', '.join(sorted(skipped - set(SECTIONS)))}")
    return tuple(s for s in SECTIONS if s not in skipped)


BackendsOpt = Annotated[str, _opt(BACKENDS_HELP)]
BatchesOpt = Annotated[str, _opt("Batch sizes of the sweep.")]
WarmupOpt = Annotated[int, _opt("Untimed repetitions before each measurement.")]
MinRepsOpt = Annotated[int, _opt("Sweep: at least this many timed repetitions per batch size...")]
MinSecondsOpt = Annotated[float, _opt("...and at least this many seconds...")]
MaxSecondsOpt = Annotated[float, _opt("...but stop after this many seconds.")]
LatencyRepsOpt = Annotated[int, _opt("Batch 1: at least this many timed repetitions...")]
LatencySecondsOpt = Annotated[float, _opt("...and at least this many seconds (stop after 5x).")]
E2eBatchOpt = Annotated[int, _opt("Files per batch in the end-to-end passes.")]
ColdstartRepsOpt = Annotated[int, _opt("Fresh processes per cold-start measurement.")]
TrainStepsOpt = Annotated[int, _opt("Timed training steps per side (fused / separate).")]
TritonClientsOpt = Annotated[str, _opt("Triton lane: numbers of concurrent clients.")]
TritonFilesOpt = Annotated[int, _opt("Triton lane: files sent per point.")]
TritonFilesPerRequestOpt = Annotated[
    str, _opt("Triton lane: numbers of files per request (each up to --max-batch 64).")
]
TritonQueueDelayUsOpt = Annotated[
    int, _opt("Triton lane: the dynamic batcher's longest wait, µs (0: the default, 2000).")
]
TritonInstancesOpt = Annotated[
    str, _opt("Triton lane: numbers of ddad_score instances, one server each.")
]


def bench(
    bundle: BundleArg,
    output: BenchOutput = Path("bench"),
    backends: BackendsOpt = "default",
    precision: Precision = "all",
    batches: BatchesOpt = "1,8,64,256",
    ckpt: Ckpt = None,
    images: Images = None,
    fullres: Fullres = None,
    dicom: Dicom = None,
    warmup: WarmupOpt = 2,
    min_reps: MinRepsOpt = 3,
    min_seconds: MinSecondsOpt = 1.0,
    max_seconds: MaxSecondsOpt = 8.0,
    latency_reps: LatencyRepsOpt = 20,
    latency_seconds: LatencySecondsOpt = 2.0,
    paired_rounds: PairedRounds = 10,
    paired_seconds: PairedSeconds = 0.3,
    e2e_batch: E2eBatchOpt = 16,
    coldstart_reps: ColdstartRepsOpt = 3,
    train_steps: TrainStepsOpt = 5,
    threads: Threads = 0,
    torch_threads: TorchThreads = 0,
    skip: Skip = "",
    parity: ParityJson = None,
    quick: Quick = False,
    triton_clients: TritonClientsOpt = "1,2,4,8,16",
    triton_files: TritonFilesOpt = 1024,
    triton_files_per_request: TritonFilesPerRequestOpt = "1,8,16",
    triton_queue_delay_us: TritonQueueDelayUsOpt = 0,
    triton_instances: TritonInstancesOpt = "1,2",
) -> None:
    """Latency, throughput and machine limits of every backend vs the PyTorch eager reference.

    Reads the bundle, its source run (or --ckpt) and input images; writes bench.json, bench.md,
    latency_vs_batch.png and throughput_vs_batch.png into the output folder.
    """
    require_extra("bench", "train", TRAIN_EXTRA)
    from ddad_edge.benchmarks import inputs
    from ddad_edge.benchmarks.bench import BenchConfig
    from ddad_edge.benchmarks.latency import Budget

    cfg = BenchConfig(
        bundle=bundle,
        lanes=_lanes(backends, precision),
        batches=_ints(batches, "--batches"),
        images=[],  # drawn into a scratch folder by _run_bench
        images_note="",
        work_dir=Path(),
        sections=_sections(skip),
        run_dir=_run_dir(bundle, ckpt),
        parity=json.loads(parity.read_text()) if parity else None,
        fullres=fullres or inputs.shared_folder("kermany-fullres"),
        dicom=dicom or inputs.shared_folder("dicom-cxr"),
        latency_budget=Budget(warmup, latency_reps, latency_seconds, 5 * latency_seconds),
        sweep_budget=Budget(min(warmup, 1), min_reps, min_seconds, max_seconds),
        e2e_batch=e2e_batch,
        paired_rounds=paired_rounds,
        paired_turn_seconds=paired_seconds,
        coldstart_reps=coldstart_reps,
        train_steps=train_steps,
        quick_limits=quick,
        intra_op_threads=threads or None,
        torch_threads=torch_threads or None,
        triton_clients=tuple(_ints(triton_clients, "--triton-clients")),
        triton_files=triton_files,
        triton_files_per_request=tuple(
            _ints(triton_files_per_request, "--triton-files-per-request")
        ),
        triton_instances=tuple(_ints(triton_instances, "--triton-instances")),
        triton_queue_delay_us=triton_queue_delay_us or None,
    )
    result, report = _run_bench(cfg, images, output)
    _print_bench(result)
    say(f"report: {report} (+ bench.json, PNG plots)")


def _run_bench(cfg: BenchConfig, images: Path | None, output: Path) -> tuple[BenchResult, Path]:
    """Draw the image pool into a scratch folder, run the bench with ``cfg`` and write its
    report into ``output``; (result, bench.md path)."""
    from ddad_edge.benchmarks import inputs
    from ddad_edge.benchmarks.bench import run_bench
    from ddad_edge.benchmarks.bench_report import write_bench_report
    from ddad_edge.runtime.bundle import BundleError

    with tempfile.TemporaryDirectory(prefix="ddad-bench-") as scratch:
        try:
            pool, note, kermany = inputs.image_pool(images, max(cfg.batches), Path(scratch))
        except ValueError as e:
            _fail(str(e))
        work_dir = Path(scratch) / "variants"
        cfg = replace(cfg, images=pool, images_note=note, kermany=kermany, work_dir=work_dir)
        try:
            result = run_bench(cfg, _progress)
        except (BundleError, FileNotFoundError) as e:
            _fail(str(e))
        return result, write_bench_report(result, output)["markdown"]


def _print_bench(result: BenchResult) -> None:
    from ddad_edge.benchmarks.report import fmt
    from ddad_edge.benchmarks.schema import lane_point

    t = Table(
        title=f"batch-1 scoring latency and throughput ({result['model']['kind']} "
        f"K={result['model']['k']})"
    )
    for c in (
        "lane",
        "p50 ms",
        "p99 ms",
        "vs torch",
        *[f"b{b} img/s" for b in result["config"]["batches"]],
    ):
        t.add_column(c, justify="left" if c == "lane" else "right", no_wrap=c == "lane")
    for name, e in result["lanes"].items():
        if not e.get("available"):
            continue
        p1 = (lane_point(e, 1) or {}).get("scoring_latency", {})
        t.add_row(
            name,
            fmt(p1.get("p50_ms")),
            fmt(p1.get("p99_ms")),
            fmt(e.get("vs_torch", {}).get("1", {}).get("speedup")) + "x",
            *[
                fmt((lane_point(e, b) or {}).get("throughput_ips"), ".0f")
                for b in result["config"]["batches"]
            ],
        )
    out_console.print(t)
    for name, e in result["lanes"].items():
        if not e.get("available"):
            out_console.print(
                f"{name}: not available: {escape(str(e.get('reason')))}", highlight=False
            )
    for tg in result.get("targets", []):
        status = {True: "[green]met[/]", False: "[red]not met[/]", None: "not measured"}[tg["met"]]
        out_console.print(
            f"target: {escape(tg['target'])}: {escape(tg['measured'])} ({status})", highlight=False
        )


def parity(
    bundle: BundleArg,
    split: Split,
    output: ParityOutput = Path("parity"),
    backends: ParityBackends = "default",
    precision: Precision = "all",
    ckpt: Ckpt = None,
    graph: Graphs = None,
    n_boot: Annotated[int, _opt("Paired bootstrap resamples for the ΔAUC interval.")] = 1000,
    seed: Annotated[int, _opt("Seed of the bootstrap.")] = 0,
    max_images: MaxImages = None,
    data_root: DataRootOpt = None,
) -> None:
    """AUC/AP parity of every backend and precision against the PyTorch FP32 reference.

    Reads the bundle, its source run (or --ckpt) and the split's test images; writes parity.json,
    parity.md and delta_auc.png. Exits with status 3 when a lane's |ΔAUC| exceeds its tolerance
    (FP32: 0.001; FP16, INT8, FP16-weight: 0.003).
    """
    require_extra("parity", "train", TRAIN_EXTRA)
    from ddad_edge.benchmarks.lanes import LaneUnavailable
    from ddad_edge.benchmarks.parity import ParityConfig, run_parity_bundle
    from ddad_edge.benchmarks.parity_report import write_parity_report
    from ddad_edge.data import SplitError
    from ddad_edge.runtime.bundle import BundleError

    extra = {}
    for item in graph or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            _fail(f"--graph {item!r}: expected NAME=PATH to an existing ONNX file")
        extra[name] = Path(path)
    lanes = [n for n in _lanes(backends, precision) if n != "torch"]
    run_dir = _run_dir(bundle, ckpt)
    with tempfile.TemporaryDirectory(prefix="ddad-parity-") as scratch:
        cfg = ParityConfig(
            bundle=bundle,
            run_dir=run_dir,
            split=split,
            lanes=lanes,
            work_dir=Path(scratch),
            extra_graphs=extra,
            n_boot=n_boot,
            seed=seed,
            max_images=max_images,
            data_root=data_root,
        )
        try:
            result = run_parity_bundle(cfg, _progress)
        except (BundleError, SplitError, LaneUnavailable, FileNotFoundError, ValueError) as e:
            _fail(str(e))
    paths = write_parity_report(result, output)
    _print_parity(result)
    say(f"report: {paths['markdown']} (+ parity.json, delta_auc.png)")
    if not result["passed"]:
        for v in result["violations"]:
            console.print(f"[bold red]parity FAILED:[/] {escape(v)}", highlight=False)
        raise typer.Exit(PARITY_FAILED_EXIT)


def _print_parity(result: dict) -> None:
    from ddad_edge.benchmarks.report import fmt

    names = list(result["reference"]["scores"])  # rec, intra, inter (and asr)
    t = Table(
        title=f"ΔAUC vs torch FP32 on {result['n_images']} test images "
        f"({result['config'].get('data_note', '')})"
    )
    for c in ("lane", *names, "tolerance", "result"):
        t.add_column(c, justify="left" if c == "lane" else "right", no_wrap=c == "lane")
    ref = result["reference"]["scores"]
    t.add_row("torch (AUC)", *[fmt(ref[n]["auc"], ".4f") for n in names], "", "")
    for name, e in result["lanes"].items():
        t.add_row(
            name,
            *[fmt(e["scores"][n]["delta_auc"], "+.4f") if n in e["scores"] else "" for n in names],
            f"{e['tolerance']:.3f}",
            "pass" if e["passed"] else "[red]FAIL[/]",
        )
    out_console.print(t)
    for name, reason in result.get("unavailable", {}).items():
        out_console.print(f"{name}: not available: {escape(reason)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``bench`` and ``parity`` to the app."""
    app.command("bench")(bench)
    app.command("parity")(parity)
