"""The one preprocessing implementation (numpy + Pillow), shared by training, evaluation, export
checks and the torch-free runtime.

Input contract (docs: method.md): grey image, resized to 64x64 with bilinear interpolation (aspect
ratio not kept), scaled to [0, 1], then normalised to [-1, 1] via (x - 0.5) / 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGE_SIZE = 64
"""Side of the square network input, pixels."""

# ITU-R BT.601 luma weights, as Pillow's convert("L") uses them.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class PreprocessError(ValueError):
    """An array cannot be turned into a network input (wrong shape, dtype or value range)."""


def to_unit_grey(img: np.ndarray) -> np.ndarray:
    """Convert an image array to grey float32 in [0, 1].

    Args:
        img: HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA, alpha dropped). uint8 is divided by 255,
            uint16 by 65535; float arrays must already lie in [0, 1].

    Returns:
        float32 array, shape HxW, values in [0, 1] (the input itself when it already is one).
    """
    a = np.asarray(img)
    if a.dtype.kind not in "buif":  # str, bytes, object, datetime, structured, complex, ...
        raise PreprocessError(f"dtype {a.dtype} is not an image dtype (uint8, uint16 or float)")
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3]
        if a.dtype == np.uint8:
            scale = 255.0
        elif a.dtype == np.uint16:
            scale = 65535.0
        else:
            scale = 1.0
        a = (a.astype(np.float32) @ _LUMA) / np.float32(scale)
    elif a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise PreprocessError(f"expected an HxW or HxWx3 image, got shape {a.shape}")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise PreprocessError(f"image too small: {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / np.float32(65535.0)
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        raise PreprocessError(f"integer dtype {a.dtype} is ambiguous; pass uint8, uint16 or float")
    a = a.astype(np.float32, copy=False)
    lo, hi = float(a.min()), float(a.max())  # NaN anywhere makes both NaN; inf shows in one
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise PreprocessError("image contains NaN or infinite values")
    if lo < -1e-6 or hi > 1.0 + 1e-6:
        raise PreprocessError(f"float image must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    if lo >= 0.0 and hi <= 1.0:
        return a  # already in range: no copy (the caller's array is never written to)
    return np.clip(a, 0.0, 1.0)


def check_input(x: np.ndarray) -> None:
    """Refuse a network input that cannot come from a chest radiograph.

    Args:
        x: float32 [1, size, size] (or [size, size]) in [-1, 1], from :func:`preprocess`.

    Raises:
        PreprocessError: every pixel has the same value (a blank frame, or a DICOM header whose
            rescale/window maps all pixels to one grey): scoring it would give a number that
            means nothing.
    """
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise PreprocessError("network input contains NaN or infinite values")
    if hi == lo:
        raise PreprocessError(
            f"image is constant (every pixel {lo * 0.5 + 0.5:.4g} on a 0-1 scale): not a radiograph"
        )


def resize(img01: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Bilinear resize (Pillow's antialiased BILINEAR on a float image), aspect ratio not kept.

    Args:
        img01: float32 HxW in [0, 1].
        size: output side in pixels.

    Returns:
        float32 array, shape (size, size), values in [0, 1].
    """
    if img01.shape == (size, size):
        return img01.astype(np.float32, copy=False)
    im = Image.fromarray(np.ascontiguousarray(img01, dtype=np.float32), mode="F")
    out = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def preprocess(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Turn one image array into a network input.

    Args:
        img: any array :func:`to_unit_grey` accepts.

    Returns:
        float32 array, shape (1, size, size), values in [-1, 1].
    """
    g = resize(to_unit_grey(img), size)
    return ((g - np.float32(0.5)) / np.float32(0.5))[None, :, :]


def preprocess_batch(images: Sequence[np.ndarray], size: int = IMAGE_SIZE) -> np.ndarray:
    """Preprocess several images into one batch, float32 [N, 1, size, size] in [-1, 1]."""
    if len(images) == 0:
        return np.zeros((0, 1, size, size), dtype=np.float32)
    return np.stack([preprocess(im, size) for im in images]).astype(np.float32, copy=False)


def to_display(x: np.ndarray) -> np.ndarray:
    """Inverse of the normalisation: [-1, 1] network input -> float32 [0, 1] (same shape)."""
    return np.clip(np.asarray(x, dtype=np.float32) * 0.5 + 0.5, 0.0, 1.0)
