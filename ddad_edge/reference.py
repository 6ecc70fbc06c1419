"""The PyTorch FP32 reference inference: both modules' member statistics for a batch.

Member reconstructions come from torch; the mean/std across members and every score come from the
shared numpy implementation in ``ddad_edge.runtime.scores``.
"""

from __future__ import annotations

import numpy as np
import torch

from ddad_edge.models import FusedEnsemble
from ddad_edge.runtime.scores import dual_from_modules, member_stats


@torch.no_grad()
def module_stats(
    model: FusedEnsemble, x: np.ndarray, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Run one module (eval mode) on x float32 [N, 1, 64, 64] in [-1, 1].

    Returns {"mean", "std"} float32 [N, 1, 64, 64] (population std across members), plus "var"
    (mean of exp(logvar) across members) for AE-U.
    """
    model.eval()
    device = next(model.parameters()).device
    recons, logvars = [], []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device)
        out = model.forward_shared(xb)
        recons.append(out.recon.float().cpu().numpy())
        if out.logvar is not None:
            logvars.append(out.logvar.float().cpu().numpy())
    if not recons:
        recons = [np.zeros((model.k, 0, *x.shape[1:]), np.float32)]
    lv = np.concatenate(logvars, axis=1) if model.kind == "aeu" else None
    return member_stats(np.concatenate(recons, axis=1), lv)


def dual_stats(
    model_a: FusedEnsemble, model_b: FusedEnsemble, x: np.ndarray, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Both modules on x [N, 1, 64, 64]: mean_a, std_a, mean_b, std_b (+ var_b for AE-U)."""
    return dual_from_modules(
        module_stats(model_a, x, batch_size), module_stats(model_b, x, batch_size)
    )
