"""Networks: sizes and shapes per method.md, and fused K-member training == K separate runs."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from ddad_edge.models import (
    KINDS,
    FusedEnsemble,
    ReconNet,
    count_parameters,
    member_losses,
)
from ddad_edge.train import TrainConfig, make_optimizer, member_permutation, train_epoch


def test_ae_parameter_count_and_shapes() -> None:
    net = ReconNet("ae")
    # 4.49 M per method.md: conv 16*16+16*32*16+32*64*16+64*64*16, BN, 4 linears with biases.
    expected = (
        (1 * 16 + 16 * 32 + 32 * 64 + 64 * 64) * 16  # encoder convs
        + 2 * (16 + 32 + 64 + 64)  # encoder BN affine
        + (1024 * 2048 + 2048)
        + 2 * 2048
        + (2048 * 16 + 16)
        + (16 * 2048 + 2048)
        + 2 * 2048
        + (2048 * 1024 + 1024)
        + (64 * 64 + 64 * 32 + 32 * 16 + 16 * 1) * 16  # decoder convT
        + 2 * (64 + 32 + 16)  # decoder BN affine
    )
    assert count_parameters(net) == expected
    assert 4.45e6 < expected < 4.53e6
    out = net.eval()(torch.zeros(2, 1, 64, 64))
    assert out.recon.shape == (2, 1, 64, 64)
    assert out.logvar is None and out.mem_weights is None


def test_aeu_and_memae_outputs() -> None:
    out = ReconNet("aeu").eval()(torch.randn(3, 1, 64, 64))
    assert out.recon.shape == (3, 1, 64, 64) and out.logvar.shape == (3, 1, 64, 64)
    mem = ReconNet("memae").eval()
    assert mem.memory.shape == (25, 16)
    o = mem(torch.randn(3, 1, 64, 64))
    assert o.mem_weights.shape == (3, 25)
    torch.testing.assert_close(o.mem_weights.sum(1), torch.ones(3))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model kind"):
        ReconNet("vae")


@pytest.mark.parametrize("kind", KINDS)
def test_fused_forward_equals_members(kind: str) -> None:
    fused = FusedEnsemble.seeded(kind, 3, seed=7).eval()
    x = torch.randn(5, 1, 64, 64)
    out = fused.forward_shared(x)
    assert out.recon.shape == (3, 5, 1, 64, 64)
    for i in range(3):
        member = fused.member(i).eval()
        o = member(x)
        torch.testing.assert_close(o.recon, out.recon[i], atol=1e-5, rtol=1e-5)
        if kind == "aeu":
            torch.testing.assert_close(o.logvar, out.logvar[i], atol=1e-5, rtol=1e-5)
    # members differ (distinct initialisations)
    assert (out.recon[0] - out.recon[1]).abs().max() > 1e-3


def test_member_state_roundtrip() -> None:
    fused = FusedEnsemble.seeded("memae", 2, seed=1)
    again = FusedEnsemble.from_members([fused.member(0), fused.member(1)])
    for (n, a), (_, b) in zip(fused.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1], [n, 1, 64, 64]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=64, mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


@pytest.mark.parametrize("kind", ["ae", "aeu", "memae"])
def test_fused_training_equals_separate_runs(kind: str) -> None:
    """Same seeds, same shuffles, a few Adam steps: the fused module's members match K separate
    plain ReconNet runs (each with its own optimizer) to a tight tolerance.

    Run in float64: Adam normalises each gradient element, so in float32 the last-bit differences
    between a grouped and a single convolution flip the update of near-zero gradients and blur
    the comparison; in float64 any real coupling between members would still show at 1e-4 while
    rounding stays below 1e-9."""
    k, bs, steps = 3, 8, 3
    data = _images(40).double()
    cfg = TrainConfig(kind=kind, k=k, batch_size=bs)
    fused = FusedEnsemble.seeded(kind, k, seed=3).double()
    separate = [fused.member(i).double() for i in range(k)]
    perms = [member_permutation(0, "A", i, 0, len(data)) for i in range(k)]

    opt = make_optimizer(fused, cfg)
    losses = train_epoch(fused, opt, data, perms, bs, max_steps=steps)

    sep_losses = []
    for i, net in enumerate(separate):
        net.train()
        o = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        total = 0.0
        for b in range(steps):
            xb = data[torch.from_numpy(perms[i][b * bs : (b + 1) * bs])]
            loss = member_losses(_as_stack(net(xb)), xb.unsqueeze(0))[0]
            o.zero_grad()
            loss.backward()
            o.step()
            total += float(loss.detach())
        sep_losses.append(total / steps)
    np.testing.assert_allclose(losses, sep_losses, rtol=1e-9, atol=1e-12)
    for i, net in enumerate(separate):
        ref = net.state_dict()
        got = fused.member_state(i)
        for name, t in ref.items():
            if t.dtype.is_floating_point:
                torch.testing.assert_close(got[name], t, atol=1e-9, rtol=1e-9, msg=name)
            else:
                assert torch.equal(got[name], t), name


def test_optimizer_is_pytorchs_fused_adam_with_the_papers_settings() -> None:
    fused = FusedEnsemble.seeded("ae", 2, seed=0)
    opt = make_optimizer(fused, TrainConfig(lr=1e-3, beta1=0.5, beta2=0.99))
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["fused"] is True
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.5, 0.99)
    assert opt.defaults["weight_decay"] == 0


def test_plain_adam_state_resumes_in_the_fused_optimizer() -> None:
    """A checkpoint written while training with plain Adam (runs before the fused kernel) loads
    into ``make_optimizer`` and the next step matches plain Adam's (float64)."""
    cfg = TrainConfig(kind="ae", k=2)
    x = _images(8).double().unsqueeze(0).expand(2, -1, -1, -1, -1)

    def step(model: FusedEnsemble, opt: torch.optim.Optimizer) -> None:
        loss = member_losses(model(x), x).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    plain_model = FusedEnsemble.seeded("ae", 2, seed=5).double()
    plain = torch.optim.Adam(plain_model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    for _ in range(2):
        step(plain_model, plain)
    buf = io.BytesIO()  # through a file's bytes, as a checkpoint (state_dict shares tensors)
    torch.save({"model": plain_model.state_dict(), "optimizer": plain.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed_model = FusedEnsemble("ae", 2).double()
    resumed_model.load_state_dict(ckpt["model"])
    resumed = make_optimizer(resumed_model, cfg)
    resumed.load_state_dict(ckpt["optimizer"])
    step(plain_model, plain)
    step(resumed_model, resumed)
    got = resumed_model.state_dict()
    for name, want in plain_model.state_dict().items():
        torch.testing.assert_close(got[name], want, atol=1e-9, rtol=1e-9, msg=name)


def _as_stack(out):
    """A single member's Outputs as a K=1 stack, so member_losses can score it."""
    from ddad_edge.models import Outputs

    def s(t):
        return None if t is None else t.unsqueeze(0)

    return Outputs(recon=s(out.recon), logvar=s(out.logvar), mem_weights=s(out.mem_weights))


# ----------------------------------------------------------------------------------------------
# The losses against the paper's formulas, written out directly (float64, loops per member)
# ----------------------------------------------------------------------------------------------
def _loss_inputs(seed: int, k: int = 3, n: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (k, n, 1, 64, 64))
    recon = x + rng.normal(0, 0.3, x.shape)
    logvar = rng.normal(0, 1.0, x.shape)
    return x, recon, logvar


def test_aeu_loss_is_eq4() -> None:
    """Paper eq. 4: L = mean over pixels of exp(-s) (x - x_hat)^2 + s, with s = log sigma^2,
    per member; and the plain AE loss is the MSE (eq. 1)."""
    from ddad_edge.models import Outputs

    x, recon, logvar = _loss_inputs(0)
    got = member_losses(
        Outputs(recon=torch.from_numpy(recon), logvar=torch.from_numpy(logvar)), torch.from_numpy(x)
    ).numpy()
    for i in range(len(x)):
        sq = (x[i] - recon[i]) ** 2
        want = (
            sum(math.exp(-s) * e + s for s, e in zip(logvar[i].ravel(), sq.ravel(), strict=True))
            / sq.size
        )
        assert got[i] == pytest.approx(want, rel=1e-12)
    mse = member_losses(Outputs(recon=torch.from_numpy(recon)), torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mse, ((x - recon) ** 2).reshape(len(x), -1).mean(1), rtol=1e-12)


def test_memae_loss_adds_the_addressing_entropy() -> None:
    """MemAE: MSE + 0.0002 x the mean over images of the entropy -sum_j w_j log w_j of the 25
    memory addressing weights (method.md)."""
    from ddad_edge.models import Outputs

    x, recon, _ = _loss_inputs(1)
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2.0, (len(x), x.shape[1], 25))
    w = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    w[0, 0, :3] = [0.5, 0.5, 0.0]  # a zero weight contributes nothing (0 log 0 = 0)
    w[0, 0, 3:] = 0.0
    got = member_losses(
        Outputs(recon=torch.from_numpy(recon), mem_weights=torch.from_numpy(w)),
        torch.from_numpy(x),
    ).numpy()
    for i in range(len(x)):
        entropies = [-sum(p * math.log(p) for p in row if p > 0) for row in w[i]]
        want = ((x[i] - recon[i]) ** 2).mean() + 0.0002 * sum(entropies) / len(entropies)
        assert got[i] == pytest.approx(want, rel=1e-12)
