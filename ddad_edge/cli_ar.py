"""The ar-curve command: test AUC against the anomaly rate of Du over evaluated runs. Thin:
parse, call ``ddad_edge.ar_curve`` and ``ddad_edge.plots``, print."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ddad_edge.cli_common import command_help, fail, out_console, require_extra


def ar_curve(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, each evaluated (`eval`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write.")] = Path(
        "ar_curve.png"
    ),
    score: Annotated[str, typer.Option(help="Image score: rec, intra, inter or asr.")] = "inter",
    note: Annotated[str, typer.Option(help="Appended to the figure's title.")] = "",
) -> None:
    """Plot an image score's test AUC against the anomaly rate of Du (the paper's Fig. 4).

    Reads each RUN's config.json (the anomaly rate and seed it was trained with) and
    eval/metrics.json (written by `eval`); writes --output. Prints, per anomaly rate, the runs'
    AUCs (by seed) and their mean and sample sd. Make the runs with `split --ar A --ar B ...`
    and `train --reuse-b RUN`, so that only module A differs between them.
    """
    require_extra("ar-curve", "train", ("matplotlib",))
    from ddad_edge.ar_curve import ArCurveError, read_point, summarize
    from ddad_edge.plots import plot_ar_curve

    try:
        points = [read_point(r, score) for r in runs]
    except ArCurveError as e:
        fail(e)
    summary = summarize(points)
    for s in summary:
        sd = "" if math.isnan(s.sd) else f" +- {s.sd:.3f}"
        aucs = ", ".join(f"{a:.3f}" for a in s.aucs)
        out_console.print(f"AR {s.ar:.2f}: {score} AUC {s.mean:.3f}{sd} (n {len(s.aucs)}: {aucs})")
    means = [(s.ar, s.mean, s.sd) for s in summary]
    plot_ar_curve([(p.ar, p.auc) for p in points], means, output, score, note)
    out_console.print(f"wrote {output}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ar-curve to the app."""
    app.command("ar-curve", help=command_help(ar_curve))(ar_curve)
