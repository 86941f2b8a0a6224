"""CPU inference layout: channels_last activations and convolution weights pre-packed once into oneDNN's blocked
format (what torch.compile's freezing pass does), so no weight reorder runs on every call."""
from __future__ import annotations

import torch
from torch import nn

from engine.models.attention import memory_format


class PackedConv2d(nn.Conv2d):
    """nn.Conv2d whose weight is an opaque oneDNN tensor; state_dict() still yields the plain weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_conv(x, self)


def packed_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(x) for a conv whose weight is already in oneDNN's packed layout."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
        "none", [], None)


def reorder_weight(w: torch.Tensor, conv: nn.Conv2d, size) -> torch.Tensor:
    """w in oneDNN's blocked layout for conv's geometry, planned for inputs of `size`."""
    return torch.ops.mkldnn._reorder_convolution_weight(
        w.contiguous(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(size))


def _dense_state_dict(module: nn.Module, state: dict, prefix: str, _meta) -> None:
    key = prefix + "weight"
    if key in state and state[key].is_mkldnn:
        state[key] = state[key].to_dense()


def packable(dtype: torch.dtype = torch.float32) -> bool:
    """oneDNN can hold weights of this dtype packed: bf16 needs a CPU with oneDNN's bf16 kernels (AVX-512 BW/VL/DQ or
    AVX-NE-CONVERT); elsewhere bf16 convs stay plain (PyTorch's own, slower path) instead of failing at load."""
    if not (torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()):
        return False
    return dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_convs_(module: nn.Module, spatial: int = 16, winograd: bool = True) -> int:
    """Packs every plain zero-padded kxk (k > 1) nn.Conv2d of an inference-only CPU module in place, or makes it a
    WinogradConv2d where winograd.eligible (wide fp32 3x3); returns how many were changed."""
    from engine.models.winograd import WinogradConv2d, eligible

    if not packable():
        return 0
    dtypes = (torch.float32, torch.bfloat16) if packable(torch.bfloat16) else (torch.float32,)
    n = 0
    for m in module.modules():
        if type(m) is not nn.Conv2d or m.padding_mode != "zeros" or isinstance(m.padding, str) or m.kernel_size == (1, 1):
            continue  # 1x1 convs packed for one size run up to 100x slower at others (oneDNN re-plans per call)
        w = m.weight.detach()
        if w.device.type != "cpu" or w.dtype not in dtypes or w.requires_grad:
            continue
        m.__dict__["input_format"] = memory_format(w)
        if winograd and eligible(m):
            m.weight = nn.Parameter(w.contiguous(), requires_grad=False)
            m.__class__ = WinogradConv2d
            m._register_state_dict_hook(_dense_state_dict)
            n += 1
            continue
        m.weight = nn.Parameter(reorder_weight(w, m, [2, m.in_channels, spatial, spatial]), requires_grad=False)
        m.__class__ = PackedConv2d
        m._register_state_dict_hook(_dense_state_dict)
        n += 1
    return n


def unpack_convs_(module: nn.Module) -> nn.Module:
    """Undoes pack_convs_ (before moving the module to another device or dtype)."""
    from engine.models.winograd import WinogradConv2d

    for m in module.modules():
        if isinstance(m, (PackedConv2d, WinogradConv2d)):
            w = m.weight.detach()
            w = (w.to_dense() if w.is_mkldnn else w).contiguous(
                memory_format=m.__dict__.pop("input_format", torch.contiguous_format))
            m.weight = nn.Parameter(w, requires_grad=False)
            m.__class__ = nn.Conv2d
    return module


def cpu_inference_layout_(module: nn.Module, pack: bool = True) -> nn.Module:
    """channels_last convs plus (for inference) pre-packed conv weights."""
    module.to(memory_format=torch.channels_last)
    if pack:
        pack_convs_(module)
    return module
