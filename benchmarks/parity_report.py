"""The parity report (``ddad-edge parity``): parity.json, parity.md and delta_auc.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.benchmarks.lanes import REDUCED_TOLERANCE, TOLERANCES
from ddad_edge.benchmarks.report import (
    KERMANY_NOTE,
    bullets,
    figure,
    fmt,
    machine_section,
    save_png,
    section,
    table,
    write_json,
)
from ddad_edge.runtime.fileio import atomic_write_text

TOLERANCE_TEXT = "FP32: |ΔAUC| <= 0.001; FP16, INT8, FP16-weight: <= 0.003"
LANE_HEADERS = ("lane", "score", "AUC", "AP", "ΔAUC", "95% CI", "Spearman", "map max |err|")
LANE_HEADERS += ("map mean |err|", "tol |ΔAUC|", "lane result")


def _lane_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per lane and score: AUC, AP, ΔAUC and its interval, map errors, pass/fail."""
    return [
        [lane, n, fmt(r["auc"], ".4f"), fmt(r["ap"], ".4f"), fmt(r["delta_auc"], "+.4f")]
        + [f"[{fmt(r['delta_auc_ci95'][0], '+.4f')}, {fmt(r['delta_auc_ci95'][1], '+.4f')}]"]
        + [fmt(r["spearman"], ".5f"), fmt(r["map_max_abs_err"], ".2e")]
        + [fmt(r["map_mean_abs_err"], ".2e"), f"{e['tolerance']:.3f}"]
        + ["pass" if e["passed"] else "FAIL"]
        for lane, e in result["lanes"].items()
        for n, r in e["scores"].items()
    ]


def _tail_sections(result: dict[str, Any]) -> list[str]:
    """Unavailable lanes, variants and the overall result."""
    out = []
    if na := result.get("unavailable", {}):
        out.append(
            section(
                "Lanes not available here",
                bullets([f"`{n}`: not available: {r}" for n, r in na.items()]),
            )
        )
    if var := result.get("variants"):
        verdict = {True: "eligible (<= 0.003)", False: "rejected (> 0.003)"}
        rows = [
            f"`{n}`: max |ΔAUC| {fmt(v['max_abs_delta_auc'], '.4f')}: {verdict[v['eligible']]}"
            for n, v in var.items()
        ]
        out.append(section("Smaller-weight variants", bullets(rows)))
    if result["passed"]:
        return [*out, section("Result", f"All lanes within tolerance ({TOLERANCE_TEXT}).\n")]
    return [
        *out,
        section("Result", f"FAILED ({TOLERANCE_TEXT}):\n\n", bullets(result["violations"])),
    ]


def parity_markdown(result: dict[str, Any]) -> str:
    """The parity report as Markdown."""
    cfg, ref = result.get("config", {}), result["reference"]["scores"]
    out = [
        "# ddad-edge parity\n\n",
        f"Bundle `{cfg.get('bundle')}`, run `{cfg.get('run_dir')}`, split `{cfg.get('split')}`: "
        f"{result['n_images']} test images ({result['n_abnormal']} abnormal). ΔAUC = lane − "
        f"PyTorch FP32 eager reference; 95% paired bootstrap interval over {result['n_boot']} "
        "resamples of the images.\n",
        f"\n{KERMANY_NOTE}\n" if cfg.get("kermany") else "",
        "\n" + machine_section(result["machine"], None),
        section(
            "Reference (torch FP32 eager)",
            table(
                ["score", "AUC", "AP"],
                [[n, fmt(r["auc"], ".4f"), fmt(r["ap"], ".4f")] for n, r in ref.items()],
            ),
        ),
        section("Lanes vs the reference", table(LANE_HEADERS, _lane_rows(result))),
    ]
    return "".join(out + _tail_sections(result))


def plot_parity(result: dict[str, Any], path: Path) -> Path:
    """delta_auc.png: ΔAUC with its 95% interval per lane and score, tolerance bands shaded."""
    fig, ax = figure()
    palette = {"rec": "tab:blue", "intra": "tab:orange", "inter": "tab:green", "asr": "tab:red"}
    points = [
        (f"{lane} {n}", r["delta_auc"], r["delta_auc_ci95"], palette.get(n, "k"))
        for lane, e in result["lanes"].items()
        for n, r in e["scores"].items()
        if isinstance(r["delta_auc"], float)
        and math.isfinite(r["delta_auc"])
        and r["delta_auc_ci95"][0] is not None
    ]
    for i, (_, d, ci, colour) in enumerate(points):
        ax.errorbar(i, d, yerr=[[d - ci[0]], [ci[1] - d]], fmt="o", color=colour, capsize=3)
    fp32, reduced = TOLERANCES["fp32"], REDUCED_TOLERANCE
    ax.axhspan(-fp32, fp32, color="tab:green", alpha=0.12, label="FP32 tolerance")
    ax.axhspan(-reduced, reduced, color="tab:orange", alpha=0.08, label="FP16/INT8 tolerance")
    ax.axhline(0, color="k", lw=0.6)
    labels = [p[0] for p in points]
    ax.set_xticks(np.arange(len(points)), labels, fontsize=7, rotation=60, ha="right")
    ax.set_ylabel("ΔAUC vs torch FP32 (95% paired bootstrap)")
    ax.set_title("AUC parity", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def write_parity_report(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """parity.json, parity.md and delta_auc.png in ``out_dir``."""
    out_dir = Path(out_dir)
    write_json(out_dir / "parity.json", result)
    atomic_write_text(out_dir / "parity.md", parity_markdown(result))
    png = plot_parity(result, out_dir / "delta_auc.png")
    return {"json": out_dir / "parity.json", "markdown": out_dir / "parity.md", "png": png}
