"""runtime/hugepages.py: which memory gets huge-page advice, and that the advice changes nothing
but the mapping."""

from __future__ import annotations

import ctypes
import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from ddad_edge.runtime import hugepages
from ddad_edge.runtime.backends import OrtBackend

MAPS = """\
55d0c0000000-55d0c0021000 r--p 00000000 08:01 123 /usr/bin/python3.11
55d0c2000000-55d0c4000000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000800000 rw-p 00000000 00:00 0
7f0000800000-7f0000900000 rw-s 00000000 00:01 77 /dev/shm/x
7f0001000000-7f0001100000 rw-p 00000000 08:01 456 /data/weights.bin
7f0002000000-7f0002001000 r--p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
"""


def test_anonymous_regions_keeps_private_writable_anonymous_and_heap() -> None:
    regions = hugepages.anonymous_regions(MAPS)
    assert regions == {0x55D0C2000000: 0x55D0C4000000, 0x7F0000000000: 0x7F0000800000}


def _private(size: int) -> mmap.mmap:
    """Private anonymous memory, as malloc gives (mmap.mmap(-1, n) alone is a shared mapping)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def test_dense_ranges_reads_present_bits(tmp_path: Path) -> None:
    hp, per = hugepages.HUGE_PAGE, hugepages.HUGE_PAGE // 4096
    present = np.uint64(1) << np.uint64(63)
    entries = np.full(5 * per, present, np.uint64)  # five 2 MiB blocks from address 0
    entries[per + 7] = 0  # block 1 has one page missing: not dense
    path = tmp_path / "pagemap"
    path.write_bytes(entries.tobytes())
    regions = {0: 5 * hp - 1}  # the last block is cut by the region end: not whole
    assert hugepages.dense_ranges(regions, str(path)) == [(0, hp), (2 * hp, 4 * hp)]
    assert hugepages.dense_ranges(regions, str(tmp_path / "absent")) == []


def test_dense_ranges_finds_written_memory_of_this_process() -> None:
    if not Path("/proc/self/pagemap").exists():
        pytest.skip("no /proc/self/pagemap (not Linux)")
    hp = hugepages.HUGE_PAGE
    buf = _private(5 * hp)
    arr = np.frombuffer(buf, np.uint8)
    arr[:] = 1  # every page written: present
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    lo, hi = hugepages.huge_aligned(addr, addr + 5 * hp)
    dense = hugepages.dense_ranges(hugepages.anonymous_regions())
    assert all(any(a <= b and b + hp <= c for a, c in dense) for b in range(lo, hi, hp))
    del arr
    buf.close()


def test_huge_aligned() -> None:
    hp = hugepages.HUGE_PAGE
    assert hugepages.huge_aligned(1, 3 * hp + 5) == (hp, 3 * hp)
    assert hugepages.huge_aligned(1, 2 * hp - 1) is None


def _thp_mode() -> str | None:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")]


def test_advise_keeps_contents_and_reports_what_the_kernel_did() -> None:
    size = 8 * 2**20
    buf = _private(size)
    arr = np.frombuffer(buf, np.float32)
    arr[:] = np.arange(arr.size, dtype=np.float32)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    res = hugepages.advise([(addr, addr + size)])
    assert np.array_equal(arr, np.arange(arr.size, dtype=np.float32))  # advice only
    del arr
    buf.close()
    assert "MiB on huge pages" in res.summary()
    if not sys.platform.startswith("linux"):
        assert res.ranges == 0 and "not Linux" in res.errors[0]
    elif _thp_mode() in ("always", "madvise"):
        assert res.ranges >= 1 and res.advised_bytes >= hugepages.HUGE_PAGE, res
    else:
        pytest.skip(f"transparent huge pages are {_thp_mode()!r} here: the kernel may refuse")


def _dual_graph(bundle: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The shared bundle's FP32 dual graph (~50 MB of weights) and a feed of two golden images."""
    from ddad_edge.runtime.bundle import open_bundle

    b = open_bundle(bundle, verify=False)
    return b.graph_path("dual", "fp32"), {"x": b.golden()["x"][:2]}


def test_huge_pages_are_opt_in_and_change_no_output(bundle: Path) -> None:
    path, feed = _dual_graph(bundle)
    plain = OrtBackend(path)  # default: no warm-up
    plain.load()
    assert plain.warm_up is None and plain.settle(0) is None
    hp = OrtBackend(path, warm_up=hugepages.for_cpu_backend)
    hp.load()
    assert isinstance(hp.warm_up, hugepages.HugePages) and hp.warm_up.job is None
    first = hp.infer(feed)
    assert hp.warm_up.job is not None  # started after the first run
    job = hp.warm_up.job
    assert hp.settle(30).startswith("huge pages: ") and hp.warm_up.job is job  # started once
    for name, y in plain.infer(feed).items():
        np.testing.assert_array_equal(first[name], y)
    for name, y in hp.infer(feed).items():
        np.testing.assert_array_equal(first[name], y)
    plain.close()
    hp.close()


def test_huge_pages_only_for_cpu_sessions() -> None:
    class Gpu:
        active_providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]

    class Cpu:
        active_providers = ["CPUExecutionProvider"]

    assert hugepages.for_cpu_backend(Gpu()) is None
    assert isinstance(hugepages.for_cpu_backend(Cpu()), hugepages.HugePages)


@pytest.mark.parametrize("retries", [0, 2])
def test_advise_retries_eagain(monkeypatch: pytest.MonkeyPatch, retries: int) -> None:
    import errno

    calls: list[int] = []

    def fake(addr: int, n: int, advice: int) -> int:
        calls.append(advice)
        if advice == hugepages.MADV_COLLAPSE and calls.count(advice) <= 2:
            ctypes.set_errno(errno.EAGAIN)
            return -1
        return 0

    monkeypatch.setattr(hugepages, "_madvise", lambda: (fake, None))
    monkeypatch.setattr(hugepages.time, "sleep", lambda s: None)
    hp = hugepages.HUGE_PAGE
    res = hugepages.advise([(0, 2 * hp)], retries=retries)
    if retries >= 2:
        assert res.collapsed_bytes == 2 * hp and not res.errors
    else:
        assert res.collapsed_bytes == 0 and "EAGAIN" in res.errors[0]
    assert res.advised_bytes == 2 * hp


def test_concurrent_first_inferences_start_one_job(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    path, feed = _dual_graph(bundle)
    started: list[int] = []
    real = hugepages.start_collapse

    def counting() -> hugepages.CollapseJob:
        started.append(1)
        return real()

    monkeypatch.setattr(hugepages, "start_collapse", counting)
    b = OrtBackend(path, warm_up=hugepages.for_cpu_backend)
    b.load()
    threads = [threading.Thread(target=b.infer, args=(feed,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(started) == 1
    assert b.warm_up.job is not None and b.warm_up.job.wait(30) is not None
    b.close()


def test_other_page_sizes_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hugepages, "_page_size", lambda: 65536)
    res = hugepages.start_collapse().wait(30)
    assert res is not None and res.advised_bytes == 0 and "page size 65536" in res.errors[0]
