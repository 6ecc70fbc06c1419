"""``ddad-edge serve``: the scanner-side DICOM node. Thin: parse, call ``ddad_edge.node``, print.

Torch-free: everything it imports comes from the runtime and the ``node`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ddad_edge.cli_common import (
    CalibrationOpt,
    OperatingPointOpt,
    command_help,
    out_console,
    require_extra,
)
from ddad_edge.cli_common import fail as _fail


def _print_status(spool: Path, as_json: bool) -> None:
    from ddad_edge.node.service import spool_status

    try:
        st = spool_status(spool)
    except (FileNotFoundError, OSError) as e:
        _fail(str(e))
    if as_json:
        out_console.print_json(json.dumps(st))
        return
    table = Table(title=f"spool {spool}")
    table.add_column("state")
    table.add_column("count", justify="right")
    for state, n in st["counts"].items():
        table.add_row(state, str(n))
    out_console.print(table)
    for d in st["dead_letters"]:
        out_console.print(
            f"dead-lettered {d['sop_instance_uid']} ({d['result']}): {escape(d['reason'])}",
            highlight=False,
        )


ServeBundleArg = Annotated[
    Path | None, typer.Argument(help="Bundle folder written by `export` (not with --status).")
]
AeTitleOpt = Annotated[str, typer.Option(help="Our AE title.")]
HostOpt = Annotated[str, typer.Option(help="Address the SCP listens on.")]
PortOpt = Annotated[int, typer.Option(help="DICOM port the SCP listens on.")]
SpoolOpt = Annotated[
    Path, typer.Option(help="Spool folder: received objects, results, journal (created).")
]
ForwardOpt = Annotated[
    str | None,
    typer.Option(help="Send results (SR, Secondary Capture) to AE@host:port by C-STORE."),
]
MetricsPortOpt = Annotated[
    int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics.")
]
WorkersOpt = Annotated[
    int, typer.Option(help="Objects processed at once, each scored in a child process (cores).")
]
ObjectTimeoutOpt = Annotated[
    float,
    typer.Option(help="Seconds one file may take in its child before the child is killed."),
]
JsonlOpt = Annotated[
    bool, typer.Option(help="Also append one JSON line per object to spool/results.jsonl.")
]
RetriesOpt = Annotated[
    int, typer.Option(help="Delivery tries of a result before it is dead-lettered.")
]
BackoffOpt = Annotated[
    float, typer.Option(help="First retry delay in seconds (doubles per try, 60 s at most).")
]
RetryFailedOpt = Annotated[
    bool,
    typer.Option(
        help="At start, process every failed object again and queue every dead-lettered result "
        "again (once the cause is fixed: disk space, the destination)."
    ),
]
BackendOpt = Annotated[str, typer.Option(help="auto, trt, ort-cuda, ort-cpu, ...")]
StatusOpt = Annotated[
    Path | None,
    typer.Option(help="Print the counts per state of this spool and exit (no serving)."),
]
StatusJsonOpt = Annotated[bool, typer.Option("--json", help="With --status: print JSON.")]


def serve(
    bundle: ServeBundleArg = None,
    calibration: CalibrationOpt = None,
    operating_point: OperatingPointOpt = None,
    ae_title: AeTitleOpt = "DDAD",
    host: HostOpt = "0.0.0.0",
    port: PortOpt = 11112,
    spool: SpoolOpt = Path("spool"),
    forward: ForwardOpt = None,
    metrics_port: MetricsPortOpt = None,
    workers: WorkersOpt = 1,
    object_timeout: ObjectTimeoutOpt = 120.0,
    jsonl: JsonlOpt = False,
    retries: RetriesOpt = 10,
    backoff: BackoffOpt = 1.0,
    retry_failed: RetryFailedOpt = False,
    backend: BackendOpt = "auto",
    status: StatusOpt = None,
    as_json: StatusJsonOpt = False,
) -> None:
    """Run the DICOM node: receive CR/DX images by C-STORE, store them in the spool before
    answering, gate/score/decide each, and send an SR (+ heat-map Secondary Capture) to the
    --forward destination. Logs are JSON lines on stderr; SIGTERM stops it gracefully.

    Reads BUNDLE and --calibration; writes --spool (spool/receiving while objects arrive,
    spool/incoming, spool/outbox, spool/journal.sqlite, spool/results.jsonl with --jsonl).
    With --status SPOOL it only reads that spool's journal and prints the counts per state.
    """
    if status is not None:
        _print_status(status, as_json)
        return
    if bundle is None:
        _fail("give a BUNDLE folder to serve (or --status SPOOL)")
    require_extra("serve", "node", ("pynetdicom", "highdicom", "prometheus_client"))
    from ddad_edge.node import logs
    from ddad_edge.node.forwarder import Destination, RetryPolicy
    from ddad_edge.node.pipeline import PipelineError, load_pipeline
    from ddad_edge.node.service import Node, NodeConfig, run_until_signalled

    try:
        dest = Destination.parse(forward) if forward else None
    except ValueError as e:
        _fail(str(e))
    if retries < 1 or backoff <= 0:
        _fail("--retries must be >= 1 and --backoff > 0")
    if workers < 1 or object_timeout <= 0:
        _fail("--workers must be >= 1 and --object-timeout > 0")
    try:
        process = load_pipeline(
            bundle,
            calibration,
            operating_point=operating_point,
            backend=backend,
            processes=workers,
            timeout_s=object_timeout,
        )
    except PipelineError as e:
        _fail(str(e))
    config = NodeConfig(
        spool=spool,
        ae_title=ae_title,
        host=host,
        port=port,
        destination=dest,
        metrics_port=metrics_port,
        workers=workers,
        jsonl=jsonl,
        retry=RetryPolicy(max_tries=retries, backoff=backoff),
        retry_failed=retry_failed,
    )
    logs.configure()
    try:
        run_until_signalled(Node(config, process))
    except OSError as e:  # port in use, spool not writable
        _fail(f"the node could not start: {e}")
    finally:
        process.close()


def register(app: typer.Typer) -> None:
    app.command(help=command_help(serve))(serve)
