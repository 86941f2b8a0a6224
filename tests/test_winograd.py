"""Winograd F(4x4, 3x3) convolution: equal to F.conv2d to fp32 rounding at every size and chunking, used by
pack_convs_ for wide fp32 3x3 convs only, plain weights in the state_dict, reversible, safe outside inference_mode."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.models import winograd
from engine.models.onednn import PackedConv2d, pack_convs_, packable, unpack_convs_
from engine.models.winograd import WinogradConv2d, conv3x3, eligible

torch.set_num_threads(1)


def _close(out, ref):
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-5, err


@pytest.mark.parametrize("shape", [(1, 8, 16, 16), (2, 5, 7, 9), (3, 4, 1, 1), (1, 6, 4, 13), (2, 3, 21, 6)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_conv3x3_equals_conv2d(shape, bias, layout):
    n, c, h, w = shape
    g = torch.Generator().manual_seed(h * 31 + w)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=layout)
    weight = torch.randn(7, c, 3, 3, generator=g)
    b = torch.randn(7, generator=g) if bias else None
    with torch.inference_mode():
        out = conv3x3(x, weight, b)
    _close(out, F.conv2d(x, weight, b, padding=1))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("min_tiles", [1, 3, 1000])
def test_row_chunks_give_the_same_result(monkeypatch, min_tiles):
    monkeypatch.setattr(winograd, "TILE_BYTES", 1)  # one row of tiles per chunk unless MIN_TILES asks for more
    monkeypatch.setattr(winograd, "MIN_TILES", min_tiles)
    g = torch.Generator().manual_seed(1)
    x, weight, b = torch.randn(2, 6, 23, 18, generator=g), torch.randn(5, 6, 3, 3, generator=g), torch.randn(5, generator=g)
    with torch.no_grad():
        out = conv3x3(x, weight, b)
    _close(out, F.conv2d(x, weight, b, padding=1))


def test_transform_weight_is_g_g_gt_per_filter():
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    g = torch.tensor(winograd._G, dtype=torch.float64)
    u = winograd.transform_weight(w.float())
    assert u.shape == (36, 2, 3)
    for k in range(3):
        for c in range(2):
            torch.testing.assert_close(u[:, c, k].double(), (g @ w[k, c] @ g.T).flatten(), rtol=0, atol=1e-6)


def _net(ch: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                         nn.Conv2d(ch, ch, 3, padding=1, stride=2), nn.Conv2d(ch, ch, 1)).eval().requires_grad_(False)


@pytest.mark.skipif(not packable(), reason="no oneDNN in this torch build")
def test_pack_convs_uses_winograd_for_wide_fp32_3x3_only():
    net = _net(winograd.MIN_CHANNELS).to(memory_format=torch.channels_last)
    plain = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 4, 12, 12)
    with torch.inference_mode():
        ref = net(x)
        pack_convs_(net)
        kinds = [type(m) for m in net]
        assert kinds == [PackedConv2d, nn.SiLU, WinogradConv2d, PackedConv2d, nn.Conv2d]  # 4 in, stride 2, 1x1
        _close(net(x), ref)
    state = net.state_dict()
    assert state.keys() == plain.keys() and all(torch.equal(state[k], plain[k]) for k in plain)
    unpack_convs_(net)
    assert not any(isinstance(m, (WinogradConv2d, PackedConv2d)) for m in net)
    assert net[2].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not packable(), reason="no oneDNN in this torch build")
def test_bf16_and_narrow_convs_stay_direct():
    assert not eligible(nn.Conv2d(winograd.MIN_CHANNELS, winograd.MIN_CHANNELS, 3, padding=1).to(torch.bfloat16))
    assert not eligible(nn.Conv2d(winograd.MIN_CHANNELS // 2, winograd.MIN_CHANNELS, 3, padding=1))
    too_big = int((winograd.MAX_WEIGHT / 144) ** 0.5) + 1
    assert not eligible(nn.Conv2d(too_big, too_big, 3, padding=1))
    assert eligible(nn.Conv2d(too_big - 2, too_big - 2, 3, padding=1))
    net = _net(winograd.MIN_CHANNELS).to(torch.bfloat16)
    pack_convs_(net)
    assert not any(isinstance(m, WinogradConv2d) for m in net)


def test_gradients_and_autocast_fall_back_to_conv2d():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    conv.__class__ = WinogradConv2d
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16


def test_buffers_from_inference_mode_work_under_no_grad_and_per_thread():
    winograd.release_buffers()
    x, w = torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3)
    with torch.inference_mode():
        conv3x3(x, w, None)
    with torch.no_grad():
        _close(conv3x3(x, w, None), F.conv2d(x, w, padding=1))
    seen = []
    t = threading.Thread(target=lambda: seen.append(getattr(winograd._local, "bufs", None)))
    t.start()
    t.join()
    assert seen == [None] and winograd._local.bufs
    winograd.release_buffers()
    assert not hasattr(winograd._local, "bufs")


def test_engine_frees_the_scratch_buffers_after_each_job():
    import numpy as np

    from engine.api import Engine, Request, Result

    seen = []

    def runner(request, ctx, cache):
        seen.append(hasattr(winograd._local, "bufs"))
        with torch.inference_mode():
            conv3x3(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), None)
        seen.append(hasattr(winograd._local, "bufs"))
        return Result(ctx.job_id, (np.zeros((8, 8, 3), np.uint8),))

    engine = Engine(runner=runner)
    try:
        for _ in range(2):
            assert isinstance(engine.wait(engine.submit(Request(prompt="x")), 10), Result)
    finally:
        engine.shutdown()
    assert seen == [False, True, False, True]


@pytest.mark.skipif(not packable(), reason="no oneDNN in this torch build")
def test_small_inputs_switch_the_one_weight_copy_to_onednn_and_back():
    net = _net(winograd.MIN_CHANNELS).to(memory_format=torch.channels_last)
    conv = net[2]
    plain = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(1, winograd.MIN_CHANNELS, 8, 8).contiguous(memory_format=torch.channels_last)  # 4 tiles
    big = torch.randn(2, winograd.MIN_CHANNELS, 16, 16).contiguous(memory_format=torch.channels_last)  # 32 tiles
    with torch.inference_mode():
        ref, ref_big = conv(x), conv(big)
        pack_convs_(net)
        _close(conv(big), ref_big)
        assert not conv.weight.is_mkldnn
        _close(conv(x), ref)
        assert conv.weight.is_mkldnn
        state = net.state_dict()
        _close(conv(big), ref_big)
        assert not conv.weight.is_mkldnn
        conv(x)
    assert all(torch.equal(state[k], plain[k]) for k in plain)
    unpack_convs_(net)
    assert type(conv) is nn.Conv2d and not conv.weight.is_mkldnn and torch.equal(conv.weight, plain["2.weight"])


@pytest.mark.parametrize("shape", [(1, 8, 16, 16), (2, 5, 7, 9), (1, 3, 1, 1), (1, 4, 5, 2)])
def test_upsampled_conv3x3_equals_nearest_then_conv2d(shape):
    g = torch.Generator().manual_seed(shape[2])
    x, weight, b = torch.randn(*shape, generator=g), torch.randn(6, shape[1], 3, 3, generator=g), torch.randn(6, generator=g)
    with torch.inference_mode():
        out = conv3x3(x, weight, b, upsample=True)
    _close(out, F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, b, padding=1))


@pytest.mark.skipif(not packable(), reason="no oneDNN in this torch build")
def test_decoder_upsample_uses_winograd_on_the_low_resolution_input(monkeypatch):
    from engine.models.subpixel import upsample_conv

    conv = _net(winograd.MIN_CHANNELS)[2].to(memory_format=torch.channels_last)
    x = torch.randn(2, winograd.MIN_CHANNELS, 8, 8).contiguous(memory_format=torch.channels_last)
    small = x[:1, :, :4, :4]  # 4 tiles once upsampled: the sub-pixel path
    with torch.inference_mode():
        ref, ref_small = (conv(F.interpolate(t, scale_factor=2.0, mode="nearest")) for t in (x, small))
        pack_convs_(conv)
        calls = []
        monkeypatch.setattr(winograd, "conv3x3", lambda *a, **k: (calls.append(k), conv3x3(*a, **k))[1])
        _close(upsample_conv(x, conv), ref)
        assert calls == [{"upsample": True}]
        _close(upsample_conv(small, conv), ref_small)
        assert len(calls) == 1


@pytest.mark.skipif(not packable(), reason="no oneDNN in this torch build")
def test_optimized_wide_model_matches_its_plain_self_and_decodes_tiled(monkeypatch):
    import copy
    from dataclasses import replace

    from engine.families import tiny
    from engine.models.latent_diffusion import LatentDiffusion
    from engine.random_weights import randomize_
    from engine.tiling import decode_tiled

    monkeypatch.setattr(winograd, "MIN_CHANNELS", 32)
    cfg = tiny("sd1")
    cfg = replace(cfg, first_stage=replace(cfg.first_stage, ch=32, ch_mult=(1, 2)))
    plain = randomize_(LatentDiffusion(cfg), seed=5).eval().requires_grad_(False)
    fast = copy.deepcopy(plain)
    monkeypatch.setattr(LatentDiffusion, "WIDE_CONV", 1)
    fast.optimize_for("cpu")
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) >= 4
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, cfg.unet.in_channels, 24, 20, generator=g)
    ctx, t = torch.randn(2, 5, cfg.unet.context_dim, generator=g), torch.tensor([3, 700])
    with torch.inference_mode():
        _close(fast.model.diffusion_model(z, t, ctx), plain.model.diffusion_model(z, t, ctx))
        lat = torch.randn(1, cfg.first_stage.z_channels, 20, 28, generator=g)
        ref = plain.first_stage_model.decode(lat)
        _close(fast.first_stage_model.decode(lat), ref)
        _close(decode_tiled(fast.first_stage_model, lat, tile=8), ref)


@pytest.mark.parametrize("offset", [0.0, 40.0])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_group_norm_silu_prologue_equals_the_unfused_modules(offset, layout):
    g = torch.Generator().manual_seed(7)
    norm = nn.GroupNorm(4, 8, eps=1e-6)
    conv = WinogradConv2d(8, 6, 3, padding=1)
    with torch.no_grad():
        norm.weight.normal_(generator=g), norm.bias.normal_(generator=g)
    x = (torch.randn(2, 8, 19, 22, generator=g) * 2 + offset).contiguous(memory_format=layout)
    with torch.inference_mode():
        scale, shift = winograd.group_norm_affine(x, norm)
        ref = F.group_norm(x.double(), 4, norm.weight.double(), norm.bias.double(), 1e-6)
        torch.testing.assert_close(x * scale[:, :, None, None] + shift[:, :, None, None], ref.float(), rtol=0, atol=1e-4)
        out = conv.normed(x, norm)
        _close(out, F.conv2d(F.silu(ref).float(), conv.weight, conv.bias, padding=1))


@pytest.mark.skipif(not packable(), reason="no oneDNN in this torch build")
def test_group_norm_silu_prologue_falls_back_where_winograd_does_not_apply():
    norm, conv = nn.GroupNorm(2, 4), WinogradConv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8)  # 4 tiles < MIN_CALL_TILES: oneDNN or F.conv2d, on the modules' own output
    with torch.inference_mode():
        ref = F.conv2d(F.silu(norm(x)), conv.weight, conv.bias, padding=1)
        _close(conv.normed(x, norm), ref)
    x = torch.randn(1, 4, 40, 40, requires_grad=True)
    out = conv.normed(x, norm)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_outputs_are_recycled_only_once_nobody_holds_them():
    if winograd._storage_use_count is None:
        pytest.skip("this torch has no storage use count")
    winograd.release_buffers()
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(1, 4, 16, 16, generator=g), torch.randn(4, 4, 3, 3, generator=g)
    with torch.inference_mode():
        a = conv3x3(x, w, None)
        kept = a[:, :2]  # a view keeps the storage in use after `a` itself is gone
        ptr = a.data_ptr()
        del a
        b = conv3x3(x, w, None)
        assert b.data_ptr() != ptr
        ref = kept.clone()
        del kept
        c = conv3x3(2 * x, w, None)
        assert c.data_ptr() == ptr  # the first output's storage, free again, is reused ...
        torch.testing.assert_close(b[:, :2], ref)  # ... and never the one still held
        _close(c, F.conv2d(2 * x, w, None, padding=1))
        del b, c
        small = conv3x3(x[:, :, :8, :8], w, None)
        assert small.data_ptr() == ptr  # a larger free output serves a smaller one
    winograd.release_buffers()
    assert not hasattr(winograd._local, "outputs")
