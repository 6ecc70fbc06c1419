"""node/heap.py: a scoring process keeps freed memory, so the next film's arrays fault no pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ddad_edge.node.heap import keep_freed_memory

# Page faults of the second 20 MB array after the first was freed, in a fresh interpreter.
PROBE = """
import resource, sys
import numpy as np
from ddad_edge.node.heap import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "keep" else True
a = np.ones(5 * 2**20, np.float32); del a
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(5 * 2**20, np.float32)
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _second_array_faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


def test_kept_heap_faults_no_pages_for_the_next_array() -> None:
    if not keep_freed_memory():
        pytest.skip("malloc here is not glibc's (mallopt refused): nothing to keep")
    ok, kept = _second_array_faults("keep")
    _, default = _second_array_faults("default")
    assert ok
    # by default the array's pages (4 KiB, or 2 MiB where numpy gets huge pages) are new again
    assert default > 100, f"malloc's default returned no memory ({default} faults): probe moot"
    assert kept < 20, f"{kept} page faults for an array the size of one just freed"
