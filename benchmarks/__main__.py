"""``python -m ddad_edge.benchmarks bench|parity ...``: the same commands as ``ddad-edge``."""

from __future__ import annotations

import typer

from ddad_edge.cli_bench import register

app = typer.Typer(
    help="ddad-edge benchmarks: bench (latency, throughput, limits) and parity (ΔAUC).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
register(app)

if __name__ == "__main__":
    app(prog_name="python -m ddad_edge.benchmarks")
