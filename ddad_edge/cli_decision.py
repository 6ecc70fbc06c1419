"""Decision commands: calibrate (an operating point on known normals) and report (DICOM SR + SC).
Thin: parse, call the library (``runtime/calibration.py``, ``runtime/dicom_results.py``), print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ddad_edge.cli_common import (
    BundleArg,
    CalibrationOpt,
    OperatingPointOpt,
    command_help,
    fail,
    out_console,
    say,
)


def _images(folder: Path) -> list[str]:
    from ddad_edge.data import IMAGE_EXTS

    if not folder.is_dir():
        fail(f"{folder}: not a folder")
    files = [str(p) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_EXTS]
    if not files:
        fail(f"{folder}: no images found")
    return files


def _sets(
    split_path: Path | None,
    normals: Path | None,
    abnormals: Path | None,
    from_test: bool,
    seed: int,
) -> dict[str, Any]:
    """The calibration normals / abnormals / held-out normals and where they came from."""
    from ddad_edge.data import SplitError, calibration_sets, read_manifest

    if (split_path is None) == (normals is None):
        fail("give exactly one of --split or --normals")
    if split_path is not None:
        try:
            sets = calibration_sets(read_manifest(split_path), from_test=from_test, seed=seed)
        except SplitError as e:
            fail(e)
        sets["split_sha256"] = read_manifest(split_path)["sha256"]
        return sets
    return {
        "normals": _images(normals),
        "abnormals": _images(abnormals) if abnormals is not None else [],
        "held_out_normals": [],
        "description": f"site normals in {normals}"
        + (f"; abnormals in {abnormals}" if abnormals else ""),
    }


def _score_sets(bundle: Path, sets: dict[str, Any], score: str) -> tuple[dict[str, Any], list[Any]]:
    """(the bundle's manifest, [(scores, excluded) of the normals, abnormals and held-out
    normals]), scored on onnxruntime CPU in FP32 (``calibration.score_for_calibration``); a
    one-line error when the bundle does not give ``score`` (asr without ASR)."""
    from ddad_edge.runtime.backends import BackendUnavailable
    from ddad_edge.runtime.bundle import BundleError
    from ddad_edge.runtime.calibration import score_for_calibration
    from ddad_edge.runtime.scorer import Scorer

    try:
        scorer = Scorer.from_bundle(bundle, backend="ort-cpu", precision="fp32")
    except (BackendUnavailable, BundleError, ValueError) as e:
        fail(e)
    with scorer:
        if score not in scorer.score_names:
            fail(f"{bundle}: has no {score} score (it gives {', '.join(scorer.score_names)})")
        parts = ("normals", "abnormals", "held_out_normals")
        return scorer.bundle.manifest, [score_for_calibration(scorer, sets[p]) for p in parts]


def calibrate(
    bundle: BundleArg,
    split_path: Annotated[
        Path | None, typer.Option("--split", help="Split manifest: its calibration part.")
    ] = None,
    normals: Annotated[
        Path | None, typer.Option(help="Folder of known-normal images no training has seen.")
    ] = None,
    abnormals: Annotated[
        Path | None, typer.Option(help="Folder of labelled abnormal images (sensitivity).")
    ] = None,
    from_test: Annotated[
        bool,
        typer.Option(help="With --split: calibrate on half the test normals (see help)."),
    ] = False,
    specificity: Annotated[
        list[float] | None, typer.Option(help="Target specificity; repeat for several points.")
    ] = None,
    default: Annotated[
        float | None, typer.Option(help="The point `score` uses by default (nearest 0.95).")
    ] = None,
    score: Annotated[
        str,
        typer.Option(help="Image score: inter (default), intra, rec, or asr (bundles with ASR)."),
    ] = "inter",
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and of --from-test.")] = 0,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Calibration file (JSON) to write.")
    ] = Path("calibration.json"),
) -> None:
    """Set operating points: thresholds on an image score at target specificities, from known
    normal images the model was not trained on, with bootstrap 95% intervals of each threshold
    and, when labelled abnormals are given, of the sensitivity it gives.

    Sources (one of): --split's calibration part (`split --calibration N`: normals held out of D
    and Du), abnormals from its test part; --split --from-test: a seeded half of the test normals
    calibrates and the other half measures the specificity actually reached; --normals DIR (a
    site's own normals) [--abnormals DIR]. The score is inter by default (for AE-U the runtime's
    inter is the refined one, divided by sigma). Images the input gate abstains on, or that
    cannot be read, are left out and listed. Reads BUNDLE and the images; writes the calibration
    file, which is bound to this bundle's digest (`score --calibration` refuses it for another).
    """
    from ddad_edge.runtime.calibration import (
        DEFAULT_SPECIFICITIES,
        CalibrationError,
        calibrate_scored,
        write_calibration,
    )
    from ddad_edge.runtime.scores import score_names

    if score not in score_names(True):
        fail(f"--score must be one of {', '.join(score_names(True))}")
    sets = _sets(split_path, normals, abnormals, from_test, seed)
    manifest, scored = _score_sets(bundle, sets, score)
    try:
        record = calibrate_scored(
            manifest,
            *scored,
            score=score,
            source=sets["description"],
            specificities=tuple(specificity or DEFAULT_SPECIFICITIES),
            n_boot=n_boot,
            seed=seed,
            default_specificity=default,
            split_sha256=sets.get("split_sha256"),
            split_part=sets.get("part"),
        )
    except CalibrationError as e:
        fail(e)
    write_calibration(record, output)
    _print_points(record, output)


def _print_points(record: dict[str, Any], output: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{record['score']} thresholds ({record['normals']['source']})")
    for col in ("specificity", "threshold", "95% interval", "sensitivity", "95% interval"):
        table.add_column(col, justify="right")
    held = any("specificity_held_out" in p for p in record["operating_points"])
    if held:
        table.add_column("held-out specificity", justify="right")
    for p in record["operating_points"]:
        ti = p["threshold_interval"]
        si = p.get("sensitivity_interval")
        row = [
            f"{p['specificity']:g}",
            f"{p['threshold']:.6g}",
            f"{ti[0]:.6g}-{ti[1]:.6g}",
            f"{p['sensitivity']:.3f}" if "sensitivity" in p else "",
            f"{si[0]:.3f}-{si[1]:.3f}" if si else "",
        ]
        if held:
            row.append(f"{p['specificity_held_out']:.3f}")
        table.add_row(*row)
    out_console.print(table)
    n_ex = len(record["normals"]["excluded"])
    say(
        f"{record['normals']['n']} normals used ({n_ex} left out); wrote {output} "
        f"(bundle {record['bundle_digest'][:12]}...)"
    )


def report(
    bundle: BundleArg,
    inputs: Annotated[list[Path], typer.Argument(help="Images: DICOM (and PNG, JPEG, ...).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the results.")],
    calibration: CalibrationOpt = None,
    operating_point: OperatingPointOpt = None,
    heat: Annotated[str, typer.Option(help="Map drawn in the Secondary Capture.")] = "inter",
) -> None:
    """Gate, score and decide, and write the results as DICOM objects next to JSON records.

    For each DICOM input: <stem>.sr.dcm, a Structured Report (TID 1500: abnormal/normal at the
    calibrated operating point, or not evaluated with the reason; the image scores and the
    threshold; the algorithm and bundle digest; the source image referenced), and when it was
    scored <stem>.sc.dcm, a Secondary Capture of the heat map over the image marked "not for
    diagnostic use"; both in the source's study, in new series. Non-DICOM inputs get the JSON
    record only. Reads BUNDLE, the inputs and --calibration; writes those files and
    results.jsonl (one record per input, with the paths written) into OUTPUT.
    """
    from ddad_edge.runtime.backends import BackendUnavailable
    from ddad_edge.runtime.bundle import BundleError
    from ddad_edge.runtime.dicom_results import AlgorithmInfo
    from ddad_edge.runtime.report_folder import write_report_folder
    from ddad_edge.runtime.scorer import Scorer, summarize

    try:
        scorer = Scorer.from_bundle(
            bundle, calibration=calibration, operating_point=operating_point
        )
    except (BackendUnavailable, BundleError, ValueError) as e:
        fail(e)
    with scorer:
        results = scorer.score([str(p) for p in inputs], maps=True)
        manifest = scorer.bundle.manifest
    info = AlgorithmInfo.from_manifest(manifest)
    vmax = manifest.get("display", {}).get("heatmap_vmax", {}).get(heat)
    write_report_folder(results, output, info, heat=heat, vmax=vmax)
    counts = summarize(results)
    say(", ".join(f"{v} {k}" for k, v in counts.items()) + f"; results in {output}")


def register(app: typer.Typer) -> None:
    """Add calibrate and report to the app."""
    for func in (calibrate, report):
        app.command(help=command_help(func))(func)
