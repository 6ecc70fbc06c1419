"""Bundles you can trust: every tamper variant of issue 10 is refused with a BundleError naming
the field or file (consistency, no key), and signed bundles are refused when unsigned, signed by
another key or changed after signing (authenticity, OpenSSF model-signing).

Most cases run on a small hand-made bundle (the checks read bytes, not graphs); the end-to-end
cases (export --sign-key, verify --public-key, Scorer.from_bundle) are in test_cli_deploy.py."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ddad_edge.runtime.bundle import BundleError, open_bundle
from ddad_edge.runtime.manifest import FORMAT_VERSION, manifest_digest

FILES = {
    "dual_fp32.onnx": b"graph fp32",
    "dual_fp16.onnx": b"graph fp16",
    "weights_fp32.bin": b"\x00\x01weights" * 10,
    "golden.npz": b"golden",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _seal(root: Path, manifest: dict, *, digest: bool = True) -> None:
    """Write the manifest, with a recomputed manifest_sha256 unless digest=False (an edit that
    does not recompute it)."""
    if digest:
        manifest["manifest_sha256"] = manifest_digest(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def make_bundle(root: Path) -> dict:
    """A consistent small bundle: two graphs sharing one external weights file, golden.npz."""
    root.mkdir(parents=True)
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    files = {n: {"sha256": _sha(d), "bytes": len(d)} for n, d in FILES.items()}
    graphs = {
        f"dual_{p}": {
            "file": f"dual_{p}.onnx",
            "graph": "dual",
            "precision": p,
            "sha256": files[f"dual_{p}.onnx"]["sha256"],
            "external_data": ["weights_fp32.bin"] if p == "fp32" else [],
        }
        for p in ("fp32", "fp16")
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": {"kind": "ae", "k": 2},
        "graphs": graphs,
        "golden": {"file": "golden.npz"},
        "files": files,
    }
    _seal(root, manifest)
    return manifest


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "bundle"
    return root, make_bundle(root)


def _refused(root: Path, match: str, **kw) -> str:
    with pytest.raises(BundleError, match=match) as e:
        open_bundle(root, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_the_consistent_bundle_opens(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    b = open_bundle(root)
    assert b.kind == "ae" and b.k == 2 and b.graph_path("dual", "fp32") == root / "dual_fp32.onnx"


# an edit that does not recompute manifest_sha256 -------------------------------------------
EDITS: dict[str, Callable[[dict], None]] = {
    "kind": lambda m: m["model"].update(kind="aeu"),
    "k": lambda m: m["model"].update(k=3),
    "graph sha256": lambda m: m["graphs"]["dual_fp32"].update(sha256="0" * 64),
    "files sha256": lambda m: m["files"]["dual_fp32.onnx"].update(sha256="0" * 64),
    "graph path": lambda m: m["graphs"]["dual_fp32"].update(file="dual_fp16.onnx"),
    "graph removed from files": lambda m: m["files"].pop("dual_fp32.onnx"),
    "display vmax": lambda m: m.update(display={"heatmap_vmax": {"inter": 1e9}}),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_manifest_edit_without_digest_is_refused(tiny: tuple[Path, dict], edit: str) -> None:
    root, manifest = tiny
    EDITS[edit](manifest)
    _seal(root, manifest, digest=False)
    _refused(root, "manifest_sha256: does not match", verify=False)


# edits whose digest was recomputed: caught by the rule they break ------------------------------
def test_graph_removed_from_files_is_never_loaded(tiny: tuple[Path, dict]) -> None:
    root, manifest = tiny
    manifest["files"].pop("dual_fp32.onnx")
    _seal(root, manifest)
    _refused(root, r"graphs\['dual_fp32'\]\.file: expected a file listed in files")
    del manifest["graphs"]["dual_fp32"]
    _seal(root, manifest)
    _refused(root, r"dual_fp32\.onnx: not listed in manifest\.json", verify=False)


@pytest.mark.parametrize("path", ["../../x.onnx", "/tmp/x.onnx", "a/../../x.onnx", "./x.onnx"])
def test_graph_path_outside_the_bundle_is_refused(
    tiny: tuple[Path, dict], tmp_path: Path, path: str
) -> None:
    root, manifest = tiny
    outside = tmp_path / "x.onnx"
    outside.write_bytes(FILES["dual_fp32.onnx"])
    manifest["graphs"]["dual_fp32"]["file"] = path
    manifest["files"][path] = manifest["files"].pop("dual_fp32.onnx")
    (root / "dual_fp32.onnx").unlink()
    _seal(root, manifest)
    _refused(root, "not confined to the bundle", verify=False)


def test_system_file_in_files_is_refused_without_printing_its_digest(
    tiny: tuple[Path, dict],
) -> None:
    root, manifest = tiny
    name = "../../../../etc/passwd"
    manifest["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    _seal(root, manifest)
    msg = _refused(root, r"files\['\.\./\.\./\.\./\.\./etc/passwd'\]: path .* not confined")
    real = _sha(Path("/etc/passwd").read_bytes()) if Path("/etc/passwd").is_file() else "x" * 64
    assert real[:8] not in msg


def test_listed_file_that_is_a_symlink_leaving_the_bundle_is_refused(
    tiny: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = tiny
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(FILES["dual_fp32.onnx"])  # same bytes: the hash alone would pass
    (root / "dual_fp32.onnx").unlink()
    (root / "dual_fp32.onnx").symlink_to(outside)
    _refused(root, r"'dual_fp32\.onnx' leads outside the bundle")


def test_unlisted_file_or_symlinked_folder_is_refused(
    tiny: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = tiny
    (root / "extra_fp32.onnx").write_bytes(b"not in the manifest")
    _refused(root, r"extra_fp32\.onnx: not listed in manifest\.json", verify=False)
    (root / "extra_fp32.onnx").unlink()
    (root / "sub").symlink_to(tmp_path)
    _refused(root, r"sub: not listed", verify=False)
    (root / "sub").unlink()
    (root / "engines").mkdir()  # engines/ is built later on the appliance: allowed
    (root / "engines" / "x.plan").write_bytes(b"plan")
    open_bundle(root)


@pytest.mark.parametrize("name", ["weights_fp32.bin", "dual_fp16.onnx", "golden.npz"])
def test_tampered_file_is_refused_and_its_digest_not_printed(
    tiny: tuple[Path, dict], name: str
) -> None:
    root, _ = tiny
    data = bytearray(FILES[name])
    data[3] ^= 0xFF
    (root / name).write_bytes(bytes(data))
    msg = _refused(root, rf"{name}: sha256 does not match the manifest")
    assert _sha(bytes(data))[:8] not in msg
    (root / name).write_bytes(FILES[name][:-1])
    _refused(root, rf"{name}: size")
    (root / name).unlink()
    _refused(root, rf"{name}: missing from the bundle")


# malformed or unknown-version manifests -------------------------------------------------------
MALFORMED: dict[str, tuple[Callable[[dict], object], str]] = {
    'format_version "2"': (lambda m: m.update(format_version="2"), "format_version: expected"),
    "format_version null": (lambda m: m.update(format_version=None), "format_version: expected"),
    "format_version true": (lambda m: m.update(format_version=True), "format_version: expected"),
    "format_version 0": (lambda m: m.update(format_version=0), "format_version 0 is not supp"),
    "format_version 1": (lambda m: m.update(format_version=1), "format_version 1 is not supp"),
    "format_version 99": (lambda m: m.update(format_version=99), "format_version 99 is newer"),
    "files as a list": (lambda m: m.update(files=list(m["files"])), "files: expected a non-emp"),
    "files empty": (lambda m: m.update(files={}), "files: expected a non-empty object"),
    "model {}": (lambda m: m.update(model={}), "model.kind: expected one of"),
    "model a list": (lambda m: m.update(model=[]), "model: expected an object"),
    "model.kind unknown": (lambda m: m["model"].update(kind="vae"), "model.kind: expected"),
    "model.k 0": (lambda m: m["model"].update(k=0), "model.k: expected an integer >= 1"),
    'model.k "2"': (lambda m: m["model"].update(k="2"), "model.k: expected an integer"),
    "graphs a list": (lambda m: m.update(graphs=[]), "graphs: expected a non-empty object"),
    "graph precision": (
        lambda m: m["graphs"]["dual_fp32"].update(precision="fp8"),
        r"graphs\['dual_fp32'\]\.precision",
    ),
    "graph key": (
        lambda m: m["graphs"].update(dual_fp64=m["graphs"].pop("dual_fp32")),
        r"graphs\['dual_fp64'\]: expected the key dual_fp32",
    ),
    "graph file null": (
        lambda m: m["graphs"]["dual_fp32"].update(file=None),
        r"graphs\['dual_fp32'\]\.file",
    ),
    "sha256 not hex": (
        lambda m: m["files"]["golden.npz"].update(sha256="../etc"),
        r"files\['golden\.npz'\]\.sha256: expected 64",
    ),
    "bytes negative": (
        lambda m: m["files"]["golden.npz"].update(bytes=-1),
        r"files\['golden\.npz'\]\.bytes",
    ),
    "external data unlisted": (
        lambda m: m["graphs"]["dual_fp32"].update(external_data=["w.bin"]),
        r"graphs\['dual_fp32'\]\.external_data",
    ),
    "files lists the manifest": (
        lambda m: m["files"].update({"manifest.json": m["files"]["golden.npz"]}),
        r"files\['manifest\.json'\]: expected a bundle file",
    ),
    "no manifest_sha256": (lambda m: None, "manifest_sha256: missing"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_manifest_is_refused_naming_the_field(tiny: tuple[Path, dict], case: str) -> None:
    root, manifest = tiny
    edit, match = MALFORMED[case]
    edit(manifest)
    _seal(root, manifest, digest=case != "no manifest_sha256")
    if case == "no manifest_sha256":
        manifest.pop("manifest_sha256")
        (root / "manifest.json").write_text(json.dumps(manifest))
    _refused(root, match, verify=False)


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", "", '"a string"', "null"])
def test_manifest_that_is_not_an_object_is_refused(tiny: tuple[Path, dict], text: str) -> None:
    root, _ = tiny
    (root / "manifest.json").write_text(text)
    _refused(root, "manifest", verify=False)


# signatures -----------------------------------------------------------------------------------
def test_signed_bundle_verifies_and_every_signature_tamper_is_refused(
    tiny: tuple[Path, dict], tmp_path: Path, release_keys: dict[str, Path]
) -> None:
    from ddad_edge.runtime.signature import sign_bundle

    root, manifest = tiny
    priv, pub, other_pub = (release_keys[k] for k in ("private", "public", "other_public"))
    _refused(root, r"bundle\.sig: missing; the bundle is not signed", public_key=pub)
    sign_bundle(root, priv)
    open_bundle(root, public_key=pub)
    (root / "engines").mkdir()  # engines added on the appliance keep the signature valid
    (root / "engines" / "gpu.plan").write_bytes(b"plan")
    open_bundle(root, public_key=pub)
    _refused(root, "signed by another key", public_key=other_pub)
    _refused(root, "public key file not found", public_key=tmp_path / "nope.pub")
    # a consistent edit (files and digest recomputed): only the signature can catch it
    new = b"a different graph"
    (root / "dual_fp16.onnx").write_bytes(new)
    manifest["files"]["dual_fp16.onnx"] = {"sha256": _sha(new), "bytes": len(new)}
    manifest["graphs"]["dual_fp16"]["sha256"] = _sha(new)
    _seal(root, manifest)
    open_bundle(root)  # consistent ...
    msg = _refused(root, r"changed: .*dual_fp16\.onnx", public_key=pub)  # ... but not signed
    assert _sha(new)[:8] not in msg
    # a corrupted signature file
    sign_bundle(root, priv)
    sig = root / "bundle.sig"
    sig.write_text(sig.read_text()[:-40])
    _refused(root, "signature check failed", public_key=pub)


def test_signature_over_a_removed_file_is_refused(
    tiny: tuple[Path, dict], release_keys: dict[str, Path]
) -> None:
    from ddad_edge.runtime.signature import sign_bundle

    root, manifest = tiny
    priv, pub = release_keys["private"], release_keys["public"]
    sign_bundle(root, priv)
    (root / "golden.npz").unlink()
    manifest["files"].pop("golden.npz")
    manifest.pop("golden")
    _seal(root, manifest)
    open_bundle(root)
    _refused(root, r"removed: golden\.npz|differ", public_key=pub)


def test_no_key_needs_no_signing_extra(
    tiny: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = tiny
    monkeypatch.setitem(sys.modules, "model_signing", None)  # import fails like a missing extra
    monkeypatch.delitem(sys.modules, "ddad_edge.runtime.signature", raising=False)
    open_bundle(root)
    pub = tmp_path / "k.pub"
    pub.write_text("key")
    _refused(root, r"pip install 'ddad-edge\[signing\]'", public_key=pub)


def test_digest_is_over_every_field() -> None:
    m = {"format_version": 2, "model": {"kind": "ae", "k": 2}, "a": [1, 2]}
    d = manifest_digest(m)
    for edit in (
        lambda x: x.update(a=[2, 1]),
        lambda x: x["model"].update(k=3),
        lambda x: x.update(extra=None),
    ):
        changed = copy.deepcopy(m)
        edit(changed)
        assert manifest_digest(changed) != d
    assert manifest_digest({**m, "manifest_sha256": "anything"}) == d
