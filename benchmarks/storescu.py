"""Sending with dcmtk's ``storescu``, a native DICOM sender such as a modality runs: the
proposal option for a file's own transfer syntax, and one timed send.

The benchmark of the node sends with it by default, so that the end-to-end latency does not
include the cost of a Python sender (pynetdicom encoding and fragmenting the data set), which
no scanner pays.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

# storescu's option that proposes a file's own (compressed) transfer syntax, so that the data
# arrives as stored instead of being refused or transcoded.
PROPOSE = {
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
}

LOG_PATTERN = "%D{%s.%q} %m%n"
"""log4cplus (dcmtk's logger) layout: every line prefixed with the Unix time in milliseconds."""
_LOG_CONFIG = f"""\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = {LOG_PATTERN}
"""


def find_dcmtk(name: str) -> str | None:
    """Path of dcmtk's tool ``name`` (storescu, storescp, ...): the first of that name on PATH,
    or in /usr/bin, that says it is dcmtk (pynetdicom installs Python apps of the same names);
    None when there is none."""
    for d in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        exe = Path(d) / name
        if exe.is_file() and os.access(exe, os.X_OK):
            ver = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
            if "dcmtk" in (ver.stdout + ver.stderr).lower():
                return str(exe)
    return None


def propose_option(path: Path) -> str | None:
    """storescu's proposal option for the file's transfer syntax (None: uncompressed)."""
    from pydicom import dcmread

    meta = dcmread(path, stop_before_pixels=True, force=True).get("file_meta")
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    return PROPOSE.get(ts)


SEND_PDU_RANGE = (4096, 131072)
"""What storescu's ``--max-send-pdu`` accepts (bytes); without it storescu sends PDUs as large
as the receiver takes, up to the upper bound."""


class Send(NamedTuple):
    """When one ``storescu`` send began (Unix seconds, millisecond resolution, from its log)."""

    associate: float
    """storescu asked for the association."""
    store: float
    """storescu began sending the C-STORE request (the association was accepted before)."""


def timed_send(
    exe: str,
    port: int,
    path: Path,
    called: str = "DDAD",
    calling: str = "BENCHSCU",
    send_pdu: int | None = None,
) -> Send:
    """Send one file to 127.0.0.1:``port`` on its own association; returns when storescu asked
    for the association and when it began sending the C-STORE request. ``send_pdu``: the
    largest PDU storescu sends (bytes, within SEND_PDU_RANGE; None: as large as the receiver
    takes), as a modality's own setting would.

    Raises:
        RuntimeError: the store failed (storescu's exit status and last lines).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as cfg:
        cfg.write(_LOG_CONFIG)
        cfg.flush()
        opt = propose_option(path)
        cmd = [exe, "-lc", cfg.name, "-aec", called, "-aet", calling, *([opt] if opt else [])]
        cmd += ["--max-send-pdu", str(send_pdu)] if send_pdu else []
        res = subprocess.run(
            [*cmd, "127.0.0.1", str(port), str(path)], capture_output=True, text=True, timeout=300
        )
    lines = (res.stdout + res.stderr).splitlines()
    asked = [line for line in lines if "Requesting Association" in line]
    started = [line for line in lines if "Sending Store Request" in line]
    if res.returncode != 0 or not asked or not started:
        raise RuntimeError(f"storescu {path.name}: exit {res.returncode}: {lines[-3:]}")
    return Send(float(asked[0].split()[0]), float(started[0].split()[0]))
