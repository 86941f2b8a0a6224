"""Denoiser wrappers: classifier-free guidance, mask-blended inpainting, regional prompts, dilated sampling.

Each wrapper has the denoiser signature D(x, sigma, **extra_args) -> x0 and never reaches inside a model. Unknown
attributes (get_sigmas, sigma_min, ...) are forwarded to the wrapped denoiser, so wrappers nest freely.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class DenoiserWrapper:
    """Forwards schedule attributes (get_sigmas, sigmas, sigma_to_t, ...) to the inner denoiser."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _expand(v: Tensor, batch: int) -> Tensor:
    return v.expand(batch, *v.shape[1:]) if v.shape[0] == 1 and batch > 1 else v


def _bcast(sigma: Tensor, x: Tensor) -> Tensor:
    return sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def same_length(*contexts: Tensor) -> list[Tensor]:
    """Cross-attention contexts of different lengths (long prompts: whole 77-token chunks) tiled along the sequence
    to their least common multiple. Exact: attention over r copies of the same keys and values gives the same output."""
    n = math.lcm(*(c.shape[1] for c in contexts))
    return [c if c.shape[1] == n else c.repeat(1, n // c.shape[1], 1) for c in contexts]


def merge_cond(cond: dict, uncond: dict, batch: int) -> dict:
    """One batched conditioning dict [uncond; cond]; keys missing from uncond (e.g. 'concat') are taken from cond."""
    merged = {}
    for key in dict.fromkeys([*cond, *uncond]):
        c, u = cond.get(key, uncond.get(key)), uncond.get(key, cond.get(key))
        if key == "context" and isinstance(c, Tensor) and c.shape[1] != u.shape[1]:
            u, c = same_length(u, c)
        if isinstance(c, Tensor):
            merged[key] = torch.cat([_expand(u, batch), _expand(c, batch)])
        elif c is None or c is u or c == u:
            merged[key] = c
        else:
            raise ValueError(f"conditioning {key!r} differs between cond and uncond and is not a tensor")
    return merged


class CFGDenoiser(DenoiserWrapper):
    """Classifier-free guidance (Ho & Salimans 2022): D_u + scale * (D_c - D_u), both passes in one batched call.

    extra_args: cond={...}, uncond={...} (e.g. context/concat/y tensors). Keys absent from uncond are shared, so for
    concat/hybrid models pass only the negative 'context' and the unconditional pass keeps the concat input.
    Guiding x0 equals guiding eps or v, since at a fixed (x, sigma) each is an affine map of the other.
    scale 1 runs the conditional pass alone; batched=False runs two half-size passes to save memory.
    """

    def __init__(self, inner, scale: float, batched: bool = True):
        super().__init__(inner)
        self.scale = scale
        self.batched = batched

    def __call__(self, x: Tensor, sigma: Tensor, cond: dict | None = None, uncond: dict | None = None, **rest) -> Tensor:
        cond = cond or {}
        if self.scale == 1.0 or uncond is None:
            return self.inner(x, sigma, **cond, **rest)
        if self.batched:
            both = merge_cond(cond, uncond, x.shape[0])
            d_u, d_c = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), **both, **rest).chunk(2)
        else:
            d_c = self.inner(x, sigma, **cond, **rest)
            d_u = self.inner(x, sigma, **{**cond, **uncond}, **rest)
        return d_u + (d_c - d_u) * self.scale


class MaskBlendDenoiser(DenoiserWrapper):
    """Mask-blended latent inpainting (LDM masked DDIM; RePaint-style blending without resampling).

    mask = 1 regenerates, 0 keeps init_latent. Before every model call the known region of x is replaced by
    init_latent + noise*sigma (the init noised to the current level), and the returned x0 is init_latent there, so
    previews show the known region and a schedule ending at sigma 0 reproduces it exactly. For deterministic
    samplers to keep their own state consistent, start from init + noise*sigma0 with the same noise.
    """

    def __init__(self, inner, init_latent: Tensor, mask: Tensor, noise: Tensor):
        super().__init__(inner)
        self.init_latent = init_latent
        self.mask = mask
        self.noise = noise

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor:
        m = self.mask.to(x.device, x.dtype)
        known = self.init_latent.to(x) + self.noise.to(x) * _bcast(sigma, x)
        x = known + m * (x - known)
        denoised = self.inner(x, sigma, **extra_args)
        init = self.init_latent.to(denoised)
        return init + m.to(denoised) * (denoised - init)


@dataclass
class Region:
    """One regional prompt: the extra_args for its pass and a soft weight map in [0, 1] broadcastable to x."""

    extra_args: dict
    weight: Tensor
    strength: float = 1.0
    meta: dict = field(default_factory=dict)


def _merge_args(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


class RegionalDenoiser(DenoiserWrapper):
    """Regional prompts by region-weighted averaging of predictions (MultiDiffusion, Bar-Tal et al. 2023).

    Each region is denoised with its own conditioning over the whole latent and the x0 predictions are averaged
    with per-pixel weights: region maps w_r, the base prompt taking max(0, 1 - sum w_r) + base_weight, normalized
    to sum to one. Averaging predictions was chosen over masked cross-attention because it needs no hook into the
    attention layers, so it works unchanged with every UNet (LDM BERT, CLIP, class- or concat-conditioned), and it
    composes with CFG (wrap a CFGDenoiser: a region's extra_args override the base's keys, dicts one level deep).
    """

    def __init__(self, inner, regions: list[Region], base_weight: float = 0.0):
        super().__init__(inner)
        self.regions = list(regions)
        self.base_weight = base_weight

    def weights(self, x: Tensor) -> list[Tensor]:
        """Per-pixel weights [base, region_1, ...], each shaped like x, summing to one everywhere."""
        ws = [(r.weight.to(x.device, x.dtype) * r.strength).clamp(min=0).expand_as(x) for r in self.regions]
        covered = torch.stack(ws).sum(0) if ws else torch.zeros_like(x)
        ws = [(1 - covered).clamp(min=0) + self.base_weight, *ws]
        total = torch.stack(ws).sum(0).clamp(min=1e-8)
        return [w / total for w in ws]

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor:
        ws = self.weights(x)
        out = torch.zeros_like(x)
        for w, args in zip(ws, [extra_args, *(_merge_args(extra_args, r.extra_args) for r in self.regions)]):
            if bool((w > 0).any()):
                out = out + w * self.inner(x, sigma, **args)
        return out


def map_spatial(kw: dict, fn, h: int, w: int) -> dict:
    """extra_args with fn applied to every (B, C, h, w) tensor, one dict level deep (CFG's cond / uncond)."""
    def one(v):
        return fn(v) if isinstance(v, Tensor) and v.ndim == 4 and v.shape[-2:] == (h, w) else v

    return {k: ({kk: one(vv) for kk, vv in v.items()} if isinstance(v, dict) else one(v)) for k, v in kw.items()}


class SeamlessDenoiser(DenoiserWrapper):
    """Tileable images (A1111's Tiling, InvokeAI's seamless X / Y): before every model call the latent, and any
    spatial conditioning, is padded by wrapping around, so each edge is denoised as the continuation of the opposite
    one, and the prediction is cropped back. The result repeats without a seam along the chosen axes."""

    def __init__(self, inner, axes: str = "xy", pad: int | None = None):
        super().__init__(inner)
        self.axes, self.pad = axes, pad

    def margin(self, n: int) -> int:
        """Latent pixels of wrapped context per side: a quarter of the side, 4 to 16, unless set."""
        return min(n, self.pad if self.pad is not None else max(4, min(16, n // 4)))

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor:
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        py = self.margin(h) if "y" in self.axes else 0
        px = self.margin(w) if "x" in self.axes else 0
        if not (px or py):
            return self.inner(x, sigma, **extra_args)
        wrap = lambda t: F.pad(t, (px, px, py, py), mode="circular")  # noqa: E731
        out = self.inner(wrap(x), sigma, **map_spatial(extra_args, wrap, h, w))
        return out[..., py:py + h, px:px + w]


class PromptEditDenoiser(DenoiserWrapper):
    """A1111's prompt editing ([from:to:when], [a|b]): the cond and uncond contexts switched by the step that the
    sigma of each model call belongs to. cond / uncond: [(first step after the range, context), ...] or None."""

    def __init__(self, inner, sigmas: Tensor, cond: list | None, uncond: list | None):
        super().__init__(inner)
        self.levels = [float(s) for s in sigmas]
        self.cond, self.uncond = cond, uncond

    def step(self, sigma: Tensor) -> int:
        s = float(sigma.reshape(-1).max())
        return min(range(len(self.levels)), key=lambda i: abs(self.levels[i] - s))

    @staticmethod
    def _pick(ranges: list, step: int) -> Tensor:
        return next((ctx for end, ctx in ranges if step < end), ranges[-1][1])

    def __call__(self, x: Tensor, sigma: Tensor, cond: dict | None = None, uncond: dict | None = None, **rest):
        step = self.step(sigma)
        if self.cond is not None and cond is not None:
            cond = {**cond, "context": self._pick(self.cond, step)}
        if self.uncond is not None and uncond is not None:
            uncond = {**uncond, "context": self._pick(self.uncond, step)}
        return self.inner(x, sigma, cond=cond, uncond=uncond, **rest)


def _band_mask(h: int, w: int, ky: int, kx: int, device) -> Tensor:
    """rfft2 mask of the frequencies a (h/ky) x (w/kx) sub-latent holds: 1 below its Nyquist on both axes, else 0."""
    fy = torch.fft.fftfreq(h, device=device).abs() * 2 * ky
    fx = torch.fft.rfftfreq(w, device=device) * 2 * kx
    return ((fy[:, None] < 1) & (fx[None] < 1)).float()


class DilatedDenoiser(DenoiserWrapper):
    """Convolutional sampling at k times the trained size in one pass, by dilated sampling (DemoFusion, Du et al.
    2024): the latent is split into k x k interleaved sub-latents of about the trained size, denoised as one batch
    (spatial inputs split alike) and interleaved back. Its prediction supplies the frequencies a sub-latent holds; the
    plain full-size pass adds the finer ones once sigma is below detail_sigma, so objects are composed at the size the
    model learned them and the full resolution only sharpens them. Under 1.5x the trained size it is the plain pass."""

    def __init__(self, inner, native: int, detail_sigma: float = 0.6):
        super().__init__(inner)
        self.native, self.detail_sigma = native, detail_sigma
        self._masks: dict = {}

    def factors(self, h: int, w: int) -> tuple[int, int]:
        k = [max(1, round(s / self.native)) if s >= 1.5 * self.native else 1 for s in (h, w)]
        return k[0] if h % k[0] == 0 else 1, k[1] if w % k[1] == 0 else 1

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor:
        from einops import rearrange, repeat

        b, (h, w) = x.shape[0], x.shape[-2:]
        ky, kx = self.factors(h, w)
        if ky == kx == 1:
            return self.inner(x, sigma, **extra_args)
        split = "b c (h i) (w j) -> (b i j) c h w"
        sub = {}
        for key, v in extra_args.items():
            if isinstance(v, Tensor) and v.ndim == 4 and v.shape[-2:] == (h, w):
                sub[key] = rearrange(v, split, i=ky, j=kx)
            elif isinstance(v, Tensor) and v.ndim and v.shape[0] == b:
                sub[key] = repeat(v, "b ... -> (b n) ...", n=ky * kx)
            else:
                sub[key] = v
        sigmas = repeat(sigma.reshape(-1).expand(b), "b -> (b n)", n=ky * kx)
        d = self.inner(rearrange(x, split, i=ky, j=kx), sigmas, **sub)
        d = rearrange(d, "(b i j) c h w -> b c (h i) (w j)", i=ky, j=kx)
        key = (h, w, ky, kx, str(x.device))
        if key not in self._masks:
            self._masks[key] = _band_mask(h, w, ky, kx, x.device)
        m = self._masks[key]
        spec = torch.fft.rfft2(d.float()) * m
        if float(sigma.reshape(-1).max()) < self.detail_sigma:
            spec = spec + torch.fft.rfft2(self.inner(x, sigma, **extra_args).float()) * (1 - m)
        return torch.fft.irfft2(spec, s=(h, w)).to(d.dtype)
