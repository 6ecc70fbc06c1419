"""The node benchmark's floor (``benchmarks.node_floor``, ``benchmarks/node.py --floor``): the
real node with no per-object gate, decode or score, run end to end over loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicomnet import make_xray

from ddad_edge.benchmarks.node import node_floor_ms, run
from ddad_edge.benchmarks.node_floor import FixedScores

pytest.importorskip("highdicom")
pytest.importorskip("pynetdicom")


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("floor")
    paths = [folder / f"cr{i}.dcm" for i in range(2)]
    for i, path in enumerate(paths):
        make_xray(seed=10 + i).save_as(path, enforce_file_format=True)
    return paths


def test_fixed_scores_read_no_file_after_the_reference(bundle: Path, films: list[Path]):
    from ddad_edge.runtime import Scorer

    with Scorer.from_bundle(bundle, backend="ort-cpu", max_batch=1) as scorer:
        fixed = FixedScores(scorer, str(films[0]))
        own = scorer.score([str(films[1])])[0]
    got = fixed.run(str(films[1].with_name("not-there.dcm")))
    assert got.record.status == "scored" and got.times == {}
    assert got.record.scores != own.scores  # the reference's record, not the file's
    assert fixed.overlay("not-there").ndim == 2


def test_fixed_scores_refuse_a_reference_that_is_not_scored(bundle: Path, tmp_path: Path):
    from ddad_edge.runtime import Scorer

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file")
    with Scorer.from_bundle(bundle, backend="ort-cpu", max_batch=1) as scorer:
        with pytest.raises(ValueError, match="junk.dcm: not scored"):
            FixedScores(scorer, str(junk))


def test_floor_node_delivers_every_result_without_scoring(
    bundle: Path, films: list[Path], tmp_path: Path
):
    rows = run(bundle, None, films, rounds=2, concurrency=(1,), workdir=tmp_path, floor=films[0])
    sends = rows["1"]
    assert len(sends) == 4 and {r["file"] for r in sends} == {f.name for f in films}
    for r in sends:
        assert r["status"] == "scored"
        assert r["gate"] == r["decode"] == r["score"] == 0.0  # no per-object work
        assert 0 < r["e2e_decision"] <= r["e2e"]
    floor = node_floor_ms(sends)
    assert 0 < floor < max(r["e2e_decision"] for r in sends)


def test_summary_gives_the_lowest_ratio_the_floor_allows():
    from ddad_edge.benchmarks.node import summarize

    stages = ("receive_persist", "transfer", "wait", "gate", "decode", "score", "sr")
    row = dict.fromkeys(stages, 1.0) | {"build_send": 30.0, "e2e": 40.0}

    def send(e2e_decision: float, persist: float) -> dict:
        return row | {"file": "a.dcm", "e2e_decision": e2e_decision, "persist": persist}

    ref = {"a.dcm": {"decode": 6.0, "score": 2.0}}
    node = {"1": [send(20.0, 3.0), send(24.0, 3.0), send(22.0, 3.0)]}
    floor = {"1": [send(12.0, 2.0), send(14.0, 6.0), send(11.0, 1.0)]}  # less persist: 10, 8, 10
    s = summarize(node, floor, ref)["1:a.dcm"]
    assert s["in_process_decode_score"] == 8.0 and s["e2e_decision_p50_over_in_process"] == 22 / 8
    assert s["node_floor_ms"] == 10.0 and s["lowest_ratio_decision"] == (10.0 + 8.0) / 8.0
    assert s["floor"]["e2e_decision"]["p50"] == 12.0
    assert "node_floor_ms" not in summarize(node, {}, ref)["1:a.dcm"]
