"""The node end to end, as a separate process (``ddad-edge serve``), against real DICOM software:
dcmtk's storescu sends the real DICOM files and generated CR/DX files in every transfer syntax;
Orthanc and dcmtk's storescp receive the SR and Secondary Capture results; dciodvfy validates
them; a burst of 8 concurrent senders with a kill -9 in the middle, a destination that is down
for a while, malformed and adversarial objects. Every server listens on free loopback ports and
every wait is bounded."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import DICOM_CXR
from dicomnet import (
    CR,
    DX_PRESENTATION,
    Orthanc,
    dcmtk_tools,
    free_port,
    interfaces,
    make_xray,
    storescp,
    storescu,
    wait_port,
    write_syntaxes,
)
from pydicom.uid import JPEG2000Lossless, generate_uid

pytest.importorskip("pynetdicom", reason="the node extra (pynetdicom) is not installed")

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
NOT_EVALUATED, ABNORMAL, NORMAL = "373121007", "263654008", "17621005"


@pytest.fixture(scope="module")
def dcmtk() -> dict[str, str]:
    return dcmtk_tools()


@pytest.fixture(scope="module")
def calibration(bundle: Path, training_images, tmp_path_factory) -> Path:
    """An operating point at specificity 0.95 on the shared run's training images (a test
    calibration only: a site calibrates on normals the model never saw)."""
    from ddad_edge.runtime.bundle import open_bundle
    from ddad_edge.runtime.calibration import calibrate, calibration_record, write_calibration
    from ddad_edge.runtime.scorer import Scorer

    x = training_images[0]
    with Scorer.from_bundle(bundle, backend="ort-cpu", precision="fp32") as s:
        scores = s.scores(x, s.infer(x)).image["inter"]
    points = calibrate(scores, specificities=(0.95,), n_boot=200)
    record = calibration_record(
        open_bundle(bundle, verify=False).manifest,
        points,
        score="inter",
        normals={"source": "shared test run training images", "n": len(scores)},
        abnormals=None,
        bootstrap={"n": 200, "level": 0.95, "seed": 0},
    )
    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    write_calibration(record, path)
    return path


class NodeProcess:
    """``ddad-edge serve`` in a subprocess on a free loopback port (JSON logs to a file)."""

    def __init__(self, bundle: Path, calibration: Path, spool: Path, forward: str) -> None:
        self.bundle, self.calibration, self.spool, self.forward = (
            bundle,
            calibration,
            spool,
            forward,
        )
        self.port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = spool.parent / f"{spool.name}.log"

    def start(self) -> NodeProcess:
        cmd = [sys.executable, "-m", "ddad_edge.cli", "serve", str(self.bundle)]
        cmd += ["--calibration", str(self.calibration), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--spool", str(self.spool), "--forward", self.forward]
        cmd += ["--metrics-port", str(self.metrics_port), "--jsonl"]
        cmd += ["--retries", "200", "--backoff", "0.2", "--backend", "ort-cpu"]
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        wait_port(self.port, 300)  # loading and hash-checking the bundle, busy machines
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict:
        res = subprocess.run(
            [sys.executable, "-m", "ddad_edge.cli", "serve", "--status", str(self.spool), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def wait_settled(self, n: int, timeout: float) -> dict[str, int]:
        """Wait until n objects are known and none is waiting (processing or delivery)."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.status()["counts"]
            known = sum(c[s] for s in ("received", "scored", "abstained", "failed"))
            known += c["result-sent"] + c["dead-lettered"]
            if (
                known >= n
                and c["received"] == 0
                and c["outbox-pending"] + c["outbox-building"] == 0
            ):
                return c
            if time.monotonic() > deadline:
                raise AssertionError(f"not settled after {timeout} s: {c}; log {self.log}")
            time.sleep(0.3)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()

    def records(self) -> dict[str, dict]:
        """The JSON lines of the spool, by source SOP Instance UID (later lines win)."""
        lines = (self.spool / "results.jsonl").read_text().splitlines()
        return {(r := json.loads(line))["sop_instance_uid"]: r for line in lines}

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)


# ----------------------------------------------------------------------------------------------
# Result content
# ----------------------------------------------------------------------------------------------
def content_items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every SR content item, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out += content_items(item)
    return out


def evidence_uids(ds: pydicom.Dataset) -> set[str]:
    """SOP Instance UIDs the SR lists as evidence (Current Requested Procedure Evidence)."""
    return {
        sop.ReferencedSOPInstanceUID
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def assessment_code(ds: pydicom.Dataset) -> str | None:
    """The code value of the qualitative evaluation (Abnormal / Normal / Not evaluated)."""
    for item in content_items(ds):
        for code in item.get("ConceptCodeSequence", []):
            if code.CodeValue in (NOT_EVALUATED, ABNORMAL, NORMAL):
                return code.CodeValue
    return None


def texts(ds: pydicom.Dataset) -> str:
    return " | ".join(str(i.TextValue) for i in content_items(ds) if "TextValue" in i)


def dciodvfy_errors(path: Path) -> list[str]:
    res = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=60
    )
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


# ----------------------------------------------------------------------------------------------
# Adversarial objects (sent as raw bytes by pynetdicom: what a broken modality could send)
# ----------------------------------------------------------------------------------------------
def adversarial_files(out: Path) -> dict[str, Path]:
    """Malformed CR objects, each a new SOP Instance: name -> file."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def save(name: str, ds: pydicom.Dataset) -> None:
        files[name] = out / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)

    ds = make_xray()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    save("truncated-pixels", ds)
    ds = make_xray()
    ds.Rows = ds.Columns = 0
    save("zero-size", ds)
    ds = make_xray()
    ds.Rows = ds.Columns = 60000
    save("huge-claimed-size", ds)
    ds = make_xray()
    del ds.PixelData
    save("no-pixel-data", ds)
    ds = make_xray()
    ds.ViewPosition = "LL"
    save("lateral-view", ds)
    ds = make_xray()
    ds.compress(JPEG2000Lossless)
    frame = bytearray(ds.PixelData)
    frame[40:400] = bytes(np.random.default_rng(0).integers(0, 256, 360, dtype=np.uint8))
    ds.PixelData = bytes(frame)
    save("garbage-j2k", ds)
    # A data set cut in the middle of an element: the header itself cannot be parsed.
    good = out / "cut.src.dcm"
    make_xray().save_as(good, enforce_file_format=True)
    raw = good.read_bytes()
    files["cut-mid-element"] = out / "cut-mid-element.dcm"
    files["cut-mid-element"].write_bytes(raw[: len(raw) // 2 - 7])
    good.unlink()
    return files


def send_raw(port: int, files: list[Path]) -> dict[str, int]:
    """Send files as they are (no re-encoding) with pynetdicom; SOP Instance UID -> status."""
    from pynetdicom import AE

    ae = AE(ae_title="FUZZ")
    for sop in (CR, DX_PRESENTATION):
        ae.add_requested_context(sop)
        ae.add_requested_context(sop, JPEG2000Lossless)
    statuses = {}
    for f in files:
        assoc = ae.associate("127.0.0.1", port, ae_title="DDAD")
        assert assoc.is_established
        uid = pydicom.dcmread(f, stop_before_pixels=True, force=True).file_meta
        status = assoc.send_c_store(f)
        statuses[str(uid.MediaStorageSOPInstanceUID)] = int(status.Status) if status else -1
        assoc.release()
    return statuses


@pytest.fixture(autouse=True)
def _private_network(loopback_netns: Path) -> Path:
    """Every exchange here (node, dcmtk, Orthanc) runs in a loopback-only network namespace."""
    return loopback_netns


@pytest.fixture(scope="module")
def dicom_cxr() -> Path:
    if not DICOM_CXR.is_dir():
        pytest.skip(f"real DICOM files not found at {DICOM_CXR} (../shared/data is absent)")
    return DICOM_CXR


def test_real_and_generated_files_reach_orthanc_as_valid_sr_and_sc(
    dicom_cxr: Path, bundle: Path, calibration: Path, dcmtk: dict[str, str], tmp_path: Path
) -> None:
    gen = write_syntaxes(tmp_path / "gen", dcmtk["dcmcjpeg"])
    gen += write_syntaxes(tmp_path / "gen-dx", None, sop_class=DX_PRESENTATION, seed=50)[:3]
    real = sorted((dicom_cxr / "original").glob("*.dcm")) + sorted(
        (DICOM_CXR / "decompressed").glob("*.dcm")
    )
    edge = sorted((dicom_cxr / "edge_cases").glob("*.dcm"))
    fuzz = adversarial_files(tmp_path / "fuzz")
    with (
        Orthanc(tmp_path / "orthanc") as orthanc,
        NodeProcess(
            bundle, calibration, tmp_path / "spool", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        ) as node,
    ):
        assert interfaces(orthanc.proc.pid) == ["lo"]  # reachable from nowhere else
        for run in storescu(dcmtk["storescu"], node.port, real + gen):
            assert run.returncode == 0, run.stdout + run.stderr
        # The edge cases share two SOP Instance UIDs with the originals: acknowledged, not redone.
        for run in storescu(dcmtk["storescu"], node.port, edge):
            assert run.returncode == 0, run.stdout + run.stderr
        statuses = send_raw(node.port, list(fuzz.values()))
        assert set(statuses.values()) == {0}, statuses  # stored as received, answered Success
        sent = {
            pydicom.dcmread(f, force=True, stop_before_pixels=True).SOPInstanceUID
            for f in real + gen + edge
        }
        sent |= set(statuses)
        counts = node.wait_settled(len(sent), timeout=600)
        assert node.alive()
        records = node.records()
        metrics = node.metrics()
        assert node.stop() == 0
        assert counts["failed"] == 0 and counts["dead-lettered"] == 0, counts
        assert set(records) == sent
        check_orthanc(orthanc, records, tmp_path / "from-orthanc")
    assert "ddad_node_received_total" in metrics and "ddad_node_latency_seconds_bucket" in metrics
    by_name = {n: records[u] for n, u in zip(fuzz, statuses, strict=True)}
    for name in ("truncated-pixels", "zero-size", "huge-claimed-size", "no-pixel-data"):
        assert by_name[name]["status"] != "scored", name
    assert by_name["lateral-view"]["status"] == "abstained"
    assert "view" in by_name["lateral-view"]["reason"].lower()
    assert by_name["cut-mid-element"]["status"] != "scored"
    scored = [r for r in records.values() if r["status"] == "scored"]
    assert len(scored) >= len(gen) + 6  # every generated file and the decodable real ones


def check_orthanc(orthanc: Orthanc, records: dict[str, dict], out: Path) -> None:
    """Every result the node reported is in Orthanc, in its source's study, referencing it,
    saying what the node decided; every one passes dciodvfy without errors."""
    out.mkdir(parents=True, exist_ok=True)
    ids = orthanc.get("/instances")
    stored = {}
    for i in ids:
        data = orthanc.get_bytes(f"/instances/{i}/file")
        ds = pydicom.dcmread(io.BytesIO(data))
        stored[ds.SOPInstanceUID] = ds
        path = out / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(data)
        assert dciodvfy_errors(path) == [], (ds.SOPClassUID, dciodvfy_errors(path))
    expected = {
        res["sop_instance_uid"]: (source_uid, rec)
        for source_uid, rec in records.items()
        for res in rec["results"]
    }
    assert set(stored) == set(expected), "Orthanc holds exactly the results the node reported"
    for result_uid, (source_uid, rec) in expected.items():
        ds = stored[result_uid]
        assert ds.StudyInstanceUID == rec["study_instance_uid"]
        if ds.SOPClassUID == COMPREHENSIVE_3D_SR:
            assert source_uid in evidence_uids(ds)
            code = assessment_code(ds)
            if rec["status"] == "scored":
                assert code == {"abnormal": ABNORMAL, "normal": NORMAL}[rec["flag"]]
            else:
                assert code == NOT_EVALUATED
                assert (rec["reason"] or rec["error"])[:40] in texts(ds)
        else:
            assert ds.SOPClassUID == SECONDARY_CAPTURE and ds.BurnedInAnnotation == "YES"
            assert rec["status"] == "scored"


# ----------------------------------------------------------------------------------------------
# Load and faults
# ----------------------------------------------------------------------------------------------
SENDERS, PER_SENDER = 8, 25


def lost_responses(log: Path) -> int:
    """Delivery tries whose C-STORE response never came (the store may have arrived)."""
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return sum(e["event"] == "send failed" and "no response" in e.get("reason", "") for e in events)


def send_all(
    port: int, datasets: list[pydicom.Dataset], acked: set[str], lock, failed: list[str]
) -> None:
    """Send datasets on one association; add the UIDs answered Success to ``acked``. Stops at
    the first failure (the node was killed, or the association died), noting why in
    ``failed``."""
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CR)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="DDAD")
    if not assoc.is_established:
        failed.append("association not established")
        return
    try:
        for ds in datasets:
            try:
                status = assoc.send_c_store(ds) if assoc.is_established else None
            except Exception as e:  # the peer vanished mid-send
                status = e
            if not isinstance(status, pydicom.Dataset) or int(status.get("Status", -1)) != 0:
                failed.append(f"{ds.SOPInstanceUID}: {status!r}"[:300])
                return
            with lock:
                acked.add(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()


def burst(
    port: int, groups: list[list[pydicom.Dataset]], acked: set[str], lock, failed: list[str]
) -> list:
    threads = [
        threading.Thread(target=send_all, args=(port, g, acked, lock, failed)) for g in groups
    ]
    for t in threads:
        t.start()
    return threads


def resend(
    port: int, groups: list[list[pydicom.Dataset]], acked: set[str], lock, failed: list[str]
) -> None:
    """What a modality does after a failure: send every object not answered Success again, on
    new associations, a few rounds."""
    for _ in range(3):
        rest = [[ds for ds in g if str(ds.SOPInstanceUID) not in acked] for g in groups]
        if not any(rest):
            return
        for t in burst(port, [g for g in rest if g], acked, lock, failed):
            t.join(120)


def test_burst_kill9_restart_destination_down_delivers_each_result_once(
    bundle: Path, calibration: Path, dcmtk: dict[str, str], tmp_path: Path
) -> None:
    study = generate_uid()
    groups = [
        [make_xray(seed=s * PER_SENDER + i, study_uid=study) for i in range(PER_SENDER)]
        for s in range(SENDERS)
    ]
    bad = groups[3][7]  # a malformed object in the middle of the burst
    bad.PixelData = bad.PixelData[:1000]
    everything = {str(ds.SOPInstanceUID): ds for g in groups for ds in g}
    dest_port = free_port()
    acked: set[str] = set()
    lock = threading.Lock()
    failed: list[str] = []  # why sends were not answered Success (the kill, and any other)
    node = NodeProcess(bundle, calibration, tmp_path / "spool", f"DEST@127.0.0.1:{dest_port}")
    with node:
        threads = burst(node.port, groups, acked, lock, failed)
        deadline = time.monotonic() + 120
        while len(acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        node.kill9()  # mid-burst; the destination is down, so nothing is in delivery
        for t in threads:
            t.join(60)
        acked_before_kill = set(acked)
        assert 60 <= len(acked_before_kill) < len(everything)
        cut = tmp_path / "spool" / "receiving" / "tmpcut.dcm"  # as a transfer the kill cut off
        cut.write_bytes(b"\0" * 128 + b"DICM")
        node.start()  # same spool: resumes what was acknowledged
        assert not any(cut.parent.iterdir())  # never answered: the sender sends it again
        resend(node.port, groups, acked, lock, failed)  # what was not answered Success
        assert acked == set(everything), failed
        time.sleep(1.0)  # the destination is still down: results queue
        queued = node.status()["counts"]["outbox-pending"]
        assert queued > 0
        with storescp(dcmtk["storescp"], tmp_path / "dest", dest_port) as dest:
            assert interfaces(dest.pid) == ["lo"]
            counts = node.wait_settled(len(everything), timeout=600)
            assert node.stop() == 0  # SIGTERM: graceful
        records = node.records()
    assert counts["result-sent"] == len(everything), counts
    assert counts["failed"] == 0 and counts["dead-lettered"] == 0
    delivered = [pydicom.dcmread(p) for p in sorted((tmp_path / "dest").glob("*.dcm"))]
    srs = [ds for ds in delivered if ds.SOPClassUID == COMPREHENSIVE_3D_SR]
    per_source: dict[str, set[str]] = {}
    for ds in srs:  # a resend after a lost response is the same SR (same UID) again
        for uid in evidence_uids(ds):
            per_source.setdefault(uid, set()).add(str(ds.SOPInstanceUID))
    assert set(per_source) == set(everything)  # nothing lost
    assert {len(v) for v in per_source.values()} == {1}, "one SR per source"
    # By SOP Instance UID, each reported result arrived, once. A C-STORE whose response was lost
    # is sent again under the same UID (a PACS keeps one instance; storescp +uf writes a second
    # file): every extra file must be such a resend, logged by the node.
    reported = {res["sop_instance_uid"] for r in records.values() for res in r["results"]}
    assert {str(ds.SOPInstanceUID) for ds in delivered} == reported
    assert len(delivered) - len(reported) <= lost_responses(node.log)
    assert records[str(bad.SOPInstanceUID)]["status"] == "abstained"
    assert sum(r["status"] == "scored" for r in records.values()) == len(everything) - 1
