"""Tiling: grid formula, blend weights, MultiDiffusion denoiser and the seamless tiled autoencoder."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.config import AutoencoderConfig, ModelConfig, UNetConfig
from engine.models.first_stage_model import make_first_stage
from engine.tiling import (TiledDenoiser, _global_attention, blend_weights, crop_spatial, decode_tiled, encode_tiled, n_tiles,
                           should_tile, tile_grid)


@pytest.mark.parametrize("tile,overlap", [(8, 0), (8, 3), (16, 8), (64, 16)])
def test_grid_formula_coverage_and_overlap(tile, overlap):
    for h in (1, 5, 8, 9, 17, 40, 100):
        for w in (3, 16, 33, 64, 130):
            grid = tile_grid(h, w, tile, overlap)
            per_axis = [1 if n <= tile else math.ceil((n - overlap) / (tile - overlap)) for n in (h, w)]
            assert len(grid) == n_tiles(h, w, tile, overlap) == per_axis[0] * per_axis[1]
            cover = torch.zeros(h, w)
            for sy, sx in grid:
                assert sy.stop - sy.start == min(tile, h) and sx.stop - sx.start == min(tile, w)
                cover[sy, sx] += 1
            assert cover.min() >= 1
            ys = sorted({sy.start for sy, _ in grid})
            assert all(b - a <= min(tile, h) - overlap for a, b in zip(ys, ys[1:]))


def test_blend_weights_sum_to_one():
    for h, w, tile, overlap in [(40, 70, 16, 6), (64, 64, 64, 16), (100, 33, 32, 8), (9, 9, 4, 3)]:
        grid = tile_grid(h, w, tile, overlap)
        total = torch.zeros(h, w)
        for (sy, sx), wt in zip(grid, blend_weights(h, w, grid, overlap)):
            assert wt.min() > 0
            total[sy, sx] += wt
        torch.testing.assert_close(total, torch.ones(h, w), rtol=0, atol=1e-6)


def _conv_denoiser(seed=0):
    k = torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(seed)) * 0.2
    return lambda x, sigma, **_: F.conv2d(x, k, padding=1) / (1 + sigma[:, None, None, None])


def test_single_tile_equals_untiled():
    inner = _conv_denoiser()
    x, s = torch.randn(2, 4, 24, 30), torch.tensor([1.0, 2.0])
    torch.testing.assert_close(TiledDenoiser(inner, tile=32, overlap=8)(x, s), inner(x, s), rtol=0, atol=0)


def test_pointwise_denoiser_equal_everywhere():
    inner = lambda x, sigma, **_: torch.tanh(x) * 0.5 - sigma[:, None, None, None]  # noqa: E731
    x, s = torch.randn(2, 4, 40, 57), torch.tensor([0.5, 3.0])
    torch.testing.assert_close(TiledDenoiser(inner, tile=16, overlap=6)(x, s), inner(x, s), rtol=1e-6, atol=1e-6)


def test_conv_denoiser_matches_away_from_tile_edges():
    inner, (h, w), tile, overlap = _conv_denoiser(1), (40, 52), 16, 6
    x, s = torch.randn(1, 4, h, w), torch.tensor([1.0])
    out, ref = TiledDenoiser(inner, tile, overlap, max_batch=3)(x, s), inner(x, s)
    edge = torch.zeros(h, w, dtype=torch.bool)
    for sy, sx in tile_grid(h, w, tile, overlap):
        for y in (sy.start, sy.stop - 1):
            if 0 < y < h - 1:
                edge[y, sx] = True
        for xx in (sx.start, sx.stop - 1):
            if 0 < xx < w - 1:
                edge[sy, xx] = True
    err = (out - ref).abs()[0].amax(0)
    assert err[~edge].max() < 1e-5
    assert err[edge].max() > 1e-4  # the seams are real: the check above can fail


def test_crop_extra_default_and_batching():
    def inner(x, sigma, cond, uncond, scale):
        assert x.shape[0] == cond["c_crossattn"][0].shape[0] == sigma.shape[0]
        return x + scale * cond["c_concat"][0] - uncond["c_concat"][0] + cond["c_crossattn"][0].mean((1, 2))[:, None, None, None]

    x = torch.randn(2, 4, 30, 45)
    extra = dict(cond={"c_concat": [torch.randn(2, 4, 30, 45)], "c_crossattn": [torch.randn(2, 7, 8)]},
                 uncond={"c_concat": [torch.randn(2, 4, 30, 45)]}, scale=2.0)
    s = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(TiledDenoiser(inner, 16, 4)(x, s, **extra), inner(x, s, **extra), rtol=1e-5, atol=1e-5)
    cropped = crop_spatial(extra, (slice(2, 10), slice(5, 9)), (30, 45))
    assert cropped["cond"]["c_concat"][0].shape == (2, 4, 8, 4) and cropped["cond"]["c_crossattn"][0].shape == (2, 7, 8)


def test_custom_crop_and_skip():
    seen = []

    def crop(extra, sl):
        seen.append(sl)
        return {"offset": torch.full((1, 1, 1, 1), float(sl[1].start))}

    inner = lambda x, sigma, offset: x * 0 + offset  # noqa: E731
    x = torch.randn(1, 4, 16, 48)
    skip = lambda sl: sl[1].start >= 32  # noqa: E731
    out = TiledDenoiser(inner, 16, 0, crop_extra=crop, skip=skip)(x, torch.tensor([1.0]))
    assert len(seen) == 2
    assert torch.equal(out[..., :16], torch.zeros(1, 4, 16, 16)) and torch.equal(out[..., 16:32], torch.full((1, 4, 16, 16), 16.0))
    assert torch.equal(out[..., 32:], x[..., 32:])


def _first_stage(kind):
    torch.manual_seed(0)
    cfg = AutoencoderConfig(kind=kind, embed_dim=3 if kind == "vq" else 4, z_channels=3 if kind == "vq" else 4,
                            double_z=kind == "kl", ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                            attn_resolutions=(16,), resolution=64, n_embed=64 if kind == "vq" else 0)
    return make_first_stage(cfg).eval()


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_tiled_decode_matches_untiled(kind):
    fs = _first_stage(kind)
    assert hasattr(fs.decoder.mid.attn_1, "q")
    z = torch.randn(1, fs.cfg.z_channels, 20, 36)
    with torch.inference_mode():
        ref = fs.decode(z)
    out = decode_tiled(fs, z, tile=8)  # 3 x 5 tiles
    assert out.shape == ref.shape
    assert ((out - ref).abs().max() / 2).item() <= 2 / 255
    spilled = decode_tiled(fs, z, tile=8, ram_budget=0)  # every feature map through a temporary file
    torch.testing.assert_close(spilled, out, rtol=0, atol=2e-5)
    u8 = np.zeros((80, 144, 3), np.uint8)
    decode_tiled(fs, z, tile=8, out=u8)
    ref8 = ((ref[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert np.abs(u8.astype(np.float32) - ref8).max() <= 1
    naive = torch.cat([fs.decode(z[..., i:i + 12]) for i in (0, 12, 24)], -1)  # per-tile norms: visible seams
    assert ((naive - ref).abs().max() / 2).item() > 2 / 255


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_global_attention_chunked_gemm_equals_sdpa(dtype):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(n, 32, generator=g).to(dtype) for n in (700, 20000, 20000))
    k[:, 0] *= 8  # peaky scores, where a missing max-subtraction or scale would show
    ref = torch.nn.functional.scaled_dot_product_attention(*(t[None].double() for t in (q, k, v)))[0]
    out = _global_attention(q, k, v, score_bytes=1 << 20).double()
    if dtype == torch.float32:
        assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    else:  # scores rounded to bf16 (2**-8): a tenth of a percent of the output scale on average
        assert (out - ref).abs().mean().item() <= 1e-3 * ref.abs().max().item()


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_tiled_encode_matches_untiled(kind):
    fs = _first_stage(kind)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.inference_mode():
        ref = fs.encode(x)
    ref = ref.mean if kind == "kl" else ref
    out = encode_tiled(fs, x, tile=16)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


def test_should_tile():
    ae = AutoencoderConfig()
    m = ModelConfig(family="t", unet=UNetConfig(context_dim=768, use_spatial_transformer=True), first_stage=ae)
    assert not should_tile(512, 512, m, budget_bytes=64 << 30)
    assert should_tile(4096, 4096, m, budget_bytes=64 << 30)
    assert should_tile(512, 512, m, budget_bytes=256 << 20)
