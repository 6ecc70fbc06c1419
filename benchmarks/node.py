"""End-to-end latency of the DICOM node: C-STORE sent -> results received at the destination.

``python -m ddad_edge.benchmarks.node BUNDLE --calibration C FILE... -o out.json``

The node runs as ``ddad-edge serve`` in its own process on loopback, forwarding to a
destination that notes when each result arrives (``benchmarks.destinations``): a pynetdicom
Storage SCP in this process by default, or with ``--destination storescp`` dcmtk's
``storescp``, a native receiver as a PACS runs (in a loopback-only network namespace). Each
send is a copy of a file under a new SOP Instance UID (the pixel data as stored: compressed
files stay compressed), so the node processes every one. Times are wall clock (``time.time``)
in both processes.

The sender is dcmtk's ``storescu`` by default (each object on its own association, timed from
the moment it starts sending the C-STORE request, from its log), as a modality's native DICOM
stack sends; ``--sender pynetdicom`` sends from this process on one association per sender
(its Python encoding and fragmenting then count as transfer).

Per object, from the node's journal (``times``) and the two ends:

- receive+persist: C-STORE sent -> object stored, fsynced and journalled (``received_at``),
  split into transfer (C-STORE sent -> the whole object arrived at the node's handler) and
  persist (atomic write, two fsyncs; the journal commit follows ``received_at``);
- wait: arrived at the node's handler -> a worker takes it (queueing; grows with concurrent
  senders; the worker starts on an object while it is being persisted, so wait and persist
  overlap);
- gate, decode, score: the pipeline's stages (``node.pipeline``);
- sr: scores ready -> the SR (the decision) received at the destination (SR from its
  template, encode, outbox, journal, send);
- build+send: scores ready -> the object's last result (the heat-map SC, built after the SR
  is queued) received at the destination;
- e2e decision: C-STORE sent -> SR received; e2e: C-STORE sent -> last result received;
- association (``storescu`` only, outside the e2e times): storescu asked for the association
  -> it began sending the C-STORE request (the node's negotiation of the contexts storescu
  proposes: by default every storage SOP class in three transfer syntaxes).

The in-process reference is ``decode + score`` of the same file in a process of its own
(``runtime.io.load_image`` + ``preprocess`` + the scorer), median of ``repeats``, whose heap is
kept as the node's scoring processes keep theirs (``node.heap``), so that both sides decode
under the same allocator while this process (senders, destination) stays as it was; the target
is e2e p50 <= 2 x that. Also timed in process: the full-resolution decode
(``target_size=None``) against the reduced one the node uses, and the image scores of both
(parity).

With ``--floor`` the same sends then go to ``benchmarks.node_floor``, the node with its
per-object gate, decode and score taken out: :func:`node_floor_ms` per file is what the node
adds to decode + score at the least (DICOM transfer in, the SR's persistence and delivery), and
``lowest_ratio_decision`` the e2e decision ratio that even a zero-cost gate and a child as fast
as the reference would give.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ddad_edge.benchmarks.destinations import (
    Arrivals,
    PynetdicomDestination,
    StorescpDestination,
    loopback_only_here,
)
from ddad_edge.benchmarks.storescu import SEND_PDU_RANGE, find_dcmtk, timed_send
from ddad_edge.node.heap import keep_freed_memory


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 600.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


_NEW_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "MediaStorageSOPInstanceUID")


def _copy(ds: Any) -> Any:
    """The data set as a new study with a new SOP Instance UID (pixel data untouched)."""
    from pydicom import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    out = Dataset()  # new element tables (the elements themselves are shared, then replaced)
    out.update({t: ds[t] for t in ds.keys() if ds[t].keyword not in _NEW_UIDS})
    out.file_meta = FileMetaDataset()
    meta = ds.file_meta
    out.file_meta.update({t: meta[t] for t in meta.keys() if meta[t].keyword not in _NEW_UIDS})
    out.preamble = ds.preamble
    out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out.StudyInstanceUID = generate_uid()
    return out


def _sender_ae(datasets: list[Any]) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title="BENCHSCU")
    for sop, ts in sorted(
        {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}
    ):
        ae.add_requested_context(sop, ts)  # alone: the file goes as stored, never transcoded
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    return ae


def _send_and_wait(
    port: int,
    dest: Arrivals,
    items: list[tuple[str, Any]],
    out: list[dict[str, Any]],
    storescu: str | None = None,
    folder: Path | None = None,
    send_pdu: int | None = None,
) -> None:
    """One sender: for each (name, dataset), C-STORE it and wait for its results. With
    ``storescu`` (dcmtk's, the default sender) each data set is written to ``folder`` first and
    sent on its own association; else pynetdicom sends them all on one association."""
    if storescu is not None and folder is not None:
        for name, ds in items:
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            sent = timed_send(storescu, port, path, send_pdu=send_pdu)
            _note(dest, name, ds, sent.store, out, sent.associate)
        return
    ae = _sender_ae([d for _, d in items])
    assoc = ae.associate("127.0.0.1", port, ae_title="DDAD")
    if not assoc.is_established:
        raise RuntimeError("the node refused the association")
    try:
        for name, ds in items:
            t0 = time.time()
            status = assoc.send_c_store(ds)
            if not status or int(status.Status) != 0:
                raise RuntimeError(f"{name}: C-STORE status {status}")
            _note(dest, name, ds, t0, out)
    finally:
        assoc.release()


def _note(
    dest: Arrivals,
    name: str,
    ds: Any,
    t0: float,
    out: list[dict[str, Any]],
    t_assoc: float | None = None,
) -> None:
    """Wait for the results of one send (a scored object gets an SR and a Secondary Capture,
    both in its study) and note the times (``t_assoc``: when its association was asked for,
    where the sender says)."""
    t_sr, t_dest = dest.wait(str(ds.StudyInstanceUID), 2)
    out.append(
        {"file": name, "uid": str(ds.SOPInstanceUID), "t0": t0, "t_sr": t_sr, "t_dest": t_dest}
        | ({"t_assoc": t_assoc} if t_assoc is not None else {})
    )


def _breakdown(spool: Path, sends: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per send: the stages in ms from the node's journal and the two end times."""
    from ddad_edge.node.journal import Journal

    journal = Journal(spool / "journal.sqlite")
    rows = []
    try:
        for s in sends:
            row = journal.get(s["uid"])
            rec = journal.record(s["uid"]) or {}
            t = rec.get("times") or {}
            start = t.get("started_at", row.received_at + t.get("wait", 0.0))
            scored_at = start + t.get("gate", 0) + t.get("decode", 0) + t.get("score", 0)
            rows.append(
                {
                    "file": s["file"],
                    "status": rec.get("status"),
                    "receive_persist": (row.received_at - s["t0"]) * 1e3,
                    "transfer": (t.get("arrived_at", row.received_at) - s["t0"]) * 1e3,
                    "persist": (row.received_at - t.get("arrived_at", row.received_at)) * 1e3,
                    "wait": t.get("wait", 0.0) * 1e3,
                    "gate": t.get("gate", 0.0) * 1e3,
                    "decode": t.get("decode", 0.0) * 1e3,
                    "score": t.get("score", 0.0) * 1e3,
                    "sr": (s["t_sr"] - scored_at) * 1e3,
                    "build_send": (s["t_dest"] - scored_at) * 1e3,
                    "e2e_decision": (s["t_sr"] - s["t0"]) * 1e3,
                    "e2e": (s["t_dest"] - s["t0"]) * 1e3,
                }
                | ({"association": (s["t0"] - s["t_assoc"]) * 1e3} if "t_assoc" in s else {})
            )
    finally:
        journal.close()
    return rows


def in_process(bundle: Path, files: list[Path], repeats: int) -> dict[str, dict[str, float]]:
    """Median ms of decode (reduced, as the node does; and full resolution), score, and the
    image scores' largest relative difference between the two decodes, per file."""
    from ddad_edge.runtime.io import load_image
    from ddad_edge.runtime.preprocess import preprocess
    from ddad_edge.runtime.scorer import Scorer

    out = {}
    with Scorer.from_bundle(bundle, backend="ort-cpu", max_batch=1) as scorer:
        for f in files:
            times: dict[str, list[float]] = {"decode": [], "decode_full": [], "score": []}
            for r in range(repeats + 1):  # the first run loads codecs: not timed
                t0 = time.perf_counter()
                x = preprocess(load_image(f))[None]
                t1 = time.perf_counter()
                reduced = scorer.scores(x, scorer.infer(x)).image
                t2 = time.perf_counter()
                xf = preprocess(load_image(f, target_size=None))[None]
                t3 = time.perf_counter()
                if r:
                    times["decode"].append(t1 - t0)
                    times["score"].append(t2 - t1)
                    times["decode_full"].append(t3 - t2)
            full = scorer.scores(xf, scorer.infer(xf)).image
            rel = max(
                abs(float(reduced[n][0]) - float(full[n][0])) / max(abs(float(full[n][0])), 1e-12)
                for n in full
            )
            med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
            med["score_rel_diff_full_vs_reduced"] = rel
            out[f.name] = med
    return out


def _kept(bundle: Path, files: list[Path], repeats: int) -> dict[str, dict[str, float]]:
    keep_freed_memory()
    return in_process(bundle, files, repeats)


def in_process_kept(bundle: Path, files: list[Path], repeats: int) -> dict[str, dict[str, float]]:
    """:func:`in_process` in a new process whose heap is kept (``node.heap``)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_kept, (bundle, files, repeats))


def _summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = (
        "receive_persist",
        "transfer",
        "persist",
        "wait",
        "gate",
        "decode",
        "score",
        "sr",
        "build_send",
    )
    keys += ("e2e_decision", "e2e")
    keys += ("association",) if all("association" in r for r in rows) else ()
    return {
        k: {
            "p50": float(np.percentile([r[k] for r in rows], 50)),
            "p95": float(np.percentile([r[k] for r in rows], 95)),
        }
        for k in keys
    }


def node_floor_ms(rows: list[dict[str, Any]]) -> float:
    """p50 over the floor node's sends (``benchmarks.node_floor``) of e2e decision less
    persist, ms: what the node adds to decode + score at the least. The real node decodes and
    scores while the object is persisted, so its e2e decision is at least transfer + decode +
    score + (journalled -> SR received), and the floor's sends measure the rest."""
    return float(np.percentile([r["e2e_decision"] - r["persist"] for r in rows], 50))


def _floor_summary(rows: list[dict[str, Any]], ref_ms: float) -> dict[str, Any]:
    """The floor's stages, its :func:`node_floor_ms` and the lowest e2e decision ratio it
    allows against the in-process reference ``ref_ms``."""
    floor = node_floor_ms(rows)
    return {
        "floor": _summary(rows),
        "node_floor_ms": floor,
        "lowest_ratio_decision": (floor + ref_ms) / ref_ms,
    }


def run(
    bundle: Path,
    calibration: Path | None,
    files: list[Path],
    *,
    rounds: int = 5,
    concurrency: tuple[int, ...] = (1, 8),
    workers: int = 1,
    workdir: Path,
    storescu: str | None = None,
    storescp: str | None = None,
    send_pdu: int | None = None,
    floor: Path | None = None,
) -> dict[str, Any]:
    """Start a node, send every file ``rounds`` times at each concurrency, return the per-send
    rows and their p50/p95 by file group and concurrency. ``storescu``: dcmtk's sender to use
    (None: pynetdicom); ``storescp``: dcmtk's receiver for the results (None: pynetdicom);
    ``send_pdu``: the largest PDU ``storescu`` sends (None: as large as the node takes);
    ``floor``: run ``benchmarks.node_floor`` with this reference file instead of the node."""
    from pydicom import dcmread

    datasets = {f.name: dcmread(f) for f in files}
    dest: PynetdicomDestination | StorescpDestination
    if storescp:
        dest = StorescpDestination(storescp, free_port(), workdir / "received")
        wait_port(dest.port, 30)
    else:
        dest = PynetdicomDestination()
    port = free_port()
    spool = workdir / "spool"
    if floor is None:
        cmd = [sys.executable, "-m", "ddad_edge.cli", "serve", str(bundle), "--host", "127.0.0.1"]
        cmd += ["--backend", "ort-cpu", "--workers", str(workers)]
    else:
        cmd = [sys.executable, "-m", "ddad_edge.benchmarks.node_floor", str(bundle), str(floor)]
    cmd += ["--port", str(port), "--spool", str(spool)]
    cmd += ["--forward", f"BENCHDEST@127.0.0.1:{dest.port}"]
    cmd += ["--calibration", str(calibration)] if calibration else []
    log = open(workdir / "node.log", "wb")  # noqa: SIM115 (closed below)
    node = subprocess.Popen(cmd, stdout=log, stderr=log)
    results: dict[str, Any] = {}
    folder = workdir / "sent"
    folder.mkdir(exist_ok=True)
    send = (storescu, folder, send_pdu)
    try:
        wait_port(port)
        # warm-up: every file once (codecs, first inference)
        _send_and_wait(port, dest, [(n, _copy(d)) for n, d in datasets.items()], [], *send)
        for c in concurrency:
            sends: list[dict[str, Any]] = []  # list.append is atomic: shared by the threads
            jobs = [(n, _copy(d)) for _ in range(rounds) for n, d in datasets.items()]
            threads = [
                threading.Thread(target=_send_and_wait, args=(port, dest, jobs[i::c], sends, *send))
                for i in range(min(c, len(jobs)))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results[str(c)] = _breakdown(spool, sends)
    finally:
        node.terminate()
        node.wait(60)
        log.close()
        dest.close()
    return results


def summarize(
    rows: dict[str, Any], floor_rows: dict[str, Any], ref: dict[str, dict[str, float]]
) -> dict[str, dict[str, Any]]:
    """Per "concurrency:file": the stages' p50/p95, the in-process reference (decode + score,
    ms), the e2e ratios against it and, with ``floor_rows``, :func:`_floor_summary`."""
    out = {}
    for c, rs in rows.items():
        for name in sorted({r["file"] for r in rs}):
            s: dict[str, Any] = _summary([r for r in rs if r["file"] == name])
            ref_ms = ref[name]["decode"] + ref[name]["score"]
            s["in_process_decode_score"] = ref_ms
            s["e2e_p50_over_in_process"] = s["e2e"]["p50"] / ref_ms
            s["e2e_decision_p50_over_in_process"] = s["e2e_decision"]["p50"] / ref_ms
            if floor_rows:
                s |= _floor_summary([r for r in floor_rows[c] if r["file"] == name], ref_ms)
            out[f"{c}:{name}"] = s
    return out


def _lines(summary: dict[str, dict[str, Any]], ref: dict[str, dict[str, float]]) -> list[str]:
    """The printed table: a line per concurrency and file (and its floor), then the reference's
    decode times per file."""
    out = []
    for key, s in summary.items():
        c, name = key.split(":", 1)
        stages = "  ".join(
            f"{k} {v['p50']:.0f}/{v['p95']:.0f}"
            for k, v in s.items()
            if isinstance(v, dict) and "p50" in v
        )
        out.append(
            f"{c} sender(s) {name}: {stages}  in-process {s['in_process_decode_score']:.0f} ms"
            f"  ratio decision {s['e2e_decision_p50_over_in_process']:.2f}"
            f" all {s['e2e_p50_over_in_process']:.2f}"
        )
        if "node_floor_ms" in s:
            out.append(
                f"{c} sender(s) {name}: floor e2e decision {s['floor']['e2e_decision']['p50']:.1f}"
                f" ms, less persist {s['node_floor_ms']:.1f} ms; lowest ratio decision"
                f" {s['lowest_ratio_decision']:.2f}"
            )
    for name, r in ref.items():
        out.append(
            f"{name}: decode reduced {r['decode']:.1f} ms, full {r['decode_full']:.1f} ms"
            f" ({r['decode_full'] / r['decode']:.1f}x); score {r['score']:.1f} ms;"
            f" scores full vs reduced rel diff {r['score_rel_diff_full_vs_reduced']:.2e}"
        )
    return out


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    files: Annotated[list[Path], typer.Argument(help="DICOM files to send.")],
    calibration: Annotated[Path | None, typer.Option(help="Calibration file.")] = None,
    rounds: Annotated[int, typer.Option(help="Sends of each file per concurrency.")] = 5,
    repeats: Annotated[int, typer.Option(help="In-process repeats per file.")] = 5,
    senders: Annotated[
        list[int] | None, typer.Option(help="Concurrent senders to measure (repeatable).")
    ] = None,
    workers: Annotated[int, typer.Option(help="The node's processing threads.")] = 1,
    output: Annotated[Path, typer.Option("-o", help="JSON results file.")] = Path(
        "node-bench.json"
    ),
    workdir: Annotated[Path, typer.Option(help="Spool and logs (created).")] = Path("node-bench"),
    sender: Annotated[
        str, typer.Option(help="storescu (dcmtk, as a modality sends) or pynetdicom.")
    ] = "storescu",
    destination: Annotated[
        str,
        typer.Option(
            help="pynetdicom (a Storage SCP in this process) or storescp (dcmtk, as a PACS "
            "receives; it listens on every interface, so only in a loopback-only network "
            "namespace: unshare --net)."
        ),
    ] = "pynetdicom",
    send_pdu: Annotated[
        int | None,
        typer.Option(
            help="Largest PDU storescu sends, bytes (4096-131072; default: as large as the node "
            "takes, which storescu caps at 131072). A modality's own setting, often 16384."
        ),
    ] = None,
    floor: Annotated[
        bool,
        typer.Option(
            help="Also run the node without its per-object gate, decode and score "
            "(benchmarks.node_floor, every object given the first file's record) and report "
            "the e2e decision no scorer can go below and the lowest ratio it allows."
        ),
    ] = False,
) -> None:
    """Measure the node's end-to-end latency (see the module docstring) and print a table."""
    if sender not in ("storescu", "pynetdicom"):
        raise typer.BadParameter(f"--sender {sender}: storescu or pynetdicom")
    if destination not in ("pynetdicom", "storescp"):
        raise typer.BadParameter(f"--destination {destination}: pynetdicom or storescp")
    if send_pdu is not None and not SEND_PDU_RANGE[0] <= send_pdu <= SEND_PDU_RANGE[1]:
        raise typer.BadParameter(f"--send-pdu {send_pdu}: not within {SEND_PDU_RANGE}")
    if send_pdu is not None and sender != "storescu":
        raise typer.BadParameter("--send-pdu sets storescu's PDU size: only with --sender storescu")
    workdir.mkdir(parents=True, exist_ok=True)
    storescu = find_dcmtk("storescu") if sender == "storescu" else None
    if sender == "storescu" and storescu is None:
        raise typer.BadParameter("dcmtk's storescu is not installed (or use --sender pynetdicom)")
    storescp = find_dcmtk("storescp") if destination == "storescp" else None
    if destination == "storescp" and storescp is None:
        raise typer.BadParameter(
            "dcmtk's storescp is not installed (or use --destination pynetdicom)"
        )
    if destination == "storescp" and not loopback_only_here():
        raise typer.BadParameter(
            "storescp listens on every interface (dcmtk 3.6.7 has no bind address): run the "
            "benchmark in a loopback-only network namespace, unshare --net sh -c 'ip link set "
            "lo up && python -m ddad_edge.benchmarks.node ...'"
        )
    before = in_process_kept(bundle, files, repeats)
    conc = tuple(senders or (1, 8))
    rows = run(
        bundle, calibration, files, rounds=rounds, concurrency=conc, workers=workers,
        workdir=workdir, storescu=storescu, storescp=storescp, send_pdu=send_pdu,
    )  # fmt: skip
    floor_rows: dict[str, Any] = {}
    if floor:
        (workdir / "floor").mkdir(exist_ok=True)
        floor_rows = run(
            bundle, calibration, files, rounds=rounds, concurrency=conc,
            workdir=workdir / "floor", storescu=storescu, storescp=storescp,
            send_pdu=send_pdu, floor=files[0],
        )  # fmt: skip
    after = in_process_kept(bundle, files, repeats)
    # the reference is timed before and after the node runs, on a machine whose speed drifts
    ref = {f: {k: (v + after[f][k]) / 2 for k, v in r.items()} for f, r in before.items()}
    report: dict[str, Any] = {
        "in_process_ms": ref, "in_process_ms_before": before, "in_process_ms_after": after,
        "sends": rows, "floor_sends": floor_rows, "workers": workers, "sender": sender,
        "destination": destination, "send_pdu": send_pdu, "load_average": os.getloadavg(),
    }  # fmt: skip
    report["summary"] = summarize(rows, floor_rows, ref)
    output.write_text(json.dumps(report, indent=1))
    for line in _lines(report["summary"], ref):
        typer.echo(line)
    typer.echo(f"wrote {output} (pid {os.getpid()})")


if __name__ == "__main__":
    app()
