"""Transparent huge pages for onnxruntime's weight buffers (Linux; best effort, never required;
opt-in: ``Scorer.from_bundle(..., warm_up=hugepages.for_cpu_backend)`` or ``ddad-edge score
--huge-pages``). The advice is process-wide, which is why it is off by default: an application
embedding the runtime decides.

Batch-1 inference reads ~100 MB of weights per image. onnxruntime allocates them (prepacked)
with ordinary 4 KiB pages: on a kernel whose transparent huge pages are in ``madvise`` mode (the
common default) such memory never gets 2 MiB pages, so streaming the weights costs a TLB miss
every 4 KiB and the hardware prefetchers stop at every page boundary. numpy asks for huge pages
for its large arrays; onnxruntime does not, and offers no option to.

What this module does, after the session's first inference (:class:`HugePages`, the warm-up an
``OrtBackend`` runs when asked): find the 2 MiB-
aligned blocks of the process's private anonymous memory whose 4 KiB pages are all present
(``/proc/self/pagemap``: memory that has been written, such as the weights onnxruntime has
packed) and ask the kernel to back them with huge pages: ``madvise(MADV_HUGEPAGE)``, then
``madvise(MADV_COLLAPSE)`` (Linux >= 6.1), which rewrites those pages as huge pages on the spot.
Both calls are advice: they never change the contents of memory or what any program computes,
only how it is mapped; only fully present blocks are touched, so no memory is added to the
process (RSS unchanged, measured). Other dense memory of the process (the Python heap, numpy
arrays) gets the same advice, equally harmless. The session's memory cannot be singled out more
precisely: glibc places onnxruntime's buffers in free heap space of a long-running process
rather than in new mappings, and this kernel has no soft-dirty page tracking. Where the kernel
refuses (THP disabled, an older kernel, not Linux) nothing changes and the result says why.

The collapse takes a noticeable fraction of a second, which is why :func:`start_collapse` runs
it on a background thread; the gain and that cost, measured, are in benchmarks/README.md
(decision log).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
PAGE = 4096
HUGE_PAGE = 2 * 2**20  # x86-64 and 4 KiB-page arm64; other page sizes are not handled


def _page_size() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def anonymous_regions(maps_text: str | None = None) -> dict[int, int]:
    """Private writable anonymous mappings (and the heap) of this process: {start: end} bytes.

    ``maps_text``: the text of ``/proc/self/maps`` (read when None); {} where it is absent."""
    if maps_text is None:
        try:
            with open("/proc/self/maps") as f:
                maps_text = f.read()
        except OSError:
            return {}
    out: dict[int, int] = {}
    for line in maps_text.splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[1].startswith("rw") or parts[1][3] != "p":
            continue
        if len(parts) > 5 and parts[5] != "[heap]":
            continue  # file-backed or a special mapping ([stack], [vvar], ...)
        start, end = (int(v, 16) for v in parts[0].split("-"))
        out[start] = end
    return out


def dense_ranges(
    regions: dict[int, int], pagemap: str = "/proc/self/pagemap"
) -> list[tuple[int, int]]:
    """The 2 MiB-aligned blocks of ``regions`` ({start: end}) whose 4 KiB pages are all present,
    merged into [start, end) ranges. [] when the page map cannot be read."""
    per_block = HUGE_PAGE // PAGE
    ranges: list[tuple[int, int]] = []
    try:
        f = open(pagemap, "rb")
    except OSError:
        return ranges
    with f:
        for start, end in sorted(regions.items()):
            span = huge_aligned(start, end)
            if span is None:
                continue
            lo, hi = span
            f.seek(lo // PAGE * 8)
            raw = f.read((hi - lo) // PAGE * 8)
            entries = np.frombuffer(raw, np.uint64)
            n = entries.size // per_block
            present = (entries[: n * per_block].reshape(n, per_block) >> np.uint64(63)) == 1
            for i in np.flatnonzero(present.all(axis=1)):
                block = lo + int(i) * HUGE_PAGE
                if ranges and ranges[-1][1] == block:
                    ranges[-1] = (ranges[-1][0], block + HUGE_PAGE)
                else:
                    ranges.append((block, block + HUGE_PAGE))
    return ranges


def huge_aligned(start: int, end: int) -> tuple[int, int] | None:
    """The largest [start, end) inside the range that is aligned to whole huge pages, or None."""
    lo = -(-start // HUGE_PAGE) * HUGE_PAGE
    hi = end // HUGE_PAGE * HUGE_PAGE
    return (lo, hi) if hi - lo >= HUGE_PAGE else None


@dataclass
class HugePageResult:
    """What the kernel accepted, in bytes. ``errors``: one line per refused call."""

    ranges: int = 0
    advised_bytes: int = 0
    collapsed_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for reports."""
        text = (
            f"{self.collapsed_bytes / 2**20:.0f} MiB on huge pages "
            f"({self.advised_bytes / 2**20:.0f} MiB advised in {self.ranges} ranges)"
        )
        return text + (f"; {self.errors[0]}" if self.errors else "")


def _madvise() -> tuple[object, str | None]:
    if not sys.platform.startswith("linux"):
        return None, f"not Linux ({sys.platform})"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError) as e:
        return None, f"no madvise: {e}"
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn, None


def advise(
    ranges: list[tuple[int, int]], *, collapse: bool = True, retries: int = 3
) -> HugePageResult:
    """``madvise(MADV_HUGEPAGE)`` and (``collapse``) ``madvise(MADV_COLLAPSE)`` on the
    huge-page-aligned part of each range; a call refused with EAGAIN (seen for MADV_COLLAPSE
    once in ten loads here) is retried ``retries`` times. Never raises: refusals go into
    ``errors``."""
    import errno

    result = HugePageResult()
    fn, why = _madvise()
    page_size = _page_size()
    if fn is not None and page_size != PAGE:
        fn, why = None, f"page size {page_size} bytes, not {PAGE} (not handled)"
    if fn is None:
        result.errors.append(f"huge pages not requested: {why}")
        return result
    for start, end in ranges:
        span = huge_aligned(start, end)
        if span is None:
            continue
        lo, n = span[0], span[1] - span[0]
        result.ranges += 1
        for advice, label in ((MADV_HUGEPAGE, "MADV_HUGEPAGE"), (MADV_COLLAPSE, "MADV_COLLAPSE")):
            if advice == MADV_COLLAPSE and not collapse:
                break
            for attempt in range(retries + 1):
                if fn(lo, n, advice) == 0:  # type: ignore[operator]
                    err = 0
                    break
                err = ctypes.get_errno()
                if err != errno.EAGAIN:  # EAGAIN: no huge page free at that moment; try again
                    break
                time.sleep(0.05 * (attempt + 1))
            if err:
                name = errno.errorcode.get(err, str(err))
                result.errors.append(f"{label} refused: {name} ({os.strerror(err)})")
                break
            if advice == MADV_HUGEPAGE:
                result.advised_bytes += n
            else:
                result.collapsed_bytes += n
    return result


class CollapseJob:
    """:func:`advise` on a background thread (the collapse copies memory, which takes long
    enough to delay a first score; benchmarks/README.md, decision log). ``wait()`` returns
    the result."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.result: HugePageResult | None = None
        self._thread = threading.Thread(
            target=self._run, args=(ranges,), name="ddad-hugepages", daemon=True
        )
        self._thread.start()

    def _run(self, ranges: list[tuple[int, int]]) -> None:
        # lowest CPU priority for this thread only (Linux: a thread id is a PRIO_PROCESS target),
        # so the copying does not slow the first inferences that run meanwhile
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        self.result = advise(ranges)

    def wait(self, timeout: float | None = None) -> HugePageResult | None:
        """The result once the job is done (None if still running after ``timeout`` s)."""
        self._thread.join(timeout)
        return self.result


def start_collapse() -> CollapseJob:
    """Huge pages for the process's densely written anonymous memory (:func:`dense_ranges`),
    on a background thread."""
    if _page_size() != PAGE:
        return CollapseJob([])  # advise() records why nothing was done
    return CollapseJob(dense_ranges(anonymous_regions()))


class HugePages:
    """The backend warm-up (``backends.WarmUp``): :func:`start_collapse` once, when the backend
    starts it (after its first inference); ``status`` reports the result."""

    def __init__(self) -> None:
        self.job: CollapseJob | None = None

    def start(self) -> None:
        if self.job is None:
            self.job = start_collapse()

    def status(self, timeout: float | None = 0.0) -> str:
        """One line, after waiting up to ``timeout`` s for the job."""
        if self.job is None:
            return "huge pages: not started (starts after the first inference)"
        res = self.job.wait(timeout)
        return f"huge pages: {res.summary()}" if res is not None else "huge pages: in progress"


def for_cpu_backend(backend: object) -> HugePages | None:
    """Warm-up factory (``backends.WarmUpFactory``): huge pages for a session that runs on the
    CPU, none for GPU backends (their weights are not in host memory)."""
    providers = list(getattr(backend, "active_providers", []))
    return HugePages() if providers[:1] == ["CPUExecutionProvider"] else None
