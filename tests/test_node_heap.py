"""node/heap.py: a scoring process keeps freed memory, so the next film's arrays fault no pages."""

from __future__ import annotations

import pytest
from heap_probe import probe


def test_kept_heap_faults_no_pages_for_the_next_array() -> None:
    ok, kept = probe("keep")
    if not ok:
        pytest.skip("malloc here is not glibc's (mallopt refused): nothing to keep")
    _, default = probe("default")
    # by default the array's pages (4 KiB, or 2 MiB where numpy gets huge pages) are new again
    assert default > 100, f"malloc's default returned no memory ({default} faults): probe moot"
    assert kept < 20, f"{kept} page faults for an array the size of one just freed"
