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


def test_added_ranges_new_mappings_and_grown_heap() -> None:
    mib = 2**20
    before = {0: 64 * mib, 100 * mib: 110 * mib}
    after = {
        0: 80 * mib,  # grew by 16 MiB: only the new part
        100 * mib: 110 * mib,  # unchanged
        200 * mib: 208 * mib,  # new, 8 MiB
        300 * mib: 301 * mib,  # new but below min_bytes
    }
    assert hugepages.added_ranges(before, after, min_bytes=4 * mib) == [
        (64 * mib, 80 * mib),
        (200 * mib, 208 * mib),
    ]
    assert hugepages.added_ranges(after, after) == []


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
    buf = mmap.mmap(-1, size)
    arr = np.frombuffer(buf, np.float32)
    arr[:] = np.arange(arr.size, dtype=np.float32)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    res = hugepages.advise([(addr, addr + size)])
    assert np.array_equal(arr, np.arange(arr.size, dtype=np.float32))  # advice only
    if sys.platform.startswith("linux") and _thp_mode() in ("always", "madvise"):
        assert res.ranges >= 1 and res.advised_bytes >= hugepages.HUGE_PAGE, res
    else:
        assert res.errors or res.advised_bytes == 0
    assert "MiB of weights on huge pages" in res.summary()
    del arr
    buf.close()


def test_ort_backend_huge_pages_change_no_output(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((1024, 2048)).astype(np.float32)  # 8 MiB
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2048])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "mm.onnx"
    import onnx

    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(1).standard_normal((3, 1024)).astype(np.float32)
    plain = OrtBackend(path, huge_pages=False)
    plain.load()
    assert plain.huge_pages_job is None
    hp = OrtBackend(path)  # default: on
    hp.load()
    assert hp.huge_pages_job is not None
    res = hp.huge_pages_job.wait(30)
    assert res is not None
    np.testing.assert_array_equal(hp.infer({"x": x})["y"], plain.infer({"x": x})["y"])


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
