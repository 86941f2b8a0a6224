"""Patch-adversarial first-stage loss: a PatchGAN discriminator (Isola et al. 2017) with hinge loss and VQGAN's
adaptive weight (Esser et al. 2021), switched on after `start` steps, as the paper's autoencoders train."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PREFIX = "loss.discriminator."
OPT_KEY = "loss.discriminator_optimizer"


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convolutions, n_layers of them with stride 2, then one with stride 1 and a 1-channel logit map;
    batch norm after every convolution but the first and the last. `main.N` is the key path of the first-stage
    checkpoints' `loss.discriminator`."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def layers_for(size: int) -> int:
    """How many PatchGAN layers an image of this size takes: 3 (taming's) from 32 px, fewer below."""
    return max(1, min(3, size.bit_length() - 3))


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator's logit maps (Lim & Ye 2017), averaged over real and fake."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance: |grad of the reconstruction loss| / |grad of the generator loss| at the decoder's last layer,
    clamped to [0, 1e4] and detached."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class Adversary:
    """The discriminator, its Adam (betas 0.5, 0.9) and when it joins: the generator term weight x adaptive weight x
    -D(reconstruction), and one discriminator step per autoencoder step, both from step `start` on."""

    def __init__(self, weight: float, start: int = 0, lr: float = 1e-4, ndf: int = 64, n_layers: int = 3,
                 in_channels: int = 3):
        self.weight, self.start = weight, start
        self.disc = NLayerDiscriminator(in_channels, ndf, n_layers)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.9))
        self.last: dict[str, float] = {}

    def active(self, step: int) -> bool:
        return self.weight > 0 and step >= self.start

    def generator_term(self, rec: torch.Tensor, rec_loss: torch.Tensor, last_layer: torch.Tensor,
                       step: int) -> torch.Tensor:
        """What the autoencoder's loss gains: weight x adaptive weight x -mean D(rec); zero before `start`."""
        if not self.active(step):
            return rec.new_zeros(())
        self.disc.requires_grad_(False)
        g_loss = -self.disc(rec).mean()
        self.disc.requires_grad_(True)
        lam = adaptive_weight(rec_loss, g_loss, last_layer)
        self.last.update(g_loss=g_loss.item(), adaptive=lam.item())
        return self.weight * lam * g_loss

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, step: int) -> float | None:
        """One hinge-loss step on real images against detached reconstructions; None before `start`."""
        if not self.active(step):
            return None
        loss = hinge_d_loss(self.disc(real), self.disc(fake.detach()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.last["d_loss"] = loss.item()
        return self.last["d_loss"]

    def state_dict(self) -> dict:
        """Discriminator tensors under `loss.discriminator.` and its optimizer, for a run's resumable state."""
        state = {PREFIX + k: v for k, v in self.disc.state_dict().items()}
        state[OPT_KEY] = self.opt.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict({k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)})
        if OPT_KEY in state:
            self.opt.load_state_dict(state[OPT_KEY])


def split_state(state: dict) -> tuple[dict, dict]:
    """A run's saved module state as (first-stage tensors, the adversary's entries)."""
    adv = {k: v for k, v in state.items() if k.startswith("loss.")}
    return {k: v for k, v in state.items() if not k.startswith("loss.")}, adv
