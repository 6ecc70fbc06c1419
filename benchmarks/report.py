"""Writers of the bench and parity reports: JSON (strict: NaN -> null, inf -> "inf"), Markdown
tables and PNG plots (matplotlib Agg figures, never pyplot's global state). Files are written
atomically (temp file in the same folder, then rename)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.runtime.fileio import atomic_write, atomic_write_text
from ddad_edge.runtime.scores import SCORE_NAMES

KERMANY_NOTE = (
    "Data: Kermany, Zhang, Goldbaum et al., Labeled Optical Coherence Tomography (OCT) "
    "and Chest X-Ray Images for Classification, Mendeley Data, "
    "doi:10.17632/rscbjbr9sj.2, licence CC BY 4.0."
)


# --- files ------------------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """obj with numpy scalars/arrays as Python values, NaN as None and ±inf as "inf"/"-inf"."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (see :func:`jsonable`), indented."""
    text = json.dumps(jsonable(obj), indent=1, allow_nan=False)
    atomic_write_text(path, text + "\n")


def write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


# --- formatting -------------------------------------------------------------------------------


def fmt(v: Any, spec: str = ".2f", none: str = "–") -> str:
    """Number -> text ('–' for None/NaN, the string itself for strings such as 'inf')."""
    if v is None:
        return none
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return none
    return format(v, spec)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (``|`` inside cells escaped)."""

    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _met(v: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[v]


def machine_section(machine: dict[str, Any], limits: dict[str, Any] | None) -> str:
    """Markdown: the machine and its measured limits."""
    cpu = machine.get("cpu", {})
    gpu = machine.get("gpu", {})
    v = machine.get("versions", {})
    rows = [
        ["date (UTC)", machine.get("date_utc")],
        [
            "CPU",
            f"{cpu.get('model')} ({cpu.get('usable_cores')} usable / "
            f"{cpu.get('logical_cores')} logical cores; {', '.join(cpu.get('flags', []))})",
        ],
        ["memory", f"{machine.get('memory_gib')} GiB"],
        ["GPU", ", ".join(gpu.get("devices") or []) or "none (CUDA not available)"],
        [
            "load average at start / end",
            f"{machine.get('loadavg_start')} / {machine.get('loadavg_end')}",
        ],
        ["threads", ", ".join(f"{k}={val}" for k, val in machine.get("threads", {}).items())],
        ["onnxruntime providers", ", ".join(machine.get("onnxruntime_providers", []))],
        [
            "versions",
            ", ".join(f"{k} {val}" for k, val in v.items() if "not installed" not in str(val)),
        ],
    ]
    missing = [k for k, val in v.items() if "not installed" in str(val)]
    if missing:
        rows.append(["not installed", ", ".join(missing)])
    text = "## Machine\n\n" + table(["", ""], rows)
    if limits:
        mm, bw = limits["matmul"], limits["bandwidth"]
        text += "\n### Measured limits\n\n" + table(
            ["limit", "numpy", "torch", "used"],
            [
                [
                    f"sgemm {mm['n']}x{mm['n']} (GFLOP/s, best)",
                    fmt(mm["numpy"].get("best_gflops"), ".1f"),
                    fmt(mm["torch"].get("best_gflops"), ".1f"),
                    fmt(mm["peak_gflops"], ".1f"),
                ],
                [
                    f"read {bw['nbytes'] / 2**20:.0f} MiB (GB/s)",
                    fmt(bw["numpy"].get("read_gbps"), ".1f"),
                    fmt(bw["torch"].get("read_gbps"), ".1f"),
                    fmt(bw["read_gbps"], ".1f"),
                ],
                [
                    "copy (GB/s, read+write bytes)",
                    fmt(bw["numpy"].get("copy_gbps"), ".1f"),
                    fmt(bw["torch"].get("copy_gbps"), ".1f"),
                    fmt(bw["copy_gbps"], ".1f"),
                ],
            ],
        )
        for n, r in sorted(
            limits.get("bandwidth_at_weights", {}).items(), key=lambda kv: int(kv[0])
        ):
            where = {True: "fits in LLC", False: "exceeds LLC", None: "LLC unknown"}[
                r.get("in_llc")
            ]
            text += (
                f"- read, buffer of {int(n) / 1e6:.1f} MB read repeatedly ({where}): "
                f"{r['read_gbps']:.1f} GB/s\n"
            )
        if bw.get("llc_bytes"):
            text += f"- last-level cache: {bw['llc_bytes'] / 2**20:.0f} MiB\n"
        if limits.get("read_curve"):
            text += "- read bandwidth vs buffer size (read repeatedly; GB/s): " + ", ".join(
                f"{c['mib']} MiB {c['read_gbps']:.1f}" for c in limits["read_curve"]
            )
            text += "\n"
        if limits.get("quick"):
            text += "\n**quick mode: small sizes, these limits are NOT meaningful.**\n"
    return text


# --- bench ------------------------------------------------------------------------------------


def _available(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: e for n, e in result["lanes"].items() if e.get("available")}


def profile_section(result: dict[str, Any]) -> str:
    """Markdown: kernel time per op class of the main lane (``result["profile"]``), or ""."""
    prof = result.get("profile")
    if not prof:
        return ""
    peak = (result.get("limits") or {}).get("matmul", {}).get("peak_gflops")
    pts = prof["batches"]
    rows = []
    for c in next(iter(pts.values()))["classes"]:
        row = [c]
        for b in pts:
            e = pts[b]["classes"][c]
            row += [fmt(e["ms"]), fmt(100 * e["share"], ".0f")]
        e64 = pts.get("64", {}).get("classes", {}).get(c, {})
        g = e64.get("gflops")
        row += [
            fmt(e64.get("gflop"), ".3f"),
            fmt(g, ".0f"),
            fmt(g and peak and 100 * g / peak, ".0f"),
        ]
        rows.append(row)
    heads = ["op class"]
    for b in pts:
        heads += [f"batch {b} ms", "%"]
    heads += ["batch-64 GFLOP", "GFLOP/s", "% of matmul peak"]
    walls = ", ".join(f"batch {b}: {fmt(p['wall_ms'])} ms" for b, p in pts.items())
    return (
        f"\n## Where the time goes ({prof['lane']}, onnxruntime profiler)\n\n"
        f"Kernel time per op class per run of `{prof['graph']}` (profiler on; median run {walls}). "
        "FLOPs by class are counted from the graph; data movement = the decoder's pixel "
        "interleave, Concat, Split, reshapes and layout reorders; other = elementwise ops and "
        "the member mean/std.\n\n" + table(heads, rows)
    )


def paired_section(result: dict[str, Any]) -> str:
    """The interleaved speedup table (``benchmarks/paired.py``), or "" when not measured."""
    pr = result.get("paired")
    if not pr:
        return ""
    title = "\n## Interleaved speedup (same batch, the two lanes taking turns)\n\n"
    if "skipped" in pr:
        return title + f"Not measured: {pr['skipped']}\n"
    rows = [
        [
            b,
            fmt(p["ref_p50_ms"]),
            fmt(p["lane_p50_ms"]),
            f"**{fmt(p['ratio'])}x**",
            f"{fmt(p['ratio_q25'])}-{fmt(p['ratio_q75'])}x",
            f"{fmt(p['ratio_min'])}-{fmt(p['ratio_max'])}x",
            fmt(p["pooled_ratio"]) + "x",
            f"{p['rounds']} ({p['reps']['ref']} / {p['reps']['lane']} reps)",
        ]
        for b, p in pr["batches"].items()
    ]
    return (
        title + f"{pr['lane']} vs {pr['reference']}: rounds of one turn each (order alternating), "
        "scoring latency (inference + scores); speedup = median of the per-round ratios of the "
        "turns' medians. This is what the speed targets are judged on: the sweeps above measure "
        "the lanes tens of seconds apart, and this machine's speed drifts over such spans.\n\n"
        + table(
            [
                "batch",
                f"{pr['reference']} p50 ms",
                f"{pr['lane']} p50 ms",
                "speedup",
                "quartiles",
                "range",
                "pooled",
                "rounds",
            ],
            rows,
        )
    )


def bench_markdown(result: dict[str, Any]) -> str:
    """The bench report as Markdown (see benchmarks/README.md for what each number means)."""
    cfg = result.get("config", {})
    out = [
        "# ddad-edge bench\n",
        f"Bundle `{cfg.get('bundle')}` ({result.get('model', {}).get('kind')} "
        f"K={result.get('model', {}).get('k')}), run `{cfg.get('run_dir')}`. "
        f"Inputs: {result.get('inputs', {}).get('note', '')}\n",
    ]
    if result.get("inputs", {}).get("kermany"):
        out.append(f"\n{KERMANY_NOTE}\n")
    out.append("\n" + machine_section(result["machine"], result.get("limits")))
    lanes = _available(result)
    missing = {n: e for n, e in result["lanes"].items() if not e.get("available")}

    graphs = result.get("graphs", {})
    if graphs:
        rows = []
        for g, c in graphs.items():
            fl = c["flops"]
            rows.append(
                [
                    g,
                    f"{c['weights']['total'] / 1e6:.2f}",
                    ", ".join(
                        f"{k}: {fmt(d['by_op'] and d['flops'] / 1e9, '.3f')}" for k, d in fl.items()
                    ),
                    ", ".join(
                        f"{k} {val / 1e6:.1f}" for k, val in c["weights"]["by_dtype"].items()
                    ),
                ]
            )
        out.append(
            "\n### Graph cost (counted from the ONNX graph)\n\n"
            + table(
                ["graph", "weight MB", "GFLOP per batch (batch: GFLOP)", "weights by dtype (MB)"],
                rows,
            )
        )

    out.append("\n## Lanes not available here\n\n")
    out.append(
        "".join(f"- `{n}`: not available: {e.get('reason')}\n" for n, e in missing.items())
        or "(none)\n"
    )

    if lanes:
        rows = []
        for n, e in lanes.items():
            p = e.get("sweep", {}).get("points", {}).get("1")
            if not p:
                continue
            s, st = p["scoring_latency"], p["stages"]
            rows.append(
                [
                    n,
                    fmt(st["preprocess"]["p50_ms"]),
                    fmt(st["inference"]["p50_ms"]),
                    fmt(st["scoring"]["p50_ms"]),
                    fmt(s["p50_ms"]),
                    fmt(s["p95_ms"]),
                    fmt(s["p99_ms"]),
                    s["n"],
                    fmt(e.get("vs_torch", {}).get("1", {}).get("speedup"), ".2f") + "x",
                ]
            )
        out.append(
            "\n## Batch-1 latency (ms)\n\nScoring latency = inference + scores of a "
            "preprocessed image; preprocessing (decode + resize of one file) beside it.\n\n"
        )
        out.append(
            table(
                [
                    "lane",
                    "preprocess p50",
                    "inference p50",
                    "scores p50",
                    "scoring p50",
                    "p95",
                    "p99",
                    "reps",
                    "speedup vs torch",
                ],
                rows,
            )
        )

        batches = result.get("config", {}).get("batches", [])
        rows = []
        for n, e in lanes.items():
            pts = e.get("sweep", {}).get("points", {})
            cells = []
            for b in batches:
                p = pts.get(str(b))
                r = e.get("vs_torch", {}).get(str(b), {}).get("throughput_ratio")
                cells.append(f"{fmt(p['throughput_ips'], '.0f')} ({fmt(r, '.2f')}x)" if p else "–")
            rows.append([n, *cells])
        out.append("\n## Scoring throughput (images/s, ratio to torch)\n\n")
        out.append(table(["lane", *[f"batch {b}" for b in batches]], rows))
        out.append(paired_section(result))

        rows = []
        for n, e in lanes.items():
            for b, p in e.get("sweep", {}).get("points", {}).items():
                st = p["stages"]
                rows.append(
                    [
                        n,
                        b,
                        fmt(st["preprocess"]["p50_ms"]),
                        fmt(st["inference"]["p50_ms"]),
                        fmt(st["scoring"]["p50_ms"]),
                        fmt(p["end_to_end"]["p50_ms"]),
                        fmt(p["throughput_e2e_ips"], ".0f"),
                    ]
                )
        out.append("\n## Stage split per batch (p50 ms per batch)\n\n")
        out.append(
            table(
                [
                    "lane",
                    "batch",
                    "preprocess",
                    "inference",
                    "scores",
                    "end to end",
                    "e2e images/s",
                ],
                rows,
            )
        )

        rows = []
        for n, e in lanes.items():
            lim = e.get("limits", {})
            rows.append(
                [
                    n,
                    lim.get("graph", "–"),
                    fmt(lim.get("weight_bytes") and lim["weight_bytes"] / 1e6),
                    fmt(lim.get("b64_gflops"), ".1f"),
                    fmt(
                        lim.get("b64_fraction_of_peak") and 100 * lim["b64_fraction_of_peak"], ".1f"
                    ),
                    fmt(lim.get("floor_gbps"), ".1f"),
                    fmt(lim.get("floor_ms"), ".3f"),
                    fmt(lim.get("b1_latency_over_floor"), ".2f"),
                    fmt(lim.get("b1_inference_over_floor"), ".2f"),
                    fmt(lim.get("floor_dram_ms"), ".3f"),
                    fmt(lim.get("b1_latency_over_dram_floor"), ".2f"),
                ]
            )
        out.append("\n## Achieved fraction of the machine\n\n")
        out.append(
            "Weight-read floor = weight bytes / read bandwidth of a buffer of the weights' size "
            "read repeatedly (what batch-1 inference does: cache-resident when the weights fit "
            "in the last-level cache); DRAM floor = weight bytes / DRAM read bandwidth.\n\n"
        )
        out.append(
            table(
                [
                    "lane",
                    "graph",
                    "weight MB",
                    "batch-64 GFLOP/s",
                    "% of matmul peak",
                    "read GB/s at weight size",
                    "weight-read floor (ms)",
                    "batch-1 scoring / floor",
                    "batch-1 inference / floor",
                    "DRAM floor (ms)",
                    "batch-1 scoring / DRAM floor",
                ],
                rows,
            )
        )
        out.append(profile_section(result))

        for key, title in (("fullres", "full-resolution JPEG folder"), ("dicom", "DICOM folder")):
            rows, skipped = [], None
            for n, e in lanes.items():
                r = e.get("end_to_end", {}).get(key)
                if not isinstance(r, dict) or "ms_per_image" not in r:
                    continue
                m = r["ms_per_image"]
                rows.append(
                    [
                        n,
                        f"{r['n_ok']}/{r['n_files']}",
                        fmt(m["preprocess"]),
                        fmt(m["inference"]),
                        fmt(m["scoring"]),
                        fmt(m["end_to_end"]),
                        fmt(r["images_per_s"], ".1f"),
                        fmt(r["preprocess_over_scoring"], ".2f"),
                    ]
                )
                skipped = skipped if skipped is not None else r["errors"]
            if rows:
                folder = result.get("config", {}).get(key)
                out.append(f"\n## End to end: {title} (`{folder}`)\n\nms per image.\n\n")
                out.append(
                    table(
                        [
                            "lane",
                            "read ok",
                            "preprocess",
                            "inference",
                            "scores",
                            "end to end",
                            "images/s",
                            "preprocess / scoring",
                        ],
                        rows,
                    )
                )
                if skipped:
                    out.append("\nSkipped (the runtime could not read them):\n\n")
                    out.append("".join(f"- `{s['path']}`: {s['reason']}\n" for s in skipped))

    cs = result.get("cold_start")
    if cs:
        rows = []
        for name in ("runtime", "torch"):
            r = cs.get(name, {})
            if "error" in r:
                rows.append([name, r["error"], "", "", "", ""])
            else:
                rows.append(
                    [
                        name,
                        fmt(r["imports_s"]),
                        fmt(r["ready_s"]),
                        fmt(r["first_score_s"]),
                        fmt(r["peak_rss_mib"], ".0f"),
                        str(r["torch_imported"]),
                    ]
                )
        out.append(
            f"\n## Cold start (process spawn to first score, median of {cs.get('reps')})\n\n"
        )
        out.append(
            table(
                [
                    "path",
                    "imports done (s)",
                    "model ready (s)",
                    "first score (s)",
                    "peak RSS (MiB)",
                    "torch imported",
                ],
                rows,
            )
        )
        if "ratio" in cs:
            ratio = cs["ratio"]
            out.append(
                f"\ntorch / runtime: first score {ratio['first_score_torch_over_runtime']:.2f}x, "
                f"peak RSS {ratio['peak_rss_torch_over_runtime']:.2f}x\n"
            )

    tr = result.get("training")
    if tr:
        if "error" in tr:
            out.append(f"\n## Training: fused vs separate\n\n{tr['error']}\n")
        else:
            out.append(
                f"\n## Training: fused vs separate ({tr['kind']} K={tr['k']}, batch "
                f"{tr['batch_size']}, {tr['steps']} timed steps, {tr['device']})\n\n"
            )
            rows = [
                ["fused (1 module, K members)", fmt(tr["fused"]["step_s"] * 1e3, ".1f")]
                + [fmt(v, ".1f") for v in tr["fused"]["epoch_s_per_module"].values()],
                ["separate (K x 1 member)", fmt(tr["separate"]["step_s"] * 1e3, ".1f")]
                + [fmt(v, ".1f") for v in tr["separate"]["epoch_s_per_module"].values()],
            ]
            mods = list(tr["fused"]["epoch_s_per_module"])
            out.append(
                table(["training", "step (ms)", *[f"epoch {m} (s, projected)" for m in mods]], rows)
            )
            out.append(f"\nFused speedup: {tr['speedup']:.2f}x\n")

    var = result.get("variants")
    if var:
        rows = []
        for n, v in var.get("lanes", {}).items():
            rows.append(
                [
                    n,
                    v.get("note", ""),
                    fmt(v.get("weight_mb")),
                    fmt(v.get("b1_p50_ms")),
                    fmt(v.get("speedup_vs_ort"), ".2f")
                    + (f" ({v['speedup_how']})" if v.get("speedup_how") else ""),
                    fmt(v.get("max_abs_delta_auc"), ".4f"),
                    v.get("decision", ""),
                ]
            )
        out.append("\n## Smaller-weight variants\n\n")
        out.append(
            table(
                [
                    "lane",
                    "variant",
                    "weight MB",
                    "batch-1 p50 (ms)",
                    "speedup vs ort",
                    "max |ΔAUC|",
                    "decision",
                ],
                rows,
            )
        )
        out.append(f"\nKept: {var.get('kept') or 'none'}. {var.get('rule', '')}\n")

    tg = result.get("targets")
    if tg:
        out.append("\n## Targets (measured, reported; not asserted)\n\n")
        out.append(
            table(
                ["target", "measured", "status", "how"],
                [[t["target"], t["measured"], _met(t["met"]), t["how"]] for t in tg],
            )
        )
    return "".join(out)


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def plot_sweep(result: dict[str, Any], out_dir: Path, note: str = "") -> list[Path]:
    """latency_vs_batch.png (p50 scoring latency per batch, ms) and throughput_vs_batch.png
    (images/s), one line per available lane, log-log axes."""
    paths = []
    for fname, key, ylabel, title in (
        (
            "latency_vs_batch.png",
            "latency",
            "scoring latency p50 per batch (ms)",
            "Latency vs batch",
        ),
        (
            "throughput_vs_batch.png",
            "throughput",
            "scoring throughput (images/s)",
            "Throughput vs batch",
        ),
    ):
        fig, ax = _figure()
        for n, e in _available(result).items():
            pts = e.get("sweep", {}).get("points", {})
            if not pts:
                continue
            b = sorted(int(k) for k in pts)
            y = [
                pts[str(i)]["scoring_latency"]["p50_ms"]
                if key == "latency"
                else pts[str(i)]["throughput_ips"]
                for i in b
            ]
            ax.plot(b, y, marker="o", label=n, linestyle="--" if n == "torch" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        batches = result.get("config", {}).get("batches") or []
        if batches:
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(title + (f" ({note})" if note else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        _save(fig, out_dir / fname)
        paths.append(out_dir / fname)
    return paths


def write_bench_report(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """bench.json, bench.md, latency_vs_batch.png, throughput_vs_batch.png in ``out_dir``."""
    out_dir = Path(out_dir)
    write_json(out_dir / "bench.json", result)
    write_text(out_dir / "bench.md", bench_markdown(result))
    lat, tp = plot_sweep(result, out_dir, result.get("machine", {}).get("cpu", {}).get("model", ""))
    return {
        "json": out_dir / "bench.json",
        "markdown": out_dir / "bench.md",
        "latency_png": lat,
        "throughput_png": tp,
    }


# --- parity -----------------------------------------------------------------------------------


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
            [[n, fmt(ref[n]["auc"], ".4f"), fmt(ref[n]["ap"], ".4f")] for n in SCORE_NAMES],
        )
    )
    rows = []
    for lane, e in result["lanes"].items():
        for n in SCORE_NAMES:
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
    out.append(
        "\n## Lanes vs the reference\n\n"
        + table(
            [
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
            ],
            rows,
        )
    )
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
        out.append(
            "All lanes within tolerance (FP32: |ΔAUC| <= 0.001; FP16, INT8, FP16-weight: "
            "<= 0.003).\n"
        )
    else:
        out.append("FAILED (FP32: |ΔAUC| <= 0.001; FP16, INT8, FP16-weight: <= 0.003):\n\n")
        out.append("".join(f"- {v}\n" for v in result["violations"]))
    return "".join(out)


def plot_parity(result: dict[str, Any], path: Path) -> Path:
    """delta_auc.png: ΔAUC with its 95% interval per lane and score, tolerance bands shaded."""
    fig, ax = _figure()
    labels, ys, los, his, colours = [], [], [], [], []
    palette = {"rec": "tab:blue", "intra": "tab:orange", "inter": "tab:green"}
    for lane, e in result["lanes"].items():
        for n in SCORE_NAMES:
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
    _save(fig, path)
    return path


def write_parity_report(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """parity.json, parity.md and delta_auc.png in ``out_dir``."""
    out_dir = Path(out_dir)
    write_json(out_dir / "parity.json", result)
    write_text(out_dir / "parity.md", parity_markdown(result))
    png = plot_parity(result, out_dir / "delta_auc.png")
    return {"json": out_dir / "parity.json", "markdown": out_dir / "parity.md", "png": png}
