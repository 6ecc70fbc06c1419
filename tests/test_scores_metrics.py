"""The shared numpy preprocessing, scores and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from ddad_edge.runtime.metrics import average_precision, roc_auc, roc_curve
from ddad_edge.runtime.preprocess import PreprocessError, preprocess, preprocess_batch, to_unit_grey
from ddad_edge.runtime.scores import (
    dual_from_modules,
    ensemble_stats,
    ensemble_variance,
    image_scores,
    maps_from_stats,
    member_stats,
    relative_score_errors,
    score_maps,
)


def test_preprocess_contract() -> None:
    img = np.zeros((200, 100), np.uint8)
    img[:, 50:] = 255
    x = preprocess(img)
    assert x.shape == (1, 64, 64) and x.dtype == np.float32
    assert x.min() == pytest.approx(-1.0) and x.max() == pytest.approx(1.0)
    assert x[0, :, :30].max() == pytest.approx(-1.0) and x[0, :, 34:].min() == pytest.approx(1.0)
    # uint16 and float inputs with the same content give the same result
    np.testing.assert_allclose(preprocess(img.astype(np.uint16) * 257), x, atol=1e-6)
    np.testing.assert_allclose(preprocess(img / 255.0), x, atol=1e-6)
    assert preprocess_batch([img, img]).shape == (2, 1, 64, 64)


def test_rgb_is_converted_to_luma() -> None:
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 1] = 255  # pure green
    np.testing.assert_allclose(to_unit_grey(rgb), 0.587, atol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 2)),
        np.full((8, 8), 2.0),
        np.full((8, 8), np.nan),
        np.zeros((8, 8), np.int32),
    ],
)
def test_preprocess_rejects_bad_arrays(bad: np.ndarray) -> None:
    with pytest.raises(PreprocessError):
        preprocess(bad)


def test_scores_follow_the_definitions() -> None:
    rng = np.random.default_rng(0)
    k, n = 3, 4
    recon_a = rng.normal(size=(k, n, 1, 8, 8)).astype(np.float32)
    recon_b = rng.normal(size=(k, n, 1, 8, 8)).astype(np.float32)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    mean_a, _ = ensemble_stats(recon_a)
    mean_b, std_b = ensemble_stats(recon_b)
    np.testing.assert_allclose(std_b, recon_b.std(axis=0, ddof=0), rtol=1e-5)
    maps = score_maps(x, mean_a, mean_b, std_b)
    np.testing.assert_allclose(maps["rec"], (x - recon_b.mean(0)) ** 2, rtol=1e-5)
    np.testing.assert_allclose(maps["inter"], np.abs(recon_a.mean(0) - recon_b.mean(0)), rtol=1e-5)
    np.testing.assert_allclose(maps["intra"], recon_b.std(0), rtol=1e-5)
    logvar = rng.normal(size=(k, n, 1, 8, 8)).astype(np.float32)
    var = ensemble_variance(logvar)
    np.testing.assert_allclose(var, np.exp(logvar).mean(0), rtol=1e-6)
    refined = score_maps(x, mean_a, mean_b, std_b, var)
    np.testing.assert_allclose(refined["rec"], maps["rec"] / var, rtol=1e-5)
    np.testing.assert_allclose(refined["intra"], maps["intra"] / np.sqrt(var), rtol=1e-5)
    np.testing.assert_allclose(refined["inter"], maps["inter"] / np.sqrt(var), rtol=1e-5)
    s = image_scores(maps)
    assert s["inter"].shape == (n,)
    np.testing.assert_allclose(s["inter"], maps["inter"].reshape(n, -1).mean(1), rtol=1e-6)


def test_fp16_maps_are_scored_in_fp32() -> None:
    x = np.full((1, 1, 4, 4), 0.5, np.float16)
    big = np.full((1, 1, 4, 4), 300.0, np.float16)
    maps = score_maps(x, big, -big, np.ones_like(x))
    assert maps["rec"].dtype == np.float32
    assert np.isfinite(maps["rec"]).all()  # 300.5^2 overflows float16 but not float32


def _auc_bruteforce(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    cmp = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return float(cmp.mean())


def test_member_and_dual_stats_feed_the_maps() -> None:
    rng = np.random.default_rng(1)
    ra, rb = rng.standard_normal((2, 3, 2, 1, 4, 4)).astype(np.float32)
    lv = rng.standard_normal((3, 2, 1, 4, 4)).astype(np.float32)
    a, b = member_stats(ra), member_stats(rb, lv)
    assert set(a) == {"mean", "std"} and set(b) == {"mean", "std", "var"}
    dual = dual_from_modules(a, b)
    assert list(dual) == ["mean_a", "std_a", "mean_b", "std_b", "var_b"]
    np.testing.assert_array_equal(dual["std_b"], ensemble_stats(rb)[1])
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    want = score_maps(x, a["mean"], b["mean"], b["std"], b["var"])
    for k, v in maps_from_stats(x, dual).items():
        np.testing.assert_array_equal(v, want[k])


def test_relative_score_errors() -> None:
    ref = {"rec": np.array([1.0, 2.0]), "intra": np.array([0.0, 4.0]), "inter": np.ones(2)}
    got = {"rec": np.array([1.1, 2.0]), "intra": np.array([0.0, 3.0]), "inter": np.ones(2)}
    err = relative_score_errors(got, ref)
    assert err["rec"] == pytest.approx(0.1) and err["intra"] == pytest.approx(0.25)
    assert err["inter"] == 0.0


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # many ties
    assert roc_auc(y, s) == pytest.approx(_auc_bruteforce(y, s), abs=1e-12)
    assert roc_auc(y, -s) == pytest.approx(1 - roc_auc(y, s), abs=1e-12)
    fpr, tpr = roc_curve(y, s)
    assert fpr[0] == 0 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s), abs=1e-9)


def test_average_precision() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9])
    # thresholds: .9 (P=1,R=1/3) .8 (P=1,R=2/3) .4 (P=2/4,R=2/3) .35 (P=3/5,R=1)
    assert average_precision(y, s) == pytest.approx(1 / 3 + 1 / 3 + 0.6 / 3)
    assert average_precision(y, y.astype(float)) == pytest.approx(1.0)


def test_metrics_refuse_one_class() -> None:
    with pytest.raises(ValueError, match="both"):
        roc_auc(np.zeros(5), np.arange(5.0))
