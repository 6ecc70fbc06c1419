"""What every report writer shares: strict JSON files, Markdown cells, tables and sections, PNG
figures, and the "Machine" section (:func:`ddad_edge.benchmarks.machine.describe_machine`,
:func:`ddad_edge.benchmarks.limits.measure_limits`). The reports: :mod:`bench_report` and
:mod:`parity_report`.

JSON is strict (NaN -> null, inf -> "inf"); figures are matplotlib Agg figures (never pyplot's
global state); files are written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.runtime.fileio import atomic_write, atomic_write_text

KERMANY_NOTE = (
    "Data: Kermany, Zhang, Goldbaum et al., Labeled Optical Coherence Tomography (OCT) "
    "and Chest X-Ray Images for Classification, Mendeley Data, "
    "doi:10.17632/rscbjbr9sj.2, licence CC BY 4.0."
)


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
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return str(obj) if isinstance(obj, Path) else obj


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (see :func:`jsonable`), indented."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n")


def fmt(v: Any, spec: str = ".2f", none: str = "–") -> str:
    """Number -> text ('–' for None/NaN, the string itself for strings such as 'inf')."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return v if isinstance(v, str) else format(v, spec)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (``|`` inside cells escaped)."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells)

    body = [line(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(body + [line(r) + " |" for r in rows]) + "\n"


def section(title: str, *parts: str, level: int = 2) -> str:
    """A Markdown section: a blank line, the heading, a blank line, then ``parts``."""
    return f"\n{'#' * level} {title}\n\n" + "".join(parts)


def bullets(items: Sequence[str]) -> str:
    """One Markdown list item per string."""
    return "".join(f"- {s}\n" for s in items)


def figure() -> tuple[Any, Any]:
    """A 7x4.5 in Agg figure and its one axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def save_png(fig: Any, path: Path) -> Path:
    """Write the figure as PNG (atomically); returns path."""
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def machine_section(machine: dict[str, Any], limits: dict[str, Any] | None) -> str:
    """Markdown: the machine and its measured limits."""
    cpu, gpu, v = machine.get("cpu", {}), machine.get("gpu", {}), machine.get("versions", {})
    missing = [k for k, val in v.items() if "not installed" in str(val)]
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
        ["versions", ", ".join(f"{k} {val}" for k, val in v.items() if k not in missing)],
    ] + ([["not installed", ", ".join(missing)]] if missing else [])
    text = "## Machine\n\n" + table(["", ""], rows)
    return text + (limits_section(limits) if limits else "")


def limits_section(limits: dict[str, Any]) -> str:
    """Markdown: the measured matmul peak, bandwidths and read curve."""
    mm, bw = limits["matmul"], limits["bandwidth"]
    rows = [
        (f"sgemm {mm['n']}x{mm['n']} (GFLOP/s, best)", mm, "best_gflops", mm["peak_gflops"]),
        (f"read {bw['nbytes'] / 2**20:.0f} MiB (GB/s)", bw, "read_gbps", bw["read_gbps"]),
        ("copy (GB/s, read+write bytes)", bw, "copy_gbps", bw["copy_gbps"]),
    ]
    libs = ("numpy", "torch")
    cells = [
        [s, *(fmt(d[lib].get(k), ".1f") for lib in libs), fmt(u, ".1f")] for s, d, k, u in rows
    ]
    where = {True: "fits in LLC", False: "exceeds LLC", None: "LLC unknown"}
    at_weights = sorted(limits.get("bandwidth_at_weights", {}).items(), key=lambda kv: int(kv[0]))
    notes = [
        f"read, buffer of {int(n) / 1e6:.1f} MB read repeatedly ({where[r.get('in_llc')]}): "
        f"{r['read_gbps']:.1f} GB/s"
        for n, r in at_weights
    ]
    if bw.get("llc_bytes"):
        notes.append(f"last-level cache: {bw['llc_bytes'] / 2**20:.0f} MiB")
    if curve := limits.get("read_curve"):
        points = ", ".join(f"{c['mib']} MiB {c['read_gbps']:.1f}" for c in curve)
        notes.append(f"read bandwidth vs buffer size (read repeatedly; GB/s): {points}")
    text = section("Measured limits", table(["limit", "numpy", "torch", "used"], cells), level=3)
    text += bullets(notes)
    if limits.get("quick"):
        text += "\n**quick mode: small sizes, these limits are NOT meaningful.**\n"
    return text
