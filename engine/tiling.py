"""Large canvases: MultiDiffusion tiled denoising (Bar-Tal et al. 2023) and a seamless tiled autoencoder.

The tiled autoencoder runs the CompVis Encoder/Decoder one layer at a time over tiles with a one-pixel halo; every
GroupNorm uses statistics summed over the whole feature map and every AttnBlock attends over the whole map, so the
result equals the untiled pass up to float rounding. Feature maps between layers live in RAM while they fit
`ram_budget` and otherwise in temporary files, so resident memory stays bounded by the latent, the output and a tile.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from engine.models.subpixel import upsample_conv

Slices = tuple[slice, slice]


def _axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    n = _axis_count(length, tile, overlap)
    if n == 1:
        return [0]
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _axis_count(length: int, tile: int, overlap: int) -> int:
    if length <= tile:
        return 1
    return max(1, math.ceil((length - overlap) / (tile - overlap)))


def n_tiles(h: int, w: int, tile: int, overlap: int) -> int:
    """Tile count: ceil((L - overlap) / (tile - overlap)) per axis, 1 where the axis fits in one tile."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile})")
    return _axis_count(h, tile, overlap) * _axis_count(w, tile, overlap)


def tile_grid(h: int, w: int, tile: int, overlap: int) -> list[Slices]:
    """Evenly spaced equal-size tiles covering (h, w), neighbours overlapping by at least `overlap`."""
    n_tiles(h, w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    return [(slice(y, y + th), slice(x, x + tw))
            for y in _axis_starts(h, tile, overlap) for x in _axis_starts(w, tile, overlap)]


def _ramp(n: int, overlap: int, lo_edge: bool, hi_edge: bool) -> torch.Tensor:
    r = torch.ones(n, dtype=torch.float64)
    k = min(overlap, n // 2)
    if k > 0:
        up = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(k, dtype=torch.float64) + 0.5) / k)
        if not lo_edge:
            r[:k] = up
        if not hi_edge:
            r[n - k:] = up.flip(0)
    return r


def blend_weights(h: int, w: int, slices: Sequence[Slices], overlap: int) -> list[torch.Tensor]:
    """Raised-cosine ramps over the overlaps (flat at canvas borders), normalized to sum to one at every pixel."""
    raw = []
    for sy, sx in slices:
        ry = _ramp(sy.stop - sy.start, overlap, sy.start == 0, sy.stop == h)
        rx = _ramp(sx.stop - sx.start, overlap, sx.start == 0, sx.stop == w)
        raw.append(ry[:, None] * rx[None, :])
    total = torch.zeros(h, w, dtype=torch.float64)
    for (sy, sx), r in zip(slices, raw):
        total[sy, sx] += r
    return [(r / total[sy, sx]).float() for (sy, sx), r in zip(slices, raw)]


def crop_spatial(value, slices: Slices, hw: tuple[int, int]):
    """Crop every 4-D tensor with spatial size hw (concat inputs, masks, semantic maps) inside nested dicts/lists."""
    if isinstance(value, torch.Tensor):
        return value[..., slices[0], slices[1]] if value.ndim == 4 and tuple(value.shape[-2:]) == hw else value
    if isinstance(value, dict):
        return {k: crop_spatial(v, slices, hw) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(crop_spatial(v, slices, hw) for v in value)
    return value


def _collate(items: list, batch: int):
    first = items[0]
    if isinstance(first, torch.Tensor):
        if first.ndim >= 1 and first.shape[0] == batch:
            return torch.cat(items, 0)
        return first
    if isinstance(first, dict):
        return {k: _collate([it[k] for it in items], batch) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_collate([it[i] for it in items], batch) for i in range(len(first)))
    return first


class TiledDenoiser:
    """MultiDiffusion: denoise overlapping latent tiles (batched) and blend their x0 predictions with smooth weights.

    crop_extra(extra_args, slices) -> extra_args for the tile; the default crops 4-D tensors of the latent's spatial
    size inside extra_args['cond'] / ['uncond'] (and any other key). skip(slices) -> True leaves a tile out
    (inpainting tiles that miss the mask); pixels no active tile covers get fallback(x, sigma) (default: x itself).
    """

    def __init__(self, inner: Callable, tile: int = 64, overlap: int = 16, crop_extra: Callable | None = None,
                 skip: Callable[[Slices], bool] | None = None, fallback: Callable | None = None, max_batch: int = 8):
        self.inner, self.tile, self.overlap = inner, tile, overlap
        self.crop_extra, self.skip, self.fallback, self.max_batch = crop_extra, skip, fallback, max(1, max_batch)

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        b, _, h, w = x.shape
        slices = tile_grid(h, w, self.tile, self.overlap)
        active = [s for s in slices if not (self.skip and self.skip(s))]
        crop = self.crop_extra or (lambda ea, s: crop_spatial(ea, s, (h, w)))
        out = torch.zeros_like(x)
        if not active:
            return self.fallback(x, sigma) if self.fallback else x.clone()
        weights = blend_weights(h, w, active, self.overlap)
        covered = torch.zeros(h, w, dtype=torch.bool)
        sig = sigma if isinstance(sigma, torch.Tensor) and sigma.ndim else torch.as_tensor(sigma).expand(b)
        for i in range(0, len(active), self.max_batch):
            group = active[i:i + self.max_batch]
            extras = [crop(extra_args, s) for s in group]
            xs = torch.cat([x[..., sy, sx] for sy, sx in group], 0)
            try:
                den = self.inner(xs, sig.repeat(len(group)), **_collate(extras, b))
                parts = den.split(b, 0)
            except (RuntimeError, ValueError, TypeError):
                if len(group) == 1:
                    raise
                parts = [self.inner(x[..., sy, sx], sig, **e) for (sy, sx), e in zip(group, extras)]
            for (sy, sx), p, wt in zip(group, parts, weights[i:i + len(group)]):
                out[..., sy, sx] += p * wt.to(p)
                covered[sy, sx] = True
        if not covered.all():
            fill = self.fallback(x, sigma) if self.fallback else x
            out = torch.where(covered.to(x.device), out, fill)
        return out


# ---------------------------------------------------------------- seamless tiled autoencoder


class _Map:
    """A (C, H, W) map stored (H, W, C) in the compute dtype, in RAM or a temporary file, with per-channel running
    mean/M2 combined across tiles (Chan et al.)."""

    def __init__(self, c: int, h: int, w: int, ctx: "_Ctx"):
        self.c, self.h, self.w, self.ctx = c, h, w, ctx
        self.dtype = ctx.store_dtype
        self.esize = torch.empty(0, dtype=self.dtype).element_size()
        self.nbytes = self.esize * c * h * w
        self.file = None
        if ctx.ram_used + self.nbytes <= ctx.ram_budget:
            self.data = torch.empty(h, w, c, dtype=self.dtype)
            ctx.ram_used += self.nbytes
        else:
            self.data = None
            self.file = tempfile.TemporaryFile(dir=ctx.spill_dir)
            self.file.truncate(self.nbytes)
            ctx.spilled = max(ctx.spilled, self.nbytes)
        self.mean = torch.zeros(c, dtype=torch.float64)
        self.m2 = torch.zeros(c, dtype=torch.float64)
        self.count = 0

    def read(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        if self.data is not None:
            return rearrange(self.data[y0:y1, x0:x1], "h w c -> c h w")
        buf = torch.empty(y1 - y0, x1 - x0, self.c, dtype=self.dtype)
        raw = buf.view(torch.uint8).numpy()
        row = self.w * self.c * self.esize
        fd = self.file.fileno()
        for i, y in enumerate(range(y0, y1)):
            os.preadv(fd, [memoryview(raw[i]).cast("B")], y * row + x0 * self.c * self.esize)
        return rearrange(buf, "h w c -> c h w")

    def write(self, y0: int, x0: int, t: torch.Tensor) -> None:
        rows = rearrange(t.detach().to("cpu", self.dtype), "c h w -> h w c")
        h, w, _ = rows.shape
        f32 = rows.float()
        m = h * w
        mean = f32.sum(1).double().sum(0) / m
        var = (f32.square().sum(1).double().sum(0) / m - mean.square()).clamp_min(0)
        n = self.count
        delta = mean - self.mean
        self.mean += delta * (m / (n + m))
        self.m2 += var * m + delta.square() * (n * m / (n + m))
        self.count = n + m
        if self.data is not None:
            self.data[y0:y0 + h, x0:x0 + w] = rows
            return
        raw = rows.contiguous().view(torch.uint8).numpy()
        row = self.w * self.c * self.esize
        fd = self.file.fileno()
        for i in range(h):
            os.pwritev(fd, [memoryview(raw[i]).cast("B")], (y0 + i) * row + x0 * self.c * self.esize)

    def group_stats(self, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean_c, var_c = self.mean, self.m2 / self.count
        mean_c, var_c = (rearrange(v, "(g k) -> g k", g=groups) for v in (mean_c, var_c))
        mean = mean_c.mean(1)
        return mean, (var_c + (mean_c - mean[:, None]) ** 2).mean(1)

    def close(self) -> None:
        if self.data is not None:
            self.ctx.ram_used -= self.nbytes
            self.data = None
        if self.file is not None:
            self.file.close()
            self.file = None


class _Ctx:
    def __init__(self, module: torch.nn.Module, tile: int, ram_budget: int | None, spill_dir: str | None):
        p = next(module.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.store_dtype = p.dtype if p.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
        self.tile = tile
        self.ram_budget = _default_ram_budget() if ram_budget is None else ram_budget
        self.ram_used = 0
        self.spilled = 0
        self.spill_dir = spill_dir
        self.weights: dict[int, torch.Tensor] = {}

    def tiles(self, h: int, w: int, t: int):
        for y in range(0, h, t):
            for x in range(0, w, t):
                yield y, min(y + t, h), x, min(x + t, w)

    def dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, self.dtype)

    def conv(self, x: torch.Tensor, conv, stride: int = 1) -> torch.Tensor:
        """conv2d without padding on a (C,h,w) tile, channels-last (4x faster for bf16 on CPU)."""
        w = self.weights.get(id(conv))
        if w is None:
            w = conv.weight.detach()
            w = self.weights[id(conv)] = (w.to_dense() if w.is_mkldnn else w).contiguous(memory_format=torch.channels_last)
        x = (x if x.ndim == 4 else x[None]).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, conv.bias, stride=stride)[0]


def _default_ram_budget() -> int:
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        avail = 8 << 30
    return int(min(1 << 30, avail // 8))


def _affine_only(norm: torch.nn.GroupNorm, src: _Map) -> Callable[[torch.Tensor], torch.Tensor]:
    mean, var = src.group_stats(norm.num_groups)
    k = src.c // norm.num_groups
    scale = norm.weight.detach().double().cpu() * torch.repeat_interleave((var + norm.eps).rsqrt(), k)
    shift = norm.bias.detach().double().cpu() - torch.repeat_interleave(mean, k) * scale
    cache: dict = {}

    def apply(t: torch.Tensor) -> torch.Tensor:
        key = (t.device, t.dtype)
        if key not in cache:
            cache[key] = (scale.to(t)[:, None, None], shift.to(t)[:, None, None])
        sc, sh = cache[key]
        return torch.addcmul(sh, t, sc)

    return apply


def _norm_silu(norm: torch.nn.GroupNorm, src: _Map) -> Callable[[torch.Tensor], torch.Tensor]:
    affine = _affine_only(norm, src)
    return lambda t: F.silu(affine(t), inplace=True)


def _read_padded(src: _Map, y0: int, y1: int, x0: int, x1: int, pre, ctx: _Ctx) -> torch.Tensor:
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, src.h), max(x0, 0), min(x1, src.w)
    t = ctx.dev(src.read(cy0, cy1, cx0, cx1))
    if pre is not None:
        t = pre(t)
    out = torch.zeros(1, t.shape[0], y1 - y0, x1 - x0, device=ctx.device, dtype=ctx.dtype)
    out = out.contiguous(memory_format=torch.channels_last)
    out[0, :, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = t
    return out


def _conv_pass(src: _Map, conv, ctx: _Ctx, mode: str = "same", pre=None, post=None, sink=None, tile_scale=1.0):
    """One 3x3 convolution (optionally after norm+SiLU, nearest x2 upsampling or the CompVis stride-2 downsample)."""
    h, w = {"same": (src.h, src.w), "up": (2 * src.h, 2 * src.w), "down": (src.h // 2, src.w // 2)}[mode]
    dst = _Map(conv.out_channels, h, w, ctx) if sink is None else None
    t = max(1, int(ctx.tile * tile_scale))
    with torch.inference_mode():
        for y0, y1, x0, x1 in ctx.tiles(h, w, t):
            if mode == "same":
                inp = _read_padded(src, y0 - 1, y1 + 1, x0 - 1, x1 + 1, pre, ctx)
            elif mode == "down":
                inp = _read_padded(src, 2 * y0, 2 * y1 + 1, 2 * x0, 2 * x1 + 1, pre, ctx)
            else:
                ly0, lx0 = y0 // 2, x0 // 2
                inp = _read_padded(src, ly0 - 1, (y1 + 1) // 2 + 1, lx0 - 1, (x1 + 1) // 2 + 1, pre, ctx)
                out = upsample_conv(inp, conv, padded=True, cache=ctx.weights)[0]
                out = out[:, y0 - 2 * ly0:y1 - 2 * ly0, x0 - 2 * lx0:x1 - 2 * lx0]
            if mode != "up":
                out = ctx.conv(inp, conv, stride=2 if mode == "down" else 1)
            if post is not None:
                out = post(out, y0, y1, x0, x1)
            (sink or dst.write)(y0, x0, out)
    return dst


def _resnet(block, x: _Map, ctx: _Ctx, scale: float) -> _Map:
    h = _conv_pass(x, block.conv1, ctx, pre=_norm_silu(block.norm1, x), tile_scale=scale)
    skip = getattr(block, "nin_shortcut", None) or getattr(block, "conv_shortcut", None)

    def add_skip(out, y0, y1, x0, x1):
        if skip is None:
            return out + ctx.dev(x.read(y0, y1, x0, x1))
        if skip.kernel_size[0] == 1:
            return out + ctx.conv(ctx.dev(x.read(y0, y1, x0, x1)), skip)
        return out + ctx.conv(_read_padded(x, y0 - 1, y1 + 1, x0 - 1, x1 + 1, None, ctx), skip)

    out = _conv_pass(h, block.conv2, ctx, pre=_norm_silu(block.norm2, h), post=add_skip, tile_scale=scale)
    h.close()
    return out


def _global_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_bytes: int = 64 << 20) -> torch.Tensor:
    """Single-head softmax attention (N,C) over many keys: SDPA for small N, else query chunks of plain GEMM + softmax
    (on CPU the bf16 GEMMs run on AMX, about 7x the fused SDPA kernel at 262k keys)."""
    n, c = k.shape
    if n <= 16384 or q.device.type != "cpu":
        return torch.cat([F.scaled_dot_product_attention(qc[None], k[None], v[None])[0] for qc in q.split(1024)])
    chunk = max(16, score_bytes // (n * k.element_size()))
    kt = k.T
    return torch.cat([torch.softmax((qc * c ** -0.5) @ kt, -1) @ v for qc in q.split(chunk)])


def _attention(attn, x: _Map, ctx: _Ctx, scale: float) -> _Map:
    """Vanilla AttnBlock over the whole map: keys and values gathered from every tile, queries tile by tile."""
    if not hasattr(attn, "q"):
        return x
    norm = _affine_only(attn.norm, x)
    t = max(1, int(ctx.tile * scale))
    n, c = x.h * x.w, x.c
    keys = torch.empty(n, c, device=ctx.device, dtype=ctx.dtype)
    vals = torch.empty_like(keys)
    out = _Map(c, x.h, x.w, ctx)
    with torch.inference_mode():
        for y0, y1, x0, x1 in ctx.tiles(x.h, x.w, t):
            hn = norm(ctx.dev(x.read(y0, y1, x0, x1)))[None]
            idx = (torch.arange(y0, y1)[:, None] * x.w + torch.arange(x0, x1)[None, :]).flatten().to(ctx.device)
            keys[idx] = rearrange(ctx.conv(hn, attn.k)[None], "1 c h w -> (h w) c")
            vals[idx] = rearrange(ctx.conv(hn, attn.v)[None], "1 c h w -> (h w) c")
        for y0, y1, x0, x1 in ctx.tiles(x.h, x.w, t):
            xt = ctx.dev(x.read(y0, y1, x0, x1))
            q = rearrange(ctx.conv(norm(xt), attn.q)[None], "1 c h w -> (h w) c")
            o = _global_attention(q, keys, vals)
            o = rearrange(o, "(h w) c -> 1 c h w", h=y1 - y0)
            out.write(y0, x0, xt + ctx.conv(o, attn.proj_out))
    x.close()
    return out


def _from_tensor(t: torch.Tensor, ctx: _Ctx) -> _Map:
    m = _Map(t.shape[0], t.shape[1], t.shape[2], ctx)
    m.write(0, 0, t)
    return m


def _blocks(level, x: _Map, ctx: _Ctx, scale: float) -> _Map:
    for j, block in enumerate(level.block):
        y = _resnet(block, x, ctx, scale)
        x.close()
        x = _attention(level.attn[j], y, ctx, scale) if len(level.attn) > j else y
    return x


def _mid(mid, x: _Map, ctx: _Ctx, scale: float) -> _Map:
    y = _resnet(mid.block_1, x, ctx, scale)
    x.close()
    y = _attention(mid.attn_1, y, ctx, scale)
    z = _resnet(mid.block_2, y, ctx, scale)
    y.close()
    return z


def _post_quant(first_stage, z: torch.Tensor) -> torch.Tensor:
    q = getattr(first_stage, "quantize", None)
    if q is not None:
        r = q(z)
        z = r[0] if isinstance(r, (tuple, list)) else r
    pq = getattr(first_stage, "post_quant_conv", None)
    return pq(z) if pq is not None else z


def decode_tiled(first_stage, z: torch.Tensor, tile: int = 64, out: torch.Tensor | np.ndarray | None = None,
                 ram_budget: int | None = None, spill_dir: str | None = None):
    """Seamless tiled first_stage.decode(z) (z unscaled, (B,C,h,w)); VQ models quantize first.

    out: None -> float32 (B,3,H,W) like decode(); a uint8 (B,H,W,3) or (H,W,3) tensor/array receives the image
    mapped from [-1,1] to 0..255. `tile` is in latent pixels; feature maps beyond ram_budget bytes go to spill_dir.
    """
    dec = first_stage.decoder
    n_up = len(dec.up)
    f = 2 ** (n_up - 1)
    b, _, h, w = z.shape
    if out is None:
        out = torch.empty(b, dec.conv_out.out_channels, h * f, w * f)
    target = torch.from_numpy(out) if isinstance(out, np.ndarray) else out
    as_u8 = target.dtype == torch.uint8
    view = target if target.ndim == 4 else target[None]
    ctx = _Ctx(dec, tile, ram_budget, spill_dir)
    with torch.inference_mode():
        for i in range(b):
            zq = _post_quant(first_stage, ctx.dev(z[i:i + 1]))[0]
            x = _conv_pass(_from_tensor(zq, ctx), dec.conv_in, ctx)
            x = _mid(dec.mid, x, ctx, 1.0)
            scale = 1.0
            for lvl in reversed(range(n_up)):
                x = _blocks(dec.up[lvl], x, ctx, scale)
                if hasattr(dec.up[lvl], "upsample"):
                    scale *= 2
                    y = _conv_pass(x, dec.up[lvl].upsample.conv, ctx, mode="up", tile_scale=scale)
                    x.close()
                    x = y

            def sink(y0, x0, t, i=i):
                t = t.float().cpu()
                if as_u8:
                    u8 = ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                    view[i, y0:y0 + t.shape[1], x0:x0 + t.shape[2]] = rearrange(u8, "c h w -> h w c")
                else:
                    view[i, :, y0:y0 + t.shape[1], x0:x0 + t.shape[2]] = t

            _conv_pass(x, dec.conv_out, ctx, pre=_norm_silu(dec.norm_out, x), sink=sink, tile_scale=scale)
            x.close()
    return out


def encode_tiled(first_stage, x: torch.Tensor, tile: int = 512, ram_budget: int | None = None,
                 spill_dir: str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Seamless tiled encode of x in [-1,1] (B,3,H,W; H,W multiples of the factor): KL posterior mean (a sample when
    a generator is given), VQ unquantized features, both unscaled, like first_stage.encode before scale_factor."""
    enc = first_stage.encoder
    f = 2 ** (len(enc.down) - 1)
    ctx = _Ctx(enc, tile // f if tile >= f else 1, ram_budget, spill_dir)
    qc = getattr(first_stage, "quant_conv", None)
    res = []
    with torch.inference_mode():
        for i in range(x.shape[0]):
            h = _conv_pass(_from_tensor(x[i].float(), ctx), enc.conv_in, ctx, tile_scale=f)
            scale = float(f)
            for level in enc.down:
                h = _blocks(level, h, ctx, scale)
                if hasattr(level, "downsample"):
                    scale /= 2
                    y = _conv_pass(h, level.downsample.conv, ctx, mode="down", tile_scale=scale)
                    h.close()
                    h = y
            h = _mid(enc.mid, h, ctx, scale)
            lat = torch.empty(qc.out_channels if qc is not None else enc.conv_out.out_channels, h.h, h.w)

            def sink(y0, x0, t):
                t = F.conv2d(t[None], qc.weight, qc.bias)[0] if qc is not None else t
                lat[:, y0:y0 + t.shape[1], x0:x0 + t.shape[2]] = t.float().cpu()

            _conv_pass(h, enc.conv_out, ctx, pre=_norm_silu(enc.norm_out, h), sink=sink, tile_scale=scale)
            h.close()
            res.append(lat)
    moments = torch.stack(res)
    if getattr(first_stage, "quantize", None) is not None:
        return moments
    mean, logvar = moments.chunk(2, 1)
    if generator is None:
        return mean
    std = (0.5 * logvar.clamp(-30, 20)).exp()
    return mean + std * torch.randn(mean.shape, generator=generator)


# ---------------------------------------------------------------- memory estimates


def unet_step_bytes(unet, latent_h: int, latent_w: int, batch: int = 2, dtype_bytes: int = 4) -> int:
    """Rough peak bytes of one UNet forward (weights + widest activations + attention matrices) for a UNetConfig."""
    n_params = 0.86e9 * (unet.model_channels / 320) ** 2
    hw = latent_h * latent_w
    act = sum(unet.model_channels * m * hw / 4 ** i for i, m in enumerate(unet.channel_mult)) * 6
    heads = unet.num_heads if unet.num_heads > 0 else max(1, unet.model_channels // max(unet.num_head_channels, 1))
    attn = max((heads * (hw / 4 ** i) ** 2 for i in range(len(unet.channel_mult))
                if 2 ** i in unet.attention_resolutions), default=0)
    return int(n_params * dtype_bytes + batch * (act + min(attn, 4096 * hw)) * dtype_bytes)


def decode_bytes(ae, height: int, width: int, tiled: bool = False, tile: int = 64, dtype_bytes: int = 4) -> int:
    """Rough peak bytes of an untiled (or tiled) autoencoder decode at image size height x width."""
    f = ae.factor
    n_params = 85e6 * (ae.ch / 128) ** 2 * dtype_bytes
    if tiled:
        side = tile * f
        return int(n_params + 4 * ae.ch * ae.ch_mult[0] * side * side * dtype_bytes + 3 * height * width * 4)
    hw = height * width
    latent = hw / (f * f)
    attn = latent * latent * dtype_bytes if ae.attn_type != "none" else 0
    return int(n_params + 4 * ae.ch * ae.ch_mult[0] * hw * dtype_bytes + attn)


def memory_budget(device: str | torch.device = "cpu", budget_bytes: int | None = None) -> int:
    """Bytes available: the explicit budget, else CUDA free memory, else 70% of MemAvailable."""
    if budget_bytes:
        return int(budget_bytes)
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0] * 0.9)
    return _default_ram_budget() * 8 * 7 // 10


def should_tile(height: int, width: int, model, budget_bytes: int | None = None, batch: int = 1,
                device: str | torch.device = "cpu", dtype_bytes: int = 4) -> bool:
    """Automatic choice: tile when the UNet step or the untiled decode of this request would exceed the budget."""
    budget = memory_budget(device, budget_bytes)
    f = model.first_stage.factor
    step = unet_step_bytes(model.unet, height // f, width // f, 2 * batch, dtype_bytes)
    dec = decode_bytes(model.first_stage, height, width, dtype_bytes=dtype_bytes)
    return max(step, dec) > budget
