"""LatentDiffusion (Rombach et al. 2022): UNet in model.diffusion_model, autoencoder, conditioner, one module."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.attention import CrossAttention
from engine.models.onednn import cpu_inference_layout_, unpack_convs_
from engine.models.cond_stage_model import make_cond_stage
from engine.models.diffusion_model import UNetModel
from engine.models.first_stage_model import make_first_stage
from engine.schedules import alphas_cumprod


class DiffusionWrapper(nn.Module):
    """LDM's DiffusionWrapper: concat inputs joined on channels, context and class labels passed through; pooled:
    y is the context's mean over its tokens (a global caption vector added to the timestep embedding, as Imagen and
    SDXL add a pooled text embedding)."""

    def __init__(self, unet: nn.Module, pooled: bool = False):
        super().__init__()
        self.diffusion_model = unet
        self.pooled = pooled

    def forward(self, x, t, context=None, concat=None, y=None, control=None):
        if self.pooled and y is None and context is not None:
            y = context.mean(dim=1)
        if concat is not None:
            x = torch.cat([x, concat.to(x.dtype)], dim=1)
        return self.diffusion_model(x, t, context=context, y=y, control=control)


WIDE_CONV = 256


def wide_cpu_layout_(part: nn.Module, device, pack: bool = True, wide: int = WIDE_CONV) -> None:
    """On CPU, the convs of a wide network (>= `wide` channels) channels_last, their weights packed once into
    oneDNN's blocked layout for inference (the same output to float rounding)."""
    if torch.device(device).type == "cpu":
        widest = max((m.out_channels for m in part.modules() if isinstance(m, nn.Conv2d)), default=0)
        if widest >= wide:
            cpu_inference_layout_(part, pack=pack)


class LatentDiffusion(nn.Module):
    """One checkpoint family; state_dict() keys are the original checkpoint's keys."""

    WIDE_CONV = WIDE_CONV

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = DiffusionWrapper(UNetModel(config.unet), config.pooled_context)
        self.first_stage_model = make_first_stage(config.first_stage)
        cond = make_cond_stage(config.cond, first_stage=self.first_stage_model)
        if config.cond.kind == "first_stage":
            object.__setattr__(self, "cond_stage_model", cond)
        else:
            self.cond_stage_model = cond
        self.alphas_cumprod = alphas_cumprod(config.schedule)
        self.source = ""
        self.metadata: dict = {}

    @property
    def scale_factor(self) -> float:
        return self.config.scale_factor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def optimize_for(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "LatentDiffusion":
        """Inference layout: self-attention q/k/v weights become views of one fused matrix; on CPU the convs of a wide
        UNet / autoencoder (>= WIDE_CONV channels) go channels_last with their weights packed once into oneDNN's
        blocked layout (the same output to float rounding)."""
        unpack_convs_(self)
        if dtype is not None:
            self.to(dtype=dtype)
        if not self.training:
            for m in self.modules():
                if isinstance(m, CrossAttention):
                    m.share_qkv_()
        for part in (self.model, self.first_stage_model):
            wide_cpu_layout_(part, device, pack=not self.training, wide=self.WIDE_CONV)
        return self

    @contextmanager
    def plain_weights(self):
        """{name: parameter or buffer} in the plain layout (convs unpacked) to edit in place (LoRA, VAE), under
        no_grad; the inference layout is made again afterwards, as loading made it."""
        unpack_convs_(self)
        try:
            with torch.no_grad():
                yield {**dict(self.named_parameters()), **dict(self.named_buffers())}
        finally:
            self.optimize_for(self.device)

    def encode_first_stage(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image in [-1, 1] -> scaled latent (KL: posterior mode, or a sample with a generator; VQ: pre-quant features)."""
        out = self.first_stage_model.encode(x.to(self.dtype))
        if not isinstance(out, torch.Tensor):
            out = out.sample(generator) if generator is not None else out.mode()
        return out * self.scale_factor

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> image in [-1, 1] (VQ decoders quantize first)."""
        return self.first_stage_model.decode(z.to(self.dtype) / self.scale_factor)

    def get_learned_conditioning(self, c, **kw):
        """cond_stage_model.encode(c): strings or token ids, label maps, class ids, images (kw: clip_skip)."""
        if self.cond_stage_model is None:
            return None
        return self.cond_stage_model.encode(c, **kw)
