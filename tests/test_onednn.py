"""Pre-packed oneDNN conv weights: the same outputs (to float rounding), plain state_dict, reversible, applied by optimize_for."""
from __future__ import annotations

import pytest
import torch

from engine.families import tiny
from engine.models.attention import like_weights
from engine.models.diffusion_model import UNetModel
from engine.models.latent_diffusion import LatentDiffusion
from engine.models.onednn import PackedConv2d, pack_convs_, packable, unpack_convs_
from engine.models.subpixel import subpixel_weight, upsample_conv
from engine.tiling import decode_tiled
from engine.random_weights import randomize_

pytestmark = pytest.mark.skipif(not packable(), reason="no oneDNN in this torch build")
torch.set_num_threads(1)
BF16 = pytest.param(torch.bfloat16, marks=pytest.mark.skipif(not packable(torch.bfloat16),
                                                            reason="this CPU has no oneDNN bf16 kernels"))


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_packed_unet_matches_and_saves_plain_weights(dtype):
    unet = randomize_(UNetModel(tiny("sd1").unet), seed=2).to(dtype).eval().requires_grad_(False)
    unet.to(memory_format=torch.channels_last)
    plain = {k: v.clone() for k, v in unet.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(2, 4, 16, 16, generator=g).to(dtype), torch.randn(2, 5, 32, generator=g).to(dtype), \
        torch.tensor([10, 900])
    with torch.inference_mode():
        ref = unet(x, t, ctx)
        n = pack_convs_(unet)
        out = unet(x, t, ctx)
        odd = unet(x[..., :12, :8], t, ctx)  # packed for 16x16 inputs, still right at another size
    assert n == sum(isinstance(m, PackedConv2d) for m in unet.modules()) > 5
    assert all(m.kernel_size != (1, 1) for m in unet.modules() if isinstance(m, PackedConv2d))  # 1x1 stay plain
    assert any(p.is_mkldnn for p in unet.parameters())
    tol = (1e-5 if dtype == torch.float32 else 2e-2) * ref.abs().max().item()
    torch.testing.assert_close(out, ref, rtol=0, atol=tol)
    unpack_convs_(unet)
    assert not any(isinstance(m, PackedConv2d) for m in unet.modules())
    with torch.inference_mode():
        torch.testing.assert_close(unet(x[..., :12, :8], t, ctx), odd, rtol=0, atol=tol)
    pack_convs_(unet)
    saved = unet.state_dict()
    assert saved.keys() == plain.keys() and all(torch.equal(saved[k], plain[k]) for k in plain)


def test_optimize_for_packs_an_inference_model_only(monkeypatch):
    model = randomize_(LatentDiffusion(tiny("sd1")), seed=1)
    monkeypatch.setattr(LatentDiffusion, "WIDE_CONV", 1)
    model.train().optimize_for("cpu")
    assert not any(isinstance(m, PackedConv2d) for m in model.modules())  # training keeps plain weights
    model.eval().requires_grad_(False).optimize_for("cpu")
    assert any(isinstance(m, PackedConv2d) for m in model.model.modules())
    assert any(isinstance(m, PackedConv2d) for m in model.first_stage_model.modules())
    z = torch.randn(1, model.first_stage_model.cfg.z_channels, 12, 20)
    with torch.inference_mode():  # the tiled decoder reads packed weights too
        torch.testing.assert_close(decode_tiled(model.first_stage_model, z, tile=4), model.first_stage_model.decode(z),
                                   rtol=0, atol=1e-4)
    model.optimize_for("cpu", dtype=torch.bfloat16)  # repacks after the cast, where the CPU has bf16 kernels
    assert all(p.dtype == torch.bfloat16 for p in model.model.parameters())
    assert any(isinstance(m, PackedConv2d) for m in model.model.modules()) == packable(torch.bfloat16)


@pytest.mark.parametrize("bf16_kernels", [False, True])
def test_bf16_convs_stay_plain_and_run_where_onednn_has_no_bf16(monkeypatch, bf16_kernels):
    """On a CPU without oneDNN's bf16 kernels (AVX2 only) a bf16 model loads with plain convs and still runs."""
    if bf16_kernels and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no oneDNN bf16 kernels")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16_kernels)
    unet = randomize_(UNetModel(tiny("sd1").unet), seed=2).to(torch.bfloat16).eval().requires_grad_(False)
    unet.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g).bfloat16(), torch.randn(1, 5, 32, generator=g).bfloat16()
    with torch.inference_mode():
        ref = unet(x, torch.tensor([10]), ctx)
        n = pack_convs_(unet)
        out = unet(x, torch.tensor([10]), ctx)
    assert packable(torch.bfloat16) == bf16_kernels and packable(torch.float32)
    assert (n > 0) == bf16_kernels == any(isinstance(m, PackedConv2d) for m in unet.modules())
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-2 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("packed", [False, True])
def test_subpixel_upsample_conv_equals_nearest_then_conv(dtype, packed):
    g = torch.Generator().manual_seed(4)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1).to(dtype).requires_grad_(False)
    x = torch.randn(2, 6, 7, 9, generator=g).to(dtype)
    with torch.inference_mode():
        ref = conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        if packed:
            pack_convs_(conv)
            x = x.contiguous(memory_format=torch.channels_last)
        out = upsample_conv(x, conv)
    assert out.shape == ref.shape == (2, 5, 14, 18)
    tol = (1e-5 if dtype == torch.float32 else 3e-2) * ref.abs().max().item()
    torch.testing.assert_close(out, ref, rtol=0, atol=tol)
    w = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    w[0, 0, 1, 1] = 1.0  # the centre tap reads x[i, j] in every phase, at the phase's own kernel position
    k = subpixel_weight(w)[:, 0].tolist()
    assert k == [[[0, 0], [0, 1]], [[0, 0], [1, 0]], [[0, 1], [0, 0]], [[1, 0], [0, 0]]]


def test_subpixel_weights_follow_weight_updates_and_a_callers_cache():
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).requires_grad_(False)
    x = torch.randn(1, 3, 4, 4)
    first = upsample_conv(x, conv)
    with torch.no_grad():
        conv.weight.mul_(2)
        conv.bias.mul_(2)
    torch.testing.assert_close(upsample_conv(x, conv), 2 * first)  # nothing stale kept on the module
    cache: dict = {}
    upsample_conv(x, conv, cache=cache)
    assert len(cache) == 1
    with torch.no_grad():
        conv.weight.zero_()
    torch.testing.assert_close(upsample_conv(x, conv, cache=cache), 2 * first)  # the caller's cache is what it holds
