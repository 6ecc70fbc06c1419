"""One C-STORE round trip to a DICOM receiver, as the node's forwarder makes it: with
pynetdicom's own socket reads, or with the node's (``--node-sockets``: ``node.sockets``, quick
ACKs before every read).

```bash
python -m ddad_edge.benchmarks.cstore_rtt HOST PORT RESULT.dcm --count 20 [--node-sockets]
```

One association (TCP_NODELAY on, as the forwarder sets it), then ``--count`` C-STOREs of the
same file after one untimed; prints the median and the range of ``send_c_store``'s wall time
(request sent -> response received). The two kinds of read cannot share a process (the node's
replaces pynetdicom's for the whole process), so each run measures one.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Annotated

import typer
from pydicom import dcmread
from pynetdicom import AE, evt

from ddad_edge.node.sockets import install, no_delay


def round_trips(host: str, port: int, path: Path, count: int, ae_title: str) -> list[float]:
    """Milliseconds per C-STORE of ``path`` on one association, ``count`` of them after one
    untimed. Raises ConnectionError when the association or a store fails."""
    ds = dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="DDAD-RTT")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    handlers = [(evt.EVT_CONN_OPEN, no_delay)]
    assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=handlers)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {ae_title}@{host}:{port}")
    times = []
    try:
        for i in range(count + 1):
            t = time.perf_counter()
            status = assoc.send_c_store(path)
            if getattr(status, "Status", None) != 0:
                raise ConnectionError(f"C-STORE {i} answered {status!r}")
            times.append((time.perf_counter() - t) * 1e3)
    finally:
        assoc.release()
    return times[1:]


def main(
    host: str,
    port: int,
    path: Annotated[Path, typer.Argument(help="A DICOM file to store (e.g. a result SR).")],
    count: Annotated[int, typer.Option(min=1)] = 20,
    ae_title: Annotated[str, typer.Option(help="Called AE title.")] = "ANY",
    node_sockets: Annotated[bool, typer.Option(help="Read as node.sockets does.")] = False,
) -> None:
    """Time C-STOREs of PATH to HOST:PORT with pynetdicom's socket reads or the node's."""
    if node_sockets:
        install()
    ms = round_trips(host, port, path, count, ae_title)
    reads = "node.sockets" if node_sockets else "pynetdicom"
    typer.echo(
        f"{reads} reads: C-STORE round trip p50 {statistics.median(ms):.1f} ms "
        f"(min {min(ms):.1f}, max {max(ms):.1f}, n {len(ms)})"
    )


if __name__ == "__main__":
    typer.run(main)
