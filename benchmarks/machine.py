"""The machine under test, as a reader of two benchmark reports needs it to compare them: CPU
(model, cores, SIMD flags, last-level cache), memory, GPU, onnxruntime providers, thread settings,
library versions, date and load average. What the machine can do is measured in
:mod:`ddad_edge.benchmarks.limits`."""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import subprocess
from typing import Any

from ddad_edge.runtime.backends import ort_providers
from ddad_edge.runtime.cpu import core_ids, cpuinfo_records, usable_cpus

LIBRARIES = ("numpy", "onnx", "onnxruntime", "torch", "tensorrt", "PIL", "pydicom", "matplotlib")
# the SIMD flags that matter for int8 / fp16 kernels
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni")
SIMD_FLAGS += ("amx_tile", "amx_int8", "amx_bf16", "f16c")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_info() -> dict[str, Any]:
    """CPU model, logical/physical/usable cores and its SIMD_FLAGS."""
    records = cpuinfo_records()
    first = records[0] if records else {}
    model, flags = first.get("model name", ""), set(first.get("flags", "").split())
    return {
        "model": model or platform.processor() or platform.machine(),
        "llc_bytes": llc_bytes(),
        "logical_cores": os.cpu_count(),
        "physical_cores": len(core_ids(records)) or None,
        "usable_cores": len(usable_cpus()),
        "flags": [f for f in SIMD_FLAGS if f in flags],
        "arch": platform.machine(),
    }


def llc_bytes() -> int | None:
    """Size of the largest (last-level) CPU cache in bytes, from sysfs (None when unknown)."""
    best: tuple[int, int] | None = None
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return None
    for d in entries:
        if not d.startswith("index"):
            continue
        level, size = _read(f"{base}/{d}/level").strip(), _read(f"{base}/{d}/size").strip()
        if not level.isdigit() or not size:
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1].upper(), 1)
        digits = size[:-1] if size[-1].isalpha() else size
        if not digits.isdigit():
            continue
        cand = (int(level), int(digits) * mult)
        best = cand if best is None or cand > best else best
    return best[1] if best else None


def memory_total_gib() -> float | None:
    """Installed memory from /proc/meminfo, GiB (None when unknown)."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return None


def library_versions() -> dict[str, str]:
    """Version of each library in LIBRARIES, or 'not installed: <reason>'."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            mod = importlib.import_module(name)
            out[name] = str(getattr(mod, "__version__", "unknown"))
        except Exception as e:  # noqa: BLE001 - any import failure is a fact to record
            out[name] = f"not installed: {type(e).__name__}: {e}"[:200]
    return out


def gpu_description() -> dict[str, Any]:
    """GPU name(s), driver and CUDA runtime as torch and nvidia-smi see them."""
    out: dict[str, Any] = {"cuda_available": False, "devices": []}
    try:
        import torch

        out["cuda_available"] = bool(torch.cuda.is_available())
        out["torch_cuda"] = torch.version.cuda
        if out["cuda_available"]:
            out["devices"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    except Exception as e:  # noqa: BLE001
        out["torch_error"] = f"{type(e).__name__}: {e}"[:200]
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if r.returncode == 0 and r.stdout.strip():
            out["nvidia_smi"] = r.stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def thread_settings() -> dict[str, Any]:
    """Threading knobs that change the numbers: torch threads and the usual env variables."""
    env = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    out: dict[str, Any] = {k: os.environ.get(k) for k in env}
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        out["torch_interop_threads"] = torch.get_num_interop_threads()
    except ImportError:
        pass
    return out


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def describe_machine() -> dict[str, Any]:
    """Everything about the machine that a reader needs to compare two benchmark reports;
    the caller sets "loadavg_end" when its run is over."""
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "memory_gib": memory_total_gib(),
        "gpu": gpu_description(),
        "onnxruntime_providers": ort_providers(),
        "threads": thread_settings(),
        "versions": library_versions(),
        "loadavg_start": load_average(),
    }
