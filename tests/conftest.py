"""Shared fixtures: the real-data location, and one small trained run and bundle per model kind,
made once per test session.

The runs and bundles need the ``train`` extra (torch, onnx); without it every test that asks for
them skips with that reason, so the runtime's own tests run in a runtime-only install. Real images
come from ../shared/data (kermany-cxr); without it the runs train on SYNTHETIC phantoms and the
real-data tests skip with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from ddad_edge.runtime.dicom_results import AlgorithmInfo

REPO = Path(__file__).resolve().parents[1]
# Subprocesses the tests start import the installed ddad_edge, never the source folder in their
# working directory (which lacks runtime/ and the others: pyproject maps them into the package).
os.environ.setdefault("PYTHONSAFEPATH", "1")
# ../shared/data beside the checkout; DDAD_SHARED_DATA points elsewhere (e.g. from a git worktree)
SHARED_DATA = Path(os.environ.get("DDAD_SHARED_DATA") or REPO.parent / "shared" / "data")
KERMANY = SHARED_DATA / "kermany-cxr"
DICOM_CXR = SHARED_DATA / "dicom-cxr"
K = 2
"""Members per module of the shared runs."""
N_TRAIN = 64
"""Training images of the shared runs (two batches of 32)."""


OPTIONAL_PACKAGES = {
    "torch": "train",
    "onnx": "train",
    "onnxscript": "train",
    "matplotlib": "train",
    "hypothesis": "dev",
    "highdicom": "report",
    "pynetdicom": "node",
    "prometheus_client": "node",
    "tritonclient": "triton",
    "model_signing": "signing",
    "pylibjpeg": "dicom-codecs",
}
"""Packages of the extras -> the extra. A test module that cannot be imported because one of
these is missing is reported as skipped (with the extra to install), not as an error: a
runtime-only install runs the rest of the suite."""


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    if report.failed and isinstance(collector, pytest.Module):
        m = re.search(r"No module named '(\w+)", str(report.longrepr))
        extra = OPTIONAL_PACKAGES.get(m.group(1)) if m else None
        if extra:
            report.outcome = "skipped"
            report.longrepr = (
                str(collector.path),
                0,
                f"Skipped: {m.group(1)} is not installed (pip install '.[{extra}]')",
            )
    return report


def have_kermany() -> bool:
    return (KERMANY / "labels.csv").is_file()


def require_kermany() -> Path:
    """The Kermany folder, or skip the test with the reason."""
    if not have_kermany():
        pytest.skip(f"real data not found at {KERMANY} (../shared/data is absent on this machine)")
    return KERMANY


def require_dicom_cxr() -> Path:
    """The real DICOM chest radiographs folder, or skip the test with the reason."""
    if not (DICOM_CXR / "original").is_dir():
        pytest.skip(f"real DICOM files not found at {DICOM_CXR} (../shared/data is absent)")
    return DICOM_CXR


# The algorithm and operating point the DICOM-result tests (SR, SC, SR templates) report.
SR_ALGORITHM = AlgorithmInfo("ddad-edge DDAD AE", "0.1.0", "ab" * 32, "ae")
SR_OPERATING_POINT = {
    "specificity": 0.95,
    "score": "inter",
    "threshold": 0.0421,
    "threshold_interval": [0.04, 0.045],
    "bundle_digest": "ab" * 32,
}


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's (dicom3tools) "Error" lines for a DICOM file; warnings are allowed. Skips the
    test when dciodvfy is not installed (scripts/setup.sh installs it)."""
    import shutil
    import subprocess

    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed: run scripts/setup.sh")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


def require_train_extra() -> None:
    """Skip unless torch and onnx are importable (the ``train`` extra)."""
    for mod in ("torch", "onnx"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed: the test run/bundle needs pip install '.[train]'")


@pytest.fixture(scope="session")
def kermany() -> Path:
    return require_kermany()


@pytest.fixture(scope="session")
def real_data() -> bool:
    """Whether ../shared/data's Kermany set is present (tests branch on it, never skip)."""
    return have_kermany()


@pytest.fixture(scope="session")
def broken_dicom() -> Path | None:
    """A DICOM file whose pixel data cannot be decoded, or None without ../shared/data."""
    p = DICOM_CXR / "edge_cases" / "pylibjpeg-data__966_BROKEN_J2K.dcm"
    return p if p.is_file() else None


@pytest.fixture(scope="session")
def mono1_dicom() -> Path | None:
    """A MONOCHROME1 chest CR, or None without ../shared/data."""
    p = DICOM_CXR / "original" / "fo-dicom__CR-MONO1-10-chest.dcm"
    return p if p.is_file() else None


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the shared phantoms, runs and bundles live: a fresh temporary folder, or the folder
    DDAD_TEST_ASSETS names, which keeps them between sessions. There an install with the train
    extra makes them once and any install reuses them, so a runtime-only install runs the
    bundle tests too (``DDAD_TEST_ASSETS=DIR pytest`` in each). Empty it after changing
    training or export."""
    keep = os.environ.get("DDAD_TEST_ASSETS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep)
    return tmp_path_factory.mktemp("assets")


@pytest.fixture(scope="session")
def training_images(assets: Path) -> tuple[np.ndarray, str]:
    """N_TRAIN preprocessed training images [N_TRAIN, 1, 64, 64] float32 and the data root the
    runs name: real Kermany train normals when available, else SYNTHETIC phantoms on disk."""
    from ddad_edge.runtime.batch import load_inputs

    if have_kermany():
        paths = sorted((KERMANY / "train" / "NORMAL").iterdir())[:N_TRAIN]
        return load_inputs(paths, workers=2).x, str(KERMANY)
    root = assets / "phantoms"
    if not root.is_dir():
        from ddad_edge.phantom import make_phantom_dataset

        tmp = assets / f"phantoms.tmp{os.getpid()}"
        counts = {"n_train_normal": N_TRAIN, "n_train_abnormal": 0}
        make_phantom_dataset(tmp, **counts, n_test_normal=8, n_test_abnormal=8, size=96)
        tmp.rename(root)
    return load_inputs(sorted((root / "train" / "NORMAL").iterdir())).x, str(root)


@pytest.fixture(scope="session")
def make_run(training_images: tuple[np.ndarray, str]) -> Callable[..., Path]:
    """``make_run(out, kind, k=K, steps=2, seed=0)``: a run folder (``train.train_run`` format)
    trained one epoch of ``steps`` batches of 32 per module. Cheap: seconds on a CPU."""

    def make(out: Path, kind: str, k: int = K, steps: int = 2, seed: int = 0) -> Path:
        require_train_extra()
        import torch

        from ddad_edge.train import TrainConfig, train_run

        x_all, root = training_images
        x = torch.from_numpy(x_all[: 32 * steps])
        manifest = {"sha256": f"{seed:064d}", "root": root, "counts": {"D": len(x), "Du": 0}}
        cfg = TrainConfig(kind=kind, k=k, epochs=1, batch_size=32, seed=seed)
        train_run(manifest, x, x[:0], out, cfg)  # D only, Du empty: A and B see the same data
        return out

    return make


@pytest.fixture(scope="session")
def shared_run(assets: Path, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """``shared_run(kind)``: one small trained run per kind, made once ("ae" 2 steps per
    module, the others 1; kept in ``assets``). Treat it as read-only."""

    def get(kind: str) -> Path:
        out = assets / f"run-{kind}"
        if not (out / "history.json").is_file():  # written last: the run is complete
            shutil.rmtree(out, ignore_errors=True)
            request.getfixturevalue("make_run")(out, kind, steps=2 if kind == "ae" else 1)
        return out

    return get


@pytest.fixture(scope="session")
def shared_bundle(assets: Path, shared_run: Callable[[str], Path]) -> Callable[[str], Path]:
    """``shared_bundle(kind)``: the bundle of ``shared_run(kind)``, made once (kept in
    ``assets``); module graphs and 16 parity images only for "ae" (8 for the others), 8 golden
    vectors. Read-only: copy it before changing anything."""

    def get(kind: str) -> Path:
        out = assets / f"bundle-{kind}"
        if not (out / "manifest.json").is_file():  # export writes the bundle atomically
            run = shared_run(kind)
            require_train_extra()
            from ddad_edge.export.bundle import export_bundle

            full = kind == "ae"
            export_bundle(run, out, n_parity=16 if full else 8, n_golden=8, module_graphs=full)
        return out

    return get


@pytest.fixture(scope="session")
def asr_run(assets: Path, shared_run: Callable[[str], Path], training_images) -> Path:
    """A copy of the shared AE-U run with an ASR network with batch normalisation (the
    authors' network, so that export folds it) trained for one epoch (32 crops) on its
    training images (made once, kept in ``assets``). Read-only."""
    out = assets / "run-aeu-asr"
    if not (out / "asr.pt").is_file():
        require_train_extra()
        from ddad_edge.asr import AsrConfig, train_asr

        src = shared_run("aeu")
        tmp = assets / f"run-aeu-asr.tmp{os.getpid()}"
        shutil.copytree(src, tmp)
        train_asr(tmp, training_images[0][:32], AsrConfig(epochs=1, batch_size=16, batch_norm=True))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def asr_bundle(assets: Path, asr_run: Path) -> Path:
    """The bundle of ``asr_run`` (dual graphs with the ASR output; 8 parity images, no module
    graphs), made once. Read-only."""
    out = assets / "bundle-aeu-asr"
    if not (out / "manifest.json").is_file():
        from ddad_edge.export.bundle import export_bundle

        export_bundle(asr_run, out, n_parity=8, n_golden=4, module_graphs=False)
    return out


@pytest.fixture(scope="session")
def trained_run(shared_run: Callable[[str], Path]) -> Path:
    """The shared AE run (K=2)."""
    return shared_run("ae")


@pytest.fixture(scope="session")
def bundle(shared_bundle: Callable[[str], Path]) -> Path:
    """The shared AE bundle (K=2, FP32 + FP16 dual graphs and FP32 module graphs)."""
    return shared_bundle("ae")


@pytest.fixture(scope="session")
def good_images(bundle: Path) -> list[Path]:
    """Three decodable test images (two normal, one abnormal): real Kermany test images when
    available, else the phantom test images the shared bundle's parity check used."""
    if have_kermany():
        root = KERMANY / "test"
        return sorted((root / "NORMAL").iterdir())[:2] + sorted((root / "PNEUMONIA").iterdir())[:1]
    from ddad_edge.runtime.bundle import open_bundle

    sources = open_bundle(bundle, verify=False).manifest["parity"]["images"]["sources"]
    return [Path(p) for p in sources[:3]]


HAVE_SIGNING = all(importlib.util.find_spec(m) is not None for m in ("model_signing", "OpenSSL"))
"""Whether the ``signing`` extra is installed: OpenSSF model-signing and pyOpenSSL, which
model-signing 1.1 imports without declaring it (without it, nothing can be signed or checked)."""


@pytest.fixture(scope="session")
def release_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two fresh P-256 key pairs as PEM files: {"private", "public"} (the release key) and
    {"other_public"} (another key's public half). Skips without the signing extra."""
    if not HAVE_SIGNING:
        pytest.skip("the signing extra (model-signing, pyOpenSSL) is not installed")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("release", "other"):
        key = ec.generate_private_key(ec.SECP256R1())
        priv, pub = d / f"{name}.key", d / f"{name}.pub"
        priv.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        out[name] = (priv, pub)
    return {
        "private": out["release"][0],
        "public": out["release"][1],
        "other_public": out["other"][1],
    }


@pytest.fixture(autouse=True)
def _pynetdicom_files_as_before() -> Iterator[None]:
    """After each test, pynetdicom writes arriving data sets where it did before. A node SCP
    started in this process points pynetdicom's file factory, process-wide, at its spool
    (``node.receiving.receive_into``); once that test's spool is gone, any later SCP here (a
    benchmark's destination, a bare pynetdicom SCP) could store nothing."""
    yield
    import sys
    import tempfile

    module = sys.modules.get("pynetdicom.dimse_messages")
    if module is not None:
        module.NamedTemporaryFile = tempfile.NamedTemporaryFile


@pytest.fixture
def loopback_netns() -> Iterator[Path]:
    """The test runs in a network namespace whose only interface is loopback (for servers that
    cannot bind to 127.0.0.1: dcmtk 3.6.7's storescp, Orthanc's DICOM port); see
    ``dicomnet.loopback_only``."""
    from dicomnet import loopback_only

    with loopback_only() as ns:
        yield ns
