"""The split command: protocol counts, reproducibility, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddad_edge.data import (
    Item,
    SplitError,
    make_split,
    read_items,
    read_labels_csv,
    read_manifest,
    scan_folder,
    write_manifest,
    write_splits,
)


def _items(n_norm: int, n_abn: int, with_test: bool = False) -> list[Item]:
    items = [Item(f"n{i}.png", 0, "train") for i in range(n_norm)]
    items += [Item(f"a{i}.png", 1, "train") for i in range(n_abn)]
    if with_test:
        items += [Item(f"tn{i}.png", 0, "test") for i in range(5)]
        items += [Item(f"ta{i}.png", 1, "test") for i in range(7)]
    return items


def test_counts_and_disjointness(tmp_path: Path) -> None:
    m = make_split(tmp_path, _items(100, 80, True), normal_train=50, unlabeled=40, ar=0.25, seed=3)
    assert m["counts"] == {"D": 50, "Du": 40, "Du_abnormal": 10, "Dt": 12, "Dt_abnormal": 7}
    assert sum(m["unlabeled_labels_for_analysis_only"]) == 10
    d, du, dt = set(m["normal_train"]), set(m["unlabeled"]), set(m["test"])
    assert not (d & du) and not (d & dt) and not (du & dt)
    assert all(p.startswith("n") for p in d)


def test_calibration_part_is_held_out(tmp_path: Path) -> None:
    from ddad_edge.data import calibration_sets

    kw = {"normal_train": 50, "unlabeled": 40, "ar": 0.25, "seed": 3}
    plain = make_split(tmp_path, _items(100, 80, True), **kw)
    m = make_split(tmp_path, _items(100, 80, True), calibration=15, **kw)
    assert "calibration" not in plain  # old manifests (and their hashes) are unchanged
    assert m["normal_train"] == plain["normal_train"] and m["unlabeled"] == plain["unlabeled"]
    cal = set(m["calibration"])
    assert len(cal) == 15 == m["counts"]["calibration"]
    assert all(p.startswith("n") for p in cal)
    assert not cal & (set(m["normal_train"]) | set(m["unlabeled"]) | set(m["test"]))
    with pytest.raises(SplitError, match="calibration set 21"):  # 50 + 30 + 21 > 100 normals
        make_split(tmp_path, _items(100, 80, True), calibration=21, **kw)
    sets = calibration_sets({**m, "root": str(tmp_path)})
    assert {Path(p).name for p in sets["normals"]} == cal
    assert len(sets["abnormals"]) == 7 and sets["held_out_normals"] == []
    with pytest.raises(SplitError, match="no calibration part"):
        calibration_sets({**plain, "root": str(tmp_path)})
    halves = calibration_sets({**plain, "root": str(tmp_path)}, from_test=True, seed=0)
    assert len(halves["normals"]) == 2 and len(halves["held_out_normals"]) == 3
    assert not set(halves["normals"]) & set(halves["held_out_normals"])


def test_reproducible_from_seed(tmp_path: Path) -> None:
    a = make_split(tmp_path, _items(100, 80, True), normal_train=50, unlabeled=40, ar=0.5, seed=1)
    b = make_split(tmp_path, _items(100, 80, True), normal_train=50, unlabeled=40, ar=0.5, seed=1)
    c = make_split(tmp_path, _items(100, 80, True), normal_train=50, unlabeled=40, ar=0.5, seed=2)
    assert a == b
    assert a["normal_train"] != c["normal_train"]


def test_carves_out_test_without_split_column(tmp_path: Path) -> None:
    m = make_split(
        tmp_path, _items(100, 50), normal_train=40, unlabeled=20, ar=0.5, seed=0, test_fraction=0.2
    )
    assert m["counts"]["Dt"] == 30 and m["counts"]["Dt_abnormal"] == 10
    assert "carved" in m["test_source"]


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"normal_train": 90, "unlabeled": 40, "ar": 0.5}, "not enough normal"),
        ({"normal_train": 10, "unlabeled": 100, "ar": 0.9}, "not enough abnormal"),
        ({"normal_train": 10, "unlabeled": 10, "ar": 1.5}, "anomaly rate"),
    ],
)
def test_impossible_requests_are_refused(tmp_path: Path, kw: dict, msg: str) -> None:
    with pytest.raises(SplitError, match=msg):
        make_split(tmp_path, _items(100, 80, True), seed=0, **kw)


def test_manifest_roundtrip_and_tamper_check(tmp_path: Path) -> None:
    m = make_split(tmp_path, _items(30, 30, True), normal_train=10, unlabeled=10, ar=0.5)
    out = tmp_path / "split.json"
    digest = write_manifest(m, out)
    assert read_manifest(out)["sha256"] == digest
    data = json.loads(out.read_text())
    data["test_labels"][0] = 1 - data["test_labels"][0]
    out.write_text(json.dumps(data))
    with pytest.raises(SplitError, match="sha256"):
        read_manifest(out)


def test_folder_labels_and_csv_errors(tmp_path: Path) -> None:
    for sub in ("train/NORMAL", "train/PNEUMONIA", "test/NORMAL"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "x.png").write_bytes(b"")
    items = {it.path: it for it in scan_folder(tmp_path)}
    assert items["train/NORMAL/x.png"].label == 0 and items["train/PNEUMONIA/x.png"].label == 1
    assert items["test/NORMAL/x.png"].split == "test"
    (tmp_path / "labels.csv").write_text("path,label\ntrain/NORMAL/x.png,2\n")
    with pytest.raises(SplitError, match="not 0 or 1"):
        read_labels_csv(tmp_path, tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("path,label\nmissing.png,0\n")
    with pytest.raises(SplitError, match="not found"):
        read_labels_csv(tmp_path, tmp_path / "labels.csv")


def test_kermany_protocol(kermany: Path) -> None:
    items = read_labels_csv(kermany, kermany / "labels.csv")
    m = make_split(kermany, items, normal_train=1000, unlabeled=853, ar=0.6, seed=0)
    assert m["counts"] == {"D": 1000, "Du": 853, "Du_abnormal": 512, "Dt": 624, "Dt_abnormal": 390}
    assert "Kermany" in m["data_note"]


def test_anomaly_rate_sweep_shares_d_and_dt(tmp_path: Path) -> None:
    """Every AR of a sweep at fixed |Du| draws the same D and Dt (so module B can be shared);
    Du's normals and abnormals are nested as AR moves."""
    items = _items(100, 80, True)
    sweep = [
        make_split(tmp_path, items, normal_train=50, unlabeled=40, ar=a, seed=4)
        for a in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    ]
    for m in sweep:
        assert m["normal_train"] == sweep[0]["normal_train"] and m["test"] == sweep[0]["test"]
        assert m["counts"]["Du"] == 40
    abn = [{p for p in m["unlabeled"] if p.startswith("a")} for m in sweep]
    assert [len(a) for a in abn] == [0, 8, 16, 24, 32, 40]
    assert all(a <= b for a, b in zip(abn, abn[1:], strict=False))
    with pytest.raises(SplitError, match=r"\|Du\| <= 50"):
        make_split(tmp_path, items, normal_train=50, unlabeled=60, ar=0.0, seed=4)


def test_write_splits_names_a_sweep_and_writes_all_or_nothing(tmp_path: Path) -> None:
    items = _items(100, 80, True)
    one = write_splits(tmp_path, items, [0.5], tmp_path / "s.json", normal_train=50, unlabeled=40)
    assert [p.name for _, p, _ in one] == ["s.json"]
    assert read_manifest(tmp_path / "s.json")["sha256"] == one[0][2]
    sweep = write_splits(
        tmp_path, items, [0.0, 0.25], tmp_path / "w.json", normal_train=50, unlabeled=40
    )
    assert [p.name for _, p, _ in sweep] == ["w-ar0.json", "w-ar0.25.json"]
    assert [m["anomaly_rate"] for m, _, _ in sweep] == [0.0, 0.25]
    with pytest.raises(SplitError):  # AR 0 needs 60 normals for Du after D's 50: none written
        write_splits(
            tmp_path, items, [1.0, 0.0], tmp_path / "x.json", normal_train=50, unlabeled=60
        )
    assert not list(tmp_path.glob("x*.json"))


def test_read_items_looks_up_a_relative_csv_in_the_data_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    (data / "NORMAL").mkdir(parents=True)
    (data / "NORMAL" / "x.png").write_bytes(b"")
    (data / "labels.csv").write_text("path,label\nNORMAL/x.png,1\n")
    (tmp_path / "mine.csv").write_text("path,label\nNORMAL/x.png,0\n")
    (tmp_path / "labels.csv").write_text("path,label\nNORMAL/x.png,0\n")
    monkeypatch.chdir(tmp_path)
    assert read_items(data, Path("labels.csv"))[0].label == 1  # DATA's, not the working folder's
    assert read_items(data, Path("mine.csv"))[0].label == 0  # only where it was given
    assert read_items(data, tmp_path / "labels.csv")[0].label == 0  # absolute: as given
    assert read_items(data)[0].label == 0  # no CSV: by folder name
