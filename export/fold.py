"""BatchNorm folding and weight extraction from a trained ``FusedEnsemble`` (eval mode).

The result, :class:`FoldedEnsemble`, holds plain float32 numpy arrays in the fused (stacked)
layouts the ONNX graph uses, with every eval-mode BatchNorm folded into the layer before it.
Folding is done in float64 and rounded to float32 once.

Layouts (K members, ``out`` = 2 for AE-U else 1):

* ``enc_w[i]``: encoder conv i, float32 [K*cout, cin, 4, 4] (grouped-conv layout, group K; the
  first conv has cin = 1 and is run with group 1 since every member reads the same x).
  ``enc_b[i]``: float32 [K*cout] (created by folding; the convs have no bias).
* ``fc_w[j]``: linear j in 1..4, float32 [K, in, out]; ``fc_b[j]``: float32 [K, out].
  fc1 and fc3 have their BatchNorm1d folded in; fc2 and fc4 are bare.
* ``memory``: MemAE only, float32 [K, 25, 16].
* ``dec_w[i]``: decoder transposed conv i, float32 [K*cin, cout, 4, 4] (grouped layout);
  ``dec_b[i]``: float32 [K*cout] for the three BN-followed layers, ``None`` for the last.

Member order is preserved everywhere: member k owns rows/channels ``k*C:(k+1)*C``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FoldedEnsemble:
    """K members' folded weights (see the module docstring for shapes)."""

    kind: str
    k: int
    enc_w: list[np.ndarray]
    enc_b: list[np.ndarray]
    fc_w: list[np.ndarray]
    fc_b: list[np.ndarray]
    memory: np.ndarray | None
    dec_w: list[np.ndarray]
    dec_b: list[np.ndarray | None]

    @property
    def out(self) -> int:
        """Output channels per member: 2 for AE-U (recon, log-variance), else 1."""
        return 2 if self.kind == "aeu" else 1

    def n_bytes_fp32(self) -> int:
        """Size of all weights in bytes at float32."""
        return 4 * sum(a.size for a in self.arrays())

    def arrays(self) -> list[np.ndarray]:
        """Every weight array (no None)."""
        out = [*self.enc_w, *self.enc_b, *self.fc_w, *self.fc_b, *self.dec_w]
        out += [b for b in self.dec_b if b is not None]
        if self.memory is not None:
            out.append(self.memory)
        return out


def _np64(t: object) -> np.ndarray:
    """A torch tensor (or array) as a float64 numpy array, detached."""
    if hasattr(t, "detach"):
        t = t.detach().cpu().double().numpy()  # type: ignore[union-attr]
    return np.asarray(t, dtype=np.float64)


def _bn_scale_shift(bn: object) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as y = x * scale + shift; float64 [C] each."""
    gamma = _np64(bn.weight)  # type: ignore[attr-defined]
    beta = _np64(bn.bias)  # type: ignore[attr-defined]
    mean = _np64(bn.running_mean)  # type: ignore[attr-defined]
    var = _np64(bn.running_var)  # type: ignore[attr-defined]
    scale = gamma / np.sqrt(var + float(bn.eps))  # type: ignore[attr-defined]
    return scale, beta - mean * scale


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def fold_ensemble(model: object) -> FoldedEnsemble:
    """Fold a ``ddad_edge.models.FusedEnsemble`` into plain float32 arrays.

    The model's BatchNorm running statistics are used (eval-mode semantics) whatever its
    train/eval flag; the model is not modified.

    Args:
        model: a FusedEnsemble (any kind, any K).

    Returns:
        FoldedEnsemble: same function as ``model.eval().forward_shared`` up to float32 rounding.
    """
    k = int(model.k)  # type: ignore[attr-defined]
    kind = str(model.kind)  # type: ignore[attr-defined]
    enc = list(model.encoder)  # type: ignore[attr-defined]
    enc_w, enc_b = [], []
    for i in range(0, len(enc), 3):
        conv, bn = enc[i], enc[i + 1]
        w = _np64(conv.weight)  # [K*cout, cin, 4, 4]
        scale, shift = _bn_scale_shift(bn)  # [K*cout]
        enc_w.append(_f32(w * scale[:, None, None, None]))
        enc_b.append(_f32(shift))

    def linear(fc: object, bn: object | None) -> tuple[np.ndarray, np.ndarray]:
        w = _np64(fc.weight)  # type: ignore[attr-defined]  # [K, in, out]
        b = _np64(fc.bias)  # type: ignore[attr-defined]  # [K, out]
        if bn is not None:
            scale, shift = _bn_scale_shift(bn.bn)  # type: ignore[attr-defined]  # [K*out]
            scale = scale.reshape(k, -1)
            shift = shift.reshape(k, -1)
            w = w * scale[:, None, :]
            b = b * scale + shift
        return _f32(w), _f32(b)

    fcs = [
        linear(model.fc1, model.bn1),  # type: ignore[attr-defined]
        linear(model.fc2, None),  # type: ignore[attr-defined]
        linear(model.fc3, model.bn3),  # type: ignore[attr-defined]
        linear(model.fc4, None),  # type: ignore[attr-defined]
    ]
    mem = model.memory  # type: ignore[attr-defined]
    memory = _f32(_np64(mem)) if mem is not None else None

    dec = list(model.decoder)  # type: ignore[attr-defined]
    dec_w: list[np.ndarray] = []
    dec_b: list[np.ndarray | None] = []
    for i in range(0, len(dec) - 1, 3):
        conv, bn = dec[i], dec[i + 1]
        w = _np64(conv.weight)  # [K*cin, cout, 4, 4]
        cin, cout = w.shape[0] // k, w.shape[1]
        scale, shift = _bn_scale_shift(bn)  # [K*cout], member-major
        s = scale.reshape(k, 1, cout)  # member g's input rows g*cin.. scale by g's channels
        w = (w.reshape(k, cin, cout, 4, 4) * s[..., None, None]).reshape(k * cin, cout, 4, 4)
        dec_w.append(_f32(w))
        dec_b.append(_f32(shift))
    dec_w.append(_f32(_np64(dec[-1].weight)))
    dec_b.append(None)
    return FoldedEnsemble(
        kind=kind,
        k=k,
        enc_w=enc_w,
        enc_b=enc_b,
        fc_w=[w for w, _ in fcs],
        fc_b=[b for _, b in fcs],
        memory=memory,
        dec_w=dec_w,
        dec_b=dec_b,
    )


def concat_members(a: FoldedEnsemble, b: FoldedEnsemble) -> FoldedEnsemble:
    """One ensemble of a.k + b.k members: a's members first, then b's (same kind).

    Used for the dual graph: modules A and B become one 2K-member fused network whose outputs
    are split afterwards.
    """
    if a.kind != b.kind:
        raise ValueError(f"cannot join a {a.kind} ensemble with a {b.kind} one")

    def cat(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
        if x is None or y is None:
            return None
        return np.ascontiguousarray(np.concatenate([x, y], axis=0))

    return FoldedEnsemble(
        kind=a.kind,
        k=a.k + b.k,
        enc_w=[cat(x, y) for x, y in zip(a.enc_w, b.enc_w, strict=True)],  # type: ignore[misc]
        enc_b=[cat(x, y) for x, y in zip(a.enc_b, b.enc_b, strict=True)],  # type: ignore[misc]
        fc_w=[cat(x, y) for x, y in zip(a.fc_w, b.fc_w, strict=True)],  # type: ignore[misc]
        fc_b=[cat(x, y) for x, y in zip(a.fc_b, b.fc_b, strict=True)],  # type: ignore[misc]
        memory=cat(a.memory, b.memory),
        dec_w=[cat(x, y) for x, y in zip(a.dec_w, b.dec_w, strict=True)],  # type: ignore[misc]
        dec_b=[cat(x, y) for x, y in zip(a.dec_b, b.dec_b, strict=True)],
    )
