"""What every ``ddad-edge`` command shares: the two consoles, one-line errors and notes (user text
always escaped, so a path with ``[brackets]`` prints as written), and the check that names the
extra a command needs. Imports only typer, rich and the runtime's error texts
(``runtime/loaderrors.py``): every command module can import it in a runtime-only install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ddad_edge.runtime.loaderrors import one_line

console = Console(stderr=True)
"""Errors, warnings, progress: stderr."""
out_console = Console()
"""Results (tables, JSON lines, 'wrote ...'): stdout."""

MISSING_EXTRA_EXIT = 2
"""Exit status when a command needs packages of an extra that is not installed."""


def command_help(func: object) -> str:
    """A command's docstring with each paragraph on one line (the terminal re-wraps it)."""
    doc = (getattr(func, "__doc__", None) or "").strip()
    paras = [" ".join(line.strip() for line in p.splitlines()) for p in doc.split("\n\n")]
    return "\n\n".join(paras)


def fail(msg: BaseException | str, code: int = 1) -> NoReturn:
    """Print ``error: <msg>`` as one line on stderr and exit with ``code`` (no traceback)."""
    console.print(f"[bold red]error:[/] {escape(one_line(msg))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def say(msg: str) -> None:
    """One plain line of results on stdout (no markup, no highlighting)."""
    out_console.print(escape(msg), highlight=False, soft_wrap=True)


def warn(msg: str) -> None:
    """``warning: <msg>`` on stderr; the command goes on."""
    console.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False, soft_wrap=True)


def note(msg: str) -> None:
    """A dim progress note on stderr."""
    console.print(f"[dim]·[/] {escape(msg)}", highlight=False, soft_wrap=True)


def require_extra(command: str, extra: str, modules: tuple[str, ...]) -> None:
    """Exit with MISSING_EXTRA_EXIT and a one-line install hint when any of ``modules`` cannot be
    imported, e.g. ``require_extra("train", "train", ("torch", "matplotlib"))``. Imports them
    (the command needs them next anyway), so a broken install is caught too."""
    missing = []
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            missing.append(m)
    if missing:
        fail(
            f"`ddad-edge {command}` needs {', '.join(missing)}, which this install lacks: "
            f"pip install 'ddad-edge[{extra}]'",
            MISSING_EXTRA_EXIT,
        )


TRAIN_EXTRA = ("torch", "onnx", "matplotlib")
"""The modules of the `train` extra that the runtime install lacks."""


# Arguments and options that several commands take with the same meaning (typer reads the
# help and names from the Annotated metadata).
BundleArg = Annotated[Path, typer.Argument(help="Bundle folder written by `ddad-edge export`.")]
CalibrationOpt = Annotated[
    Path | None,
    typer.Option(help="Calibration file of this bundle (`calibrate`): adds the flag at its point."),
]
OperatingPointOpt = Annotated[
    float | None,
    typer.Option(help="Specificity of the calibration's operating point (default: the file's)."),
]
PublicKeyOpt = Annotated[
    Path | None,
    typer.Option(help="PEM public key: refuse a bundle without a valid signature by its key."),
]
DataRootOpt = Annotated[Path | None, typer.Option(help="Data folder, if it moved since `split`.")]
TorchThreadsOpt = Annotated[int, typer.Option(help="torch CPU threads (0: torch's default).")]
