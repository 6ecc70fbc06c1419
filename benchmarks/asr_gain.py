"""The ASR refinement's gain over inter, per recipe and seed: a CSV of measured results and its
figure (README, Results: docs/asr_gain.csv and docs/asr_gain.png). Run as ``python -m
ddad_edge.benchmarks.asr_gain``:

- ``add TABLE.csv --recipe LABEL RUN...``: one row per evaluated run (its seed from
  ``config.json``, inter and asr AUC from ``eval/metrics.json``, written by ``ddad-edge eval``),
  appended to the table; nothing is recomputed;
- ``plot TABLE.csv -o PNG [--target 0.03]``: asr - inter per seed, one marker per recipe, each
  recipe's mean over seeds dotted, the target dashed.

The table's columns: recipe, seed, inter_auc, asr_auc, gain (asr - inter, as reported), source
(where the row was measured).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from ddad_edge.ar_curve import ArCurveError, read_point

COLUMNS = ("recipe", "seed", "inter_auc", "asr_auc", "gain", "source")


def run_row(run: Path, recipe: str) -> dict[str, str]:
    """The table row of one evaluated run with an ASR score (ArCurveError when it has none)."""
    inter, asr = read_point(run, "inter"), read_point(run, "asr")
    return {
        "recipe": recipe,
        "seed": str(inter.seed),
        "inter_auc": f"{inter.auc:.6f}",
        "asr_auc": f"{asr.auc:.6f}",
        "gain": f"{asr.auc - inter.auc:+.6f}",
        "source": f"{Path(run).resolve()}/eval/metrics.json",
    }


def read_table(path: Path) -> dict[str, list[tuple[int, float]]]:
    """recipe -> [(seed, gain)] in the table's order (ValueError naming the file and line
    when a row is malformed)."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(path, newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                out[row["recipe"]].append((int(row["seed"]), float(row["gain"])))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{line}: not a row of {', '.join(COLUMNS)}: {e}") from e
    return dict(out)


def add(table: Path, recipe: str, runs: list[Path]) -> list[dict[str, str]]:
    """Append the rows of ``runs`` to ``table`` (created with its header when absent)."""
    rows = [run_row(r, recipe) for r in runs]
    new = not table.is_file()
    with open(table, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            w.writeheader()
        w.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddad_edge.benchmarks.asr_gain")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="append evaluated runs to the table")
    a.add_argument("table", type=Path)
    a.add_argument("--recipe", required=True)
    a.add_argument("runs", type=Path, nargs="+")
    g = sub.add_parser("plot", help="draw the table")
    g.add_argument("table", type=Path)
    g.add_argument("-o", "--output", type=Path, required=True)
    g.add_argument("--target", type=float, default=0.03)
    g.add_argument("--note", default="Kermany et al., CC BY 4.0")
    args = p.parse_args(argv)
    try:
        if args.cmd == "add":
            for row in add(args.table, args.recipe, args.runs):
                print(f"seed {row['seed']}: asr - inter {row['gain']} ({row['source']})")
            return 0
        from ddad_edge.plots import plot_asr_gain

        plot_asr_gain(read_table(args.table), args.output, args.target, args.note)
        print(f"wrote {args.output}")
        return 0
    except (ArCurveError, OSError, ValueError) as e:
        print(f"error: {e}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
