"""DDAD reconstruction networks (AE, MemAE, AE-U) and the fused K-member ensemble.

Shapes follow method.md (input 1x64x64, the authors' reference architecture):
  encoder 4 x [Conv2d(4, s2, p1, no bias) -> BN2d -> ReLU], channels 1->16->32->64->64, 64->4 px;
  bottleneck Linear(1024,2048) -> BN1d -> ReLU -> Linear(2048,16)  (bare 16-d code)
             [MemAE: memory 25 x 16, weights softmax(z M^T), code = weights M]
             Linear(16,2048) -> BN1d -> ReLU -> Linear(2048,1024)  (bare, as in the reference)
  decoder 3 x [ConvTranspose2d(4, s2, p1, no bias) -> BN2d -> ReLU], 64->64->32->16,
          then ConvTranspose2d(16 -> out, 4, s2, p1, no bias), no output activation.
AE-U has out = 2: channel 0 is the reconstruction, channel 1 the raw log-variance.

``ReconNet`` is one member, written plainly. ``FusedEnsemble`` holds K members in stacked
weights (grouped convolutions, batched matmuls, per-member BatchNorm channels), so K members
train in one pass while each keeps its own batch, BatchNorm statistics and (elementwise) Adam
state: mathematically the same as K separate runs. Export builds on the fused module too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("ae", "memae", "aeu")
ENC_CHANNELS = (1, 16, 32, 64, 64)
DEC_CHANNELS = (64, 64, 32, 16)
HIDDEN = 2048
LATENT = 16
MEM_SLOTS = 25
MEM_ENTROPY_WEIGHT = 0.0002
FLAT = 64 * 4 * 4


def out_channels(kind: str) -> int:
    """Output channels of a member: 2 for AE-U (reconstruction, log-variance), else 1."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    return 2 if kind == "aeu" else 1


@dataclass
class Outputs:
    """Network outputs.

    recon: float32 [..., N, 1, 64, 64] reconstruction in network units ([-1, 1] nominal).
    logvar: AE-U only, float32 like recon, raw log-variance.
    mem_weights: MemAE only, float32 [..., N, 25] memory addressing weights.
    """

    recon: torch.Tensor
    logvar: torch.Tensor | None = None
    mem_weights: torch.Tensor | None = None


class ReconNet(nn.Module):
    """One reconstruction network (a single ensemble member). Input float32 [N, 1, 64, 64]."""

    def __init__(self, kind: str = "ae") -> None:
        super().__init__()
        self.kind = kind
        out = out_channels(kind)
        enc: list[nn.Module] = []
        for cin, cout in zip(ENC_CHANNELS[:-1], ENC_CHANNELS[1:], strict=True):
            enc += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        self.encoder = nn.Sequential(*enc)
        self.fc_in = nn.Sequential(
            nn.Linear(FLAT, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.ReLU(True),
            nn.Linear(HIDDEN, LATENT),
        )
        self.memory = nn.Parameter(torch.empty(MEM_SLOTS, LATENT)) if kind == "memae" else None
        if self.memory is not None:
            nn.init.uniform_(self.memory, -1.0 / LATENT**0.5, 1.0 / LATENT**0.5)
        self.fc_out = nn.Sequential(
            nn.Linear(LATENT, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.ReLU(True),
            nn.Linear(HIDDEN, FLAT),
        )
        dec: list[nn.Module] = []
        for cin, cout in zip(DEC_CHANNELS[:-1], DEC_CHANNELS[1:], strict=True):
            dec += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        dec.append(nn.ConvTranspose2d(DEC_CHANNELS[-1], out, 4, 2, 1, bias=False))
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> Outputs:
        n = x.shape[0]
        z = self.fc_in(self.encoder(x).reshape(n, FLAT))
        w = None
        if self.memory is not None:
            w = torch.softmax(z @ self.memory.t(), dim=1)
            z = w @ self.memory
        y = self.decoder(self.fc_out(z).reshape(n, 64, 4, 4))
        if self.kind == "aeu":
            return Outputs(recon=y[:, :1], logvar=y[:, 1:])
        return Outputs(recon=y, mem_weights=w)


class StackedLinear(nn.Module):
    """K independent Linear layers: weight [K, in, out], bias [K, out].

    x [K, N, in] -> [K, N, out]."""

    def __init__(self, k: int, fin: int, fout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, fin, fout))
        self.bias = nn.Parameter(torch.empty(k, fout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class StackedBatchNorm1d(nn.Module):
    """K independent BatchNorm1d layers over [K, N, C]; one BN over K*C channels underneath."""

    def __init__(self, k: int, c: int) -> None:
        super().__init__()
        self.k, self.c = k, c
        self.bn = nn.BatchNorm1d(k * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n, c = x.shape
        y = self.bn(x.permute(1, 0, 2).reshape(n, k * c))
        return y.reshape(n, k, c).permute(1, 0, 2)


class _StackedConvBase(nn.Module):
    """K independent (transposed) convolutions, kernel 4, stride 2, padding 1, no bias, weights
    stored in grouped-convolution layout. On CUDA one grouped call runs; on CPU one call per member
    (oneDNN's grouped kernels are slower there for these channel counts; the math is identical).
    x [N, K*cin, H, W] -> [N, K*cout, H', W']."""

    transposed = False

    def __init__(self, k: int, cin: int, cout: int) -> None:
        super().__init__()
        self.k = k
        shape = (k * cin, cout, 4, 4) if self.transposed else (k * cout, cin, 4, 4)
        self.weight = nn.Parameter(torch.empty(shape))

    def _op(self, x: torch.Tensor, w: torch.Tensor, groups: int) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, w, stride=2, padding=1, groups=groups)
        return F.conv2d(x, w, stride=2, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda or self.k == 1:
            return self._op(x, self.weight, self.k)
        xs = x.chunk(self.k, dim=1)
        ws = self.weight.chunk(self.k, dim=0)
        return torch.cat([self._op(xi, wi, 1) for xi, wi in zip(xs, ws, strict=True)], dim=1)


class StackedConv2d(_StackedConvBase):
    """K independent Conv2d(cin, cout, 4, 2, 1, bias=False); weight [K*cout, cin, 4, 4]."""


class StackedConvTranspose2d(_StackedConvBase):
    """K independent ConvTranspose2d(cin, cout, 4, 2, 1, bias=False); weight [K*cin, cout, 4, 4]."""

    transposed = True


def _conv_stack(k: int, conv: type[nn.Module], channels: tuple[int, ...]) -> list[nn.Module]:
    """``conv(k, c_in, c_out)`` + BatchNorm + ReLU for each consecutive pair of ``channels``
    (the encoder's and the hidden decoder layers' repeating unit)."""
    layers: list[nn.Module] = []
    for cin, cout in zip(channels[:-1], channels[1:], strict=True):
        layers += [conv(k, cin, cout), nn.BatchNorm2d(k * cout), nn.ReLU(True)]
    return layers


class FusedEnsemble(nn.Module):
    """K members of one kind in stacked weights.

    forward(x): x float32 [K, N, 1, 64, 64] (member k reconstructs x[k]) -> Outputs with
    recon [K, N, 1, 64, 64] (+ logvar, or mem_weights [K, N, 25]).
    forward_shared(x): x [N, 1, 64, 64] fed to every member -> same outputs.
    """

    def __init__(self, kind: str = "ae", k: int = 3) -> None:
        super().__init__()
        if k < 1:
            raise ValueError("an ensemble needs k >= 1 members")
        self.kind, self.k = kind, k
        self.out = out_channels(kind)
        self.encoder = nn.Sequential(*_conv_stack(k, StackedConv2d, ENC_CHANNELS))
        self.fc1 = StackedLinear(k, FLAT, HIDDEN)
        self.bn1 = StackedBatchNorm1d(k, HIDDEN)
        self.fc2 = StackedLinear(k, HIDDEN, LATENT)
        self.memory = nn.Parameter(torch.empty(k, MEM_SLOTS, LATENT)) if kind == "memae" else None
        self.fc3 = StackedLinear(k, LATENT, HIDDEN)
        self.bn3 = StackedBatchNorm1d(k, HIDDEN)
        self.fc4 = StackedLinear(k, HIDDEN, FLAT)
        dec = _conv_stack(k, StackedConvTranspose2d, DEC_CHANNELS)
        dec.append(StackedConvTranspose2d(k, DEC_CHANNELS[-1], self.out))
        self.decoder = nn.Sequential(*dec)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_members(cls, members: list[ReconNet]) -> FusedEnsemble:
        """Stack K ``ReconNet`` members (same kind) into one fused module, weights and BN stats."""
        kind = members[0].kind
        if any(m.kind != kind for m in members):
            raise ValueError("all members must be of one kind")
        fused = cls(kind, len(members))
        fused.load_member_states([m.state_dict() for m in members])
        return fused

    @classmethod
    def seeded(cls, kind: str, k: int, seed: int) -> FusedEnsemble:
        """K members initialised with PyTorch's default init under seeds seed*1000 + i."""
        members = []
        for i in range(k):
            torch.manual_seed(seed * 1000 + i)
            members.append(ReconNet(kind))
        return cls.from_members(members)

    def _pairs(self) -> list[tuple[str, str, str]]:
        """(fused name, member name, how) for every tensor in the state dict."""

        def bn(fused: str, member: str) -> list[tuple[str, str, str]]:
            stats = ("weight", "bias", "running_mean", "running_var")
            out = [(f"{fused}.{s}", f"{member}.{s}", "cat") for s in stats]
            return [
                *out,
                (f"{fused}.num_batches_tracked", f"{member}.num_batches_tracked", "first"),
            ]

        def conv_bn(seq: str, i: int) -> list[tuple[str, str, str]]:
            """Conv i of nn.Sequential ``seq`` and its BatchNorm at i + 1 (same names)."""
            return [
                (f"{seq}.{i}.weight", f"{seq}.{i}.weight", "cat"),
                *bn(f"{seq}.{i + 1}", f"{seq}.{i + 1}"),
            ]

        pairs: list[tuple[str, str, str]] = []
        for i in range(0, 12, 3):
            pairs += conv_bn("encoder", i)
        for fused, member in (
            ("fc1", "fc_in.0"),
            ("fc2", "fc_in.3"),
            ("fc3", "fc_out.0"),
            ("fc4", "fc_out.3"),
        ):
            pairs.append((f"{fused}.weight", f"{member}.weight", "stackT"))
            pairs.append((f"{fused}.bias", f"{member}.bias", "stack"))
        for fused, member in (("bn1.bn", "fc_in.1"), ("bn3.bn", "fc_out.1")):
            pairs += bn(fused, member)
        if self.memory is not None:
            pairs.append(("memory", "memory", "stack"))
        for i in range(0, 9, 3):
            pairs += conv_bn("decoder", i)
        pairs.append(("decoder.9.weight", "decoder.9.weight", "cat"))
        return pairs

    def load_member_states(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Load K member state dicts (``ReconNet.state_dict()``) into the stacked weights."""
        if len(states) != self.k:
            raise ValueError(f"expected {self.k} member states, got {len(states)}")
        sd = {}
        for fname, mname, how in self._pairs():
            ts = [s[mname] for s in states]
            if how == "cat":
                sd[fname] = torch.cat(ts, 0)
            elif how == "stack":
                sd[fname] = torch.stack(ts, 0)
            elif how == "stackT":
                sd[fname] = torch.stack([t.t() for t in ts], 0)
            else:
                sd[fname] = ts[0].clone()
        self.load_state_dict(sd)

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's weights as a ``ReconNet`` state dict."""
        sd = self.state_dict()
        out = {}
        for fname, mname, how in self._pairs():
            t = sd[fname]
            if how == "cat":
                n = t.shape[0] // self.k
                out[mname] = t[i * n : (i + 1) * n].clone()
            elif how == "stack":
                out[mname] = t[i].clone()
            elif how == "stackT":
                out[mname] = t[i].t().contiguous()
            else:
                out[mname] = t.clone()
        return out

    def member(self, i: int) -> ReconNet:
        """Member i as a stand-alone ``ReconNet`` (a copy)."""
        net = ReconNet(self.kind)
        net.load_state_dict(self.member_state(i))
        net.to(next(self.parameters()).dtype)
        net.train(self.training)
        return net

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Outputs:
        k, n = x.shape[0], x.shape[1]
        if k != self.k:
            raise ValueError(f"expected input [{self.k}, N, 1, H, W], got {tuple(x.shape)}")
        h = self.encoder(x.permute(1, 0, 2, 3, 4).reshape(n, k, *x.shape[3:]))  # [N, K*64, 4, 4]
        h = h.reshape(n, k, FLAT).permute(1, 0, 2)  # [K, N, 1024]
        z = self.fc2(F.relu(self.bn1(self.fc1(h))))  # [K, N, 16]
        w = None
        if self.memory is not None:
            w = torch.softmax(torch.bmm(z, self.memory.transpose(1, 2)), dim=2)
            z = torch.bmm(w, self.memory)
        h = self.fc4(F.relu(self.bn3(self.fc3(z))))  # [K, N, 1024]
        h = h.permute(1, 0, 2).reshape(n, k * 64, 4, 4)
        y = self.decoder(h)  # [N, K*out, 64, 64]
        y = y.reshape(n, k, self.out, *y.shape[2:]).permute(1, 0, 2, 3, 4)
        if self.kind == "aeu":
            return Outputs(recon=y[:, :, :1], logvar=y[:, :, 1:])
        return Outputs(recon=y, mem_weights=w)

    def forward_shared(self, x: torch.Tensor) -> Outputs:
        """Every member reconstructs the same batch x [N, 1, 64, 64]."""
        return self.forward(x.unsqueeze(0).expand(self.k, *x.shape))


def member_losses(out: Outputs, x: torch.Tensor) -> torch.Tensor:
    """Per-member training loss, float32 [K], for fused outputs and targets x [K, N, 1, 64, 64].

    AE: MSE (eq. 1). MemAE: MSE + 0.0002 * mean entropy of the addressing weights.
    AE-U (eq. 4): mean(exp(-logvar) * (x - x_hat)^2) + mean(logvar).
    Summing the K losses gives each member exactly the gradient of its own separate run.
    """
    err = (x - out.recon) ** 2
    dims = tuple(range(1, err.dim()))
    if out.logvar is not None:
        return (torch.exp(-out.logvar) * err).mean(dim=dims) + out.logvar.mean(dim=dims)
    loss = err.mean(dim=dims)
    if out.mem_weights is not None:
        w = out.mem_weights
        entropy = (-w * torch.log(w + 1e-12)).sum(dim=-1).mean(dim=-1)
        loss = loss + MEM_ENTROPY_WEIGHT * entropy
    return loss


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
