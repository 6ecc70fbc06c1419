"""Triton model configurations (``config.pbtxt``) for a bundle's graphs and for the Python-backend
scoring model, and their validation against Triton's model-config schema.

A configuration is built as nested Python values (dict = message, list = repeated field,
:class:`Sym` = enum value) and written in protobuf text format by :func:`to_pbtxt`. Tensor names,
dtypes and dims come from the ONNX graph itself (:func:`graph_io`, read with onnxruntime, so no
``onnx`` install is needed). :func:`validate_config` parses a written file with the schema that
tritonclient ships (``tritonclient.grpc.model_config_pb2``) and compares it with the graph.

Reference: Triton's model configuration, https://github.com/triton-inference-server/server
(docs/user_guide/model_configuration.md) and its ``model_config.proto``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Sym(str):
    """An enum value, written unquoted (``TYPE_FP32``, ``KIND_CPU``)."""


class ConfigError(ValueError):
    """A graph cannot be described to Triton, or a config does not match it; names the file."""


ORT_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(bool)": "TYPE_BOOL",
}
"""onnxruntime's tensor type strings -> Triton data types."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, Triton data type, dims WITHOUT the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def config(self) -> dict[str, Any]:
        """The ``input``/``output`` entry of a config."""
        return {"name": self.name, "data_type": Sym(self.data_type), "dims": list(self.dims)}


def _spec(path: Path, arg: Any) -> TensorSpec:
    dtype = ORT_TO_TRITON.get(arg.type)
    if dtype is None:
        raise ConfigError(f"{path}: tensor {arg.name!r} has type {arg.type}, unknown to Triton")
    shape = list(arg.shape)
    if not shape or isinstance(shape[0], int):
        raise ConfigError(
            f"{path}: tensor {arg.name!r} has shape {shape}; Triton batching needs a symbolic "
            "first (batch) dimension"
        )
    dims = tuple(d if isinstance(d, int) else -1 for d in shape[1:])
    return TensorSpec(arg.name, dtype, dims)


def graph_io(path: str | os.PathLike[str]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX graph as Triton sees them (batch dimension removed).

    Raises:
        ConfigError: unreadable graph, a type Triton lacks, or no symbolic batch dimension.
    """
    import onnxruntime as ort

    p = Path(path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ConfigError(f"{p}: onnxruntime cannot read the graph: {e}") from e
    return [_spec(p, a) for a in sess.get_inputs()], [_spec(p, a) for a in sess.get_outputs()]


# ----------------------------------------------------------------------------------------------
# Text format
# ----------------------------------------------------------------------------------------------
def _scalar(v: Any) -> str:
    if isinstance(v, Sym):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string literal is a valid protobuf text string literal
    raise TypeError(f"cannot write {type(v).__name__} in a model config")


def _fields(msg: dict[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in msg.items():
        items = value if isinstance(value, list) else [value]
        if items and all(not isinstance(v, dict) for v in items) and isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in items)} ]")
            continue
        for v in items:
            if isinstance(v, dict):
                lines += [f"{pad}{key} {{", *_fields(v, indent + 1), f"{pad}}}"]
            else:
                lines.append(f"{pad}{key}: {_scalar(v)}")
    return lines


def to_pbtxt(config: dict[str, Any]) -> str:
    """A model config (nested dicts/lists, :class:`Sym` for enums) in protobuf text format."""
    return "\n".join(_fields(config, 0)) + "\n"


def parameters(values: dict[str, str]) -> list[dict[str, Any]]:
    """Triton's ``parameters`` map (string values) as repeated key/value entries."""
    return [{"key": k, "value": {"string_value": v}} for k, v in values.items()]


def dynamic_batching(max_batch: int, queue_delay_us: int) -> dict[str, Any]:
    """Dynamic batching: preferred sizes 8, 16, 32, ... up to ``max_batch`` (each a full batch
    of the scorer's chunking), waiting at most ``queue_delay_us`` for a batch to fill."""
    sizes = [s for s in (8, 16, 32, 64, 128, 256) if s <= max_batch] or [max_batch]
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return {"preferred_batch_size": sizes, "max_queue_delay_microseconds": queue_delay_us}


# ----------------------------------------------------------------------------------------------
# Validation with Triton's schema
# ----------------------------------------------------------------------------------------------
def parse_config(path: str | os.PathLike[str]) -> Any:
    """Parse a config.pbtxt with Triton's ModelConfig schema (from tritonclient).

    Raises:
        ConfigError: tritonclient missing, or the text does not parse (unknown field, bad enum).
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise ConfigError(
            "validating Triton configs needs tritonclient: pip install 'ddad-edge[triton]'"
        ) from e
    p = Path(path)
    try:
        return text_format.Parse(p.read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as e:
        raise ConfigError(f"{p}: not a valid Triton model config: {e}") from e


def config_tensors(cfg: Any, which: str) -> list[TensorSpec]:
    """The inputs or outputs ("input"/"output") of a parsed ModelConfig as TensorSpecs."""
    from tritonclient.grpc import model_config_pb2

    return [
        TensorSpec(t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims))
        for t in getattr(cfg, which)
    ]


def validate_config(
    path: str | os.PathLike[str],
    graph: str | os.PathLike[str] | None = None,
) -> Any:
    """Parse ``path`` with Triton's schema; with ``graph``, also check that its inputs and
    outputs (names, data types, dims) are exactly the graph's. Returns the parsed ModelConfig.

    Raises:
        ConfigError: naming the file and every difference.
    """
    cfg = parse_config(path)
    model_dir = Path(path).parent
    if cfg.name != model_dir.name:
        raise ConfigError(f"{path}: name {cfg.name!r} differs from its folder {model_dir.name!r}")
    if graph is None:
        return cfg
    g_in, g_out = graph_io(graph)
    problems = []
    for which, want in (("input", g_in), ("output", g_out)):
        have = config_tensors(cfg, which)
        if sorted(have, key=lambda t: t.name) != sorted(want, key=lambda t: t.name):
            problems.append(f"{which}s {have} differ from the graph's {want}")
    if cfg.max_batch_size < 1:
        problems.append(f"max_batch_size {cfg.max_batch_size}: the graph has a batch dimension")
    if problems:
        raise ConfigError(f"{path}: does not match {graph}: {'; '.join(problems)}")
    return cfg


__all__ = [
    "ConfigError",
    "Sym",
    "TensorSpec",
    "config_tensors",
    "dynamic_batching",
    "graph_io",
    "parameters",
    "parse_config",
    "to_pbtxt",
    "validate_config",
]
