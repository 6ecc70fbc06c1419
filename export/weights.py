"""Store each weight once per precision: a bundle's graphs of one precision share one
external-data file.

The dual graph holds both modules' members; a module graph's initializers are the same numbers
(a grouped convolution's weight of module A is the first half of the dual graph's, a bottleneck
matrix of a member is the dual graph's matrix of that member). :func:`share_weights` moves the
dual graph's initializers into ``weights_<precision>.bin`` and points every initializer of the
other graphs of that precision at the byte range of the file that holds identical bytes (ONNX
external data: location, offset, length); what is found nowhere (a few shape constants) stays
inside its graph. The file is listed and hashed in the manifest like the graphs.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

ALIGN = 64
"""Byte alignment of each tensor in the weights file."""
MIN_EXTERNAL_BYTES = 1024
"""Initializers smaller than this stay inside their graph."""


def weights_file(precision: str) -> str:
    """File name of a precision's shared weights, e.g. ``weights_fp32.bin``."""
    return f"weights_{precision}.bin"


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link a bundle file to ``dst`` (a copy when linking fails). Weights files are always
    copied: ``onnx.load`` refuses external data with several hard links (a hard-link attack
    guard), which would break every later reader of the source bundle."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not (src.name.startswith("weights_") and src.suffix == ".bin"):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


@dataclass
class _Blob:
    """The weights file being assembled and where each dual tensor's bytes lie in it."""

    data: bytearray
    spans: list[tuple[str, int, bytes, int]]  # (tensor name, offset, raw bytes, element size)

    def append(self, name: str, raw: bytes, itemsize: int) -> int:
        self.data.extend(b"\0" * (-len(self.data) % ALIGN))
        off = len(self.data)
        self.data.extend(raw)
        self.spans.append((name, off, raw, itemsize))
        return off

    def find(self, name: str, raw: bytes, itemsize: int) -> int | None:
        """Offset in the file of bytes equal to ``raw`` at an element boundary, or None.
        Tensors of the same layer (name up to ``.member``) are searched first."""
        layer = name.split(".member")[0]
        order = sorted(self.spans, key=lambda s: (s[0] != name, s[0].split(".member")[0] != layer))
        for _, off, held, size in order:
            if size != itemsize or len(held) < len(raw):
                continue
            i = held.find(raw)
            while i >= 0:
                if i % itemsize == 0:
                    return off + i
                i = held.find(raw, i + 1)
        return None


def _itemsize(t: TensorProto) -> int:
    return onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _point_at(t: TensorProto, location: str, offset: int, length: int) -> None:
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = t.external_data.add()
        entry.key, entry.value = key, str(value)


def _raw(t: TensorProto) -> bytes:
    if t.HasField("raw_data"):
        return t.raw_data
    return onnx.numpy_helper.to_array(t).tobytes()


def share_weights(
    dual: bytes, others: dict[str, bytes], location: str
) -> tuple[bytes, dict[str, bytes], bytes, dict[str, int]]:
    """Externalize a precision's graphs into one shared weights file.

    Args:
        dual: the serialized dual graph (initializers inline).
        others: {key: serialized graph} of the same precision (module graphs).
        location: the weights file name, relative to the graphs (``weights_<precision>.bin``).

    Returns:
        (dual graph, {key: graph}, weights file bytes, {key: bytes of that graph's initializers
        that had to be appended because the dual graph does not hold them}).
    """
    blob = _Blob(bytearray(), [])
    model = onnx.load_from_string(dual)
    for t in model.graph.initializer:
        raw = _raw(t)
        if len(raw) >= MIN_EXTERNAL_BYTES:
            _point_at(t, location, blob.append(t.name, raw, _itemsize(t)), len(raw))
    out, appended = {}, {}
    for key, data in others.items():
        m = onnx.load_from_string(data)
        extra = 0
        for t in m.graph.initializer:
            raw = _raw(t)
            if len(raw) < MIN_EXTERNAL_BYTES:
                continue
            off = blob.find(t.name, raw, _itemsize(t))
            if off is None:
                off, extra = blob.append(t.name, raw, _itemsize(t)), extra + len(raw)
            _point_at(t, location, off, len(raw))
        out[key], appended[key] = m.SerializeToString(), extra
    return model.SerializeToString(), out, bytes(blob.data), appended
