"""The probe of node/heap.py's setting: page faults of a 20 MB array allocated right after one
of the same size was freed. With freed memory kept this is near 0; with malloc's defaults the
second array gets new pages (the first was unmapped). Its own module, so that a spawned scoring
child and a fresh interpreter can import it by name."""

from __future__ import annotations

import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.node.heap import keep_freed_memory
from ddad_edge.node.scoring import ScorerSpec


def second_array_faults() -> int:
    """Minor page faults of allocating and filling a 20 MB float32 array, the second of its
    size in a row (the first is freed before)."""
    a = np.ones(5 * 2**20, np.float32)
    del a
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = np.ones(5 * 2**20, np.float32)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    del b
    return faults


def probe(mode: str) -> tuple[bool, int]:
    """Run the probe in a fresh interpreter, with node/heap.py's setting ("keep") or malloc's
    defaults ("default"): (whether malloc accepted the setting, the second array's faults).
    Asked in a subprocess so that the test process's own allocator stays as it is."""
    out = subprocess.run(
        [sys.executable, __file__, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@dataclass(frozen=True)
class HeapProbeSpec(ScorerSpec):
    """A scoring child's spec that, as its scorer opens (after the child's own start-up),
    writes the probe's page faults to ``report``."""

    report: str = ""

    def open(self) -> Any:
        Path(self.report).write_text(str(second_array_faults()))
        return super().open()


if __name__ == "__main__":  # python heap_probe.py keep|default: "<mallopt accepted> <faults>"
    ok = keep_freed_memory() if sys.argv[1] == "keep" else True
    print(ok, second_array_faults())
