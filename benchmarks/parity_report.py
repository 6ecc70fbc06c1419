"""The parity report (``ddad-edge parity``): parity.json, parity.md and delta_auc.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.benchmarks.machine_report import machine_section
from ddad_edge.benchmarks.report import KERMANY_NOTE, figure, fmt, save_png, table, write_json
from ddad_edge.runtime.fileio import atomic_write_text

TOLERANCE_TEXT = "FP32: |ΔAUC| <= 0.001; FP16, INT8, FP16-weight: <= 0.003"

LANE_HEADERS = (
    "lane",
    "score",
    "AUC",
    "AP",
    "ΔAUC",
    "95% CI",
    "Spearman",
    "map max |err|",
    "map mean |err|",
    "tol |ΔAUC|",
    "lane result",
)


def _lane_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per lane and score: AUC, AP, ΔAUC and its interval, map errors, pass/fail."""
    rows = []
    for lane, e in result["lanes"].items():
        for n in e["scores"]:
            r = e["scores"][n]
            ci = r["delta_auc_ci95"]
            rows.append(
                [
                    lane,
                    n,
                    fmt(r["auc"], ".4f"),
                    fmt(r["ap"], ".4f"),
                    fmt(r["delta_auc"], "+.4f"),
                    f"[{fmt(ci[0], '+.4f')}, {fmt(ci[1], '+.4f')}]",
                    fmt(r["spearman"], ".5f"),
                    fmt(r["map_max_abs_err"], ".2e"),
                    fmt(r["map_mean_abs_err"], ".2e"),
                    f"{e['tolerance']:.3f}",
                    "pass" if e["passed"] else "FAIL",
                ]
            )
    return rows


def _tail_sections(result: dict[str, Any]) -> list[str]:
    """Unavailable lanes, variants and the overall result."""
    out = []
    na = result.get("unavailable", {})
    if na:
        out.append("\n## Lanes not available here\n\n")
        out.append("".join(f"- `{n}`: not available: {r}\n" for n, r in na.items()))
    var = result.get("variants")
    if var:
        out.append("\n## Smaller-weight variants\n\n")
        out.append(
            "".join(
                f"- `{n}`: max |ΔAUC| {fmt(v['max_abs_delta_auc'], '.4f')}: "
                f"{'eligible (<= 0.003)' if v['eligible'] else 'rejected (> 0.003)'}\n"
                for n, v in var.items()
            )
        )
    out.append("\n## Result\n\n")
    if result["passed"]:
        out.append(f"All lanes within tolerance ({TOLERANCE_TEXT}).\n")
    else:
        out.append(f"FAILED ({TOLERANCE_TEXT}):\n\n")
        out.append("".join(f"- {v}\n" for v in result["violations"]))
    return out


def parity_markdown(result: dict[str, Any]) -> str:
    """The parity report as Markdown."""
    cfg = result.get("config", {})
    out = [
        "# ddad-edge parity\n\n",
        f"Bundle `{cfg.get('bundle')}`, run `{cfg.get('run_dir')}`, split `{cfg.get('split')}`: "
        f"{result['n_images']} test images ({result['n_abnormal']} abnormal). ΔAUC = lane − "
        f"PyTorch FP32 eager reference; 95% paired bootstrap interval over {result['n_boot']} "
        "resamples of the images.\n",
    ]
    if cfg.get("kermany"):
        out.append(f"\n{KERMANY_NOTE}\n")
    out.append("\n" + machine_section(result["machine"], None))
    ref = result["reference"]["scores"]
    out.append(
        "\n## Reference (torch FP32 eager)\n\n"
        + table(
            ["score", "AUC", "AP"],
            [[n, fmt(ref[n]["auc"], ".4f"), fmt(ref[n]["ap"], ".4f")] for n in ref],
        )
    )
    out.append("\n## Lanes vs the reference\n\n" + table(LANE_HEADERS, _lane_rows(result)))
    return "".join(out + _tail_sections(result))


def plot_parity(result: dict[str, Any], path: Path) -> Path:
    """delta_auc.png: ΔAUC with its 95% interval per lane and score, tolerance bands shaded."""
    fig, ax = figure()
    labels, ys, los, his, colours = [], [], [], [], []
    palette = {"rec": "tab:blue", "intra": "tab:orange", "inter": "tab:green", "asr": "tab:red"}
    for lane, e in result["lanes"].items():
        for n in e["scores"]:
            r = e["scores"][n]
            d, ci = r["delta_auc"], r["delta_auc_ci95"]
            if not isinstance(d, float) or not math.isfinite(d) or ci[0] is None:
                continue
            labels.append(f"{lane} {n}")
            ys.append(d)
            los.append(d - ci[0])
            his.append(ci[1] - d)
            colours.append(palette.get(n, "k"))
    x = np.arange(len(ys))
    for i in range(len(ys)):
        ax.errorbar(x[i], ys[i], yerr=[[los[i]], [his[i]]], fmt="o", color=colours[i], capsize=3)
    ax.axhspan(-0.001, 0.001, color="tab:green", alpha=0.12, label="FP32 tolerance")
    ax.axhspan(-0.003, 0.003, color="tab:orange", alpha=0.08, label="FP16/INT8 tolerance")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, labels, fontsize=7, rotation=60, ha="right")
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
