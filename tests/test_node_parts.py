"""The node's parts against real DICOM software: the Storage SCP (persist before success,
duplicates, out-of-resources, C-ECHO) with dcmtk's storescu/echoscu, the journal's states, and
the forwarder (retries, backoff, dead letters) with dcmtk's storescp as the destination."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomnet import CR, dcmtk_tools, free_port, interfaces, make_xray, storescp, write_syntaxes
from dicomnet import storescu as send
from pydicom.uid import generate_uid

from ddad_edge.node.forwarder import Destination, Forwarder, RetryPolicy
from ddad_edge.node.journal import (
    ABSTAINED,
    DEAD_LETTERED,
    FAILED,
    RECEIVED,
    RESULT_SENT,
    SCORED,
    Journal,
    ObjectRow,
    Result,
)
from ddad_edge.node.metrics import NodeMetrics
from ddad_edge.node.scp import OUT_OF_RESOURCES, StoreHandler, start_scp
from ddad_edge.node.spool import Spool, file_stem
from ddad_edge.node.worker import Later, Outcome, ResultFile, Worker


@pytest.fixture(scope="module")
def dcmtk() -> dict[str, str]:
    return dcmtk_tools()


class Scp:
    """The node's SCP alone (no worker): stored UIDs are collected in ``self.stored``."""

    def __init__(self, root: Path) -> None:
        self.spool = Spool(root)
        self.journal = Journal(self.spool.journal_path)
        self.metrics = NodeMetrics()
        self.stored: list[str] = []
        handler = StoreHandler(self.spool, self.journal, self.metrics, self.stored.append)
        self.ae, self.server = start_scp("DDAD", "127.0.0.1", 0, handler)
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.ae.shutdown()
        self.journal.close()


@pytest.fixture
def scp(tmp_path: Path):
    s = Scp(tmp_path / "spool")
    yield s
    s.close()


def storescu(tools: dict[str, str], port: int, files: list[Path]) -> None:
    for run in send(tools["storescu"], port, files):
        assert run.returncode == 0, run.stdout + run.stderr


def test_scp_persists_every_transfer_syntax_as_received(scp: Scp, dcmtk, tmp_path: Path) -> None:
    files = write_syntaxes(tmp_path / "gen", dcmtk["dcmcjpeg"])
    files.append(write_one(tmp_path / "dx.dcm", make_xray("1.2.840.10008.5.1.4.1.1.1.1")))
    storescu(dcmtk, scp.port, files)
    assert len(scp.stored) == len(files)
    for f in files:
        src = pydicom.dcmread(f)
        uid = src.SOPInstanceUID
        got = scp.spool.incoming / f"{file_stem(uid)}.dcm"
        stored = pydicom.dcmread(got)
        assert stored.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID, f.name
        assert stored.PixelData == src.PixelData, f.name  # the bytes as sent, not transcoded
        assert scp.journal.get(uid).state == RECEIVED
    assert scp.metrics.received._value.get() == len(files)


def write_one(path: Path, ds: pydicom.Dataset) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_resent_object_is_acknowledged_once_and_stored_once(scp: Scp, dcmtk, tmp_path) -> None:
    f = write_one(tmp_path / "a.dcm", make_xray())
    storescu(dcmtk, scp.port, [f])
    storescu(dcmtk, scp.port, [f])
    assert len(scp.stored) == 1
    assert scp.metrics.duplicates._value.get() == 1
    assert scp.journal.counts()[RECEIVED] == 1


def test_store_failure_answers_out_of_resources_never_success(scp: Scp, tmp_path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    # The incoming folder replaced by a plain file: every write fails (even for root).
    scp.spool.incoming.rmdir()
    scp.spool.incoming.write_text("not a folder")
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="DDAD")
    assert assoc.is_established
    status = assoc.send_c_store(make_xray())
    assoc.release()
    assert status.Status == OUT_OF_RESOURCES
    assert scp.stored == [] and scp.journal.counts()[RECEIVED] == 0
    assert scp.metrics.store_failures._value.get() == 1


def test_file_that_cannot_be_created_answers_out_of_resources(scp: Scp) -> None:
    """The file an arriving data set goes to cannot even be created (here the spool's
    receiving/ folder is gone; a full disk or inode table fails the same way): that C-STORE is
    answered Out of Resources instead of the association being aborted, and once the folder is
    back the next object on the same association is stored."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    scp.spool.receiving.rmdir()
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="DDAD")
    assert assoc.is_established
    try:
        first = assoc.send_c_store(make_xray(seed=4))
        scp.spool.receiving.mkdir()
        second = assoc.send_c_store(make_xray(seed=5))
    finally:
        assoc.release()
    assert first.Status == OUT_OF_RESOURCES and second.Status == 0x0000
    assert len(scp.stored) == 1 and scp.metrics.store_failures._value.get() == 1


def test_cut_off_transfer_leaves_no_file_and_the_scp_serves_on(
    scp: Scp, dcmtk, tmp_path: Path
) -> None:
    """A sender that aborts while its data set arrives: the part written (in the spool's
    receiving/, not the system's temporary folder) is removed, nothing is journalled or
    answered, and the next object is stored."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    big = make_xray(seed=1)
    big.Rows = big.Columns = 2048
    big.PixelData = bytes(2048 * 2048 * 2)  # 8 MiB: 8 P-DATA PDUs of the node's 1 MiB
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="DDAD")
    assert assoc.is_established
    sock = assoc.dul.socket
    send = sock.send
    sent: list[bytes] = []
    arrived: list[bool] = []

    def cut_off(data: bytes) -> None:  # this sender only: the link dies mid data set
        if len(sent) < 3:  # the command, then two of the data set's PDUs
            sent.append(data)
            send(data)
        elif not arrived:
            arrived.append(wait_for(lambda: any(scp.spool.receiving.iterdir()), timeout=10))
            sock.socket.shutdown(socket.SHUT_RDWR)

    sock.send = cut_off
    ae.dimse_timeout = 5
    sender = threading.Thread(target=assoc.send_c_store, args=(big,), daemon=True)
    sender.start()
    sender.join(30)
    assert arrived == [True], "the part that arrived was not written in the spool's receiving/"
    assert wait_for(lambda: not any(scp.spool.receiving.iterdir()), timeout=10), list(
        scp.spool.receiving.iterdir()
    )
    assert scp.stored == [] and scp.journal.counts()[RECEIVED] == 0
    assert not any(scp.spool.incoming.iterdir())
    assert scp.metrics.cut_off._value.get() == 1
    storescu(dcmtk, scp.port, [write_one(tmp_path / "next.dcm", make_xray(seed=2))])
    assert len(scp.stored) == 1


def test_disk_full_while_receiving_answers_out_of_resources_and_frees_it(tmp_path: Path) -> None:
    """The disk fills while a data set arrives: the sender gets 0xA700 on the same association
    (not a dropped connection), the part is removed, and the next object fits and is stored."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    receiving = Spool(tmp_path / "spool").receiving
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(receiving)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (root only): {mounted.stderr.strip()}")
    try:
        scp = Scp(tmp_path / "spool")
        big = make_xray(seed=1)
        big.Rows = big.Columns = 2048
        big.PixelData = bytes(2048 * 2048 * 2)  # 8 MiB into the 1 MiB file system
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(ComputedRadiographyImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DDAD")
        try:
            assert assoc.send_c_store(big).Status == OUT_OF_RESOURCES
            assert assoc.is_established
            assert not any(receiving.iterdir())
            small = make_xray(seed=2)  # 115 KB: fits again
            assert assoc.send_c_store(small).Status == 0
        finally:
            assoc.release()
            scp.close()
        assert scp.stored == [str(small.SOPInstanceUID)]
        assert scp.metrics.store_failures._value.get() == 1
        assert not any(receiving.iterdir())
    finally:
        subprocess.run(["umount", "--lazy", str(receiving)], check=True)  # even while busy


def test_start_removes_what_a_stopped_node_was_receiving(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.receiving / "tmpcut.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (spool.incoming / "1.2.3.dcm").write_bytes(b"kept")
    assert Spool(spool.root).clear_receiving() == 1
    assert not any(spool.receiving.iterdir())
    assert (spool.incoming / "1.2.3.dcm").read_bytes() == b"kept"


def test_echo_answered(scp: Scp, dcmtk) -> None:
    res = subprocess.run(
        [dcmtk["echoscu"], "-aec", "DDAD", "127.0.0.1", str(scp.port)],
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr


def test_hostile_uid_never_names_a_path(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    p = spool.write_incoming("../../etc/passwd", b"x")
    assert p.parent == spool.incoming and p.name.startswith("x-")
    assert file_stem("1.2.3") == "1.2.3"


# ----------------------------------------------------------------------------------------------
# Journal and forwarder
# ----------------------------------------------------------------------------------------------
def queue_results(spool: Spool, journal: Journal, n: int) -> list[str]:
    """n received objects, each finished as scored with one result file (a CR image standing in
    for a result: the forwarder sends any DICOM file)."""
    uids = []
    for i in range(n):
        uid = generate_uid()
        journal.add_received(uid, "1.2.840.10008.5.1.4.1.1.1", "SENDER", "unused")
        res = make_xray(seed=i)
        path = spool.write_result(res.SOPInstanceUID, encode(res))
        journal.finish(
            uid, SCORED, record={"flag": "normal"},
            results=[Result(res.SOPInstanceUID, res.SOPClassUID, "sr", str(path))],
        )  # fmt: skip
        uids.append(uid)
    return uids


def encode(ds: pydicom.Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def wait_for(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_journal_finish_is_once_and_counts(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assert j.add_received("1.2", "c", "A", "p") and not j.add_received("1.2", "c", "A", "p")
    j.finish("1.2", ABSTAINED, reason="view position LL is not PA or AP")
    j.finish("1.2", SCORED)  # no longer received: ignored
    assert j.get("1.2").state == ABSTAINED and j.get("1.2").reason.startswith("view")
    assert j.counts()[ABSTAINED] == 1
    j.close()


def test_later_result_goes_after_the_sr_and_is_rebuilt_after_a_crash(tmp_path: Path) -> None:
    """The SC queued as ``building``: never due, the object does not settle on the SR alone;
    a crash before it was built (journal reopened, new worker) builds it again under its
    reserved UID, then it is due; one that cannot be built is dead-lettered with the reason."""
    spool = Spool(tmp_path / "spool")
    j = Journal(spool.journal_path)
    for uid in ("1.2", "1.3"):
        j.add_received(uid, "c", "A", "p")
        j.finish(uid, SCORED, results=[
            Result(f"{uid}.1", "sr-class", "sr", "sr.dcm"),
            Result(f"{uid}.2", "sc-class", "sc", str(spool.result_path(f"{uid}.2")), ready=False),
        ])  # fmt: skip
    assert {r.result_uid for r in j.due()} == {"1.2.1", "1.3.1"}
    assert j.mark_sent("1.2.1") is False and j.get("1.2").state == SCORED  # SC still building
    assert j.counts()["outbox-building"] == 2
    j.close()

    j = Journal(spool.journal_path)  # "restart"

    def process(row):
        if row.sop_uid == "1.3":
            raise RuntimeError("pixels gone")
        return Outcome(SCORED, None, {}, [], later=[Later("new", "sc-class", "sc", str.encode)])

    worker = Worker(j, spool, NodeMetrics(), process)
    worker.start()
    try:
        assert wait_for(lambda: j.counts()["outbox-building"] == 0, 10)
    finally:
        worker.stop()
    assert spool.result_path("1.2.2").read_bytes() == b"1.2.2"  # built under its reserved UID
    assert {r.result_uid for r in j.due()} == {"1.2.2", "1.3.1"}
    assert j.mark_sent("1.2.2") is True and j.get("1.2").state == RESULT_SENT
    assert j.mark_sent("1.3.1") is False  # its SC is dead: the object ends dead-lettered
    assert j.get("1.3").state == DEAD_LETTERED and "pixels gone" in j.get("1.3").reason
    j.close()


def test_outcome_that_cannot_be_stored_is_processed_again_later(tmp_path: Path) -> None:
    """The outbox, then the JSON lines file, cannot be written (as on a full disk): the object
    stays received, the worker goes on with the next ones and, once they can be written
    again, processes it again and records it once."""
    spool = Spool(tmp_path / "spool")
    j = Journal(spool.journal_path)
    outbox = spool.outbox
    outbox.rmdir()
    outbox.write_text("not a folder")  # every result write fails (even for root)
    (spool.root / "results.jsonl").mkdir()  # and so does appending a line

    def process(row):
        res = ResultFile(f"{row.sop_uid}.1", "sr-class", "sr", b"sr bytes")
        return Outcome(SCORED, None, {"flag": "normal"}, [res])

    metrics = NodeMetrics()
    worker = Worker(j, spool, metrics, process, jsonl=True, retry_s=0.3)
    worker.start()
    try:
        for uid in ("1.2", "1.3"):
            j.add_received(uid, "c", "A", "p")
            worker.submit(uid)
        time.sleep(1.0)  # tried several times
        assert {j.get(u).state for u in ("1.2", "1.3")} == {RECEIVED}
        outbox.unlink()
        outbox.mkdir()
        time.sleep(1.0)
        assert {j.get(u).state for u in ("1.2", "1.3")} == {RECEIVED}  # the line still fails
        (spool.root / "results.jsonl").rmdir()
        assert wait_for(lambda: {j.get(u).state for u in ("1.2", "1.3")} == {SCORED}, 10)
        j.add_received("1.4", "c", "A", "p")
        worker.submit("1.4")
        assert wait_for(lambda: j.get("1.4").state == SCORED, 10)  # the thread lives on
    finally:
        worker.stop()
    lines = (spool.root / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["sop_instance_uid"] for line in lines) == ["1.2", "1.3", "1.4"]
    assert {r.result_uid for r in j.due()} == {"1.2.1", "1.3.1", "1.4.1"}
    assert metrics.record_retries._value.get() >= 4  # two objects, tried at least twice each
    j.close()


def test_object_scored_while_stored_is_committed_only_once_journalled(tmp_path: Path) -> None:
    """The SCP hands a staged object to the worker before it is durable: the outcome waits for
    the journal (nothing is recorded or queued before), is committed once the object is
    journalled, and is dropped, unrecorded and without result files, when it never is."""
    spool = Spool(tmp_path / "spool")
    j = Journal(spool.journal_path)
    processed = threading.Event()

    def process(row):
        processed.set()
        res = ResultFile(f"{row.sop_uid}.1", "sr-class", "sr", b"sr bytes")
        return Outcome(SCORED, None, {"flag": "normal"}, [res])

    worker = Worker(j, spool, NodeMetrics(), process)
    worker.start()
    try:
        now = time.time()
        settle = {
            u: worker.early(ObjectRow(u, "c", "A", "p", RECEIVED, None, now))
            for u in ("1.2", "1.3")
        }
        assert processed.wait(10)
        time.sleep(0.5)
        assert j.get("1.2") is None and j.due() == [] and not any(spool.outbox.iterdir())
        j.add_received("1.2", "c", "A", "p")
        settle["1.2"](True)
        settle["1.3"](False)
        assert wait_for(lambda: j.get("1.2").state == SCORED, 10)
        time.sleep(0.5)
    finally:
        worker.stop()
    assert [r.result_uid for r in j.due()] == ["1.2.1"]
    assert spool.result_path("1.2.1").read_bytes() == b"sr bytes"
    assert j.get("1.3") is None and not spool.result_path("1.3.1").exists()
    j.close()


def test_socket_reads_whole_pdus_and_stops_when_the_peer_closes() -> None:
    """The node's replacement of pynetdicom's socket read returns exactly the bytes asked for,
    across many segments, and what arrived when the peer closed early."""
    import socket
    import types

    from ddad_edge.node.sockets import recv as _recv

    a, b = socket.socketpair()
    data = bytes(range(256)) * 12_000  # 3 MB: many segments, and more than the first buffer
    sender = threading.Thread(target=lambda: (b.sendall(data), b.close()))
    sender.start()
    holder = types.SimpleNamespace(socket=a)
    first = _recv(holder, 2_500_000)
    rest = _recv(holder, 10_000_000)  # announced more than will ever come
    sender.join()
    a.close()
    assert bytes(first) == data[:2_500_000] and bytes(rest) == data[2_500_000:]


def test_socket_reads_ask_for_quick_acks_before_every_read() -> None:
    """Each read of the node's socket read is preceded by TCP_QUICKACK (Linux clears it by
    itself): a peer with Nagle's algorithm on (dcmtk, Orthanc) otherwise waits up to 40 ms for
    our delayed acknowledgement before sending the rest of a PDU (node.sockets)."""
    import socket

    if not hasattr(socket, "TCP_QUICKACK"):
        pytest.skip("TCP_QUICKACK is Linux only")
    import types

    from ddad_edge.node.sockets import recv

    calls: list[tuple] = []

    class Recording(socket.socket):
        def setsockopt(self, *args: object) -> None:
            calls.append(("setsockopt", *args))
            super().setsockopt(*args)

        def recv_into(self, *args: object, **kwargs: object) -> int:
            calls.append(("recv_into",))
            return super().recv_into(*args, **kwargs)

    chunks = [b"\x04\x00\x00\x00\x00\xa8", bytes(100), bytes(68)]  # a PDU in three writes
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = Recording(socket.AF_INET, socket.SOCK_STREAM)
        client.connect(server.getsockname())
        peer, _ = server.accept()

        def send() -> None:
            for c in chunks:
                peer.sendall(c)
                time.sleep(0.05)  # separate segments: separate reads

        sender = threading.Thread(target=send)
        sender.start()
        got = recv(types.SimpleNamespace(socket=client), sum(map(len, chunks)))
        sender.join()
        peer.close()
        client.close()
    assert bytes(got) == b"".join(chunks)
    reads = [i for i, c in enumerate(calls) if c[0] == "recv_into"]
    assert len(reads) >= 2
    quick = ("setsockopt", socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    assert all(i > 0 and calls[i - 1] == quick for i in reads), calls


def test_node_process_skips_pydicom_uid_checks_while_serving() -> None:
    """``run_until_signalled`` serves with pydicom's UID checks off (``uid_checks_once``: a
    non-conformant UID makes no pydicom warning) and puts the setting back when it stops."""
    import os
    import signal
    import warnings

    from pydicom import config
    from pydicom.uid import UID

    from ddad_edge.node.service import run_until_signalled

    def warned() -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            UID("1.2.abc")
        return any("Invalid value for VR UI" in str(w.message) for w in caught)

    seen: dict[str, Any] = {}

    class Stand:  # the node's start/stop, recording what serving saw
        def start(self) -> None:
            seen["mode"], seen["warned"] = config.settings.reading_validation_mode, warned()
            os.kill(os.getpid(), signal.SIGTERM)

        def stop(self) -> None:
            seen["stopped"] = True

    before = config.settings.reading_validation_mode
    assert warned()
    run_until_signalled(Stand())  # type: ignore[arg-type]
    assert seen == {"mode": config.IGNORE, "warned": False, "stopped": True}
    assert config.settings.reading_validation_mode == before and warned()


def forwarder(
    journal: Journal, port: int, metrics: NodeMetrics | None = None, **kw: Any
) -> Forwarder:
    """A started forwarder to DEST@127.0.0.1:port (``kw``: its policy, pause_s)."""
    fwd = Forwarder(journal, Destination("DEST", "127.0.0.1", port), metrics or NodeMetrics(), **kw)
    fwd.start()
    return fwd


def test_forwarder_queues_while_destination_down_then_delivers_once(
    dcmtk, tmp_path, loopback_netns
) -> None:
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path)
    uids = queue_results(spool, journal, 4)
    port = free_port()
    fwd = forwarder(journal, port, policy=RetryPolicy(max_tries=100, backoff=0.1, max_backoff=0.4))
    try:
        assert wait_for(lambda: journal.counts()["outbox-pending"] == 4 and _tried(journal), 10)
        time.sleep(1.0)  # down for a while: several tries fail
        with storescp(dcmtk["storescp"], tmp_path / "dest", port) as dest:
            assert interfaces(dest.pid) == ["lo"]  # storescp listens on all interfaces: only lo
            assert wait_for(lambda: journal.counts()[RESULT_SENT] == 4, 30)
    finally:
        fwd.stop()
    received = [pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "dest").glob("*.dcm")]
    assert len(received) == 4 and len(set(received)) == 4  # each delivered exactly once
    assert {journal.get(u).state for u in uids} == {RESULT_SENT}
    journal.close()


def _tried(journal: Journal) -> bool:
    return any(a > 0 for (a,) in journal._db.execute("SELECT attempts FROM outbox"))


class FullJournal(Journal):
    """A journal whose first ``full`` writes of a delivery fail as SQLite fails on a full disk."""

    full = 2

    def mark_sent(self, result_uid: str) -> bool:
        if self.full > 0:
            self.full -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().mark_sent(result_uid)


def test_forwarder_pauses_when_the_journal_fails_then_delivers(dcmtk, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    journal = FullJournal(spool.journal_path)
    uids = queue_results(spool, journal, 2)
    port = free_port()
    metrics = NodeMetrics()
    with storescp(dcmtk["storescp"], tmp_path / "dest", port):
        fwd = forwarder(journal, port, metrics, pause_s=0.2)
        try:
            assert wait_for(lambda: {journal.get(u).state for u in uids} == {RESULT_SENT}, 30)
        finally:
            fwd.stop()
    assert journal.full == 0  # both failures happened, and the thread lived on
    assert metrics.delivery_pauses._value.get() == 2
    received = [pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "dest").glob("*.dcm")]
    assert set(received) == {r for (_, r, _) in journal.sent_results()}  # sent again, same UID
    journal.close()


def test_forwarder_dead_letters_after_n_tries_with_the_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path)
    (uid,) = queue_results(spool, journal, 1)
    metrics = NodeMetrics()
    policy = RetryPolicy(max_tries=3, backoff=0.05, max_backoff=0.1)
    fwd = forwarder(journal, free_port(), metrics, policy=policy)
    try:
        assert wait_for(lambda: journal.get(uid).state == DEAD_LETTERED, 30)
    finally:
        fwd.stop()
    (dead,) = journal.dead_letters()
    assert dead[0] == uid and "association" in dead[2]
    assert metrics.dead_lettered._value.get() == 1
    assert Path(journal._db.execute("SELECT path FROM outbox").fetchone()[0]).is_file()
    journal.close()


def test_retry_failed_queues_failed_work_again_and_it_is_delivered(dcmtk, tmp_path: Path) -> None:
    """`serve --retry-failed`: a failed object is processed anew, a result dead-lettered by the
    forwarder is delivered once the destination is up, one never built is built again."""
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path)
    (sent,) = queue_results(spool, journal, 1)
    port = free_port()
    down = forwarder(journal, port, policy=RetryPolicy(max_tries=2, backoff=0.05, max_backoff=0.1))
    try:
        assert wait_for(lambda: journal.get(sent).state == DEAD_LETTERED, 30)
    finally:
        down.stop()
    journal.add_received("1.2.3", CR, "SENDER", "p")
    journal.finish("1.2.3", FAILED, reason="OSError: [Errno 28] No space left on device")
    journal.add_received("1.2.4", CR, "SENDER", "p")
    never_built = Result("1.2.4.1", CR, "sc", str(spool.result_path("1.2.4.1")), ready=False)
    journal.finish("1.2.4", ABSTAINED, record={"status": ABSTAINED}, results=[never_built])
    journal.build_failed("1.2.4.1", "sc could not be built: MemoryError")
    assert journal.counts()[FAILED] == 1 and journal.counts()[DEAD_LETTERED] == 2

    assert journal.retry_failed() == (1, 2)
    assert journal.get("1.2.3").state == RECEIVED  # the worker takes it at start
    assert (journal.get(sent).state, journal.get("1.2.4").state) == (SCORED, ABSTAINED)
    assert [r.result_uid for r in journal.building()] == ["1.2.4.1"]
    assert journal.retry_failed() == (0, 0)
    with storescp(dcmtk["storescp"], tmp_path / "dest", port):
        up = forwarder(journal, port)
        try:
            assert wait_for(lambda: journal.get(sent).state == RESULT_SENT, 30)
        finally:
            up.stop()
    assert len(list((tmp_path / "dest").glob("*.dcm"))) == 1
    journal.close()


def test_node_started_with_retry_failed_processes_a_failed_object(tmp_path: Path) -> None:
    from ddad_edge.node.service import Node, NodeConfig

    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path)
    journal.add_received("1.2.3", CR, "SENDER", "p")
    journal.finish("1.2.3", FAILED, reason="OSError: [Errno 28] No space left on device")
    journal.close()

    def process(row: ObjectRow) -> Outcome:
        return Outcome(ABSTAINED, "processed again", {"status": ABSTAINED}, [])

    for retry_failed, state in ((False, FAILED), (True, ABSTAINED)):
        config = NodeConfig(spool=spool.root, host="127.0.0.1", port=0, retry_failed=retry_failed)
        node = Node(config, process).start()
        try:
            assert wait_for(lambda: node.journal.get("1.2.3").state == state, 10)  # noqa: B023
        finally:
            node.stop()


def test_retry_policy_backoff_and_limit() -> None:
    p = RetryPolicy(max_tries=4, backoff=1.0, max_backoff=3.0)
    assert [p.retry_at(n, 0.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, None]
    assert Destination.parse("PACS@10.0.0.2:104") == Destination("PACS", "10.0.0.2", 104)
    with pytest.raises(ValueError, match="AE@host:port"):
        Destination.parse("PACS:104")


def test_scp_survives_concurrent_senders(scp: Scp, dcmtk, tmp_path: Path) -> None:
    files = [write_one(tmp_path / f"{i}.dcm", make_xray(seed=i)) for i in range(12)]
    threads = [
        threading.Thread(target=storescu, args=(dcmtk, scp.port, files[i::4])) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(scp.stored) == sorted(pydicom.dcmread(f).SOPInstanceUID for f in files)
