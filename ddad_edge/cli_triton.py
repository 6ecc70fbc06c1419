"""Triton commands: ``triton`` (write a model repository for a bundle) and ``serve-triton`` (run
the tritonserver binary of the nvidia-pytriton wheel on it). Thin: parse, call the library, print.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ddad_edge.cli_common import (
    BundleArg,
    CalibrationOpt,
    OperatingPointOpt,
    fail,
    out_console,
    say,
)


def triton(
    bundle: BundleArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Model repository to write.")],
    max_batch: Annotated[int, typer.Option(help="max_batch_size of the models.")] = 64,
    calibration: CalibrationOpt = None,
    operating_point: OperatingPointOpt = None,
    inference: Annotated[
        str,
        typer.Option(
            help="How ddad_score runs the network: in-process (onnxruntime inside the Python "
            "model) or bls (a BLS call to --bls-model)."
        ),
    ] = "in-process",
    bls_model: Annotated[
        str, typer.Option(help="Graph model the BLS calls go to.")
    ] = "ddad_dual_fp32",
    queue_delay_us: Annotated[
        int, typer.Option(help="Dynamic batching: longest wait for a batch to fill, µs.")
    ] = 2000,
    instances: Annotated[
        int,
        typer.Option(help="Instances of the ddad_score model (2: one decodes, one infers)."),
    ] = 2,
    threads: Annotated[
        int | None,
        typer.Option(
            help="onnxruntime and decoding threads per ddad_score instance (default: the "
            "server's physical cores shared out among the instances)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing OUTPUT.")] = False,
) -> None:
    """Write a Triton Inference Server model repository for a bundle.

    Reads BUNDLE (hash-checked) and --calibration. Writes OUTPUT/: ddad_score (Python backend:
    file bytes in, the records of `score` out: gate, decoding and scoring of this runtime, the
    flag when calibrated), ddad_dual_fp32 (onnxruntime_onnx,
    CPU), ddad_dual_fp16 (onnxruntime_onnx, GPU) and a tensorrt_plan model per engine `build`
    made. Every config.pbtxt is then parsed with Triton's schema (tritonclient) and checked
    against its ONNX graph.
    """
    from ddad_edge.export.triton_config import ConfigError
    from ddad_edge.export.triton_repo import validate_repository, write_repository
    from ddad_edge.runtime.bundle import BundleError
    from ddad_edge.runtime.calibration import CalibrationError

    try:
        res = write_repository(
            bundle,
            output,
            max_batch=max_batch,
            calibration=calibration,
            operating_point=operating_point,
            inference=inference,
            bls_model=bls_model,
            queue_delay_us=queue_delay_us,
            instances=instances,
            threads=threads,
            force=force,
        )
        checked = {m.name: m.note for m in validate_repository(res.root)}
    except (BundleError, CalibrationError, ConfigError, FileExistsError, OSError, ValueError) as e:
        fail(e)
    table = Table(title=f"{escape(str(res.root))}: Triton model repository")
    for col in ("model", "kind", "note", "validated"):
        table.add_column(col)
    for m in res.models:
        table.add_row(m.name, m.kind, escape(m.note), checked.get(m.name, "NO"))
    out_console.print(table)


def serve_triton(
    repository: Annotated[Path, typer.Argument(help="Model repository written by `triton`.")],
    http_port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1 (0: a free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port on 127.0.0.1 (0: a free one).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port (0: a free one).")] = 8002,
    seconds: Annotated[
        float, typer.Option(help="Stop after this many seconds (0: run until Ctrl-C).")
    ] = 0.0,
) -> None:
    """Serve a model repository's ddad_score model with the tritonserver binary of the
    nvidia-pytriton wheel (Python backend only), on 127.0.0.1.

    Sets up what that build needs (the Python stub for this interpreter, its libpython first on
    the library path) and prints the endpoints when the model is ready. The onnxruntime and
    TensorRT models of the repository need NVIDIA's Triton container (see the README).
    """
    from ddad_edge.runtime.triton_server import ServerError, start_server

    try:
        server = start_server(
            repository,
            models=["ddad_score"],
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
        )
    except ServerError as e:
        fail(e)
    say(
        f"ready: HTTP {server.http_url}, gRPC grpc://{server.grpc_url}, "
        f"metrics 127.0.0.1:{server.metrics_port}; log {server.log_path}"
    )
    deadline = time.monotonic() + seconds if seconds > 0 else None
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too, like Ctrl-C
    try:
        while server.alive() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        died = not server.alive()
        tail = server.log_tail() if died else ""
        server.stop()
    if died:
        fail(f"tritonserver exited:\n{tail}")
    say("stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    """Add triton and serve-triton to the app."""
    app.command("triton")(triton)
    app.command("serve-triton")(serve_triton)
