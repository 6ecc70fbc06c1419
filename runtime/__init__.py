"""The torch-free DDAD runtime: preprocessing, scores, bundles, backends and the Scorer.

``from ddad_edge.runtime import Scorer`` is all an application needs::

    scorer = Scorer.from_bundle("bundle/", backend="auto")
    results = scorer.score(["image.dcm", array_uint8])

Importing this package is cheap: it never imports torch, and the heavy parts (Pillow, pydicom,
onnxruntime, TensorRT) are imported only when first used; ``Scorer`` and friends are resolved
lazily on attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ddad_edge.runtime.bundle import Bundle, BundleError, open_bundle
    from ddad_edge.runtime.scorer import Scorer, ScoreResult

_LAZY = {
    "Scorer": "ddad_edge.runtime.scorer",
    "ScoreResult": "ddad_edge.runtime.scorer",
    "Bundle": "ddad_edge.runtime.bundle",
    "BundleError": "ddad_edge.runtime.bundle",
    "open_bundle": "ddad_edge.runtime.bundle",
    "BackendUnavailable": "ddad_edge.runtime.backends",
}

__all__ = ["BackendUnavailable", "Bundle", "BundleError", "ScoreResult", "Scorer", "open_bundle"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ddad_edge.runtime' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
