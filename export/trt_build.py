"""Build a TensorRT engine for this GPU from a bundle's dual graph (TensorRT 10 and 11 APIs).

* Network: strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` where the flag
  exists; TensorRT 11 networks are strongly typed by default), filled by ``OnnxParser`` from
  ``dual_fp16.onnx`` (or ``dual_fp32.onnx``). Precision therefore comes from the graph; no FP16
  builder flag is used (it no longer exists in TensorRT 11). For fp32, TF32 is switched off
  where the flag exists so the engine stays comparable with the FP32 reference.
* One optimization profile for input ``x``: batch 1 .. max_batch (opt = ``opt_batch``, default
  max_batch); a workspace memory-pool limit.
* A persisted timing cache (``engines/timing.cache``) shared by later builds on this GPU.
* Output: ``engines/<gpu-slug>-trt<version>-<precision>.plan`` and a JSON sidecar (TensorRT
  version, GPU name, compute capability, profile, ONNX file + sha256, precision, plan sha256).

``build_engine`` is idempotent: a plan whose sidecar matches this TensorRT, GPU, ONNX hash and
profile is kept (``force=True`` rebuilds). Nothing here imports TensorRT until called.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddad_edge.runtime.backends import gpu_info, import_tensorrt
from ddad_edge.runtime.bundle import (
    engine_files,
    engine_mismatches,
    open_bundle,
    sha256_file,
)
from ddad_edge.runtime.fileio import atomic_write_bytes

TIMING_CACHE = "timing.cache"


class BuildError(RuntimeError):
    """TensorRT could not parse the graph or build the engine."""


@dataclass
class BuildResult:
    """plan/sidecar paths; built False when a matching engine already existed."""

    plan: Path
    sidecar: Path
    built: bool
    info: dict[str, Any]


def profile_shapes(max_batch: int, opt_batch: int | None) -> dict[str, list[int]]:
    """min/opt/max input shapes of the optimization profile."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    opt = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise ValueError(f"opt_batch must lie in [1, {max_batch}], got {opt}")
    return {"min": [1, 1, 64, 64], "opt": [opt, 1, 64, 64], "max": [max_batch, 1, 64, 64]}


def existing_engine_ok(
    sidecar_path: Path,
    plan_path: Path,
    *,
    trt_version: str,
    gpu: dict[str, str],
    onnx_sha256: str,
    precision: str,
    profile: dict[str, list[int]],
) -> bool:
    """Whether an engine already built matches everything a rebuild would produce."""
    if not (sidecar_path.is_file() and plan_path.is_file()):
        return False
    try:
        side = json.loads(sidecar_path.read_text())
    except (OSError, ValueError):
        return False
    if engine_mismatches(
        side, trt_version=trt_version, gpu=gpu, onnx_sha256=onnx_sha256, precision=precision
    ):
        return False
    if side.get("profile") != profile:
        return False
    return side.get("plan_sha256") == sha256_file(plan_path)


def _network_and_config(
    trt: Any, onnx_path: Path, precision: str, profile: dict[str, Any], workspace_mib: int
) -> tuple[Any, Any, Any]:
    """(builder, strongly typed network parsed from ``onnx_path``, builder config with the
    workspace limit, no TF32 for fp32, and the optimization profile of input ``x``)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape("x", profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(opt_profile)
    return builder, network, config


def _build_with_cache(
    builder: Any, network: Any, config: Any, cache_path: Path, onnx_path: Path
) -> bytes:
    """The serialized engine, built with the timing cache at ``cache_path`` (read when it
    exists, written back after the build)."""
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    data = bytes(serialized)
    try:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    except AttributeError:  # pragma: no cover - API without timing-cache serialization
        pass
    return data


def build_engine(
    bundle_dir: str | os.PathLike[str],
    *,
    precision: str = "fp16",
    max_batch: int = 64,
    opt_batch: int | None = None,
    workspace_mib: int = 1024,
    force: bool = False,
) -> BuildResult:
    """Build (or reuse) the TensorRT engine of a bundle for this machine's GPU.

    Args:
        bundle_dir: bundle folder (its hashes are verified first).
        precision: "fp16" (from dual_fp16.onnx) or "fp32" (from dual_fp32.onnx).
        max_batch: largest batch the engine accepts; opt_batch: the batch tuned for.
        workspace_mib: builder workspace memory-pool limit, MiB.
        force: rebuild even when a matching engine exists.

    Raises:
        BackendUnavailable: TensorRT or the CUDA bindings are not installed / no GPU.
        BundleError: the bundle is missing files or they do not match their hashes.
        BuildError: parsing or building failed (TensorRT's messages included).
    """
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
    profile = profile_shapes(max_batch, opt_batch)
    bundle = open_bundle(bundle_dir)  # first: a missing bundle is named as such
    trt = import_tensorrt()  # then the clear "not installed" message
    onnx_path = bundle.graph_path("dual", precision)
    onnx_sha = bundle.file_sha256(onnx_path.name)
    gpu = gpu_info()
    version = str(trt.__version__)
    plan, side = engine_files(bundle.root, gpu["name"], version, precision)
    if not force and existing_engine_ok(
        side,
        plan,
        trt_version=version,
        gpu=gpu,
        onnx_sha256=onnx_sha,
        precision=precision,
        profile=profile,
    ):
        return BuildResult(plan, side, False, json.loads(side.read_text()))

    builder, network, config = _network_and_config(
        trt, onnx_path, precision, profile, workspace_mib
    )
    plan.parent.mkdir(parents=True, exist_ok=True)
    cache_path = plan.parent / TIMING_CACHE
    data = _build_with_cache(builder, network, config, cache_path, onnx_path)
    atomic_write_bytes(plan, data)
    info = {
        "tensorrt_version": version,
        "gpu_name": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "precision": precision,
        "onnx_file": onnx_path.name,
        "onnx_sha256": onnx_sha,
        "plan_file": plan.name,
        "plan_sha256": sha256_file(plan),
        "plan_bytes": len(data),
        "profile": profile,
        "workspace_mib": workspace_mib,
        "strongly_typed": True,
        "timing_cache": cache_path.name,
        "created_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    atomic_write_bytes(side, json.dumps(info, indent=1).encode())
    return BuildResult(plan, side, True, info)
