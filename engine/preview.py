"""Live previews: a least-squares linear latent->RGB map fitted to the loaded decoder, and full-decode previews."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange


def _smooth_latents(n: int, c: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Unit-variance Gaussian latents at several smoothness scales (white, x2, x4 bilinear-upsampled noise)."""
    parts = []
    for i in range(n):
        k = 2 ** (i % 3)
        z = torch.randn(1, c, max(1, size // k), max(1, size // k), generator=generator)
        z = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False) if k > 1 else z
        parts.append(z / z.std().clamp_min(1e-6))
    return torch.cat(parts)


def _cache_file(cache_dir: str | os.PathLike, model_path: str | os.PathLike, tag: str) -> Path:
    st = os.stat(model_path)
    key = f"{os.path.abspath(model_path)}|{st.st_size}|{st.st_mtime_ns}|{tag}"
    return Path(cache_dir) / f"latent_rgb_{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


@torch.inference_mode()
def fit_latent_to_rgb(first_stage, latent_channels: int, n_samples: int = 6, generator: torch.Generator | None = None,
                      scale_factor: float = 1.0, size: int = 16, cache_dir: str | os.PathLike | None = None,
                      model_path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit RGB[0,1] ~ x @ W + b of the decoder's output, average-pooled to latent resolution.

    x are sampler-space latents (decode sees x / scale_factor); returns W (C, 3), b (3,). With cache_dir and
    model_path the fit is stored as JSON keyed by the model file's path, size and mtime.
    """
    tag = f"{latent_channels}|{scale_factor}|{n_samples}|{size}"
    cache = _cache_file(cache_dir, model_path, tag) if cache_dir is not None and model_path is not None else None
    if cache is not None and cache.exists():
        d = json.loads(cache.read_text())
        return np.asarray(d["W"], np.float32), np.asarray(d["b"], np.float32)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    p = next(first_stage.parameters())
    xs, ys = [], []
    for x in _smooth_latents(n_samples, latent_channels, size, gen).split(2):
        img = first_stage.decode((x / scale_factor).to(p.device, p.dtype)).float().cpu()
        img = F.adaptive_avg_pool2d((img.clamp(-1, 1) + 1) / 2, x.shape[-2:])
        xs.append(rearrange(x, "b c h w -> (b h w) c"))
        ys.append(rearrange(img, "b c h w -> (b h w) c"))
    a = torch.cat([torch.cat(xs), torch.ones(sum(len(t) for t in xs), 1)], 1).double()
    sol = torch.linalg.lstsq(a, torch.cat(ys).double()).solution
    w, b = sol[:-1].float().numpy(), sol[-1].float().numpy()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"W": w.tolist(), "b": b.tolist(), "model": str(model_path), "tag": tag}))
    return w, b


class LatentPreviewer:
    """Cheap preview: one einsum from latent channels to RGB, clamp, uint8; optional nearest upsampling."""

    def __init__(self, w: np.ndarray, b: np.ndarray, upscale: int = 1):
        self.w = torch.as_tensor(np.asarray(w, np.float32))
        self.b = torch.as_tensor(np.asarray(b, np.float32))
        self.upscale = max(1, int(upscale))

    def __call__(self, x0: torch.Tensor, index: int = 0) -> np.ndarray:
        x = x0[index].detach().float().cpu() if x0.ndim == 4 else x0.detach().float().cpu()
        rgb = torch.einsum("chw,ck->hwk", x, self.w) + self.b
        img = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        if self.upscale > 1:
            img = img.repeat(self.upscale, 0).repeat(self.upscale, 1)
        return img


@torch.inference_mode()
def decode_preview(first_stage, x0: torch.Tensor, scale_factor: float = 1.0, index: int = 0,
                   max_latent: int | None = 64) -> np.ndarray:
    """Full-decoder preview of one sample (uint8 HWC); latents larger than max_latent are downscaled first."""
    p = next(first_stage.parameters())
    z = x0[index:index + 1].detach().to(p.device, p.dtype) / scale_factor
    if max_latent and max(z.shape[-2:]) > max_latent:
        s = max_latent / max(z.shape[-2:])
        z = F.interpolate(z, size=(max(1, round(z.shape[-2] * s)), max(1, round(z.shape[-1] * s))), mode="bilinear",
                          align_corners=False)
    img = first_stage.decode(z)[0].float().cpu()
    return rearrange(((img.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8), "c h w -> h w c").numpy()
