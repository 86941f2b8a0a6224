"""LDM first-stage autoencoders: KL-regularized (Rombach et al. 2022) and VQ (Esser et al. 2021, VQGAN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from engine.config import AutoencoderConfig
from engine.models.attention import Normalize, like_weights, memory_format, normed_conv, residual, silu
from engine.models.subpixel import upsample_conv

__all__ = ["Normalize", "ResnetBlock", "AttnBlock", "Downsample", "Upsample", "Encoder", "Decoder",
           "DiagonalGaussianDistribution", "VectorQuantizer", "AutoencoderKL", "VQModel", "make_first_stage",
           "make_attn"]


class ResnetBlock(nn.Module):
    """Pre-activation residual block: GroupNorm, SiLU, 3x3 conv, twice; 1x1 (nin) or 3x3 shortcut on width change."""

    def __init__(self, in_channels: int, out_channels: int | None = None, conv_shortcut: bool = False):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == self.out_channels:
            return x
        return self.conv_shortcut(x) if hasattr(self, "conv_shortcut") else self.nin_shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = normed_conv(self.norm1, self.conv1, x)
        h = normed_conv(self.norm2, self.conv2, h)
        return residual(h, self.shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with 1x1-conv q/k/v/proj_out."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, 1)
        self.k = nn.Conv2d(in_channels, in_channels, 1)
        self.v = nn.Conv2d(in_channels, in_channels, 1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        n = self.norm(x)
        q, k, v = (rearrange(conv(n), "b c h w -> b 1 (h w) c") for conv in (self.q, self.k, self.v))
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "b 1 (h w) c -> b c h w", h=h, w=w)
        out = out.contiguous(memory_format=memory_format(x))
        return residual(self.proj_out(out), x)


def make_attn(in_channels: int, attn_type: str = "vanilla") -> nn.Module:
    """AttnBlock, or a parameter-free identity for attn_type 'none'."""
    if attn_type == "vanilla":
        return AttnBlock(in_channels)
    if attn_type == "none":
        return nn.Identity()
    raise ValueError(f"unknown attn_type {attn_type!r}")


class Downsample(nn.Module):
    """2x downsampling: asymmetric (0,1,0,1) zero pad then stride-2 3x3 conv, or average pooling."""

    def __init__(self, in_channels: int, with_conv: bool = True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_conv:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest 2x upsampling followed by a 3x3 conv."""

    def __init__(self, in_channels: int, with_conv: bool = True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return upsample_conv(x, self.conv)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _stage(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    stage = nn.Module()
    stage.block = nn.ModuleList(blocks)
    stage.attn = nn.ModuleList(attns)
    return stage


def _mid(ch: int, attn_type: str) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(ch, ch)
    mid.attn_1 = make_attn(ch, attn_type)
    mid.block_2 = ResnetBlock(ch, ch)
    return mid


class Encoder(nn.Module):
    """Convolutional encoder image -> latent moments (down.N.block/attn/downsample, mid, norm_out, conv_out)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(cfg.ch_mult), cfg.num_res_blocks
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1, *cfg.ch_mult)
        res, self.down = cfg.resolution, nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            block_in, block_out = cfg.ch * in_mult[level], cfg.ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(make_attn(block_in, cfg.attn_type))
            stage = _stage(blocks, attns)
            if level != self.num_resolutions - 1:
                stage.downsample = Downsample(block_in)
                res //= 2
            self.down.append(stage)
        self.mid = _mid(block_in, cfg.attn_type)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(like_weights(x, self.conv_in))
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != self.num_resolutions - 1:
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Convolutional decoder latent -> image; up[i] is resolution level i, so it runs from up[-1] down to up[0]."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(cfg.ch_mult), cfg.num_res_blocks
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, cfg.attn_type)
        stages = []
        for level in reversed(range(self.num_resolutions)):
            block_out = cfg.ch * cfg.ch_mult[level]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(make_attn(block_in, cfg.attn_type))
            stage = _stage(blocks, attns)
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward_stage(self, level: int, h: torch.Tensor) -> torch.Tensor:
        """Run up[level]: its resnet/attention blocks, then its upsampler when it has one."""
        stage = self.up[level]
        for i, block in enumerate(stage.block):
            h = block(h)
            if len(stage.attn):
                h = stage.attn[i](h)
        return stage.upsample(h) if level != 0 else h

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(like_weights(z, self.conv_in))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(self.num_resolutions)):
            h = self.forward_stage(level, h)
        return self.conv_out(silu(self.norm_out(h))).contiguous()


class DiagonalGaussianDistribution:
    """Diagonal Gaussian posterior q(z|x) from stacked (mean, logvar) moments, logvar clamped to [-30, 20]."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return self.std * self.std

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise


class AutoencoderKL(nn.Module):
    """KL-regularized autoencoder: encode -> DiagonalGaussianDistribution, decode(z) -> image in [-1, 1]."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)).contiguous())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).mode())


class VectorQuantizer(nn.Module):
    """Nearest-codebook-vector quantization (van den Oord et al. 2017, VQ-VAE)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for every pixel of z (b, c, h, w) -> (b, h, w)."""
        flat = rearrange(z, "b c h w -> (b h w) c")
        codes = self.embedding.weight.to(flat.dtype)
        dist = (codes * codes).sum(1)[None] - 2 * flat @ codes.t()
        b, _, h, w = z.shape
        return rearrange(dist.argmin(dim=1), "(b h w) -> b h w", b=b, h=h, w=w)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for indices (b, h, w) -> (b, c, h, w)."""
        return rearrange(self.embedding(idx), "b h w c -> b c h w")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.lookup(self.indices(z)).to(z.dtype)


class VQModel(nn.Module):
    """VQ autoencoder as LDM's VQModelInterface: encode returns pre-quantization features, decode quantizes them."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.n_embed <= 0:
            raise ValueError("a VQ first stage needs n_embed > 0")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x)).contiguous()

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def make_first_stage(cfg: AutoencoderConfig) -> AutoencoderKL | VQModel:
    """The first-stage model a config describes."""
    if cfg.kind == "kl":
        return AutoencoderKL(cfg)
    if cfg.kind == "vq":
        return VQModel(cfg)
    raise ValueError(f"unknown first stage kind {cfg.kind!r}")
