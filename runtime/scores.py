"""DDAD anomaly scores, the one implementation (numpy), used by evaluation, export checks and the
runtime.

All maps are float32 [N, 1, H, W]; image scores are float32 [N] (mean of the map over pixels).

Definitions (paper Sec. 2.2-2.3, method.md):
  rec   = (x - mu_B)^2
  intra = std_B  (population std across module B's K members, ddof=0, eq. 3)
  inter = |mu_A - mu_B|
AE-U refinement (eq. 5), with var_B = mean over B's members of exp(logvar):
  rec / var_B, intra / sqrt(var_B), inter / sqrt(var_B).
ASR (method.md, last section; bundles and runs that have it): the refinement network's anomaly
probability map, read from the statistics under ``asr`` (the graph computes it from the
[inter, intra] maps, :func:`asr_input`); its image score is, like every other, the map's mean.
Arithmetic is done in float32 whatever the input precision (FP16 maps are upcast first).
"""

from __future__ import annotations

import numpy as np

SCORE_NAMES: tuple[str, ...] = ("rec", "intra", "inter")
"""The scores every bundle gives; a bundle with ASR adds ``ASR_SCORE``."""
ASR_SCORE = "asr"
ASR_INPUTS: tuple[str, ...] = ("inter", "intra")
"""The maps the ASR network reads, in channel order."""
STD_DEFINITION = "population (ddof=0) standard deviation across the K members of a module"


def ensemble_stats(recons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std across members.

    Args:
        recons: float array [K, N, 1, H, W], the K members' reconstructions.

    Returns:
        (mean, std), each float32 [N, 1, H, W].
    """
    r = np.asarray(recons, dtype=np.float32)
    mean = r.mean(axis=0)
    std = np.sqrt(np.mean((r - mean) ** 2, axis=0))
    return mean.astype(np.float32), std.astype(np.float32)


def ensemble_variance(logvars: np.ndarray) -> np.ndarray:
    """AE-U sigma^2: mean over members of exp(logvar). logvars [K, N, 1, H, W] -> [N, 1, H, W]."""
    return np.exp(np.asarray(logvars, dtype=np.float32)).mean(axis=0).astype(np.float32)


def member_stats(recons: np.ndarray, logvars: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One module's statistics from its members' outputs.

    Args:
        recons: [K, N, 1, H, W] reconstructions; logvars: AE-U only, [K, N, 1, H, W].

    Returns:
        {"mean", "std"} float32 [N, 1, H, W], plus "var" (:func:`ensemble_variance`) with logvars.
    """
    mean, std = ensemble_stats(recons)
    stats = {"mean": mean, "std": std}
    if logvars is not None:
        stats["var"] = ensemble_variance(logvars)
    return stats


def dual_from_modules(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dual statistics from module A's and B's: {mean_a, std_a, mean_b, std_b[, var_b]}.

    Args:
        a, b: {"mean", "std"[, "var"]} of module A and B (only B's "var" is used).
    """
    out = {"mean_a": a["mean"], "std_a": a["std"], "mean_b": b["mean"], "std_b": b["std"]}
    if "var" in b:
        out["var_b"] = b["var"]
    return out


def score_maps(
    x: np.ndarray,
    mean_a: np.ndarray,
    mean_b: np.ndarray,
    std_b: np.ndarray,
    var_b: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Pixel-level anomaly maps.

    Args:
        x: network input, float32 [N, 1, H, W] in [-1, 1].
        mean_a: module A's mean reconstruction, [N, 1, H, W].
        mean_b: module B's mean reconstruction, [N, 1, H, W].
        std_b: module B's population std across members, [N, 1, H, W].
        var_b: AE-U only: module B's mean predicted variance, [N, 1, H, W] (> 0).

    Returns:
        {"rec", "intra", "inter"} -> float32 [N, 1, H, W], all >= 0.
    """
    f = np.float32
    x = np.asarray(x, dtype=f)
    mean_a = np.asarray(mean_a, dtype=f)
    mean_b = np.asarray(mean_b, dtype=f)
    std_b = np.asarray(std_b, dtype=f)
    rec = (x - mean_b) ** 2
    intra = std_b.copy()
    inter = np.abs(mean_a - mean_b)
    if var_b is not None:
        var = np.asarray(var_b, dtype=f)
        sigma = np.sqrt(var)
        rec = rec / var
        intra = intra / sigma
        inter = inter / sigma
    return {"rec": rec, "intra": intra, "inter": inter}


def image_scores(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Image-level scores: the mean of each map over its pixels. [N, 1, H, W] -> float32 [N]."""
    return {
        k: v.reshape(v.shape[0], -1).mean(axis=1, dtype=np.float64).astype(np.float32)
        for k, v in maps.items()
    }


def score_names(has_asr: bool) -> tuple[str, ...]:
    """The image scores of a bundle or run: SCORE_NAMES, plus ASR_SCORE when it has ASR."""
    return (*SCORE_NAMES, ASR_SCORE) if has_asr else SCORE_NAMES


def asr_input(maps: dict[str, np.ndarray], scale: list[float]) -> np.ndarray:
    """The ASR network's input: the ASR_INPUTS maps, each [N, 1, H, W], divided by its fixed
    scale (measured on D at training) and stacked as channels -> float32 [N, 2, H, W]."""
    chans = [
        np.asarray(maps[n], np.float32) / np.float32(s)
        for n, s in zip(ASR_INPUTS, scale, strict=True)
    ]
    return np.concatenate(chans, axis=1).astype(np.float32, copy=False)


def maps_from_stats(x: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`score_maps` from x [N, 1, H, W] and dual statistics (a dual graph's outputs:
    mean_a, mean_b, std_b[, var_b]; other keys ignored), plus the ``asr`` probability map
    [N, 1, H, W] when the statistics carry one."""
    maps = score_maps(x, stats["mean_a"], stats["mean_b"], stats["std_b"], stats.get("var_b"))
    if ASR_SCORE in stats:
        maps[ASR_SCORE] = np.asarray(stats[ASR_SCORE], dtype=np.float32)
    return maps


def scores_from_stats(x: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Image scores {rec, intra, inter[, asr]} float32 [N] from x and dual statistics."""
    return image_scores(maps_from_stats(x, stats))


def relative_score_errors(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray]
) -> dict[str, float]:
    """Per score name in both: max over images of |got - ref| / |ref| (float64; a zero
    reference is replaced by float32's smallest normal number)."""
    out = {}
    for n in [n for n in ref if n in got]:
        r = np.asarray(ref[n], np.float64)
        scale = np.maximum(np.abs(r), np.finfo(np.float32).tiny)
        out[n] = float(np.max(np.abs(np.asarray(got[n], np.float64) - r) / scale))
    return out
