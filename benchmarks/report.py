"""What every report writer shares: strict JSON files, Markdown cells and tables, PNG figures.

JSON is strict (NaN -> null, inf -> "inf"); figures are matplotlib Agg figures (never pyplot's
global state); files are written atomically (temp file in the same folder, then rename). The
reports themselves: :mod:`bench_report`, :mod:`parity_report` and :mod:`machine_report`.
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
