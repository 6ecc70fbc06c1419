"""Deployment commands: export, verify, build, score. Thin: parse, call the library, print.

Library errors become one red line on stderr naming the file and the reason, and exit code 1
(no tracebacks). Heavy imports (torch, onnx, onnxruntime, TensorRT) happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ddad_edge.cli_common import (
    BundleArg,
    CalibrationOpt,
    OperatingPointOpt,
    PublicKeyOpt,
    command_help,
    fail,
    note,
    out_console,
    require_extra,
    say,
    warn,
)
from ddad_edge.runtime.loaderrors import DEFAULT_MAX_PIXELS

# export's options that need more than a line.
CkptOpt = Annotated[
    Path,
    typer.Option(
        "--ckpt", help="Run folder written by `train` (config.json, module_A.pt, module_B.pt)."
    ),
]
ParityImagesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--images", help="Parity images (files or folders); default: the run's test data."
    ),
]
ParitySplitOpt = Annotated[
    Path | None,
    typer.Option(help="Split manifest of the run: its test part gives the parity images."),
]
ModuleGraphsOpt = Annotated[
    bool, typer.Option(help="Also write module_A_fp32.onnx and module_B_fp32.onnx.")
]
Fp16ModuleGraphsOpt = Annotated[
    bool, typer.Option(help="Also write module_A_fp16.onnx and module_B_fp16.onnx.")
]
Int8Opt = Annotated[
    bool,
    typer.Option(help="Also write dual_int8.onnx (8-bit bottleneck weights, gated like FP16)."),
]
SignKeyOpt = Annotated[
    Path | None,
    typer.Option(
        help="PEM elliptic-curve private key: sign the bundle (bundle.sig; needs the "
        "signing extra). Keep this key offline, in the release pipeline."
    ),
]
AsrOpt = Annotated[
    bool,
    typer.Option(
        help="Fuse the run's ASR network (RUN/asr.pt, `train-asr`) after the dual graphs "
        "when it has one: output and score asr."
    ),
]


def export(
    ckpt: CkptOpt,
    output: Annotated[Path, typer.Option("-o", "--output", help="Bundle folder to create.")],
    images: ParityImagesOpt = None,
    split: ParitySplitOpt = None,
    n_parity: Annotated[int, typer.Option(help="Images in the parity gate.")] = 32,
    n_golden: Annotated[int, typer.Option(help="Of those, images stored in golden.npz.")] = 8,
    module_graphs: ModuleGraphsOpt = True,
    fp16_module_graphs: Fp16ModuleGraphsOpt = False,
    int8: Int8Opt = True,
    force: Annotated[
        bool, typer.Option(help="Replace an existing bundle at OUTPUT (after the gate passed).")
    ] = False,
    allow_incomplete: Annotated[
        bool, typer.Option(help="Export a run that has not finished its epochs.")
    ] = False,
    sign_key: SignKeyOpt = None,
    asr: AsrOpt = True,
) -> None:
    """Export a trained run as a bundle: fused ONNX graphs, golden vectors, manifest.

    Reads the run folder (checkpoints, config.json) and real images (the run's data, or --split /
    --images). Writes OUTPUT/: dual_fp32.onnx, dual_fp16.onnx, dual_int8.onnx,
    module_{A,B}_fp32.onnx, their weights (weights_fp32.bin, weights_fp16.bin: each weight once
    per precision), golden.npz, manifest.json (and bundle.sig with --sign-key). Every graph must
    first match the PyTorch FP32 reference on those images (FP32: 1e-5 of each output's range;
    FP16 and INT8: 2e-2); otherwise nothing is written.
    """
    require_extra("export", "train", ("torch", "onnx"))
    from ddad_edge.export.bundle import ExportError, export_bundle
    from ddad_edge.export.parity import ParityError
    from ddad_edge.runtime.bundle import BundleError

    try:
        res = export_bundle(
            ckpt,
            output,
            images=images,
            split=split,
            n_parity=n_parity,
            n_golden=n_golden,
            module_graphs=module_graphs,
            fp16_module_graphs=fp16_module_graphs,
            int8=int8,
            overwrite=force,
            allow_incomplete=allow_incomplete,
            sign_key=sign_key,
            asr=asr,
        )
    except (ExportError, ParityError, BundleError, OSError, ValueError) as e:
        fail(e)
    out_console.print(_parity_table(res.manifest, res.parity))
    for r in res.omitted:
        warn(
            f"{r.graph} left out: it failed its parity gate (worst {r.worst:.2e} > tolerance"
            f" {r.tolerance:g}); the bundle has the other precisions"
        )
    _warn_asr_agreement(res.manifest)
    signed = ", signed" if sign_key is not None else ""
    say(f"wrote {output} ({len(res.manifest['files'])} files{signed})")


def _warn_asr_agreement(manifest: dict) -> None:
    """Repeat train-asr's warning when the fused ASR network failed its agreement check."""
    from ddad_edge.asr import TRAINED_ON, agreement_problem

    section = manifest.get("asr") or {}
    part = (section.get("trained_on") or {}).get("part", "normal_train")
    problem = agreement_problem(section.get("inter_agreement"), TRAINED_ON.get(part, part))
    if problem:
        warn(
            f"{problem}; its asr score is in the bundle: check it on labelled images, or "
            "export with --no-asr"
        )


def _parity_table(m: dict, parity: list) -> Table:
    """The export's parity gate, one row per graph checked."""
    table = Table(
        title=escape(
            f"{m['model']['kind']} K={m['model']['k']}: parity on "
            f"{m['parity']['images']['n']} images ({m['parity']['images']['origin']})"
        )
    )
    for col in ("graph", "MB", "max error / scale", "tolerance", "image scores (rel)", "ok"):
        table.add_column(col, justify="left" if col == "graph" else "right")
    sizes = {g: e["bytes"] for g, e in m["graphs"].items()}
    for r in parity:
        key = r.graph.split(" ")[0]
        mb = f"{sizes[key] / 1e6:.1f}" if key == r.graph else ""
        sc = max(r.score_errors.values()) if r.score_errors else None
        table.add_row(
            r.graph,
            mb,
            f"{r.worst:.2e}",
            f"{r.tolerance:g}",
            "" if sc is None else f"{sc:.1e}",
            "yes" if r.passed else "NO",
        )
    return table


def verify(
    bundle: BundleArg,
    backend: Annotated[
        str,
        typer.Option(
            help="auto, ort (CUDA if available, else CPU), ort-cpu, ort-cuda, ort-trt or trt."
        ),
    ] = "ort",
    precision: Annotated[
        str, typer.Option(help="fp32, fp16, int8 or all (every precision the bundle has).")
    ] = "all",
    graph: Annotated[str, typer.Option(help="dual or modules.")] = "dual",
    tolerance: Annotated[
        float | None,
        typer.Option(
            help="Override the tolerance (max error / output scale); default fp32 1e-5, fp16 2e-2."
        ),
    ] = None,
    public_key: PublicKeyOpt = None,
) -> None:
    """Check a bundle: file hashes, then replay golden.npz on a backend and compare with the
    stored PyTorch FP32 outputs.

    Reads BUNDLE (writes nothing). Prints, per output, the max abs error relative to the output's
    scale (its range, or magnitude when larger). Exit code 1 when a file does not match its hash
    or an error is past the tolerance.
    """
    from ddad_edge.runtime.backends import BackendUnavailable
    from ddad_edge.runtime.bundle import PRECISIONS, BundleError, graph_key, open_bundle
    from ddad_edge.runtime.scorer import Scorer, make_backends

    if precision not in (*PRECISIONS, "all"):
        fail(f"--precision must be {', '.join(PRECISIONS)} or all, got {precision!r}")
    try:
        b = open_bundle(bundle, verify=True, public_key=public_key)
    except BundleError as e:
        fail(e)
    have = [p for p in PRECISIONS if graph_key("dual", p) in b.graphs()]
    precs = have if precision == "all" else [precision]
    if public_key is not None:
        say(f"{bundle}: signature valid for {public_key}")
    say(f"{bundle}: manifest consistent; all {len(b.manifest['files'])} files match their sha256")
    failed = False
    for p in precs:
        try:
            backends, prec, notes = make_backends(b, backend, p, graph)
            scorer = Scorer(b, backends, prec, notes=notes)
            report = scorer.replay_golden(tolerance=tolerance)
            desc = scorer.describe()
            scorer.close()
        except (BackendUnavailable, BundleError, ValueError) as e:
            fail(e)
        out_console.print(_golden_table(report, desc))
        sc = ", ".join(f"{k} {v:.1e}" for k, v in report["score_errors"].items())
        out_console.print(f"image scores, max relative error: {sc}", highlight=False)
        failed |= not report["passed"]
    if failed:
        fail(f"{bundle}: golden vectors do not match within tolerance")
    out_console.print("verify passed", highlight=False)


def _golden_table(report: dict[str, Any], desc: dict[str, Any]) -> Table:
    """One golden replay (``Scorer.replay_golden``): per output, the max abs error, the
    output's scale, their ratio against the tolerance."""
    table = Table(
        title=f"{report['graph']} on {desc['backend']} ({desc['device']}): "
        f"{report['n']} golden images"
    )
    for col in ("output", "max abs error", "scale", "error / scale", "tolerance", "ok"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for name, e in report["errors"].items():
        ok = e["rel"] <= report["tolerance"]
        table.add_row(
            name,
            f"{e['max_abs']:.3e}",
            f"{e['scale']:.4g}",
            f"{e['rel']:.2e}",
            f"{report['tolerance']:g}",
            "yes" if ok else "NO",
        )
    return table


def build(
    bundle: BundleArg,
    precision: Annotated[str, typer.Option(help="fp16 (from dual_fp16.onnx) or fp32.")] = "fp16",
    max_batch: Annotated[int, typer.Option(help="Largest batch of the optimization profile.")] = 64,
    opt_batch: Annotated[
        int | None, typer.Option(help="Batch the engine is tuned for (default: max batch).")
    ] = None,
    workspace_mib: Annotated[int, typer.Option(help="Builder workspace memory limit, MiB.")] = 1024,
    force: Annotated[
        bool, typer.Option(help="Rebuild even when a matching engine exists.")
    ] = False,
) -> None:
    """Build a TensorRT engine for this machine's GPU (needs TensorRT and an NVIDIA GPU).

    Reads BUNDLE/dual_<precision>.onnx (hash-checked). Writes
    BUNDLE/engines/<gpu>-trt<version>-<precision>.plan, its JSON sidecar and the timing cache
    BUNDLE/engines/timing.cache. Skips the build when a matching engine exists (--force rebuilds).
    """
    from ddad_edge.runtime.backends import BackendUnavailable
    from ddad_edge.runtime.bundle import BundleError

    try:
        from ddad_edge.export.trt_build import BuildError, build_engine

        res = build_engine(
            bundle,
            precision=precision,
            max_batch=max_batch,
            opt_batch=opt_batch,
            workspace_mib=workspace_mib,
            force=force,
        )
    except (BackendUnavailable, BundleError, BuildError, ValueError, OSError) as e:
        fail(e)
    verb = "built" if res.built else "up to date (use --force to rebuild):"
    say(f"{verb} {res.plan}")


# score's options that need more than a line of help.
ScoreBackendOpt = Annotated[
    str,
    typer.Option(help="auto (trt > ort-cuda > ort-cpu), trt, ort, ort-trt, ort-cuda or ort-cpu."),
]
ScorePrecisionOpt = Annotated[
    str, typer.Option(help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or int8.")
]
HugePagesOpt = Annotated[
    bool,
    typer.Option(
        help="On CPU, after the first inference, ask Linux to back this process's densely "
        "written memory (onnxruntime's weights) with transparent huge pages (advice only)."
    ),
]
TritonOpt = Annotated[
    str | None,
    typer.Option(
        help="Score on a Triton server instead (HOST:PORT for HTTP, or grpc://HOST:PORT); "
        "then there is no BUNDLE argument, every argument is an image, and calibration is "
        "the server's (`ddad-edge triton --calibration`)."
    ),
]
MaxPixelsOpt = Annotated[
    int,
    typer.Option(
        help="Largest image a file may declare, in pixels (DICOM: rows x columns x frames x "
        "samples), checked before decoding; larger files are refused. 0: no limit.",
        min=0,
    ),
]


def score(
    bundle: Annotated[
        Path, typer.Argument(help="Bundle folder written by `export` (with --triton: an image).")
    ],
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="Images: PNG, JPEG, DICOM, ...")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON record per input on stdout (JSON Lines).")
    ] = False,
    heatmaps: Annotated[
        Path | None, typer.Option(help="Folder for overlay PNGs (<input stem>.<map>.png).")
    ] = None,
    heatmap_map: Annotated[
        str, typer.Option(help="Map drawn in the overlays: rec, intra or inter.")
    ] = "inter",
    backend: ScoreBackendOpt = "auto",
    precision: ScorePrecisionOpt = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 64,
    workers: Annotated[
        int, typer.Option(help="Threads decoding images (0: one per physical core).")
    ] = 0,
    calibration: CalibrationOpt = None,
    operating_point: OperatingPointOpt = None,
    huge_pages: HugePagesOpt = False,
    public_key: PublicKeyOpt = None,
    triton: TritonOpt = None,
    concurrency: Annotated[int, typer.Option(help="With --triton: requests in flight.")] = 8,
    files_per_request: Annotated[
        int, typer.Option(help="With --triton: the most files one request carries (<= 64).")
    ] = 8,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Gate and score images with a bundle: image-level rec, intra and inter scores, and with
    --calibration a flag (abnormal/normal) at the calibrated operating point.

    Reads BUNDLE, the images and --calibration; writes overlay PNGs into --heatmaps DIR when given
    (never over an input). DICOM headers go through the input gate first: an image the model
    does not cover (not CR/DX, not chest, not PA/AP, colour, ...) is abstained with its reason,
    not scored; PNG/JPEG pass with a note that nothing could be checked. Prints a table, or with
    --json one JSON record per input ({"source", "status": scored|abstained|error, "scores",
    "flag", "threshold", "operating_point", "reason", "notes", "error", "warnings"[, "heatmap"]})
    on stdout.
    An input that cannot be read gets an error record and the others are still scored: the exit
    code is non-zero only if ALL inputs failed (or the bundle/backend/calibration cannot be used).
    With --triton the images go to the server's ddad_score model (`ddad-edge triton`), which
    gates and scores them with this runtime: the records are the same.
    Files that declare more than --max-pixels pixels are refused before decoding.
    """
    _check_score_options(heatmap_map, workers)
    if triton is not None:
        if heatmaps is not None or calibration is not None:
            fail("--heatmaps and --calibration need local scoring (the server has its own)")
        files = [bundle, *(inputs or [])]
        _report(_score_triton(triton, files, concurrency, files_per_request), None, as_json)
        return
    if not inputs:
        fail("no images given (usage: ddad-edge score BUNDLE IMAGE...)")
    results, written = _score_local(
        inputs,
        heatmaps,
        heatmap_map,
        bundle,
        backend=backend,
        precision=precision,
        max_batch=batch_size,
        workers=workers or None,
        calibration=calibration,
        operating_point=operating_point,
        huge_pages=huge_pages,
        public_key=public_key,
        max_pixels=max_pixels or None,
    )
    _report(results, written, as_json)


def _check_score_options(heatmap_map: str, workers: int) -> None:
    """One-line errors for score options out of range."""
    from ddad_edge.runtime.scores import score_names

    if heatmap_map not in score_names(True):
        fail(f"--heatmap-map must be one of {', '.join(score_names(True))}")
    if workers < 0:
        fail(f"--workers must be >= 0 (0: one per physical core), got {workers}")


def _score_local(
    inputs: list[Path], heatmaps: Path | None, heatmap_map: str, bundle: Path, **options: Any
) -> tuple[list, list[Path | None] | None]:
    """Score the files with a Scorer on ``bundle`` (``_open_scorer(bundle, **options)``);
    (results, the overlay written per result when ``heatmaps`` is given, else None)."""
    scorer = _open_scorer(bundle, **options)
    if heatmaps is not None and heatmap_map not in scorer.score_names:
        scorer.close()
        fail(f"{bundle}: has no {heatmap_map} map (it gives {', '.join(scorer.score_names)})")
    with scorer:
        results = scorer.score([str(p) for p in inputs], maps=heatmaps is not None)
    if heatmaps is None:
        return results, None
    return results, _write_heatmaps(scorer, results, heatmaps, heatmap_map)


def _open_scorer(bundle: Path, *, huge_pages: bool, **options: Any) -> Any:
    """``Scorer.from_bundle(bundle, **options)`` (huge pages as its warm-up when asked), with a
    note naming the backend, device, precision and model; one-line error when it cannot open."""
    from ddad_edge.runtime.backends import BackendUnavailable
    from ddad_edge.runtime.bundle import BundleError
    from ddad_edge.runtime.hugepages import for_cpu_backend
    from ddad_edge.runtime.scorer import Scorer

    try:
        scorer = Scorer.from_bundle(
            bundle, warm_up=for_cpu_backend if huge_pages else None, **options
        )
    except (BackendUnavailable, BundleError, ValueError) as e:
        fail(e)
    d = scorer.describe()
    model = f"{d['model']['kind']} K={d['model']['k']}"
    note(f"{d['backend']} on {d['device']}, {d['precision']}, {model}")
    return scorer


def _score_triton(url: str, paths: list[Path], concurrency: int, per_request: int) -> list:
    """Score files on a Triton server (``runtime.triton_client``); one record per file."""
    from ddad_edge.runtime.triton_client import TritonClientError, TritonScorer

    try:
        client = TritonScorer(url, concurrency=concurrency, files_per_request=per_request)
    except (TritonClientError, ValueError) as e:
        fail(e)
    if not client.ready():
        fail(f"Triton server {url}: model {client.model} is not ready (or the server is down)")
    note(f"Triton {client.protocol} {client.address}, model {client.model}")
    return client.score([str(p) for p in paths])


def _report(results: list, heatmaps: list[Path | None] | None, as_json: bool) -> None:
    """Print the records and the counts per status; exit 1 when every input failed."""
    from ddad_edge.runtime.scorer import summarize

    _print_scores(results, heatmaps, as_json)
    counts = summarize(results)
    note(", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("scored", "abstained")))
    n_bad = counts["error"]
    if n_bad:
        note(f"{n_bad} of {len(results)} inputs could not be scored")
    if results and n_bad == len(results):
        raise typer.Exit(1)


def _results_table(results: list, score_names: tuple[str, ...]) -> Table:
    """input, status, scores, flag, and the reason / error / notes / warnings of each result."""
    table = Table()
    table.add_column("input")
    table.add_column("status")
    for n in score_names:
        table.add_column(n, justify="right")
    table.add_column("flag")
    table.add_column("reason / error / notes / warnings")
    for r in results:
        s = r.scores or {}
        why = r.error or r.reason or "; ".join([*r.notes, *r.warnings])
        table.add_row(
            escape(r.source),
            r.status,
            *(f"{s[n]:.6g}" if n in s else "" for n in score_names),
            r.flag or "",
            escape(why or ""),
        )
    return table


def _write_heatmaps(scorer: Any, results: list, out_dir: Path, name: str) -> list[Path | None]:
    """Overlay PNGs of map ``name`` for the scored results, on the bundle's colour scale."""
    from ddad_edge.runtime.heatmaps import ImageLoadError, write_overlays

    vmax = scorer.bundle.manifest.get("display", {}).get("heatmap_vmax", {}).get(name)
    try:
        return write_overlays(
            [r.source for r in results],
            [r.maps[name] if r.maps else None for r in results],
            out_dir,
            score=name,
            vmax=vmax,
        )
    except (ImageLoadError, OSError) as e:
        fail(e)


def _print_scores(results: list, heatmaps: list[Path | None] | None, as_json: bool) -> None:
    """JSON Lines (with each overlay's path when ``heatmaps`` is given) or a table, on stdout."""
    from ddad_edge.runtime.scores import SCORE_NAMES

    names = next((tuple(r.scores) for r in results if r.scores), SCORE_NAMES)
    if as_json:
        for i, r in enumerate(results):
            rec = r.to_json()
            if heatmaps is not None:
                rec["heatmap"] = str(heatmaps[i]) if heatmaps[i] else None
            print(json.dumps(rec))
        return
    out_console.print(_results_table(results, names))


def register(app: typer.Typer) -> None:
    """Add export, verify, build and score to the app."""
    for func in (export, verify, build, score):
        app.command(help=command_help(func))(func)
