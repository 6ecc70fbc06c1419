"""The Markdown "Machine" section of the bench and parity reports: what the machine is
(:func:`ddad_edge.benchmarks.machine.describe_machine`) and what it measured it can do
(:func:`ddad_edge.benchmarks.limits.measure_limits`)."""

from __future__ import annotations

from typing import Any

from ddad_edge.benchmarks.report import fmt, table


def machine_section(machine: dict[str, Any], limits: dict[str, Any] | None) -> str:
    """Markdown: the machine and its measured limits."""
    cpu = machine.get("cpu", {})
    gpu = machine.get("gpu", {})
    v = machine.get("versions", {})
    rows = [
        ["date (UTC)", machine.get("date_utc")],
        [
            "CPU",
            f"{cpu.get('model')} ({cpu.get('usable_cores')} usable / "
            f"{cpu.get('logical_cores')} logical cores; {', '.join(cpu.get('flags', []))})",
        ],
        ["memory", f"{machine.get('memory_gib')} GiB"],
        ["GPU", ", ".join(gpu.get("devices") or []) or "none (CUDA not available)"],
        [
            "load average at start / end",
            f"{machine.get('loadavg_start')} / {machine.get('loadavg_end')}",
        ],
        ["threads", ", ".join(f"{k}={val}" for k, val in machine.get("threads", {}).items())],
        ["onnxruntime providers", ", ".join(machine.get("onnxruntime_providers", []))],
        [
            "versions",
            ", ".join(f"{k} {val}" for k, val in v.items() if "not installed" not in str(val)),
        ],
    ]
    missing = [k for k, val in v.items() if "not installed" in str(val)]
    if missing:
        rows.append(["not installed", ", ".join(missing)])
    text = "## Machine\n\n" + table(["", ""], rows)
    return text + (limits_section(limits) if limits else "")


def _library_row(label: str, d: dict[str, Any], key: str, used: float) -> list[str]:
    """One limit measured by numpy and torch, and the figure used."""
    return [
        label,
        fmt(d["numpy"].get(key), ".1f"),
        fmt(d["torch"].get(key), ".1f"),
        fmt(used, ".1f"),
    ]


def limits_section(limits: dict[str, Any]) -> str:
    """Markdown: the measured matmul peak, bandwidths and read curve."""
    mm, bw = limits["matmul"], limits["bandwidth"]
    text = "\n### Measured limits\n\n" + table(
        ["limit", "numpy", "torch", "used"],
        [
            _library_row(
                f"sgemm {mm['n']}x{mm['n']} (GFLOP/s, best)", mm, "best_gflops", mm["peak_gflops"]
            ),
            _library_row(
                f"read {bw['nbytes'] / 2**20:.0f} MiB (GB/s)", bw, "read_gbps", bw["read_gbps"]
            ),
            _library_row("copy (GB/s, read+write bytes)", bw, "copy_gbps", bw["copy_gbps"]),
        ],
    )
    at_weights = limits.get("bandwidth_at_weights", {})
    for n, r in sorted(at_weights.items(), key=lambda kv: int(kv[0])):
        where = {True: "fits in LLC", False: "exceeds LLC", None: "LLC unknown"}[r.get("in_llc")]
        text += (
            f"- read, buffer of {int(n) / 1e6:.1f} MB read repeatedly ({where}): "
            f"{r['read_gbps']:.1f} GB/s\n"
        )
    if bw.get("llc_bytes"):
        text += f"- last-level cache: {bw['llc_bytes'] / 2**20:.0f} MiB\n"
    if limits.get("read_curve"):
        text += "- read bandwidth vs buffer size (read repeatedly; GB/s): " + ", ".join(
            f"{c['mib']} MiB {c['read_gbps']:.1f}" for c in limits["read_curve"]
        )
        text += "\n"
    if limits.get("quick"):
        text += "\n**quick mode: small sizes, these limits are NOT meaningful.**\n"
    return text
