"""CPU facts: the runtime sizes its thread pools by them, the benchmarks describe the machine."""

from __future__ import annotations

import os


def cpuinfo_records(path: str = "/proc/cpuinfo") -> list[dict[str, str]]:
    """One {field: value} dict per logical CPU of /proc/cpuinfo ([] when it cannot be read)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key:
            current[key] = value.strip()
        elif current:
            records.append(current)
            current = {}
    return records


def usable_cpus() -> set[int]:
    """Logical CPUs this process may run on."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        return set(range(os.cpu_count() or 1))


def core_ids(
    records: list[dict[str, str]], allowed: set[int] | None = None
) -> set[tuple[str, str]]:
    """Unique (physical id, core id) pairs of the records (only CPUs in ``allowed`` if given)."""
    cores = set()
    for r in records:
        proc = r.get("processor", "")
        if allowed is not None and (not proc.isdigit() or int(proc) not in allowed):
            continue
        cores.add((r.get("physical id", "0"), r.get("core id", proc)))
    return cores


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads not counted).

    Counts unique (physical id, core id) pairs among the CPUs this process may use
    (/proc/cpuinfo); falls back to the number of usable logical CPUs.
    """
    allowed = usable_cpus()
    return len(core_ids(cpuinfo_records(), allowed)) or max(1, len(allowed))
