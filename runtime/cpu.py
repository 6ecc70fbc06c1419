"""CPU facts the runtime sizes its thread pools by."""

from __future__ import annotations

import os


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads not counted).

    Reads /proc/cpuinfo (unique (physical id, core id) pairs among the CPUs this process may
    use); falls back to the number of usable logical CPUs.
    """
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        allowed = set(range(os.cpu_count() or 1))
    try:
        cores: set[tuple[str, str]] = set()
        proc = phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in [*f, "\n"]:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    proc = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and proc is not None:
                    if proc in allowed:
                        cores.add((phys or "0", core if core is not None else str(proc)))
                    proc = phys = core = None
        if cores:
            return len(cores)
    except (OSError, ValueError):
        pass
    return max(1, len(allowed))
