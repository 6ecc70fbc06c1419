"""The deployment CLI end to end on a small trained run: export, verify (and its failures), build
(which must fail cleanly without TensorRT), score --json / --heatmaps with a broken DICOM among
good inputs. Errors must be one line, without a traceback."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ddad_edge.cli import app
from ddad_edge.runtime.scores import SCORE_NAMES

runner = CliRunner()


def one_line_error(result) -> str:
    err = result.stderr.strip()
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert err.startswith("error:"), err
    return err


@pytest.fixture(scope="module")
def cli_bundle(tmp_path_factory: pytest.TempPathFactory, trained_run: Path) -> Path:
    pytest.importorskip("onnx", reason="`export` needs the train extra")
    out = tmp_path_factory.mktemp("cli") / "bundle"
    res = runner.invoke(
        app,
        [
            "export",
            "--ckpt",
            str(trained_run),
            "-o",
            str(out),
            "--n-parity",
            "8",
            "--n-golden",
            "4",
            "--no-module-graphs",
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.stdout and "dual_fp16" in res.stdout
    return out


def test_export_writes_bundle_and_refuses_to_overwrite(cli_bundle: Path, trained_run: Path) -> None:
    names = sorted(p.name for p in cli_bundle.iterdir())
    assert names == [
        "dual_fp16.onnx",
        "dual_fp32.onnx",
        "dual_int8.onnx",
        "golden.npz",
        "manifest.json",
        "weights_fp16.bin",
        "weights_fp32.bin",
    ]
    res = runner.invoke(app, ["export", "--ckpt", str(trained_run), "-o", str(cli_bundle)])
    assert "not empty" in one_line_error(res)
    res = runner.invoke(
        app, ["export", "--ckpt", str(cli_bundle / "nope"), "-o", str(cli_bundle.parent / "x")]
    )
    assert "config.json" in one_line_error(res)


def test_verify_passes_and_prints_errors(cli_bundle: Path) -> None:
    res = runner.invoke(app, ["verify", str(cli_bundle), "--backend", "ort"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "files match their sha256" in out and "verify passed" in out
    assert "dual_fp32" in out and "dual_fp16" in out and "mean_a" in out and "std_b" in out
    res = runner.invoke(
        app, ["verify", str(cli_bundle), "--precision", "fp16", "--tolerance", "1e-9"]
    )
    assert "do not match within tolerance" in one_line_error(res)


def test_verify_fails_on_tampered_bundle(cli_bundle: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(cli_bundle, b)
    data = bytearray((b / "dual_fp32.onnx").read_bytes())
    data[-100] ^= 0x01
    (b / "dual_fp32.onnx").write_bytes(bytes(data))
    err = one_line_error(runner.invoke(app, ["verify", str(b)]))
    assert "dual_fp32.onnx" in err and "sha256" in err
    err = one_line_error(runner.invoke(app, ["verify", str(tmp_path / "missing")]))
    assert "not a folder" in err


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None,
    reason="tensorrt is installed: build would really run",
)
def test_build_fails_cleanly_without_tensorrt(cli_bundle: Path) -> None:
    err = one_line_error(
        runner.invoke(app, ["build", str(cli_bundle), "--precision", "fp16", "--max-batch", "64"])
    )
    assert "TensorRT is not installed: pip install 'ddad-edge[trt]'" in err
    assert not (cli_bundle / "engines").exists()


def test_score_json_and_heatmaps(
    tmp_path: Path, bundle: Path, good_images: list[Path], broken_dicom: Path | None
) -> None:
    good = [str(p) for p in good_images]
    inputs = [good[0], str(broken_dicom), *good[1:]] if broken_dicom else good
    hm = tmp_path / "heatmaps"
    res = runner.invoke(app, ["score", str(bundle), *inputs, "--json", "--heatmaps", str(hm)])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["source"] for r in recs] == inputs
    for r in recs:
        if broken_dicom and r["source"] == str(broken_dicom):
            assert r["scores"] is None and "could not be decoded" in r["error"]
            assert r["heatmap"] is None
        else:
            assert r["error"] is None and set(r["scores"]) == set(SCORE_NAMES)
            assert Path(r["heatmap"]).is_file()
            assert Path(r["heatmap"]).name == f"{Path(r['source']).stem}.inter.png"
    if broken_dicom:
        assert "1 of 4 inputs could not be scored" in res.stderr
    # table output, and a map choice
    res = runner.invoke(
        app, ["score", str(bundle), good[0], "--heatmaps", str(hm), "--heatmap-map", "intra"]
    )
    assert res.exit_code == 0 and "inter" in res.stdout
    assert (hm / f"{Path(good[0]).stem}.intra.png").is_file()


def test_score_exit_code_only_when_all_inputs_fail(
    tmp_path: Path, bundle: Path, good_images: list[Path], broken_dicom: Path | None
) -> None:
    bad = [str(tmp_path / "missing.png")]
    if broken_dicom:
        bad.append(str(broken_dicom))
    res = runner.invoke(app, ["score", str(bundle), *bad, "--json"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert all(json.loads(line)["error"] for line in res.stdout.splitlines())
    res = runner.invoke(app, ["score", str(bundle), str(good_images[0]), *bad, "--json"])
    assert res.exit_code == 0
    err = one_line_error(runner.invoke(app, ["score", str(tmp_path), str(good_images[0])]))
    assert "manifest.json: missing" in err


def test_help_says_what_commands_read_and_write() -> None:
    for cmd, words in {
        "export": ["Reads", "Writes", "golden.npz"],
        "verify": ["Reads", "writes nothing", "tolerance"],
        "build": ["Reads", "Writes", "engines"],
        "score": ["Reads", "ALL inputs failed", "--heatmaps"],
    }.items():
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0
        text = " ".join(res.stdout.split())
        for w in words:
            assert w in text, (cmd, w)


def test_negative_workers_and_missing_bundle_are_named(
    cli_bundle: Path, tmp_path: Path, good_images: list[Path]
) -> None:
    img = good_images[0]
    err = one_line_error(
        runner.invoke(app, ["score", str(cli_bundle), str(img), "--workers", "-3"])
    )
    assert "--workers must be >= 0" in err
    with pytest.raises(ValueError, match="workers must be >= 1"):
        from ddad_edge.runtime.scorer import Scorer

        Scorer.from_bundle(cli_bundle, backend="ort-cpu", workers=-3)
    # build names the missing bundle, not the missing TensorRT
    err = one_line_error(runner.invoke(app, ["build", str(tmp_path / "nonexistent")]))
    assert "nonexistent: not a folder" in err and "TensorRT" not in err


@pytest.fixture(scope="module")
def signed_bundle(
    tmp_path_factory: pytest.TempPathFactory, trained_run: Path, release_keys: dict[str, Path]
) -> Path:
    out = tmp_path_factory.mktemp("signed") / "bundle"
    args = ["export", "--ckpt", str(trained_run), "-o", str(out), "--n-parity", "4"]
    args += ["--n-golden", "2", "--no-module-graphs", "--sign-key", str(release_keys["private"])]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "signed)" in res.stdout and (out / "bundle.sig").is_file()
    return out


def test_signed_export_verify_and_scorer_refusals(
    signed_bundle: Path,
    cli_bundle: Path,
    release_keys: dict[str, Path],
    tmp_path: Path,
    good_images: list[Path],
) -> None:
    from ddad_edge.runtime.bundle import BundleError
    from ddad_edge.runtime.scorer import Scorer

    pub, other = str(release_keys["public"]), str(release_keys["other_public"])
    res = runner.invoke(
        app, ["verify", str(signed_bundle), "--public-key", pub, "--precision", "fp32"]
    )
    assert res.exit_code == 0, res.output
    assert "signature valid" in res.stdout and "verify passed" in res.stdout
    err = one_line_error(runner.invoke(app, ["verify", str(signed_bundle), "--public-key", other]))
    assert "signed by another key" in err
    err = one_line_error(runner.invoke(app, ["verify", str(cli_bundle), "--public-key", pub]))
    assert "not signed" in err
    res = runner.invoke(
        app, ["score", str(signed_bundle), str(good_images[0]), "--public-key", pub, "--json"]
    )
    assert res.exit_code == 0 and json.loads(res.stdout.splitlines()[0])["scores"], res.output
    with Scorer.from_bundle(signed_bundle, backend="ort-cpu", public_key=pub) as s:
        assert s.score([str(good_images[0])])[0].scores
    with pytest.raises(BundleError, match="not signed"):
        Scorer.from_bundle(cli_bundle, backend="ort-cpu", public_key=pub)
    with pytest.raises(BundleError, match="another key"):
        Scorer.from_bundle(signed_bundle, backend="ort-cpu", public_key=other)
    # a consistent re-hash of a changed golden file passes the manifest, not the signature
    b = tmp_path / "b"
    shutil.copytree(signed_bundle, b)
    from ddad_edge.runtime.bundle import sha256_file
    from ddad_edge.runtime.manifest import sealed

    (b / "golden.npz").write_bytes((b / "golden.npz").read_bytes() + b"\0")
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["golden.npz"] = {
        "sha256": sha256_file(b / "golden.npz"),
        "bytes": (b / "golden.npz").stat().st_size,
    }
    (b / "manifest.json").write_text(json.dumps(sealed(m)))
    with pytest.raises(BundleError, match=r"changed: .*golden\.npz"):
        Scorer.from_bundle(b, backend="ort-cpu", public_key=pub)
