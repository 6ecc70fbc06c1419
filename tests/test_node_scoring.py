"""The node's scoring in child processes (``node.scoring``): the same outcome as in the node's
own process; a child killed from outside, a child that hangs, and a file that kills every child
it is given (each a real process death or stop), after which the node goes on scoring."""

from __future__ import annotations

import io
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from crashing_scorer import CrashingSpec
from dicomnet import make_xray

from ddad_edge.node.journal import ObjectRow
from ddad_edge.node.pipeline import Pipeline, PipelineError, load_pipeline
from ddad_edge.node.scoring import InProcess, ScorerSpec, ScoringProcesses

pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def xray(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scoring") / "cr.dcm"
    make_xray(seed=3).save_as(path, enforce_file_format=True)
    return path


def _same(a, b) -> None:
    assert a.record.status == b.record.status == "scored"
    assert a.record.scores == b.record.scores  # one function, one backend: bit-identical
    assert a.record.flag == b.record.flag


def test_child_scores_as_in_process_and_a_killed_child_is_replaced(bundle: Path, xray: Path):
    from ddad_edge.runtime import Scorer

    spec = ScorerSpec(str(bundle), backend="ort-cpu")
    with Scorer.from_bundle(bundle, backend="ort-cpu", max_batch=1) as scorer:
        here = InProcess(scorer).run(str(xray))
        overlay = InProcess(scorer).overlay(str(xray))
    procs = ScoringProcesses(spec, 1, timeout_s=60)
    try:
        _same(procs.run(str(xray)), here)
        assert max(overlay.shape) <= 512 and np.array_equal(procs.overlay(str(xray)), overlay)
        (pid,) = procs.pids()
        os.kill(pid, signal.SIGKILL)  # between files: the next file goes to a new child
        _same(procs.run(str(xray)), here)
        assert procs.pids() != [pid] and len(procs.pids()) == 1
    finally:
        procs.close()
    assert procs.pids() == []


def test_child_that_hangs_is_killed_and_the_file_tried_on_a_new_one(bundle: Path, xray: Path):
    procs = ScoringProcesses(ScorerSpec(str(bundle), backend="ort-cpu"), 1, timeout_s=3)
    try:
        (pid,) = procs.pids()
        os.kill(pid, signal.SIGSTOP)  # it takes the file and never answers
        got = procs.run(str(xray))
        assert got.record.status == "scored"
        assert pid not in procs.pids()
    finally:
        procs.close()


def test_file_that_kills_every_child_is_abstained_and_the_node_goes_on(bundle: Path, tmp_path):
    poison, good = tmp_path / "poison.dcm", tmp_path / "good.dcm"
    for i, p in enumerate((poison, good)):
        make_xray(seed=i).save_as(p, enforce_file_format=True)
    pipeline = Pipeline(ScoringProcesses(CrashingSpec(str(bundle), backend="ort-cpu"), 1))
    try:

        def row(p: Path) -> ObjectRow:
            cr = "1.2.840.10008.5.1.4.1.1.1"
            return ObjectRow("1.2.3", cr, "MOD", str(p), "received", None, 0)

        out = pipeline(row(poison))
        assert out.state == "abstained"
        assert out.reason.count("died (signal SIGABRT)") == 2, out.reason
        assert [r.kind for r in out.results] == ["sr"] and b"SIGABRT" in out.results[0].data
        scored = pipeline(row(good))
        assert scored.state == "scored"
        sc = pydicom.dcmread(io.BytesIO(scored.later[0].build("1.2.3.4")))  # the child's image
        assert sc.SOPInstanceUID == "1.2.3.4" and sc.Modality == "OT"
        assert max(sc.Rows, sc.Columns) <= 512 and sc.SamplesPerPixel == 3
    finally:
        pipeline.close()


def test_unusable_bundle_is_named_before_serving_and_no_child_is_left(tmp_path: Path) -> None:
    import multiprocessing

    with pytest.raises(PipelineError, match="manifest"):
        load_pipeline(tmp_path, processes=2)
    assert multiprocessing.active_children() == []


def test_two_children_score_side_by_side(bundle: Path, xray: Path, tmp_path: Path) -> None:
    procs = ScoringProcesses(ScorerSpec(str(bundle), backend="ort-cpu"), 2)
    try:
        assert len(set(procs.pids())) == 2
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(procs.run, [str(xray)] * 4))
        assert all(g.record.scores == got[0].record.scores for g in got)
        other = tmp_path / "other.dcm"
        make_xray(seed=9).save_as(other, enforce_file_format=True)
        procs.run(str(other)), procs.run(str(xray))  # the idle child first in line: other's
        child = procs._take(str(xray))  # the heat map goes to the child that holds the image
        assert child.last == str(xray)
        procs._give(child)
        assert np.array_equal(procs.overlay(str(other)), procs.overlay(str(other)))
    finally:
        procs.close()


def test_child_ends_when_its_parent_is_gone(bundle: Path) -> None:
    """A child whose parent is gone (kill -9 of the node) ends instead of lingering."""
    procs = ScoringProcesses(ScorerSpec(str(bundle), backend="ort-cpu"), 1)
    (child,) = procs._all
    child.conn.close()  # what the child sees when the parent's end of the pipe disappears
    child.proc.join(30)
    assert child.proc.exitcode == 0
    procs.close()


def test_child_that_cannot_be_replaced_is_replaced_later(bundle: Path, xray: Path, tmp_path):
    """The bundle vanishes while a child dies: the object's worker gets the reason; once the
    bundle is back the next object gets a new child."""
    import shutil

    from ddad_edge.node.scoring import ScoringError

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    procs = ScoringProcesses(ScorerSpec(str(copy), backend="ort-cpu"), 1)
    try:
        (pid,) = procs.pids()
        copy.rename(tmp_path / "away")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ScoringError, match="not a folder"):
            procs.run(str(xray))
        (tmp_path / "away").rename(copy)
        assert procs.run(str(xray)).record.status == "scored"
    finally:
        procs.close()


def test_child_keeps_freed_memory(bundle: Path, tmp_path: Path) -> None:
    """node/heap.py in the child: by the time its scorer opens, a freed 20 MB array's memory
    serves the next one without new page faults (tests/heap_probe.py; with malloc's defaults,
    test_node_heap.py shows hundreds)."""
    from heap_probe import HeapProbeSpec, probe

    if not probe("keep")[0]:
        pytest.skip("malloc here is not glibc's (mallopt refused): nothing to keep")
    report = tmp_path / "faults"
    procs = ScoringProcesses(HeapProbeSpec(str(bundle), backend="ort-cpu", report=str(report)), 1)
    procs.close()
    faults = int(report.read_text())
    assert faults < 20, f"{faults} page faults in the child for an array the size of one just freed"
