"""Attention layers of the LDM UNet (Rombach et al. 2022): cross-attention transformer and the legacy QKV block."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def Normalize(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with 32 groups, as the LDM autoencoder and SpatialTransformer use it."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=eps, affine=True)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (Elfwing et al. 2018), in place when no autograd graph is being recorded."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


def normed_conv(norm: nn.GroupNorm, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv(silu(norm(x))); convs that offer `normed` (Winograd ones) fold the GroupNorm + SiLU into their input."""
    fused = getattr(conv, "normed", None)
    return fused(x, norm) if fused is not None else conv(silu(norm(x)))


def residual(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x + h, reusing h's storage when no autograd graph is being recorded."""
    return h.add_(x) if not torch.is_grad_enabled() and h.shape == x.shape else x + h


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is stored that way, else the default layout."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def like_weights(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """x in the memory format of conv's weight (channels_last models take channels_last inputs)."""
    fmt = conv.__dict__.get("input_format")
    return x.contiguous(memory_format=fmt or memory_format(conv.weight))


def channels_last_(module: nn.Module) -> nn.Module:
    """Conv weights to channels_last in place (oneDNN's NHWC kernels on CPU); other tensors are left alone."""
    return module.to(memory_format=torch.channels_last)


def _version(t: torch.Tensor) -> int:
    """t's in-place write counter (-1 for inference tensors, which have none)."""
    return -1 if t.is_inference() else t._version


class CrossAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017); self-attention when context is None."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Identity())
        self._qkv: tuple = ((), None)

    def _qkv_weight(self) -> torch.Tensor:
        """to_q/to_k/to_v weights stacked for one fused self-attention matmul, cached until any of them changes."""
        ws = (self.to_q.weight, self.to_k.weight, self.to_v.weight)
        key = self._qkv_key()
        if self._qkv[0] != key:
            self._qkv = (key, torch.cat([w.detach() for w in ws]))
        return self._qkv[1]

    def share_qkv_(self) -> bool:
        """Self-attention inference: to_q/to_k/to_v weights become views of one fused tensor (no cached copy)."""
        ws = (self.to_q.weight, self.to_k.weight, self.to_v.weight)
        if len({w.shape[1] for w in ws}) != 1 or any(w.requires_grad or w.is_meta for w in ws):
            return False
        fused = torch.cat([w.detach() for w in ws])
        n = ws[0].shape[0]
        for i, lin in enumerate((self.to_q, self.to_k, self.to_v)):
            lin.weight = nn.Parameter(fused[i * n:(i + 1) * n], requires_grad=False)
        self._qkv = (self._qkv_key(), fused)
        return True

    def _qkv_key(self) -> tuple:
        return tuple((w.data_ptr(), _version(w), w.dtype, w.device)
                     for w in (self.to_q.weight, self.to_k.weight, self.to_v.weight))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            w = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight]) if torch.is_grad_enabled() \
                else self._qkv_weight()
            q, k, v = rearrange(F.linear(x, w), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        else:
            q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads)
                       for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        if torch.is_grad_enabled():
            return h * F.gelu(gate)
        return h.mul_(F.gelu(gate))


class FeedForward(nn.Module):
    """Transformer MLP with a GEGLU input projection (net.0.proj, net.2)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention, GEGLU MLP."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int | None = None,
                 disable_self_attn: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, context_dim if disable_self_attn else None, n_heads, d_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = residual(self.attn1(self.norm1(x), context if self.disable_self_attn else None), x)
        x = residual(self.attn2(self.norm2(x), context), x)
        return residual(self.ff(self.norm3(x)), x)


class SpatialTransformer(nn.Module):
    """LDM SpatialTransformer: GroupNorm, 1x1 conv (or Linear) in, transformer blocks over pixels, projection out."""

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, context_dim: int | None = None,
                 disable_self_attn: bool = False, use_linear: bool = False):
        super().__init__()
        inner = n_heads * d_head
        self.use_linear = use_linear
        self.norm = Normalize(in_channels)
        self.proj_in = nn.Linear(in_channels, inner) if use_linear else nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, n_heads, d_head, context_dim, disable_self_attn) for _ in range(depth))
        self.proj_out = nn.Linear(inner, in_channels) if use_linear else nn.Conv2d(inner, in_channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.norm(x)
        if not self.use_linear:
            y = self.proj_in(y)
        y = rearrange(y, "b c h w -> b (h w) c").contiguous()
        if self.use_linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.use_linear:
            y = self.proj_out(y)
        y = rearrange(y, "b (h w) c -> b c h w", h=h, w=w).contiguous(memory_format=memory_format(x))
        if not self.use_linear:
            y = self.proj_out(y)
        return residual(y, x)


class AttentionBlock(nn.Module):
    """ADM self-attention block (Dhariwal & Nichol 2021) over flattened pixels; legacy order splits heads before q/k/v."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        if self.num_heads < 1 or channels % self.num_heads:
            raise ValueError(f"{channels} channels cannot be split into {self.num_heads} heads")
        self.new_order = use_new_attention_order
        self.norm = nn.GroupNorm(32, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        flat = rearrange(x, "b c h w -> b c (h w)")
        qkv = self.qkv(self.norm(flat))
        pattern = "b (three h d) t -> three b h t d" if self.new_order else "b (h three d) t -> three b h t d"
        q, k, v = rearrange(qkv, pattern, three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj_out(rearrange(out, "b h t d -> b (h d) t"))
        out = rearrange(residual(out, flat), "b c (h w) -> b c h w", h=h, w=w)
        return out.contiguous(memory_format=memory_format(x))
