"""What a bundle's ``manifest.json`` must be: schema, self-digest and path confinement.

Consistency without a key (authenticity is ``runtime/signature.py``):

* ``manifest_sha256`` is the sha256 of the manifest's canonical JSON without that field
  (:func:`manifest_digest`); any edit that does not recompute it is refused.
* Every field the runtime reads is checked for type and value; a bad one is a
  :class:`BundleError` naming the field.
* Every path is confined to the bundle: relative, no ``..``, no absolute path, and after
  resolving symlinks still inside the bundle folder.
* ``files`` lists every file in the bundle folder (graphs, their external weight data, golden
  vectors) but the manifest itself, the signature and ``engines/`` (built later on the
  appliance, matched through their sidecars); a file it does not list is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST = "manifest.json"
SIGNATURE = "bundle.sig"
ENGINES_DIR = "engines"
FORMAT_VERSION = 2
GRAPHS = ("dual", "module_A", "module_B")
PRECISIONS = ("fp32", "fp16", "int8")
MODEL_KINDS = ("ae", "memae", "aeu")
NOT_LISTED = (MANIFEST, SIGNATURE, ENGINES_DIR)
"""Bundle entries ``files`` does not list (the manifest cannot hash itself; the signature
covers the manifest; engines are added after export)."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(Exception):
    """A bundle cannot be used: missing or modified file, bad manifest, unknown graph.

    ``str(e)`` is one line that names the file and the reason.
    """


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 (hex) of the manifest's canonical JSON (sorted keys, no whitespace), without its
    ``manifest_sha256`` field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sealed(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its ``manifest_sha256`` (re)computed: what every writer stores."""
    return {**manifest, "manifest_sha256": manifest_digest(manifest)}


def safe_relpath(root: Path, name: object, field: str) -> Path:
    """``root / name`` for a bundle-relative path that stays inside ``root``.

    Refused (BundleError naming ``field``): non-strings, empty names, absolute paths,
    backslashes, ``.``/``..`` components, and paths whose resolved location (symlinks
    followed) leaves the bundle folder.
    """
    where = f"{root / MANIFEST}: {field}"
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}: expected a relative file name, got {type(name).__name__}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or "\\" in name or any(p in ("", ".", "..") for p in name.split("/")):
        raise BundleError(f"{where}: path {name!r} is not confined to the bundle")
    path = root / pure
    if not path.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"{where}: {name!r} leads outside the bundle (symlink)")
    return path


def _expect(cond: bool, path: Path, field: str, what: str, value: object) -> None:
    if not cond:
        shown = repr(value) if isinstance(value, (str, int, float, type(None))) else ""
        kind = type(value).__name__
        raise BundleError(f"{path}: {field}: expected {what}, got {kind} {shown}".rstrip())


def check_version(path: Path, version: object) -> None:
    """format_version must be the integer this runtime reads."""
    ok = isinstance(version, int) and not isinstance(version, bool)
    _expect(ok, path, "format_version", f"the integer {FORMAT_VERSION}", version)
    assert isinstance(version, int)
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {version} is newer than this runtime supports "
            f"({FORMAT_VERSION}); upgrade ddad-edge"
        )
    if version < FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {version} is not supported (this runtime reads "
            f"{FORMAT_VERSION}); re-export the bundle with this ddad-edge"
        )


def _entries(path: Path, name: str, value: object) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(key, field name, entry) of ``value``, which must be a non-empty object of objects."""
    _expect(isinstance(value, dict) and bool(value), path, name, "a non-empty object", value)
    assert isinstance(value, dict)
    for key, entry in value.items():
        field = f"{name}[{key!r}]"
        _expect(isinstance(entry, dict), path, field, "an object", entry)
        yield key, field, entry


def _check_files(path: Path, files: object) -> None:
    for _, field, entry in _entries(path, "files", files):
        sha, size = entry.get("sha256"), entry.get("bytes")
        ok = isinstance(sha, str) and _SHA256.fullmatch(sha) is not None
        _expect(ok, path, f"{field}.sha256", "64 lower-case hex digits", sha)
        ok = isinstance(size, int) and not isinstance(size, bool) and size >= 0
        _expect(ok, path, f"{field}.bytes", "a byte count", size)


def _check_graphs(path: Path, graphs: object, files: dict[str, Any]) -> None:
    for key, field, entry in _entries(path, "graphs", graphs):
        graph, prec = entry.get("graph"), entry.get("precision")
        _expect(graph in GRAPHS, path, f"{field}.graph", f"one of {GRAPHS}", graph)
        _expect(prec in PRECISIONS, path, f"{field}.precision", f"one of {PRECISIONS}", prec)
        _expect(key == f"{graph}_{prec}", path, field, f"the key {graph}_{prec}", key)
        file = entry.get("file")
        _expect(file in files, path, f"{field}.file", "a file listed in files", file)
        for extra in entry.get("external_data", []):
            ok = extra in files
            _expect(ok, path, f"{field}.external_data", "files listed in files", extra)


def check_manifest(root: Path, manifest: object) -> dict[str, Any]:
    """Validate a parsed manifest (see the module docstring); returns it.

    Raises:
        BundleError: naming the first field that is missing, of the wrong type or value, the
            digest mismatch, or a path that leaves the bundle.
    """
    path = root / MANIFEST
    _expect(isinstance(manifest, dict), path, "(top level)", "a JSON object", manifest)
    assert isinstance(manifest, dict)
    for key in ("format_version", "manifest_sha256", "model", "graphs", "files"):
        if key not in manifest:
            raise BundleError(f"{path}: {key}: missing; not a ddad-edge bundle of this format")
    check_version(path, manifest["format_version"])
    if manifest["manifest_sha256"] != manifest_digest(manifest):
        raise BundleError(
            f"{path}: manifest_sha256: does not match the manifest's content; the manifest was "
            "edited after export (re-export the bundle)"
        )
    model = manifest["model"]
    _expect(isinstance(model, dict), path, "model", "an object", model)
    _expect(
        model.get("kind") in MODEL_KINDS,
        path,
        "model.kind",
        f"one of {MODEL_KINDS}",
        model.get("kind"),
    )
    k = model.get("k")
    ok = isinstance(k, int) and not isinstance(k, bool) and k >= 1
    _expect(ok, path, "model.k", "an integer >= 1", k)
    _check_files(path, manifest["files"])
    for name in manifest["files"]:
        safe_relpath(root, name, f"files[{name!r}]")
        _expect(
            PurePosixPath(name).parts[0] not in NOT_LISTED,
            path,
            f"files[{name!r}]",
            f"a bundle file (not one of {NOT_LISTED})",
            name,
        )
    _check_graphs(path, manifest["graphs"], manifest["files"])
    golden = manifest.get("golden", {})
    _expect(isinstance(golden, dict), path, "golden", "an object", golden)
    return manifest


def unlisted_files(root: Path, files: dict[str, Any]) -> list[str]:
    """Bundle-relative names of files in the folder that ``files`` does not list (entries of
    :data:`NOT_LISTED` aside)."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in NOT_LISTED or p.is_dir() and not p.is_symlink():
            continue
        if rel.as_posix() not in files:
            out.append(rel.as_posix())
    return out
