"""Bundle signatures with OpenSSF model-signing: key-pair (elliptic curve) signing of the bundle
folder, so that deliberate tampering, which the manifest's digests alone cannot stop, is caught.

The signature (a Sigstore bundle, ``bundle.sig`` in the bundle folder) covers every file of the
folder but itself and ``engines/`` (TensorRT plans are built later, on the appliance, and are
matched to the signed graph through their sidecars). The release pipeline signs with the
private key (``ddad-edge export --sign-key``, or :func:`sign_bundle`); appliances hold only
the public key and verify (``ddad-edge verify --public-key``,
``Scorer.from_bundle(..., public_key=...)``). Needs the ``signing`` extra; nothing here is
imported without a key configured.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ddad_edge.runtime.manifest import ENGINES_DIR, SIGNATURE, BundleError

SIGNING_MISSING = "bundle signatures need OpenSSF model-signing: pip install 'ddad-edge[signing]'"


def _model_signing() -> Any:
    try:
        import model_signing
    except ImportError as e:
        raise BundleError(f"{SIGNING_MISSING} ({e})") from e
    return model_signing


def _hashing_config(ms: Any) -> Any:
    return ms.hashing.Config().set_ignored_paths(paths=[SIGNATURE, ENGINES_DIR])


def sign_bundle(root: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> Path:
    """Sign a bundle folder with an elliptic-curve private key (PEM); writes ``root/bundle.sig``.

    Raises:
        BundleError: the signing extra is missing, or the key cannot be used.
    """
    ms = _model_signing()
    root, sig = Path(root), Path(root) / SIGNATURE
    try:
        cfg = ms.signing.Config().use_elliptic_key_signer(private_key=Path(private_key))
        cfg.set_hashing_config(_hashing_config(ms)).sign(root, sig)
    except (OSError, ValueError, TypeError) as e:
        sig.unlink(missing_ok=True)
        raise BundleError(f"{private_key}: cannot sign with this key: {_one_line(e)}") from e
    return sig


def verify_signature(root: str | os.PathLike[str], public_key: str | os.PathLike[str]) -> None:
    """Check that ``root/bundle.sig`` is a valid signature of the folder by the private key of
    ``public_key`` (PEM).

    Raises:
        BundleError: no signature, an unreadable key, a signature by another key, or files
            that differ from (or are missing from, or added to) what was signed; naming the
            files, never their contents.
    """
    ms = _model_signing()
    root, sig = Path(root), Path(root) / SIGNATURE
    if not sig.is_file():
        raise BundleError(f"{sig}: missing; the bundle is not signed and a public key is set")
    if not Path(public_key).is_file():
        raise BundleError(f"{public_key}: public key file not found")
    try:
        cfg = ms.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key))
        cfg.set_hashing_config(_hashing_config(ms)).verify(root, sig)
    except Exception as e:  # model-signing raises ValueError and parser/crypto errors alike
        raise BundleError(f"{sig}: signature check failed: {_reason(e)}") from e


def _reason(e: Exception) -> str:
    """A one-line reason that names files but never prints digests."""
    text = str(e)
    if "Key mismatch" in text or "public key" in text.lower():
        return "signed by another key (or the public key is wrong)"
    changed = re.findall(r"mismatch for \\?'([^'\\]+)\\?'", text)
    extra = re.findall(r"Extra files found in model '[^']*': ([^\]\"']+)", text)
    missing = re.findall(r"Missing files in model '[^']*': ([^\]\"']+)", text)
    parts = [f"changed: {', '.join(changed)}"] if changed else []
    parts += [f"added: {x.strip()}" for x in extra] + [f"removed: {x.strip()}" for x in missing]
    if parts:
        return "the bundle's files differ from what was signed (" + "; ".join(parts) + ")"
    return f"{type(e).__name__}: {_one_line(e)[:200]}"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
