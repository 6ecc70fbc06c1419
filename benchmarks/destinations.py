"""Where the node benchmark's results arrive: a Storage SCP that notes when each result arrived
and of which kind, per Study Instance UID (each send is its own study, so the results of one send
are those of its study).

- :class:`StorescpDestination`: dcmtk's ``storescp``, a native receiver as a PACS runs; the
  arrival time is the line it logs when a data set has been received in full, before it is
  written ("storing DICOM file", log timestamps in milliseconds).
- :class:`PynetdicomDestination`: a pynetdicom Storage SCP in this process; the arrival time is
  its C-STORE handler's first line. Its own reactors poll (1 ms sleeps) and it shares this
  process's interpreter lock, so it adds latency that is not the node's.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ddad_edge.benchmarks.storescu import LOG_PATTERN

STORESCP_MAX_PDU = 131072
"""The largest PDU storescp accepts (dcmtk's maximum)."""


class Arrivals:
    """Arrival times and kinds ("SR", "SC", ...) of results per study; thread-safe."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[tuple[float, str]]] = {}
        self.cond = threading.Condition()

    def note(self, study: str, t: float, kind: str) -> None:
        with self.cond:
            self.arrivals.setdefault(study, []).append((t, kind))
            self.cond.notify_all()

    def wait(self, study: str, n_results: int, timeout: float = 600.0) -> tuple[float, float]:
        """When the SR and when the n-th result in ``study`` arrived (Unix seconds)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.arrivals.get(study, [])) < n_results:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"results in study {study} did not arrive in {timeout} s")
                self.cond.wait(left)
            got = self.arrivals[study][:n_results]
            return min(t for t, k in got if k == "SR"), max(t for t, _ in got)


class PynetdicomDestination(Arrivals):
    """A pynetdicom Storage SCP on 127.0.0.1 (``port``), AE title BENCHDEST."""

    def __init__(self) -> None:
        super().__init__()
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.ae = AE(ae_title="BENCHDEST")
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        t = time.time()
        ds = event.dataset
        self.note(str(ds.get("StudyInstanceUID", "")), t, str(ds.get("Modality", "")))
        return 0x0000

    def close(self) -> None:
        self.ae.shutdown()


# log4cplus: storescp's own messages at debug level (its "storing DICOM file" line), the rest of
# dcmtk's at warnings only
_STORESCP_LOG = f"""\
log4cplus.rootLogger = WARN, console
log4cplus.logger.dcmtk.apps.storescp = DEBUG
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = {LOG_PATTERN}
"""
_STORING = " storing DICOM file: "
_SORT_PREFIX = "st"  # storescp --sort-on-study-uid: a folder st_<study UID> per study


def parse_storing(line: str) -> tuple[float, str, str] | None:
    """(Unix seconds, study UID, kind) from storescp's "storing DICOM file" log line, whose path
    is OUT/st_<study UID>/<kind>.<SOP Instance UID> (``--sort-on-study-uid st``; dcmtk names
    each file by its modality: SR.../SC...); None for any other line."""
    stamp, sep, path = line.rstrip("\n").partition(_STORING)
    if not sep:
        return None
    p = Path(path)
    study = p.parent.name.removeprefix(f"{_SORT_PREFIX}_")
    return float(stamp), study, p.name.split(".", 1)[0][:2]


def loopback_only_here() -> bool:
    """Whether this thread's network namespace has no interface but loopback (Linux)."""
    try:
        lines = Path("/proc/thread-self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return [line.split(":", 1)[0].strip() for line in lines] == ["lo"]


class StorescpDestination(Arrivals):
    """dcmtk's storescp on ``port`` writing into ``folder``, read as it logs. dcmtk 3.6.7's
    storescp listens on every interface: start it only where loopback is the only one
    (:func:`loopback_only_here`)."""

    def __init__(self, exe: str, port: int, folder: Path) -> None:
        super().__init__()
        self.port = port
        folder.mkdir(parents=True, exist_ok=True)
        self._cfg = tempfile.NamedTemporaryFile("w", suffix=".cfg")  # noqa: SIM115 (closed below)
        self._cfg.write(_STORESCP_LOG)
        self._cfg.flush()
        cmd = [exe, "-lc", self._cfg.name, "-aet", "BENCHDEST", "-od", str(folder)]
        cmd += ["-su", _SORT_PREFIX, "--max-pdu", str(STORESCP_MAX_PDU), str(port)]
        # line-buffered output (stdbuf): each line is read when storescp writes it
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "-eL", *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            got = parse_storing(line)
            if got is not None:
                self.note(got[1], got[0], got[2])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._reader.join(5)
        self._cfg.close()
