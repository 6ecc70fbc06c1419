"""The bench report (``ddad-edge bench``): bench.json, bench.md and the two sweep plots.

``bench_markdown`` is one section function per concept of the result (``schema.BenchResult``),
in the order the report shows them; benchmarks/README.md says what each number means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from ddad_edge.benchmarks.schema import BenchResult, LaneEntry, available_lanes, lane_point
from ddad_edge.runtime.fileio import atomic_write_text

Lanes = dict[str, LaneEntry]
STAGE_KEYS = ("preprocess", "inference", "scoring")


def _ratio(e: LaneEntry, batch: int | str, key: str = "speedup") -> Any:
    return e.get("vs_torch", {}).get(str(batch), {}).get(key)


def _p50s(stages: dict[str, Any]) -> list[str]:
    return [fmt(stages[k]["p50_ms"]) for k in STAGE_KEYS]


def graphs_section(result: BenchResult) -> str:
    """Weight bytes and FLOPs of each graph the lanes ran."""
    if not (graphs := result.get("graphs", {})):
        return ""
    rows = [
        [
            g,
            f"{c['weights']['total'] / 1e6:.2f}",
            ", ".join(
                f"{k}: {fmt(d['by_op'] and d['flops'] / 1e9, '.3f')}" for k, d in c["flops"].items()
            ),
            ", ".join(f"{k} {val / 1e6:.1f}" for k, val in c["weights"]["by_dtype"].items()),
        ]
        for g, c in graphs.items()
    ]
    heads = ["graph", "weight MB", "GFLOP per batch (batch: GFLOP)", "weights by dtype (MB)"]
    return section("Graph cost (counted from the ONNX graph)", table(heads, rows), level=3)


def unavailable_section(lanes: Lanes) -> str:
    missing = [f"`{n}`: not available: {e.get('reason')}" for n, e in lanes.items()]
    return section("Lanes not available here", bullets(missing) or "(none)\n")


def latency_section(lanes: Lanes) -> str:
    """Batch-1 stage latencies and percentiles."""
    rows = [
        [
            n,
            *_p50s(p["stages"]),
            *(fmt(p["scoring_latency"][k]) for k in ("p50_ms", "p95_ms", "p99_ms")),
        ]
        + [p["scoring_latency"]["n"], fmt(_ratio(e, 1), ".2f") + "x"]
        for n, e in lanes.items()
        if (p := lane_point(e, 1))
    ]
    heads = ["lane", "preprocess p50", "inference p50", "scores p50", "scoring p50", "p95", "p99"]
    return section(
        "Batch-1 latency (ms)",
        "Scoring latency = inference + scores of a preprocessed image; preprocessing (decode + "
        "resize of one file) beside it.\n\n",
        table([*heads, "reps", "speedup vs torch"], rows),
    )


def throughput_section(lanes: Lanes, batches: list[int]) -> str:
    """Scoring throughput per batch size, with the ratio to torch."""
    rows = [
        [n]
        + [
            f"{fmt(p['throughput_ips'], '.0f')} ({fmt(_ratio(e, b, 'throughput_ratio'), '.2f')}x)"
            if (p := lane_point(e, b))
            else "–"
            for b in batches
        ]
        for n, e in lanes.items()
    ]
    return section(
        "Scoring throughput (images/s, ratio to torch)",
        table(["lane", *[f"batch {b}" for b in batches]], rows),
    )


def paired_section(result: BenchResult) -> str:
    """The interleaved speedup table (``latency.paired_speedup``), or "" when not measured."""
    if not (pr := result.get("paired")):
        return ""
    title = "Interleaved speedup (same batch, the two lanes taking turns)"
    if "skipped" in pr:
        return section(title, f"Not measured: {pr['skipped']}\n")
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
    heads = ["batch", f"{pr['reference']} p50 ms", f"{pr['lane']} p50 ms", "speedup"]
    return section(
        title,
        f"{pr['lane']} vs {pr['reference']}: rounds of one turn each (order alternating), "
        "scoring latency (inference + scores); speedup = median of the per-round ratios of the "
        "turns' medians. This is what the speed targets are judged on: the sweeps above measure "
        "the lanes tens of seconds apart, and this machine's speed drifts over such spans.\n\n",
        table([*heads, "quartiles", "range", "pooled", "rounds"], rows),
    )


def stages_section(lanes: Lanes) -> str:
    """p50 of each stage for every batch size of every lane."""
    rows = [
        [
            n,
            b,
            *_p50s(p["stages"]),
            fmt(p["end_to_end"]["p50_ms"]),
            fmt(p["throughput_e2e_ips"], ".0f"),
        ]
        for n, e in lanes.items()
        for b, p in e.get("sweep", {}).get("points", {}).items()
    ]
    heads = ["lane", "batch", "preprocess", "inference", "scores", "end to end", "e2e images/s"]
    return section("Stage split per batch (p50 ms per batch)", table(heads, rows))


LIMIT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (heading, LaneLimits key, format)
    ("batch-64 GFLOP/s", "b64_gflops", ".1f"),
    ("% of matmul peak", "b64_fraction_of_peak", ".1f"),
    ("read GB/s at weight size", "floor_gbps", ".1f"),
    ("weight-read floor (ms)", "floor_ms", ".3f"),
    ("batch-1 scoring / floor", "b1_latency_over_floor", ".2f"),
    ("batch-1 inference / floor", "b1_inference_over_floor", ".2f"),
    ("DRAM floor (ms)", "floor_dram_ms", ".3f"),
    ("batch-1 scoring / DRAM floor", "b1_latency_over_dram_floor", ".2f"),
)


def limits_section(lanes: Lanes) -> str:
    """Achieved fraction of the measured machine limits, per lane."""
    rows = []
    for n, e in lanes.items():
        lim = e.get("limits", {})
        wb = lim.get("weight_bytes")
        cells = [
            fmt(v and 100 * v if key == "b64_fraction_of_peak" else v, spec)
            for _, key, spec in LIMIT_COLUMNS
            for v in [lim.get(key)]
        ]
        rows.append([n, lim.get("graph", "–"), fmt(wb and wb / 1e6), *cells])
    return section(
        "Achieved fraction of the machine",
        "Weight-read floor = weight bytes / read bandwidth of a buffer of the weights' size "
        "read repeatedly (what batch-1 inference does: cache-resident when the weights fit "
        "in the last-level cache); DRAM floor = weight bytes / DRAM read bandwidth.\n\n",
        table(["lane", "graph", "weight MB", *(c[0] for c in LIMIT_COLUMNS)], rows),
    )


def profile_section(result: BenchResult) -> str:
    """Kernel time per op class of the main lane (``result["profile"]``), or ""."""
    if not (prof := result.get("profile")):
        return ""
    peak = (result.get("limits") or {}).get("matmul", {}).get("peak_gflops")
    pts = prof["batches"]
    rows = []
    for c in next(iter(pts.values()))["classes"]:
        per_batch = [pts[b]["classes"][c] for b in pts]
        e64 = pts.get("64", {}).get("classes", {}).get(c, {})
        g = e64.get("gflops")
        rows.append(
            [c, *(s for e in per_batch for s in (fmt(e["ms"]), fmt(100 * e["share"], ".0f")))]
            + [
                fmt(e64.get("gflop"), ".3f"),
                fmt(g, ".0f"),
                fmt(g and peak and 100 * g / peak, ".0f"),
            ]
        )
    heads = ["op class", *(h for b in pts for h in (f"batch {b} ms", "%"))]
    walls = ", ".join(f"batch {b}: {fmt(p['wall_ms'])} ms" for b, p in pts.items())
    return section(
        f"Where the time goes ({prof['lane']}, onnxruntime profiler)",
        f"Kernel time per op class per run of `{prof['graph']}` (profiler on; median run {walls}). "
        "FLOPs by class are counted from the graph; data movement = the decoder's pixel "
        "interleave, Concat, Split, reshapes and layout reorders; other = elementwise ops and "
        "the member mean/std.\n\n",
        table([*heads, "batch-64 GFLOP", "GFLOP/s", "% of matmul peak"], rows),
    )


END_TO_END_FOLDERS = (("fullres", "full-resolution JPEG folder"), ("dicom", "DICOM folder"))


def end_to_end_section(result: BenchResult, lanes: Lanes, key: str) -> str:
    """ms per image over one folder (``key`` of END_TO_END_FOLDERS), and the skipped files."""
    runs = {
        n: r
        for n, e in lanes.items()
        if "ms_per_image" in (r := e.get("end_to_end", {}).get(key) or {})
    }
    if not runs:
        return ""
    rows = [
        [n, f"{r['n_ok']}/{r['n_files']}"]
        + [fmt(r["ms_per_image"][k]) for k in (*STAGE_KEYS, "end_to_end")]
        + [fmt(r["images_per_s"], ".1f"), fmt(r["preprocess_over_scoring"], ".2f")]
        for n, r in runs.items()
    ]
    heads = ["lane", "read ok", "preprocess", "inference", "scores", "end to end", "images/s"]
    skipped = next(iter(runs.values()))["errors"]
    return section(
        f"End to end: {dict(END_TO_END_FOLDERS)[key]} (`{result.get('config', {}).get(key)}`)",
        "ms per image.\n\n",
        table([*heads, "preprocess / scoring"], rows),
        "\nSkipped (the runtime could not read them):\n\n" if skipped else "",
        bullets([f"`{s['path']}`: {s['reason']}" for s in skipped]),
    )


def cold_start_section(result: BenchResult) -> str:
    if not (cs := result.get("cold_start")):
        return ""
    rows = []
    for name in ("runtime", "torch"):
        r = cs.get(name, {})
        if "error" in r:
            rows.append([name, r["error"], "", "", "", ""])
            continue
        times = (fmt(r[k]) for k in ("imports_s", "ready_s", "first_score_s"))
        rows.append([name, *times, fmt(r["peak_rss_mib"], ".0f"), str(r["torch_imported"])])
    heads = ["path", "imports done (s)", "model ready (s)", "first score (s)", "peak RSS (MiB)"]
    ratio = cs.get("ratio")
    return section(
        f"Cold start (process spawn to first score, median of {cs.get('reps')})",
        table([*heads, "torch imported"], rows),
        f"\ntorch / runtime: first score {ratio['first_score_torch_over_runtime']:.2f}x, "
        f"peak RSS {ratio['peak_rss_torch_over_runtime']:.2f}x\n"
        if ratio
        else "",
    )


def training_section(result: BenchResult) -> str:
    if not (tr := result.get("training")):
        return ""
    if "error" in tr:
        return section("Training: fused vs separate", f"{tr['error']}\n")
    rows = [
        [label, fmt(tr[side]["step_s"] * 1e3, ".1f")]
        + [fmt(v, ".1f") for v in tr[side]["epoch_s_per_module"].values()]
        for label, side in (
            ("fused (1 module, K members)", "fused"),
            ("separate (K x 1 member)", "separate"),
        )
    ]
    mods = list(tr["fused"]["epoch_s_per_module"])
    return section(
        f"Training: fused vs separate ({tr['kind']} K={tr['k']}, batch {tr['batch_size']}, "
        f"{tr['steps']} timed steps, {tr['device']})",
        table(["training", "step (ms)", *[f"epoch {m} (s, projected)" for m in mods]], rows),
        f"\nFused speedup: {tr['speedup']:.2f}x\n",
    )


def variants_section(result: BenchResult) -> str:
    if not (var := result.get("variants")):
        return ""
    rows = [
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
        for n, v in var.get("lanes", {}).items()
    ]
    heads = ["lane", "variant", "weight MB", "batch-1 p50 (ms)", "speedup vs ort", "max |ΔAUC|"]
    return section(
        "Smaller-weight variants",
        table([*heads, "decision"], rows),
        f"\nKept: {var.get('kept') or 'none'}. {var.get('rule', '')}\n",
    )


def targets_section(result: BenchResult) -> str:
    if not (tg := result.get("targets")):
        return ""
    met = {True: "met", False: "NOT met", None: "not measured"}
    rows = [[t["target"], t["measured"], met[t["met"]], t["how"]] for t in tg]
    return section(
        "Targets (measured, reported; not asserted)",
        table(["target", "measured", "status", "how"], rows),
    )


STAGES_HEAD = "server ms/request: queue / input / infer / output"


def _triton_rows(srv: dict[str, Any], ref_throughput: float) -> list[list[Any]]:
    """One row per number of clients of one server configuration."""
    from ddad_edge.benchmarks.triton_load import STAGES

    setup = f"{srv.get('instances', '?')}×{srv.get('threads_per_instance', '?')}"
    return [
        [setup, p.get("files_per_request", 1), p["clients"], p["requests"]]
        + [fmt(p["throughput"], ".1f")]
        + [fmt(p["throughput"] / ref_throughput, ".2f"), fmt(p["p50_ms"], ".1f")]
        + [fmt(p["p95_ms"], ".1f"), p["wrong"], p["lost"], p["errors"]]
        + [", ".join(f"{b}×{n}" for b, n in p["batches"].items())]
        + [" / ".join(fmt(ms.get(k), ".1f") for k in STAGES) if (ms := p.get("server_ms")) else "-"]
        for p in srv["points"].values()
    ]


def _passes(ref: dict[str, Any]) -> str:
    """The reference's passes in files/s: before the servers, then after them."""
    rate = [ref["n"] / t for t in ref.get("seconds", [])]
    after = [ref["n"] / t for t in ref.get("seconds_after", [])]
    return ", ".join(fmt(r, ".0f") for r in rate) + (
        " / after: " + ", ".join(fmt(r, ".0f") for r in after) if after else ""
    )


def triton_section(tr: dict[str, Any] | None) -> str:
    """Throughput and latency through the Triton server vs the in-process Scorer."""
    if not tr:
        return ""
    title = "Triton server (`ddad_score`, concurrent clients)"
    if not tr.get("available"):
        return section(title, f"not available: {tr.get('reason')}\n")
    ref = tr["reference"]
    servers = tr.get("servers") or [{**tr["server"], "points": tr["points"]}]
    rows = [row for srv in servers for row in _triton_rows(srv, ref["throughput"])]
    head = ["instances×threads", "files/request", "clients", "requests", "files/s", "vs Scorer"]
    head += ["p50 ms", "p95 ms", "wrong", "lost", "errors", "batches formed (size×count)"]
    first = servers[0]
    at8 = "; ".join(
        f"{s.get('instances')}×{s.get('threads_per_instance')}, "
        f"{s.get('files_per_request', 1)} files/request: "
        f"{fmt(s.get('ratio_at_8', tr.get('ratio_at_8')), '.2f')}×"
        for s in servers
    )
    return section(
        title,
        f"{tr['protocol']} on loopback; `ddad_score` {first.get('inference')}, "
        f"preferred batches {first.get('preferred_batch_size') or 'none'}, queue delay "
        f"{first.get('max_queue_delay_us', '?')} µs; threads per instance: the cores shared "
        f"out among the instances. Reference: the in-process Scorer at batch {ref['batch']} "
        f"({ref.get('threads', '?')} threads) on the same {ref['n']} files (decode to scores), "
        f"the fastest pass before and after the servers: {fmt(ref['throughput'], '.1f')} files/s "
        f"(passes: {_passes(ref)}).\n\n",
        table([*head, STAGES_HEAD], rows),
        f"\nAt 8 clients, vs the Scorer (target ≥ 0.8×): {at8}.\n",
    )


def bench_markdown(result: BenchResult) -> str:
    """The bench report as Markdown (see benchmarks/README.md for what each number means)."""
    cfg, model, inputs = result.get("config", {}), result.get("model", {}), result.get("inputs", {})
    out = [
        "# ddad-edge bench\n",
        f"Bundle `{cfg.get('bundle')}` ({model.get('kind')} K={model.get('k')}), run "
        f"`{cfg.get('run_dir')}`. Inputs: {inputs.get('note', '')}\n",
        f"\n{KERMANY_NOTE}\n" if inputs.get("kermany") else "",
        "\n" + machine_section(result["machine"], result.get("limits")),
        graphs_section(result),
        unavailable_section({n: e for n, e in result["lanes"].items() if not e.get("available")}),
    ]
    if lanes := available_lanes(result):
        out += [
            latency_section(lanes),
            throughput_section(lanes, cfg.get("batches", [])),
            paired_section(result),
            stages_section(lanes),
            limits_section(lanes),
            profile_section(result),
            *(end_to_end_section(result, lanes, key) for key, _ in END_TO_END_FOLDERS),
        ]
    out += [cold_start_section(result), training_section(result), variants_section(result)]
    return "".join([*out, triton_section(result.get("triton")), targets_section(result)])


SWEEP_PLOTS = (  # file, y value of a sweep point, y label, title
    ("latency_vs_batch.png", "latency", "scoring latency p50 per batch (ms)", "Latency vs batch"),
    (
        "throughput_vs_batch.png",
        "throughput",
        "scoring throughput (images/s)",
        "Throughput vs batch",
    ),
)


def plot_sweep(result: BenchResult, out_dir: Path, note: str = "") -> list[Path]:
    """latency_vs_batch.png (p50 scoring latency per batch, ms) and throughput_vs_batch.png
    (images/s), one line per available lane, log-log axes."""
    paths = []
    batches = result.get("config", {}).get("batches") or []
    for fname, key, ylabel, title in SWEEP_PLOTS:
        fig, ax = figure()
        for n, e in available_lanes(result).items():
            pts = e.get("sweep", {}).get("points", {})
            b = sorted(int(k) for k in pts)
            y = [
                pts[str(i)]["scoring_latency"]["p50_ms"]
                if key == "latency"
                else pts[str(i)]["throughput_ips"]
                for i in b
            ]
            if b:
                ax.plot(b, y, marker="o", label=n, linestyle="--" if n == "torch" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if batches:
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.minorticks_off()
        ax.set(xlabel="batch size", ylabel=ylabel)
        ax.set_title(title + (f" ({note})" if note else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(save_png(fig, out_dir / fname))
    return paths


def write_bench_report(result: BenchResult, out_dir: Path) -> dict[str, Path]:
    """bench.json, bench.md, latency_vs_batch.png, throughput_vs_batch.png in ``out_dir``."""
    out_dir = Path(out_dir)
    write_json(out_dir / "bench.json", result)
    atomic_write_text(out_dir / "bench.md", bench_markdown(result))
    note = result.get("machine", {}).get("cpu", {}).get("model", "")
    lat, tp = plot_sweep(result, out_dir, note)
    return {
        "json": out_dir / "bench.json",
        "markdown": out_dir / "bench.md",
        "latency_png": lat,
        "throughput_png": tp,
    }
