"""The LDM / Stable Diffusion denoising UNet (openaimodel.UNetModel; Dhariwal & Nichol 2021, Rombach et al. 2022)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import UNetConfig
from engine.models.attention import AttentionBlock, SpatialTransformer, like_weights, residual, silu


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding (Vaswani et al. 2017), cosine half first as in ADM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def normalization(channels: int) -> nn.GroupNorm:
    """GroupNorm(32) with the default eps, as openaimodel's normalization()."""
    return nn.GroupNorm(32, channels)


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that feeds the timestep embedding to ResBlocks and the context to SpatialTransformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling with an optional 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling by a strided 3x3 conv or average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block with timestep conditioning (additive, or FiLM scale/shift), optionally resampling."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, use_conv: bool = False,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if use_scale_shift_norm else 1)))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Identity(),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = silu(self.in_layers[0](x))
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        h = self.in_layers[2](h)
        emb_out = self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        norm, conv = self.out_layers[0], self.out_layers[3]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = torch.addcmul(shift, norm(h), 1 + scale)
        else:
            h = norm(h + emb_out if torch.is_grad_enabled() else h.add_(emb_out))
        return residual(conv(silu(h)), self.skip_connection(x))


class UNetEncoder(nn.Module):
    """The encoder half of openaimodel.UNetModel (time and class embeddings, input blocks, middle block), shared by
    the UNet and the ControlNet, which copies it (Zhang et al. 2023), so both keep the original parameter paths."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        if cfg.num_heads == -1 and cfg.num_head_channels == -1:
            raise ValueError("either num_heads or num_head_channels has to be set")
        if cfg.use_spatial_transformer and cfg.context_dim is None:
            raise ValueError("a spatial transformer needs context_dim")
        self.cfg = cfg
        self.in_channels, self.out_channels, self.model_channels = cfg.in_channels, cfg.out_channels, cfg.model_channels
        self.num_classes = cfg.num_classes
        mc, emb_dim = cfg.model_channels, cfg.model_channels * 4
        dsa = cfg.disable_self_attentions or (False,) * len(cfg.channel_mult)
        if len(dsa) != len(cfg.channel_mult):
            raise ValueError("disable_self_attentions needs one flag per level")
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes == "sequential":
            if cfg.adm_in_channels is None:
                raise ValueError('num_classes "sequential" needs adm_in_channels')
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(cfg.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))
        elif cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [self._res(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(self._attention(ch, dsa[level], upsample=False))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = self._res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.skip_channels = tuple(chans)
        self.middle_block = TimestepEmbedSequential(
            self._res(ch), self._attention(ch, cfg.disable_middle_self_attn, upsample=False), self._res(ch))

    def _res(self, ch_in: int, ch_out: int | None = None, **kw) -> ResBlock:
        emb = self.model_channels * 4
        return ResBlock(ch_in, emb, ch_out, use_scale_shift_norm=self.cfg.use_scale_shift_norm, **kw)

    def _heads(self, ch: int) -> tuple[int, int]:
        """(heads, head width) exactly as openaimodel derives them, including the legacy rule."""
        cfg = self.cfg
        if cfg.num_head_channels == -1:
            heads, dim_head = cfg.num_heads, ch // cfg.num_heads
        else:
            heads, dim_head = ch // cfg.num_head_channels, cfg.num_head_channels
        if cfg.legacy:
            dim_head = ch // heads if cfg.use_spatial_transformer else cfg.num_head_channels
        return heads, dim_head

    def _attention(self, ch: int, disable_self_attn: bool, upsample: bool) -> nn.Module:
        cfg = self.cfg
        heads, dim_head = self._heads(ch)
        if cfg.use_spatial_transformer:
            return SpatialTransformer(ch, heads, dim_head, cfg.transformer_depth, cfg.context_dim,
                                      disable_self_attn, cfg.use_linear_in_transformer)
        if upsample:
            heads = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        return AttentionBlock(ch, num_heads=heads, num_head_channels=dim_head)

    def embed(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The timestep embedding plus the class (or ADM vector) embedding, in the weights' dtype."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("y must be given if and only if the model is class-conditional")
        dtype = self.time_embed[0].weight.dtype
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(dtype) if y.is_floating_point() else y)
        return emb


class UNetModel(UNetEncoder):
    """openaimodel.UNetModel with identical parameter paths: LDM, SD 1.x/2.x, inpainting and the x4 upscaler."""

    def __init__(self, cfg: UNetConfig):
        super().__init__(cfg)
        mc, ch, ds = cfg.model_channels, cfg.model_channels * cfg.channel_mult[-1], 2 ** (len(cfg.channel_mult) - 1)
        dsa = cfg.disable_self_attentions or (False,) * len(cfg.channel_mult)
        chans = list(self.skip_channels)
        res = self._res
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(self._attention(ch, dsa[level], upsample=True))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, control: list[torch.Tensor] | None = None) -> torch.Tensor:
        """control: ControlNet residuals, one per input block then the middle block's, added to the skip
        connections and the middle block's output (ControlledUnetModel)."""
        emb = self.embed(x, timesteps, y)
        if context is not None:
            context = context.to(emb.dtype)
        hs = []
        h = like_weights(x.to(emb.dtype), self.input_blocks[0][0])
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        control = list(control) if control else []
        if control:
            h = h + control.pop()
        for block in self.output_blocks:
            skip = hs.pop()
            if control:
                skip = skip + control.pop()
            h = block(torch.cat([h, skip], dim=1), emb, context)
        return self.out(h).contiguous()
