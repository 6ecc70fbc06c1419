"""benchmarks/destinations.py: where the node benchmark's results arrive, and when."""

from __future__ import annotations

import time
from pathlib import Path

from dicomnet import dcmtk_tools, free_port, make_xray, storescu, wait_port
from pydicom.uid import BasicTextSRStorage, generate_uid
from pynetdicom.sop_class import ComputedRadiographyImageStorage as CR

from ddad_edge.benchmarks.destinations import (
    StorescpDestination,
    loopback_only_here,
    parse_storing,
)
from ddad_edge.benchmarks.storescu import Send, timed_send


def test_storing_line_gives_time_study_and_kind() -> None:
    line = "1796662305.215 storing DICOM file: out/st_1.2.3.4/SRe.1.2.3.5\n"
    assert parse_storing(line) == (1796662305.215, "1.2.3.4", "SR")
    assert parse_storing("1796662305.204 Received Store Request\n") is None


def _sr(study: str) -> object:
    ds = make_xray(study_uid=study)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.Modality = "SR"
    del ds.PixelData
    return ds


def test_storescp_notes_each_result_of_a_study(loopback_netns: Path, tmp_path: Path) -> None:
    """A CR and an SR of one study sent by storescu to the storescp destination: both noted,
    in that study, the SR as such, at times within the send's."""
    tools = dcmtk_tools()
    assert loopback_only_here()
    study = generate_uid()
    files = []
    for name, ds in (("cr.dcm", make_xray(study_uid=study)), ("sr.dcm", _sr(study))):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        files.append(tmp_path / name)
    dest = StorescpDestination(tools["storescp"], free_port(), tmp_path / "received")
    try:
        wait_port(dest.port, 30)
        t0 = time.time()
        (run,) = storescu(tools["storescu"], dest.port, files, called="BENCHDEST")
        t1 = time.time()
        assert run.returncode == 0, run.stderr
        t_sr, t_last = dest.wait(study, 2, timeout=30)
    finally:
        dest.close()
    # log stamps are whole milliseconds
    assert t0 - 0.001 <= t_sr <= t_last <= t1 + 0.001
    assert sorted(k for _, k in dest.arrivals[study]) == ["CR", "SR"]


def _pdu_sizes(send_pdu: int | None, path: Path) -> tuple[Send, list[int]]:
    """Send ``path`` with ``timed_send`` to a pynetdicom SCP that takes 1 MiB PDUs; returns its
    times and the length of every P-DATA-TF PDU the SCP received."""
    from pynetdicom import AE, evt
    from pynetdicom.pdu import P_DATA_TF

    sizes: list[int] = []

    def on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            sizes.append(len(event.pdu))

    ae = AE("DDAD")
    ae.maximum_pdu_size = 1 << 20
    ae.add_supported_context(CR)
    handlers = [(evt.EVT_C_STORE, lambda _: 0x0000), (evt.EVT_PDU_RECV, on_pdu)]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        sent = timed_send(dcmtk_tools()["storescu"], port, path, send_pdu=send_pdu)
    finally:
        server.shutdown()
    return sent, sizes


def test_timed_send_sends_pdus_of_the_size_asked(tmp_path: Path) -> None:
    """``--send-pdu``: storescu sends no PDU larger than asked; without it, larger ones. The
    association is asked for before the C-STORE, both within the call."""
    ds = make_xray()
    path = tmp_path / "cr.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert len(ds.PixelData) > 4 * 16384
    t = time.time()
    sent, small = _pdu_sizes(16384, path)
    assert t - 0.001 <= sent.associate <= sent.store <= time.time() + 0.001
    _, large = _pdu_sizes(None, path)
    assert max(small) <= 16384 < max(large)
    assert sum(small) > len(ds.PixelData)


def test_cstore_round_trips_reach_a_real_receiver(loopback_netns: Path, tmp_path: Path) -> None:
    """benchmarks/cstore_rtt.py times each C-STORE it makes to dcmtk's storescp, which stores
    every one (one file per C-STORE: +uf names them by SOP Instance UID, so count the log)."""
    from ddad_edge.benchmarks.cstore_rtt import round_trips

    tools = dcmtk_tools()
    ds = _sr(generate_uid())
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    dest = StorescpDestination(tools["storescp"], free_port(), tmp_path / "received")
    try:
        wait_port(dest.port, 30)
        ms = round_trips("127.0.0.1", dest.port, tmp_path / "sr.dcm", 3, "BENCHDEST")
        dest.wait(str(ds.StudyInstanceUID), 4, timeout=30)
    finally:
        dest.close()
    assert len(ms) == 3 and all(0 < m < 60_000 for m in ms)
    assert [k for _, k in dest.arrivals[str(ds.StudyInstanceUID)]] == ["SR"] * 4
