"""Helpers for the DICOM network tests: free loopback ports, dcmtk's tools, a dcmtk storescp and
an Orthanc started on loopback ports with a temporary configuration, and generated CR/DX files
in each transfer syntax the node accepts."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from ddad_edge.benchmarks.node import free_port, wait_port  # noqa: F401 (used by the tests)
from ddad_edge.benchmarks.storescu import find_dcmtk, propose_option

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
ORTHANC = "/usr/sbin/Orthanc"


@functools.cache
def dcmtk_tools() -> dict[str, str]:
    """Paths of dcmtk's storescu, storescp, echoscu, dcmcjpeg (skips when one is missing)."""
    out = {}
    for name in ("storescu", "storescp", "echoscu", "dcmcjpeg"):
        exe = find_dcmtk(name)
        if exe is None:
            pytest.skip(f"dcmtk's {name} not found (apt-get install dcmtk; scripts/setup.sh does)")
        out[name] = exe
    return out


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate a process we started (kill after 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


_CLONE_NEWNET = 0x40000000  # <sched.h>


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


@contextlib.contextmanager
def loopback_only() -> Iterator[Path]:
    """Run the enclosed exchange in a new network namespace whose only interface is loopback.

    dcmtk 3.6.7's storescp has no bind-address option and Orthanc 1.10's DICOM server listens on
    every interface (its configuration has no DICOM listen address), so the tests do not rely on
    binding: a process made by ``unshare --net`` holds a namespace with ``lo`` up and nothing
    else, this thread enters it (``setns``), and everything it starts (the node, dcmtk, Orthanc)
    and connects to lives there: unreachable from any other host or namespace. Yields the
    namespace's ``/proc/<pid>/ns/net`` path. Needs root (``CAP_SYS_ADMIN``) and util-linux's
    ``unshare`` and iproute2's ``ip``; otherwise the test is skipped with the reason.
    """
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip(
            "the DICOM servers' private network namespace needs root, unshare and ip "
            "(dcmtk 3.6.7's storescp and Orthanc 1.10 cannot be bound to 127.0.0.1)"
        )
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep 3600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    ns = Path(f"/proc/{holder.pid}/ns/net")
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        if holder.stdout is None or holder.stdout.readline().strip() != "up":
            raise RuntimeError("could not bring up loopback in a new network namespace")
        fd = os.open(ns, os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        try:
            yield ns
        finally:
            _setns(own)
    finally:
        os.close(own)
        stop_process(holder)


def interfaces(pid: int) -> list[str]:
    """Network interfaces visible to process ``pid`` (from /proc/<pid>/net/dev)."""
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


@contextlib.contextmanager
def storescp(exe: str, out_dir: Path, port: int, ae: str = "DEST") -> Iterator[subprocess.Popen]:
    """dcmtk storescp writing every received object to its own file in out_dir (+uf: a
    duplicate delivery would be a second file). dcmtk 3.6.7's storescp has no bind-address
    option: it listens on every interface, so tests start it inside :func:`loopback_only`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "-aet", ae, "+xa", "-od", str(out_dir), "+uf", "-fe", ".dcm", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield proc
    finally:
        stop_process(proc)


class Orthanc:
    """An Orthanc started on free ports with a temporary configuration (no auth, HTTP on
    loopback only, no plugins, storage in a temporary folder). Its DICOM port listens on every
    interface: tests start it inside :func:`loopback_only`."""

    def __init__(self, workdir: Path, ae: str = "ORTHANC") -> None:
        if not Path(ORTHANC).is_file():
            pytest.skip(f"{ORTHANC} not found (apt-get install orthanc; scripts/setup.sh does)")
        self.ae = ae
        self.http_port, self.dicom_port = free_port(), free_port()
        self.workdir = workdir
        store = workdir / "storage"
        config = {
            "Name": "ddad-node-test",
            "StorageDirectory": str(store),
            "IndexDirectory": str(store),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "HttpDescribeErrors": True,
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        log = open(self.workdir / "orthanc.log", "wb")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=log)
        wait_port(self.http_port)
        wait_port(self.dicom_port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def get(self, path: str) -> object:
        """JSON from the REST API."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as r:
            return json.loads(r.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as r:
            return r.read()

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------
# Generated CR/DX files
# ----------------------------------------------------------------------------------------------
def chest_like(rows: int = 256, cols: int = 224, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth uint16 image with two darker 'lung' ellipses (not a real radiograph)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols]).reshape(2, 1, 1)
    img = 0.7 - 0.3 * (((x - 0.3) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1)
    img = img - 0.3 * (((x - 0.7) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1)
    img = img + 0.02 * rng.standard_normal((rows, cols))
    return np.clip(img * (2**bits - 1), 0, 2**bits - 1).astype(np.uint16)


def make_xray(
    sop_class: str = CR, *, sop_uid: str | None = None, seed: int = 0, study_uid: str | None = None
) -> Dataset:
    """An uncompressed (Explicit VR Little Endian) CR or DX chest PA image, 12 bits stored."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR" if sop_class == CR else "DX"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Node", "N1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261128", "120000", "A1"
    ds.ReferringPhysicianName, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "", "1", 1, 1
    ds.Manufacturer = "ddad-edge tests"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    if ds.Modality == "DX":
        ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
        ds.ContentDate, ds.ContentTime, ds.ImageLaterality = "20261128", "120000", "U"
        ds.DetectorType, ds.PresentationLUTShape = "DIRECT", "IDENTITY"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.BurnedInAnnotation, ds.PixelIntensityRelationship = "NO", "LIN"
        ds.PixelIntensityRelationshipSign, ds.AcquisitionContextSequence = 1, []
        ds.AnatomicRegionSequence = []
    arr = chest_like(seed=seed)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = arr.tobytes()
    return ds


# transfer syntax -> how to make it ("pydicom": compress / write; "dcmcjpeg": dcmtk)
ENCODED = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpegls-near": JPEGLSNearLossless,
    "j2k-lossless": JPEG2000Lossless,
    "j2k": JPEG2000,
}
DCMCJPEG = {"jpeg-lossless": ["+e1"], "jpeg-baseline": ["+eb"], "jpeg-extended": ["+ee"]}


def write_syntaxes(
    out: Path, dcmcjpeg: str | None, sop_class: str = CR, seed: int = 0
) -> list[Path]:
    """One file per transfer syntax of ``ENCODED`` (+ the dcmcjpeg ones when given), each a
    new SOP Instance. Baseline JPEG needs 8 bits: that file is made 8-bit first."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, ts) in enumerate(ENCODED.items()):
        ds = make_xray(sop_class, seed=seed + i)
        p = out / f"{name}.dcm"
        if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = ts
            ds.save_as(p, enforce_file_format=True)
        else:
            kw = {"encoding_plugin": "pydicom"} if ts == RLELossless else {}
            if ts == JPEG2000:
                kw = {"j2k_cr": [20]}
            elif ts == JPEGLSNearLossless:
                kw = {"jls_error": 2}
            ds.compress(ts, **kw)
            ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    if dcmcjpeg:
        for j, (name, args) in enumerate(DCMCJPEG.items()):
            ds = make_xray(sop_class, seed=seed + 100 + j)
            if name == "jpeg-baseline":
                arr = (ds.pixel_array >> 4).astype(np.uint8)
                ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
                ds.WindowCenter, ds.WindowWidth = 128, 256
                ds.PixelData = arr.tobytes()
            src = out / f"{name}.src.dcm"
            ds.save_as(src, enforce_file_format=True)
            p = out / f"{name}.dcm"
            subprocess.run([dcmcjpeg, *args, str(src), str(p)], check=True, capture_output=True)
            src.unlink()
            paths.append(p)
    return paths


def storescu(
    exe: str, port: int, files: list[Path], called: str = "DDAD", timeout: float = 300
) -> list[subprocess.CompletedProcess]:
    """Send files with dcmtk's storescu, one run per transfer syntax (each proposes the files'
    own syntax). Returns the runs (storescu exits non-zero when a store failed)."""
    groups: dict[str | None, list[Path]] = {}
    for f in files:
        groups.setdefault(propose_option(f), []).append(f)
    runs = []
    for opt, group in groups.items():
        cmd = [exe, "-aec", called, "-aet", "SENDER", "-v", *([opt] if opt else [])]
        cmd += ["127.0.0.1", str(port), *map(str, group)]
        runs.append(subprocess.run(cmd, capture_output=True, text=True, timeout=timeout))
    return runs


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
