"""node/heap.py: a scoring process keeps freed memory, so the next film's arrays fault no pages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ddad_edge.node.heap import keep_freed_memory

PROBE = Path(__file__).with_name("heap_probe.py")


def _second_array_faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, str(PROBE), mode], capture_output=True, text=True, check=True
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
