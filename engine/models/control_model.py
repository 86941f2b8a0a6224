"""ControlNet (Zhang, Rao & Agrawala 2023): a trainable copy of the UNet's encoder whose zero-initialised 1x1 convs
give one residual per skip connection plus one for the middle block. Parameter paths are those of the original
checkpoints' `control_model.` (cldm.ControlNet)."""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from engine.config import UNetConfig
from engine.models.diffusion_model import TimestepEmbedSequential, UNetEncoder
from engine.models.attention import like_weights

HINT_WIDTHS = (16, 32, 96, 256)
HINT_FACTOR = 8


def unpack_hint(packed: torch.Tensor, channels: int) -> torch.Tensor:
    """A hint image stored at the latent's size (space-to-depth, 8x8 pixels per cell) back at pixel size."""
    return rearrange(packed, "b (c p q) h w -> b c (h p) (w q)", c=channels, p=HINT_FACTOR, q=HINT_FACTOR)


def pack_hint(image: torch.Tensor) -> torch.Tensor:
    """A (B, C, 8h, 8w) hint image as (B, 64 C, h, w), so that every wrapper that crops, pads or tiles the latent's
    conditioning (tiles, seamless, dilated sampling) moves the hint with it."""
    return rearrange(image, "b c (h p) (w q) -> b (c p q) h w", p=HINT_FACTOR, q=HINT_FACTOR)


def _hint_block(hint_channels: int, model_channels: int) -> TimestepEmbedSequential:
    """input_hint_block: eight 3x3 convs with SiLU between them, three of stride 2 (8x down to the latent)."""
    layers: list[nn.Module] = []
    ch = hint_channels
    for i, width in enumerate(HINT_WIDTHS):
        if i:
            layers += [nn.Conv2d(ch, width, 3, padding=1, stride=2), nn.SiLU()]
        else:
            layers += [nn.Conv2d(ch, width, 3, padding=1), nn.SiLU()]
        if i < len(HINT_WIDTHS) - 1:
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        ch = width
    layers.append(nn.Conv2d(ch, model_channels, 3, padding=1))
    return TimestepEmbedSequential(*layers)


class ControlNet(UNetEncoder):
    """cldm.ControlNet: the UNet encoder of `cfg`, input_hint_block, zero_convs and middle_block_out."""

    def __init__(self, cfg: UNetConfig, hint_channels: int = 3):
        super().__init__(cfg)
        self.hint_channels = hint_channels
        self.input_hint_block = _hint_block(hint_channels, cfg.model_channels)
        self.zero_convs = nn.ModuleList(TimestepEmbedSequential(nn.Conv2d(c, c, 1)) for c in self.skip_channels)
        ch = cfg.model_channels * cfg.channel_mult[-1]
        self.middle_block_out = TimestepEmbedSequential(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                context: torch.Tensor | None = None, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Residuals for UNetModel.forward(control=...): one per input block, then the middle block's.
        hint: (B, hint_channels, 8h, 8w) in [0, 1] for an (h, w) latent."""
        emb = self.embed(x, timesteps, y)
        if context is not None:
            context = context.to(emb.dtype)
        guided = self.input_hint_block(hint.to(emb.dtype), emb, context)
        h = like_weights(x.to(emb.dtype), self.input_blocks[0][0])
        outs = []
        for i, (block, zero) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided
            outs.append(zero(h, emb, context))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return outs
