"""Matplotlib figures for training and evaluation reports (heat-map overlays for scored images
are the runtime's: ``ddad_edge.runtime.heatmaps``, numpy only).

Design rules:

* Never opens a window and never touches pyplot's global state: figures are built as
  ``matplotlib.figure.Figure`` objects bound to the Agg canvas (``FigureCanvasAgg``), so this works
  headless, in threads, and whatever backend the caller has selected.
* matplotlib is imported lazily inside each function, so ``import ddad_edge.plots`` is cheap.
* PNGs are written atomically: saved to a temp file in the destination directory, then moved into
  place with ``os.replace``. Parent directories are created.
* Every figure function takes ``title_note`` (e.g. ``"SYNTHETIC phantom data"`` or
  ``"Kermany et al. CC BY 4.0"``) which is appended to the figure title; the library never prints.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = [
    "IMAGE_KEYS",
    "plot_ar_curve",
    "plot_asr_gain",
    "plot_heatmap_grid",
    "plot_roc_curves",
    "plot_score_histograms",
    "plot_training_curves",
]

IMAGE_KEYS: frozenset[str] = frozenset({"input", "image", "mu_A", "mu_B", "recon"})
"""Keys that :func:`plot_heatmap_grid` shows as grey images in [0, 1] (all others are maps)."""

_DPI = 100


def _title(title: str, note: str) -> str:
    """Append ``note`` to ``title`` when given."""
    return f"{title} \u2014 {note}" if note else title


def _new_figure(width_in: float, height_in: float) -> Figure:
    """A pyplot-free Figure bound to the Agg canvas, sized in inches, constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(fig: Figure, out_png: Path) -> Path:
    """Save ``fig`` as PNG to ``out_png`` atomically."""
    from ddad_edge.runtime.fileio import atomic_write

    return atomic_write(out_png, lambda fh: fig.savefig(fh, format="png", dpi=_DPI))


def plot_training_curves(
    history: Mapping[str, Sequence[float]], out_png: Path, title_note: str = ""
) -> Path:
    """Loss-per-epoch curves, one line per series.

    Args:
        history: series name (e.g. ``'A/member0'``, ``'B/member1'`` or ``'A'``, ``'B'``) -> loss
            per epoch (floats, unitless training loss; element ``i`` is epoch ``i + 1``). Series
            may differ in length; non-finite values are drawn as gaps.
        out_png: destination PNG path.
        title_note: appended to the title.

    Returns:
        ``out_png``. The y axis is logarithmic when every finite loss is > 0.
    """
    if not history:
        raise ValueError("history is empty")
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    finite: list[np.ndarray] = []
    for name, losses in history.items():
        y = np.asarray(losses, dtype=np.float64).reshape(-1)
        if y.size == 0:
            continue
        y = np.where(np.isfinite(y), y, np.nan)
        finite.append(y[np.isfinite(y)])
        epochs = np.arange(1, y.size + 1)
        ax.plot(epochs, y, marker="o" if y.size <= 30 else None, ms=3, lw=1.5, label=name)
    vals = np.concatenate(finite) if finite else np.empty(0)
    if vals.size and np.all(vals > 0):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small", ncol=2 if len(history) > 6 else 1)
    ax.set_title(_title("Training loss", title_note))
    return _save_atomic(fig, out_png)


def plot_ar_curve(
    points: Sequence[tuple[float, float]],
    means: Sequence[tuple[float, float, float]],
    out_png: Path,
    score: str = "inter",
    title_note: str = "",
) -> Path:
    """An image score's test AUC against the anomaly rate of Du (the paper's Fig. 4).

    Args:
        points: one ``(anomaly rate in [0, 1], AUC)`` per run, drawn as dots.
        means: ``(anomaly rate, mean AUC, sample sd)`` per rate (``ddad_edge.ar_curve``), drawn
            as a line with +-1 sd bars (none where the sd is NaN: a single run).
        out_png: destination PNG path.
        score: the score's name, for the axis label.
        title_note: appended to the title.

    Returns:
        ``out_png``.
    """
    if not points or not means:
        raise ValueError("nothing to plot")
    ars, mean, sd = (np.asarray(c, dtype=np.float64) for c in zip(*means, strict=True))
    fig = _new_figure(6.0, 4.2)
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], "o", color="0.55", ms=4, label="run")
    yerr = np.where(np.isfinite(sd), sd, 0.0)
    ax.errorbar(ars, mean, yerr=yerr, marker="s", ms=6, lw=2, capsize=4, label="mean +- sd")
    ax.set_xlabel("anomaly rate of Du (abnormal share)")
    ax.set_ylabel(f"{score} AUC (test)")
    ax.set_xlim(-0.05, 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(_title(f"{score} AUC vs anomaly rate", title_note))
    return _save_atomic(fig, out_png)


def plot_asr_gain(
    gains: Mapping[str, Sequence[tuple[int, float]]],
    out_png: Path,
    target: float = 0.03,
    title_note: str = "",
) -> Path:
    """The ASR score's AUC gain over inter, per seed, for several training recipes.

    Args:
        gains: recipe label -> ``(seed, asr AUC - inter AUC)`` per run; each recipe gets its own
            marker, nudged sideways so that seeds do not overlap, and a dotted line at its mean.
        out_png: destination PNG path.
        target: the gain asked for, drawn dashed.
        title_note: appended to the title.

    Returns:
        ``out_png``.
    """
    if not gains or not any(gains.values()):
        raise ValueError("nothing to plot")
    fig = _new_figure(7.0, 4.2 + 0.25 * len(gains))
    ax = fig.add_subplot()
    markers = "os^Dvp*hX"
    n = len(gains)
    for i, (label, pts) in enumerate(gains.items()):
        seeds = np.array([p[0] for p in pts], dtype=np.float64)
        gain = np.array([p[1] for p in pts], dtype=np.float64)
        dx = (i - (n - 1) / 2) * 0.12
        dots = ax.plot(seeds + dx, gain, markers[i % len(markers)], ms=8, label=label)
        colour = dots[0].get_color()
        lo, hi = seeds.min() - 0.3, seeds.max() + 0.3
        ax.plot([lo, hi], [gain.mean()] * 2, ":", color=colour, lw=1.5)
    ax.axhline(target, ls="--", color="tab:red", lw=1, label=f"target: {target:+.2f} (mean)")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel("seed")
    ax.set_ylabel("asr AUC - inter AUC")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    # below the axes: the recipes' points may lie anywhere inside them
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16))
    note = f"\n{title_note}" if title_note else ""
    ax.set_title(f"ASR refinement gain over inter; dotted: mean over seeds{note}")
    return _save_atomic(fig, out_png)


def plot_roc_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    out_png: Path,
    title_note: str = "",
    points: Sequence[tuple[str, float, float, str]] = (),
) -> Path:
    """ROC curves, one per anomaly score, with the chance diagonal and operating points.

    Args:
        curves: score name (``'rec'``, ``'intra'``, ``'inter'``) -> ``(fpr, tpr, auc)`` where
            ``fpr`` and ``tpr`` are 1-D float arrays of equal length with values in [0, 1]
            (false/true positive rate, abnormal = positive) and ``auc`` is the area (float).
        out_png: destination PNG path.
        title_note: appended to the title.
        points: operating points to mark, ``(score name, fpr, tpr, label)``, drawn in the
            colour of that score's curve (e.g. a calibrated threshold's rates on the test set).

    Returns:
        ``out_png``. Legend entries read e.g. ``'inter (AUC 0.812)'``.
    """
    if not curves:
        raise ValueError("curves is empty")
    fig = _new_figure(5.5, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    colours: dict[str, Any] = {}
    for name, (fpr, tpr, auc) in curves.items():
        fpr = np.asarray(fpr, dtype=np.float64).reshape(-1)
        tpr = np.asarray(tpr, dtype=np.float64).reshape(-1)
        if fpr.shape != tpr.shape:
            raise ValueError(f"{name}: fpr and tpr differ in length ({fpr.size} vs {tpr.size})")
        (line,) = ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {float(auc):.3f})")
        colours[name] = line.get_color()
    for name, fpr_p, tpr_p, label in points:
        ax.plot(
            [fpr_p],
            [tpr_p],
            marker="o",
            ms=8,
            mec="black",
            color=colours.get(name),
            ls="",
            label=label,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(_title("ROC", title_note))
    return _save_atomic(fig, out_png)


def plot_score_histograms(
    scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    out_png: Path,
    title_note: str = "",
) -> Path:
    """Per-score histograms of normal vs abnormal image-level scores (as in DDAD paper Fig. 3).

    Args:
        scores: score name -> 1-D float array [N] of image-level anomaly scores (arbitrary units,
            larger = more anomalous), aligned with ``labels``.
        labels: int array [N], 0 = normal, 1 = abnormal.
        out_png: destination PNG path.
        title_note: appended to the figure title.

    Returns:
        ``out_png``. One subplot per score; both classes share bins and are drawn as densities.
        Non-finite scores are dropped.
    """
    if not scores:
        raise ValueError("scores is empty")
    y = np.asarray(labels).reshape(-1)
    n = len(scores)
    fig = _new_figure(4.2 * n, 3.8)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, s) in zip(axes, scores.items(), strict=True):
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if s.shape != y.shape:
            raise ValueError(f"{name}: {s.size} scores but {y.size} labels")
        ok = np.isfinite(s)
        vals = s[ok]
        if vals.size == 0:
            ax.text(0.5, 0.5, "no finite scores", ha="center", va="center", transform=ax.transAxes)
        else:
            lo, hi = float(vals.min()), float(vals.max())
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            bins = np.linspace(lo, hi, 31)
            for lab, cls, color in ((0, "normal", "tab:blue"), (1, "abnormal", "tab:red")):
                v = s[ok & (y == lab)]
                if v.size:
                    label = f"{cls} (n={v.size})"
                    ax.hist(v, bins=bins, density=True, alpha=0.5, color=color, label=label)
            ax.legend(fontsize="small")
        ax.set_title(name)
        ax.set_xlabel("score")
        ax.set_ylabel("density")
    fig.suptitle(_title("Image-level anomaly scores", title_note))
    return _save_atomic(fig, out_png)


def _column_range(rows: Sequence[Mapping[str, np.ndarray]], key: str) -> tuple[float, float]:
    """(min, max) of the finite values of column ``key`` over all rows; (0, 1) when there are
    none, and a non-empty range when they are all equal."""
    vals = [v[np.isfinite(v)] for r in rows if (v := r.get(key)) is not None]
    vals = [v for v in vals if v.size]
    if vals:
        lo = float(min(v.min() for v in vals))
        hi = float(max(v.max() for v in vals))
    else:
        lo, hi = 0.0, 1.0
    if not hi > lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-12)
    return lo, hi


def plot_heatmap_grid(
    rows: Sequence[Mapping[str, np.ndarray]],
    row_titles: Sequence[str],
    out_png: Path,
    title_note: str = "",
    *,
    image_keys: Collection[str] = IMAGE_KEYS,
    cmap: str = "inferno",
) -> Path:
    """A grid of example images and anomaly maps: one row per sample, one column per key.

    Args:
        rows: one mapping per sample of key -> 2-D float array [H, W], in display order, e.g.
            ``{'input': x01, 'mu_A': ..., 'mu_B': ..., 'intra': ..., 'inter': ...}``. Columns are
            the union of keys in order of first appearance; a key missing from a row leaves an
            empty cell. Arrays in one row may have different sizes.
        row_titles: one label per row, e.g. ``'normal #3 (inter 0.041)'``.
        out_png: destination PNG path.
        title_note: appended to the figure title.
        image_keys: keys shown as grey images with fixed range [0, 1] (default: ``IMAGE_KEYS``).
        cmap: colormap for map columns.

    Returns:
        ``out_png``. Map columns share one vmin/vmax over all rows (finite min/max of that
        column) so rows are comparable, and each map column has its own colorbar.
    """
    if not rows:
        raise ValueError("rows is empty")
    if len(row_titles) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(row_titles)} row titles")
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    data = [{k: np.asarray(v, dtype=np.float64) for k, v in r.items()} for r in rows]
    for i, r in enumerate(data):
        for k, v in r.items():
            if v.ndim != 2:
                raise ValueError(f"row {i} '{k}': expected a 2-D array, got shape {v.shape}")

    limits = {k: (0.0, 1.0) if k in image_keys else _column_range(data, k) for k in keys}
    nr, nc = len(rows), len(keys)
    fig = _new_figure(1.9 * nc + 0.6, 1.9 * nr + 1.4)
    axes = fig.subplots(nr, nc, squeeze=False)
    mappables: dict[str, object] = {}
    for i, r in enumerate(data):
        for j, k in enumerate(keys):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(k)
            if j == 0:
                ax.set_ylabel(row_titles[i], fontsize="small")
            v = r.get(k)
            if v is None:
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            lo, hi = limits[k]
            im = ax.imshow(
                v,
                cmap="gray" if k in image_keys else cmap,
                vmin=lo,
                vmax=hi,
                interpolation="nearest",
            )
            mappables.setdefault(k, im)
    for j, k in enumerate(keys):
        if k not in image_keys and k in mappables:
            fig.colorbar(mappables[k], ax=axes[:, j], location="bottom", shrink=0.9, aspect=15)
    fig.suptitle(_title("Reconstructions and anomaly maps", title_note))
    return _save_atomic(fig, out_png)
