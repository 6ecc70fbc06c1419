"""Keep freed memory in a scoring process's heap instead of returning it to the kernel.

Each decode allocates image-sized arrays (several MB for a 1024 x 1024 film) and frees them
when the object is done. glibc's malloc serves such sizes with fresh ``mmap`` mappings and
unmaps them on free, or trims them off the top of the heap; the next object then touches new
pages, one page fault per 4 KiB page, a cost of the same order as the decode itself (measured
in benchmarks/README.md, "The DICOM node"). A process that decodes one film after another gains
nothing from giving the memory back, so the scoring children ask malloc (``mallopt``, glibc
only; elsewhere nothing changes) to serve blocks up to ``MMAP_THRESHOLD`` from the heap and to
keep up to ``TRIM_THRESHOLD`` of free heap.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 * 2**20
"""Blocks up to this size (bytes) come from the heap (larger ones are mapped and unmapped)."""
TRIM_THRESHOLD = 256 * 2**20
"""Free memory at the heap's top kept for the next object, bytes."""


def keep_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Set malloc's mmap and trim thresholds (bytes) for this process. Returns whether malloc
    accepted both (False where this is not glibc, or it refused a value)."""
    try:  # the symbols already loaded into this process, libc's among them (as hugepages.py)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok_mmap = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok_trim = mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    return ok_mmap and ok_trim
