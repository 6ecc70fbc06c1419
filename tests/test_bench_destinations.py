"""benchmarks/destinations.py: where the node benchmark's results arrive, and when."""

from __future__ import annotations

import time
from pathlib import Path

from dicomnet import dcmtk_tools, free_port, make_xray, storescu, wait_port
from pydicom.uid import BasicTextSRStorage, generate_uid

from ddad_edge.benchmarks.destinations import (
    StorescpDestination,
    loopback_only_here,
    parse_storing,
)


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
