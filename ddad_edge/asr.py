"""ASR: the self-supervised refinement of DDAD's anomaly maps (method.md, last section; the
authors' journal follow-up DDAD-ASR).

A small fully convolutional network reads the two DDAD maps of an image, [inter, intra]
(``runtime.scores.asr_input``: each divided by a fixed scale measured on D), and gives each
pixel a probability of being anomalous:

  Conv3x3(2 -> 128) -> ReLU -> Conv3x3(128 -> 128) -> ReLU -> Conv3x3(128 -> 2), padding 1,
  softmax over the 2 classes (normal, anomalous); the anomaly probability is class 1.

It trains on known normals alone, with modules A and B frozen: D (the modules' own training
normals, the default) or the split's held-out normals (``split --calibration N``), which
neither module saw, so that the maps it learns from look like those of a new image rather than
a training image's. Each epoch a seeded share of those images gets a synthetic anomaly (a
square patch of another of them blended in, the journal's; or, ``anomaly="opacity"``, a soft
textured brightening: :func:`synthesize`), both modules score the corrupted images, and the
network learns to find the anomaly in their maps under a focal loss
(:func:`focal_loss`). The image score is the mean anomaly probability over the pixels
(``runtime.scores``). Nothing is selected on the test
set: the last of a fixed number of epochs is kept.

The network has a receptive field of 7x7 pixels, so without normalisation layers training on
32x32 crops of the 64x64 maps (each crop holding the whole patch; the default) is the same
computation as on whole maps away from the crop border, at a quarter of the cost. With
``batch_norm`` (the authors' network) the batch statistics depend on what the crops hold: the
authors train on whole maps (``crop=64``).

The checkpoint is ``RUN/asr.pt``, plain data (read with ``torch.load(weights_only=True)``),
written every epoch; ``resume`` continues from the last completed epoch with the same images,
patches and order (every draw is seeded by (seed, epoch)).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddad_edge.checkpoint import CheckpointError, atomic_torch_save, load_module, read_plain
from ddad_edge.reference import dual_stats
from ddad_edge.runtime.metrics import spearman
from ddad_edge.runtime.scores import ASR_INPUTS, asr_input, maps_from_stats

ASR_FILE = "asr.pt"
CHANNELS = 128
FOCAL_GAMMA = 2.0
SCALE_PERCENTILE = 99.0
"""Each input map is divided by this percentile of its pixels over the uncorrupted training
normals."""
ANOMALIES = ("patch", "journal", "opacity")
JOURNAL_CORE = 0.8
"""``anomaly="journal"``: patch centres lie in the middle 80% of each axis, as the authors'
code places them."""
OPACITY_EDGE = 0.15
"""Width of an opacity's soft edge, in units of its radius."""
OPACITY_LABEL = 0.3
"""Pixels whose opacity weight (0..1) reaches this are labelled anomalous."""
AGREEMENT_MIN = 0.5
"""``train-asr`` warns when the asr image score follows inter's ranking of the training normals
less than this (Spearman, :func:`inter_agreement`): a refinement that ranks normals against or
apart from DDAD's own evidence has learned something else (README, fifth ASR attempt)."""
TRAINED_ON = {"normal_train": "D", "calibration": "held-out normals"}
"""The split parts an ASR network can train on, and how messages name them."""
ASR_KEYS = ("format", "epoch", "epochs", "model", "input_scale", "channels")
AsrEpochCallback = Callable[[int, int, float, float], None]


@dataclass
class AsrConfig:
    """ASR training settings (patch sizes in pixels of the 64x64 network input)."""

    epochs: int = 15
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    """Adam's L2 penalty (torch's coupled ``weight_decay``; the journal's code uses 1e-4)."""
    beta1: float = 0.9
    """Adam's beta1 (beta2 is 0.999; the journal's code uses 0.5)."""
    crop: int = 32
    patch_min: int = 6
    patch_max: int = 24
    corrupt_fraction: float = 0.5
    blend_min: float = 0.5
    blend_max: float = 1.0
    seed: int = 0
    anomaly: str = "patch"
    """"patch" (another image's square blended in, cut at an independent place), "journal"
    (the authors' code: cut from the same place of the other image, centred in the middle 80%)
    or "opacity" (ours: a soft, textured brightening, :func:`opacity`)."""
    batch_norm: bool = False
    """Batch normalisation after the first two convolutions, as the authors' network has."""

    def check(self, size: int) -> None:
        """ValueError for settings that cannot work on size x size maps."""
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch size must be >= 1 and lr > 0")
        if self.weight_decay < 0 or not 0 <= self.beta1 < 1:
            raise ValueError("weight decay must be >= 0 and beta1 in [0, 1)")
        if not 1 <= self.patch_min <= self.patch_max <= self.crop <= size:
            raise ValueError(
                f"need 1 <= patch_min <= patch_max <= crop <= {size}; got {self.patch_min}, "
                f"{self.patch_max}, {self.crop}"
            )
        if not 0 < self.corrupt_fraction <= 1 or not 0 <= self.blend_min <= self.blend_max <= 1:
            raise ValueError(
                "corrupt_fraction must lie in (0, 1] and 0 <= blend_min <= blend_max <= 1"
            )
        if self.anomaly not in ANOMALIES:
            raise ValueError(f"anomaly must be one of {', '.join(ANOMALIES)}; got {self.anomaly!r}")


class AsrNet(nn.Module):
    """The refinement network. forward: maps float32 [N, 2, H, W] ([inter, intra], scaled) ->
    logits [N, 2, H, W] (class 0 normal, class 1 anomalous). With ``batch_norm`` a
    BatchNorm2d follows each of the first two convolutions (the authors' network); in eval mode
    it is an affine map, which the export folds into the convolution before it."""

    def __init__(self, channels: int = CHANNELS, batch_norm: bool = False) -> None:
        super().__init__()
        self.batch_norm = batch_norm
        self.conv1 = nn.Conv2d(len(ASR_INPUTS), channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv3 = nn.Conv2d(channels, 2, 3, padding=1)
        self.norm1: nn.Module = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.norm2: nn.Module = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(m)))
        return self.conv3(F.relu(self.norm2(self.conv2(h))))


def focal_loss(
    logits: torch.Tensor, mask: torch.Tensor, gamma: float = FOCAL_GAMMA
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) over pixels: mean of -(1 - p_t)^gamma * log(p_t), where p_t
    is the softmax probability of each pixel's true class.

    Args:
        logits: float [N, 2, H, W]; mask: [N, 1, H, W] with 1 on anomalous pixels, 0 elsewhere.
    """
    logp = F.log_softmax(logits, dim=1)
    logp_t = logp.gather(1, mask.long())
    return (-((1.0 - logp_t.exp()) ** gamma) * logp_t).mean()


def opacity(s: int, rng: np.random.Generator) -> np.ndarray:
    """A soft, textured ellipse in an s x s box: weights float32 [s, s] in [0, 1], as a focal
    consolidation looks (a local rise in density with blurred borders and uneven filling). Axes
    s/4..s/2, any rotation; edge a logistic fall-off ``OPACITY_EDGE`` radii wide; texture a
    4 x 4 grid of U[0, 1] values interpolated bilinearly, scaling the weight by 0.6..1."""
    ay, ax = rng.uniform(s / 4, s / 2, size=2)
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) - (s - 1) / 2
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    w = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / OPACITY_EDGE, -50, 50)))
    grid = torch.from_numpy(rng.uniform(0, 1, (1, 1, 4, 4)).astype(np.float32))
    tex = F.interpolate(grid, size=(s, s), mode="bilinear", align_corners=True)[0, 0].numpy()
    return (w * (0.6 + 0.4 * tex)).astype(np.float32)


def synthesize(
    d: np.ndarray, rng: np.random.Generator, cfg: AsrConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic anomalies on normal images (D, or held-out normals): a share
    ``cfg.corrupt_fraction`` of them gets one, in an s x s box (s = patch_min..patch_max) at a
    random place, of strength a ~ U[blend_min, blend_max]:

    - "patch": the box cut from another of them at an independent random place and blended
      in, x' = (1 - a) x + a donor; the whole box is labelled;
    - "journal" (the authors' code): the same blend, but the box is cut from the same place of
      the other image, and is centred in the middle ``JOURNAL_CORE`` of each axis with a
      half-width of patch_min // 2 .. patch_max // 2, clipped at the border (:func:`journal_box`);
    - "opacity": x' = x + a w (1 - x), brightening towards white (1) by the weights w of
      :func:`opacity`; pixels with w >= ``OPACITY_LABEL`` are labelled.

    Args:
        d: the normal images, float32 [N, 1, H, W] in [-1, 1] (N >= 2).

    Returns:
        (images float32 [N, 1, H, W], mask float32 [N, 1, H, W] (1 on the anomaly), donor index
        int [N]: the patch's source image, -1 where the image was left as it was or for an
        opacity).
    """
    n, _, h, w = d.shape
    if n < 2:
        raise ValueError("synthetic anomalies need at least 2 images in D (one donates the patch)")
    x = np.array(d, dtype=np.float32, copy=True)
    mask = np.zeros_like(x)
    donors = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        if rng.random() >= cfg.corrupt_fraction:
            continue
        j = int(rng.integers(n - 1))
        j += j >= i  # any image but i
        if cfg.anomaly == "journal":
            ys, xs = journal_box(h, w, cfg, rng)
            a = np.float32(rng.uniform(cfg.blend_min, cfg.blend_max))
            x[i, :, ys, xs] = (1 - a) * x[i, :, ys, xs] + a * d[j, :, ys, xs]
            mask[i, :, ys, xs] = 1.0
            donors[i] = j
            continue
        s = int(rng.integers(cfg.patch_min, cfg.patch_max + 1))
        ty, tx, sy, sx = (int(v) for v in rng.integers(0, [h - s + 1, w - s + 1] * 2))
        a = np.float32(rng.uniform(cfg.blend_min, cfg.blend_max))
        box = x[i, :, ty : ty + s, tx : tx + s]
        if cfg.anomaly == "opacity":
            wgt = opacity(s, rng)
            box += a * wgt * (1 - box)
            mask[i, :, ty : ty + s, tx : tx + s] = wgt >= OPACITY_LABEL
            continue
        box[...] = (1 - a) * box + a * d[j, :, sy : sy + s, sx : sx + s]
        mask[i, :, ty : ty + s, tx : tx + s] = 1.0
        donors[i] = j
    return x, mask, donors


def _centre_range(n: int) -> tuple[int, int]:
    """[low, high) of the journal patches' centres on an axis of n pixels: the middle
    ``JOURNAL_CORE``, its float bounds truncated as the authors' code does (6..56 of 64)."""
    off = (1 - JOURNAL_CORE) / 2 * n
    return int(off), max(int(off + JOURNAL_CORE * n), int(off) + 1)


def journal_box(h: int, w: int, cfg: AsrConfig, rng: np.random.Generator) -> tuple[slice, slice]:
    """The authors' patch box on an h x w image: centre (cy, cx) uniform over the middle
    ``JOURNAL_CORE`` of each axis, half-width r uniform in patch_min // 2 .. patch_max // 2,
    rows cy - r .. cy + r - 1 and the same for columns, clipped to the image. Returns the
    (rows, columns) slices."""
    cy, cx = (int(rng.integers(*_centre_range(n))) for n in (h, w))
    r = int(rng.integers(cfg.patch_min // 2, cfg.patch_max // 2 + 1))
    return slice(max(cy - r, 0), min(cy + r, h)), slice(max(cx - r, 0), min(cx + r, w))


def crop_origins(mask: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """Top-left corners int [N, 2] of crop x crop windows: each holds its image's whole patch
    (uniform among such windows), or lies anywhere when the image has none."""
    n, _, h, w = mask.shape
    out = np.zeros((n, 2), dtype=np.int64)
    for i in range(n):
        rows, cols = np.flatnonzero(mask[i, 0].any(1)), np.flatnonzero(mask[i, 0].any(0))
        lo = (
            [0, 0] if rows.size == 0 else [max(0, rows[-1] + 1 - crop), max(0, cols[-1] + 1 - crop)]
        )
        hi = (
            [h - crop, w - crop]
            if rows.size == 0
            else [min(rows[0], h - crop), min(cols[0], w - crop)]
        )
        out[i] = [int(rng.integers(lo[0], hi[0] + 1)), int(rng.integers(lo[1], hi[1] + 1))]
    return out


def input_scale(maps: dict[str, np.ndarray]) -> list[float]:
    """The fixed divisors of the ASR inputs: the SCALE_PERCENTILE-th percentile of each map
    (ASR_INPUTS order) over the given images' pixels (the training normals, uncorrupted)."""
    return [max(float(np.percentile(maps[n], SCALE_PERCENTILE)), 1e-12) for n in ASR_INPUTS]


def _epoch_batches(
    models: tuple[Any, Any], d: np.ndarray, scale: list[float], cfg: AsrConfig, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's training data: scaled [inter, intra] crops float32 [N, 2, c, c] of the
    synthetically corrupted images and their masks [N, 1, c, c], in the epoch's order."""
    rng = np.random.default_rng([cfg.seed, 7, epoch])
    x, mask, _ = synthesize(d, rng, cfg)
    m = asr_input(maps_from_stats(x, dual_stats(models[0], models[1], x)), scale)
    origins = crop_origins(mask, cfg.crop, rng)
    c = cfg.crop
    mc = np.stack([m[i, :, y : y + c, x0 : x0 + c] for i, (y, x0) in enumerate(origins)])
    kc = np.stack([mask[i, :, y : y + c, x0 : x0 + c] for i, (y, x0) in enumerate(origins)])
    order = rng.permutation(len(d))
    return mc[order], kc[order]


def _changed_settings(saved: dict[str, Any], cfg: AsrConfig) -> list[str]:
    """Names of the settings (all but epochs) in which cfg differs from a checkpoint's saved
    config; a setting the checkpoint predates counts as its default."""
    default = asdict(AsrConfig())
    return [k for k, v in asdict(cfg).items() if k != "epochs" and saved.get(k, default[k]) != v]


def _new_state(
    cfg: AsrConfig, scale: list[float], n: int, split_sha256: str | None, trained_on: str
) -> dict:
    torch.manual_seed(cfg.seed)
    net = AsrNet(batch_norm=cfg.batch_norm)
    return {
        "format": "ddad-asr",
        "epoch": 0,
        "epochs": cfg.epochs,
        "model": net.state_dict(),
        "input_scale": scale,
        "inputs": list(ASR_INPUTS),
        "channels": CHANNELS,
        "config": asdict(cfg),
        "history": [],
        "epoch_seconds": [],
        "n_train": n,
        "trained_on": trained_on,
        "split_sha256": split_sha256,
    }


def _resumable_state(run_dir: Path, cfg: AsrConfig, trained_on: str) -> dict[str, Any]:
    """The run's ASR checkpoint, to continue to ``cfg.epochs``; CheckpointError when it was
    trained with other settings or on another part of the split."""
    state = load_asr_checkpoint(run_dir)
    path = Path(run_dir) / ASR_FILE
    changed = _changed_settings(state.get("config", {}), cfg)
    if changed:
        raise CheckpointError(f"{path}: cannot resume with other {', '.join(changed)}")
    if state.get("trained_on", "normal_train") != trained_on:
        raise CheckpointError(f"{path}: was trained on another part of the split")
    state["epochs"] = cfg.epochs
    return state


def train_asr(
    run_dir: Path,
    d: np.ndarray,
    cfg: AsrConfig,
    *,
    split_sha256: str | None = None,
    trained_on: str = "normal_train",
    resume: bool = False,
    on_epoch: AsrEpochCallback | None = None,
) -> dict[str, Any]:
    """Train (or resume) the ASR network of a finished run on known normals ``d``, float32
    [N, 1, 64, 64]: D, or normals neither module saw (``trained_on`` names the split part:
    "normal_train" or "calibration"; recorded).

    Writes run_dir/asr.pt every epoch. Returns the final checkpoint dict (history: mean focal
    loss per epoch; inter_agreement: :func:`inter_agreement` over ``d``, computed at the end).
    on_epoch(epoch, epochs, loss, seconds) after each epoch.

    Raises:
        CheckpointError: asr.pt exists without ``resume``, or cannot be resumed.
    """
    cfg.check(d.shape[-1])
    path = Path(run_dir) / ASR_FILE
    models = (load_module(run_dir, "A"), load_module(run_dir, "B"))
    if path.is_file() and not resume:
        raise CheckpointError(f"{path}: exists; pass --resume to continue it, or remove it")
    state = _resumable_state(run_dir, cfg, trained_on) if path.is_file() else None
    clean = maps_from_stats(d, dual_stats(models[0], models[1], d))  # scales; the final check
    if state is None:
        state = _new_state(cfg, input_scale(clean), len(d), split_sha256, trained_on)
    net = AsrNet(state["channels"], batch_norm=cfg.batch_norm)
    net.load_state_dict(state["model"])
    opt = torch.optim.Adam(
        net.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999), weight_decay=cfg.weight_decay
    )
    if "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.perf_counter()
        m, mask = _epoch_batches(models, d, state["input_scale"], cfg, epoch)
        net.train()
        losses = []
        for i in range(0, len(m), cfg.batch_size):
            loss = focal_loss(
                net(torch.from_numpy(m[i : i + cfg.batch_size])),
                torch.from_numpy(mask[i : i + cfg.batch_size]),
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        mean = float(np.mean(losses))
        if not np.isfinite(mean):
            raise FloatingPointError(f"ASR epoch {epoch + 1}: loss is not finite")
        seconds = time.perf_counter() - t0
        state.update(epoch=epoch + 1, model=net.state_dict(), optimizer=opt.state_dict())
        state["history"].append(mean)
        state["epoch_seconds"].append(seconds)
        atomic_torch_save(state, path)
        if on_epoch is not None:
            on_epoch(epoch + 1, cfg.epochs, mean, seconds)
    state["inter_agreement"] = inter_agreement(net.eval(), state["input_scale"], clean)
    atomic_torch_save(state, path)
    return state


def inter_agreement(net: AsrNet, scale: list[float], maps: dict[str, np.ndarray]) -> float:
    """Spearman rank correlation, over N images, between the asr image score (the mean anomaly
    probability) and the inter image score (the mean of the inter map), from the images' DDAD
    maps ({inter, intra, ...} float32 [N, 1, H, W]). A label-free check that the refinement
    still follows the evidence it refines; NaN when either score is constant."""
    p = asr_probability(net, scale, maps)
    return spearman(p.mean(axis=(1, 2, 3)), maps["inter"].mean(axis=(1, 2, 3)))


def agreement_problem(rho: float | None, normals: str) -> str | None:
    """What is wrong with an ASR network whose :func:`inter_agreement` over ``normals`` (their
    name, e.g. "D") is ``rho``: a sentence when rho is below ``AGREEMENT_MIN`` or NaN, None
    when it is not or was never measured (None: checkpoints older than the check)."""
    if rho is None or rho >= AGREEMENT_MIN:
        return None
    return (
        f"the asr score does not follow inter's ranking of {normals} (Spearman {rho:.3f} < "
        f"{AGREEMENT_MIN}): the network learned something other than DDAD's evidence"
    )


def has_asr(run_dir: Path) -> bool:
    """Whether a run folder holds an ASR checkpoint."""
    return (Path(run_dir) / ASR_FILE).is_file()


def load_asr_checkpoint(run_dir: Path) -> dict[str, Any]:
    """run_dir/asr.pt as a dict, read with the safe loader (CheckpointError when unreadable,
    unsafe or not an ASR checkpoint; FileNotFoundError when absent)."""
    path = Path(run_dir) / ASR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ASR checkpoint (run `ddad-edge train-asr` first)")
    ck = read_plain(path)
    if not isinstance(ck, dict) or any(k not in ck for k in ASR_KEYS) or ck["format"] != "ddad-asr":
        raise CheckpointError(f"{path}: not a ddad-edge ASR checkpoint")
    return ck


def load_asr(run_dir: Path, *, require_complete: bool = True) -> tuple[AsrNet, list[float]]:
    """The trained ASR network (eval mode) and its input scales; None-free: raises
    FileNotFoundError without asr.pt, RuntimeError when its training did not finish."""
    ck = load_asr_checkpoint(run_dir)
    if require_complete and ck["epoch"] < ck["epochs"]:
        raise RuntimeError(
            f"{Path(run_dir) / ASR_FILE}: ASR training stopped at epoch {ck['epoch']} of "
            f"{ck['epochs']}; finish it with `ddad-edge train-asr ... --resume`"
        )
    net = AsrNet(int(ck["channels"]), batch_norm=bool(ck.get("config", {}).get("batch_norm")))
    try:
        net.load_state_dict(ck["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{Path(run_dir) / ASR_FILE}: weights do not fit: {e}") from e
    return net.eval(), [float(s) for s in ck["input_scale"]]


@torch.no_grad()
def asr_probability(
    net: AsrNet, scale: list[float], maps: dict[str, np.ndarray], batch_size: int = 64
) -> np.ndarray:
    """Anomaly probability maps float32 [N, 1, H, W] from DDAD maps ({inter, intra, ...}
    float32 [N, 1, H, W], ``runtime.scores.score_maps``)."""
    m = asr_input(maps, scale)
    out = [
        torch.softmax(net(torch.from_numpy(m[i : i + batch_size])), dim=1)[:, 1:].numpy()
        for i in range(0, len(m), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 1, *m.shape[2:]), np.float32)
