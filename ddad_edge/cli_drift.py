"""The drift command: do recent inputs still score like the calibration normals? Thin: parse,
call ``ddad_edge.runtime.drift``, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ddad_edge.cli_common import command_help, fail, out_console


def drift(
    results: Annotated[
        Path,
        typer.Argument(
            help="Recent results: JSON Lines from `score --json`, or a folder (e.g. a spool) "
            "whose *.jsonl files hold such records."
        ),
    ],
    calibration: Annotated[
        Path,
        typer.Option(
            help="Reference normals: a calibration JSON with a normal_scores sample, or the "
            "JSON Lines results of known-normal images."
        ),
    ],
    score: Annotated[
        list[str] | None,
        typer.Option(help="Image score(s) to compare (repeatable); default: every common one."),
    ] = None,
    last: Annotated[
        int, typer.Option(help="Compare only the last N scored records (0: all).", min=0)
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per score.")] = False,
) -> None:
    """Compare recent image scores with the calibration normals (PSI and a two-sample KS test).

    Reads RESULTS and --calibration; writes nothing. Prints, per score, the PSI, KS D and p, the
    medians and a verdict: stable, moderate shift, or inputs moved (PSI > 0.25, or PSI > 0.1 with
    KS p < 0.01). Exit code 2 when any score says the inputs moved, 0 otherwise.
    """
    from ddad_edge.runtime.drift import compare_files
    from ddad_edge.runtime.score_records import ScoreRecordError

    try:
        reports = compare_files(results, calibration, score, last)
    except (ScoreRecordError, ValueError) as e:
        fail(e)
    for r in reports:
        if as_json:
            print(json.dumps(r.to_json()))
        else:
            out_console.print(
                f"{r.message}\n  PSI {r.psi:.3f}  KS D {r.ks_d:.3f} (p {r.ks_p:.2g})  "
                f"n recent {r.n_current}, reference {r.n_reference}",
                highlight=False,
            )
    if any(r.verdict == "inputs moved" for r in reports):
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add drift to the app."""
    app.command(help=command_help(drift))(drift)
