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
    from ddad_edge.node.receiving import receive_into

    # where this process's SCPs (here the benchmark's destination) write what arrives: the
    # node's tests point it at their spools, which are gone by now
    receive_into(tmp_path)
    rows = run(bundle, None, films, rounds=2, concurrency=(1,), workdir=tmp_path, floor=films[0])
    sends = rows["1"]
    assert len(sends) == 4 and {r["file"] for r in sends} == {f.name for f in films}
    for r in sends:
        assert r["status"] == "scored"
        assert r["gate"] == r["decode"] == r["score"] == 0.0  # no per-object work
        assert 0 < r["e2e_decision"] <= r["e2e"]
    floor = node_floor_ms(sends)
    assert 0 < floor < max(r["e2e_decision"] for r in sends)
