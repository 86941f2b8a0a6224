"""Nearest 2x upsampling followed by a 3x3 conv (the autoencoder decoders), computed as four 2x2 sub-pixel convs
on the low-resolution input (Shi et al. 2016, sub-pixel convolution): the same result to float rounding, 16/36 of the
multiply-adds and no upsampled copy of the input."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.winograd import WinogradConv2d


# Output row parity a reads low-res rows (i-1, i) for a=0 and (i, i+1) for a=1; these are the 3x3 taps each sums.
_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


def subpixel_weight(w: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) -> (4*O, I, 2, 2) channels-last, blocks ordered by output parity (row, column); each 2x2 tap sums
    its 3x3 taps in float32 (float64 for float64) straight into the output, so the build holds no copy of w."""
    o = w.shape[0]
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    out = torch.empty(4 * o, w.shape[1], 2, 2, dtype=w.dtype, device=w.device, memory_format=torch.channels_last)
    for a, rows in enumerate(_TAPS):
        for b, cols in enumerate(_TAPS):
            block = out[(2 * a + b) * o:(2 * a + b + 1) * o]
            for i, r in enumerate(rows):
                for j, c in enumerate(cols):
                    block[:, :, i, j] = sum(w[:, :, y, x].to(acc) for y in r for x in c)
    return out


def _fused(conv: nn.Conv2d, cache: dict | None) -> tuple:
    """The 2x2 weights, built per call (no resident copy) unless a caller's cache (a tiled decode) keeps them."""
    if cache is not None and ("subpixel", id(conv)) in cache:
        return cache[("subpixel", id(conv))]
    w = conv.weight.detach()
    w = w.to_dense() if w.is_mkldnn else w
    weight = subpixel_weight(w)
    bias = None if conv.bias is None else conv.bias.detach().repeat(4)
    if cache is not None:
        cache[("subpixel", id(conv))] = (weight, bias)
    return weight, bias


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d, padded: bool = False, cache: dict | None = None) -> torch.Tensor:
    """conv(F.interpolate(x, scale_factor=2, mode='nearest')) for a 3x3, stride-1, padding-1 conv; `padded`: x
    already carries a one-pixel halo (a tile of a larger map), which the output then excludes."""
    if torch.is_grad_enabled() and conv.weight.requires_grad:
        up = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return up[..., 2:-2, 2:-2] if padded else up
    if not padded and isinstance(conv, WinogradConv2d):
        up = conv.upsampled(x)
        if up is not None:
            return up
    weight, bias = _fused(conv, cache)
    y = F.conv2d(x, weight, bias, padding=0 if padded else 1)
    n, _, h, w = x.shape
    h, w = (h - 2, w - 2) if padded else (h, w)
    c = conv.out_channels
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty(n, c, 2 * h, 2 * w, dtype=y.dtype, device=y.device, memory_format=fmt)
    for a in (0, 1):
        for b in (0, 1):
            k = 2 * a + b
            out[:, :, a::2, b::2] = y[:, k * c:(k + 1) * c, a:a + h, b:b + w]
    return out
