"""Winograd F(4x4, 3x3) convolution (Lavin & Gray 2016) for fp32 CPU inference: 4x fewer multiplications than a
direct 3x3 convolution, as 36 batched GEMMs between input and weight transforms; tiles are processed in row chunks
through reused per-thread buffers, so memory stays bounded and no fresh pages are touched per call."""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.attention import silu
from engine.models.onednn import packed_conv, reorder_weight

_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


def _kron(a, b) -> torch.Tensor:
    return torch.kron(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).float()


BB, GG, AA = _kron(_BT, _BT), _kron(_G, _G), _kron(_AT, _AT)  # (36, 36), (36, 9), (16, 36)
# A tile's 6 rows of a nearest-2x-upsampled map are rows (0, 1, 1, 2, 2, 3) of a 4-row low-resolution window, so
# B^T E transforms low-resolution windows directly (the upsampled map is never built).
_E = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
_BTE = (torch.tensor(_BT, dtype=torch.float64) @ torch.tensor(_E, dtype=torch.float64)).tolist()
BB_UP = _kron(_BTE, _BTE)  # (36, 16)

TILE_BYTES = 8 << 20   # input-transform chunk (36 x tiles x C floats) aimed at L3
MAX_WEIGHT = 64 << 20  # transformed weight (36 x C x K floats) built per call into a reused buffer
MIN_CHANNELS = 128
MIN_CALL_TILES = 32    # fewer 4x4 output tiles per call: the weight transform outweighs the saving, use oneDNN
MIN_TILES = 256       # tiles per chunk, so the transformed weight is not re-read too often

_local = threading.local()


def _buffer(name: str, numel: int) -> torch.Tensor:
    """A per-thread float32 scratch buffer that only grows."""
    bufs = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # usable under inference_mode and no_grad alike
            buf = bufs[name] = torch.empty(numel)
    return buf[:numel]


_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _use_count(t: torch.Tensor) -> int:
    return _storage_use_count(t.untyped_storage()._cdata)


_ALONE = _use_count(torch.empty(1)) if _storage_use_count is not None else None  # one tensor (+ the probe's handle)


def _unused(t: torch.Tensor) -> bool:
    return _use_count(t) == _ALONE


def _output(numel: int) -> torch.Tensor:
    """A float32 output tensor of numel elements, carved from the smallest of this thread's earlier outputs that is
    large enough and whose storage nobody else holds any more (fresh pages cost a page fault each on first touch);
    where none fits, the unused ones are freed and a new one is kept."""
    if _storage_use_count is None:
        return torch.empty(numel)
    pool = _local.__dict__.setdefault("outputs", [])
    fits = [t for t in pool if t.numel() >= numel and _unused(t)]
    if fits:
        return min(fits, key=torch.Tensor.numel)[:numel]
    pool[:] = [t for t in pool if not _unused(t)]
    with torch.inference_mode(False):
        t = torch.empty(numel)
    pool.append(t)
    return t


def release_buffers() -> None:
    """Frees this thread's scratch buffers and recycled outputs (after a job)."""
    _local.__dict__.pop("bufs", None)
    _local.__dict__.pop("outputs", None)


def eligible(conv: nn.Conv2d) -> bool:
    """3x3, stride 1, padding 1, ungrouped fp32 convs wide enough to gain, whose transformed weight fits MAX_WEIGHT."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu"
            and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
            and 36 * 4 * conv.in_channels * conv.out_channels <= MAX_WEIGHT)


def transform_weight(w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """G g G^T for every (K, C) filter: (K, C, 3, 3) -> (36, C, K), as a transposed view of a (36, K, C) GEMM."""
    k, c = w.shape[:2]
    u = torch.mm(GG, w.reshape(k * c, 9).t(), out=None if out is None else out.view(36, k * c))
    return u.view(36, k, c).transpose(1, 2)


def group_norm_affine(x: torch.Tensor, norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm as a per-sample, per-channel affine map (scale, shift), each (N, C): channel sums and sums of squares
    about each channel's first value (against cancellation), chunk by chunk in a reused buffer, combined in float64."""
    n, c = x.shape[:2]
    g = norm.num_groups
    flat = x.permute(0, 2, 3, 1).reshape(n, -1, c)
    pivot = flat[:, :1]
    s1 = torch.zeros(n, c, dtype=torch.float64)
    s2 = torch.zeros(n, c, dtype=torch.float64)
    step = max(1, (1 << 18) // c)
    for i in range(0, flat.shape[1], step):
        part = flat[:, i:i + step]
        d = torch.sub(part, pivot, out=_buffer("sq", part.numel()).view(part.shape))
        s1 += d.sum(1)
        s2 += d.square_().sum(1)
    count = flat.shape[1] * (c // g)
    m1 = s1.view(n, g, -1)
    pivots = pivot.reshape(n, g, -1).double()
    mean = (m1 + pivots * flat.shape[1]).sum(2, keepdim=True) / count
    # sum over the group of (x - mean)^2 from each channel's sums about its pivot p: s2 + 2 (p - mean) s1 + N (p - mean)^2
    delta = pivots - mean
    var = ((s2.view(n, g, -1) + 2 * delta * m1 + flat.shape[1] * delta.square()).sum(2, keepdim=True) / count).clamp_min(0)
    scale = (var + norm.eps).rsqrt() * norm.weight.view(g, -1)
    return scale.view(n, c).float(), (norm.bias.view(g, -1) - mean * scale).view(n, c).float()


def conv3x3(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, upsample: bool = False,
            pre: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Zero-padded 3x3 stride-1 convolution of x (N, C, H, W) with w (K, C, 3, 3), of nearest-2x-upsampled x when
    `upsample`, of silu(x * scale + shift) when `pre` = (scale, shift), each (N, C) (a fused GroupNorm + SiLU
    prologue, applied chunk by chunk as the padded input is filled); returns channels_last (N, K, H, W) or (N, K, 2H, 2W)."""
    n, c, h, wd = x.shape
    k = w.shape[0]
    s = 2 if upsample else 1
    oh, ow = s * h, s * wd
    th, tw = -(-oh // 4), -(-ow // 4)
    win, step, bt = (4, 2, BB_UP) if upsample else (6, 4, BB)  # low-res window per tile, its stride, transform
    u = transform_weight(w, _buffer("u", 36 * c * k))
    out = _output(n * 16 * th * tw * k).view(n, 4 * th, 4 * tw, k)
    rows = min(th, max(TILE_BYTES // (36 * 4 * c * n * tw), -(-MIN_TILES // (n * tw)), 1))
    grid = out.view(n, th, 4, tw, 4, k)
    src = x.permute(0, 2, 3, 1)
    for r0 in range(0, th, rows):
        r1 = min(th, r0 + rows)
        p = n * (r1 - r0) * tw
        xp = _buffer("pad", n * (step * rows + 2) * (step * tw + 2) * c).view(n, step * rows + 2, step * tw + 2, c)
        top, bottom = step * r0 - 1, min(h, step * r1 + 1)
        first, last = max(0, -top), bottom - top
        for edge in (xp[:, :first], xp[:, last:], xp[:, first:last, 0], xp[:, first:last, wd + 1:]):
            edge.zero_()  # the zero padding; the interior is overwritten below
        interior, rows_in = xp[:, first:last, 1:wd + 1], src[:, max(0, top):bottom]
        if pre is None:
            interior.copy_(rows_in)
        else:
            torch.addcmul(pre[1][:, None, None], rows_in, pre[0][:, None, None], out=interior)
            F.silu(interior, inplace=True)
        tiles = xp[:, :step * (r1 - r0) + 2].unfold(1, win, step).unfold(2, win, step).permute(4, 5, 0, 1, 2, 3)
        dy = _buffer("dy", 36 * p * max(c, k))  # the tiles, then (once transformed) the output transform
        d = dy[:win * win * p * c].view(win, win, n, r1 - r0, tw, c)
        d.copy_(tiles)
        v = torch.mm(bt, d.view(win * win, -1), out=_buffer("v", 36 * p * c).view(36, -1)).view(36, p, c)
        m = torch.bmm(v, u, out=_buffer("m", 36 * p * k).view(36, p, k))
        y = torch.mm(AA, m.view(36, -1), out=dy[:16 * p * k].view(16, -1))
        y = y.view(4, 4, n, r1 - r0, tw, k).permute(2, 3, 0, 4, 1, 5)
        dst = grid[:, r0:r1]
        if bias is None:
            dst.copy_(y)
        else:
            torch.add(y, bias, out=dst)
    if 4 * th != oh or 4 * tw != ow:
        out = out[:, :oh, :ow].contiguous()
    return out.permute(0, 3, 1, 2)


class WinogradConv2d(nn.Conv2d):
    """nn.Conv2d computed by conv3x3 (Winograd F(4x4, 3x3)) in fp32 inference. Below MIN_CALL_TILES tiles per call
    its weight switches to oneDNN's packed layout (and back for a larger input), so only one copy is ever held and
    the state_dict stays plain; gradients, autocast and other dtypes go to F.conv2d."""

    def _layout(self, packed: bool, shape) -> None:
        if self.weight.is_mkldnn == packed:
            return
        with torch.inference_mode(False):
            w = self.weight.detach()
            self.weight = nn.Parameter(reorder_weight(w, self, shape) if packed else w.to_dense().contiguous(),
                                       requires_grad=False)

    def _direct(self, x: torch.Tensor) -> bool:
        return x.dtype != torch.float32 or torch.is_autocast_enabled("cpu") or torch.is_grad_enabled() and (
            x.requires_grad or self.weight.requires_grad)

    @staticmethod
    def _small(x: torch.Tensor, tile: int = 4) -> bool:
        """Fewer than MIN_CALL_TILES output tiles, counted on x with `tile` input pixels per tile side."""
        n, _, h, w = x.shape
        return n * -(-h // tile) * -(-w // tile) < MIN_CALL_TILES

    def upsampled(self, x: torch.Tensor) -> torch.Tensor | None:
        """self(nearest 2x upsample of x) without building the upsampled map; None where Winograd does not apply."""
        if self._direct(x) or self._small(x, tile=2):
            return None
        self._layout(False, None)
        return conv3x3(x, self.weight, self.bias, upsample=True)

    def normed(self, x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
        """self(silu(norm(x))) with the GroupNorm + SiLU folded into the Winograd input fill where it applies."""
        if self._direct(x) or self._small(x) or norm.weight is None or x.dtype != norm.weight.dtype:
            return self(silu(norm(x)))
        self._layout(False, None)
        return conv3x3(x, self.weight, self.bias, pre=group_norm_affine(x, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._direct(x):
            self._layout(False, None)
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        small = self._small(x)
        self._layout(small, x.shape)
        return packed_conv(x, self) if small else conv3x3(x, self.weight, self.bias)
