"""Tiny configs of every UNet / first-stage variant of the LDM and SD families: shapes, keys and semantics."""
from __future__ import annotations

import math

import pytest
import torch

from engine.config import AutoencoderConfig, UNetConfig
from engine.models.attention import AttentionBlock, SpatialTransformer
from engine.models.diffusion_model import ResBlock, UNetModel, timestep_embedding
from engine.models.first_stage_model import AttnBlock, AutoencoderKL, DiagonalGaussianDistribution, VQModel, make_first_stage

torch.set_num_threads(1)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5 if p.ndim > 1 else 10))
    return module


ST = dict(use_spatial_transformer=True, legacy=False)
VARIANTS = {
    "txt2img-1p4B": UNetConfig(4, 4, 32, 1, (2, 1), (1, 2), num_heads=8, context_dim=40, **ST),
    "text2img256": UNetConfig(3, 3, 32, 1, (4, 2), (1, 2, 3), num_head_channels=32, context_dim=24, **ST),
    "layout2img": UNetConfig(3, 3, 32, 1, (4, 2), (1, 2, 3), num_head_channels=32, transformer_depth=2,
                             context_dim=16, **ST),
    "cin256": UNetConfig(4, 4, 32, 1, (2, 1), (1, 2), num_head_channels=16, context_dim=32, **ST),
    "semantic (concat 6, AttentionBlock heads)": UNetConfig(6, 3, 32, 1, (32, 16, 8), (1, 2, 4), num_heads=8),
    "bsr_sr (concat 6, AttentionBlock head channels)": UNetConfig(6, 3, 32, 1, (4,), (1, 2, 2), num_head_channels=32),
    "inpainting_big (concat 7, resblock_updown)": UNetConfig(7, 3, 32, 1, (4, 2), (1, 2, 3), num_heads=8,
                                                             resblock_updown=True),
    "scale-shift + new attention heads": UNetConfig(3, 3, 32, 1, (2,), (1, 2), num_heads=4, num_heads_upsample=2,
                                                    use_scale_shift_norm=True, legacy=False),
    "sd1-inpainting (hybrid 9)": UNetConfig(9, 4, 32, 1, (2, 1), (1, 2), num_heads=8, context_dim=64, **ST),
    "sd2-inpainting (hybrid 9, linear)": UNetConfig(9, 4, 32, 1, (2, 1), (1, 2), num_head_channels=16, context_dim=48,
                                                    use_linear_in_transformer=True, **ST),
    "x4-upscaler (7, label_emb)": UNetConfig(7, 4, 32, 1, (2, 4), (1, 2, 2), num_heads=8, context_dim=40,
                                             use_linear_in_transformer=True, num_classes=1000,
                                             disable_self_attentions=(True, True, False), **ST),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_unet_variant_forward_shape(name):
    cfg = VARIANTS[name]
    model = randomize_(UNetModel(cfg)).eval()
    x = torch.randn(2, cfg.in_channels, 16, 24)
    ctx = torch.randn(2, 5, cfg.context_dim) if cfg.context_dim else None
    y = torch.tensor([0, 350]) if cfg.num_classes else None
    with torch.inference_mode():
        out = model(x, torch.tensor([1, 999]), ctx, y=y)
        out_t = model(x, torch.tensor([500, 999]), ctx, y=y)
    assert out.shape == (2, cfg.out_channels, 16, 24)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out_t[0]), "timestep must change the output"
    keys = model.state_dict().keys()
    assert any(k.startswith("input_blocks.0.0.weight") for k in keys)
    assert model.state_dict()["input_blocks.0.0.weight"].shape[1] == cfg.in_channels
    assert ("label_emb.weight" in keys) == (cfg.num_classes is not None)
    assert all(k.split(".")[0] in {"time_embed", "label_emb", "input_blocks", "middle_block", "output_blocks", "out"}
               for k in keys)


def test_context_changes_the_output():
    model = randomize_(UNetModel(VARIANTS["txt2img-1p4B"])).eval()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([10])
    with torch.inference_mode():
        a, b = model(x, t, torch.randn(1, 3, 40)), model(x, t, torch.randn(1, 3, 40))
    assert not torch.allclose(a, b)


def test_label_required_iff_class_conditional():
    model = UNetModel(VARIANTS["x4-upscaler (7, label_emb)"])
    with pytest.raises(ValueError):
        model(torch.randn(1, 7, 8, 8), torch.tensor([1]), torch.randn(1, 2, 40))
    assert isinstance(model.label_emb, torch.nn.Embedding) and model.label_emb.num_embeddings == 1000


def test_sequential_label_emb_takes_a_vector_under_sdxl_key_paths():
    cfg = UNetConfig(4, 4, 32, 1, (2,), (1, 2), num_head_channels=32, use_spatial_transformer=True, context_dim=24,
                     num_classes="sequential", adm_in_channels=24)
    model = UNetModel(cfg).eval()
    sd = model.state_dict()
    assert sd["label_emb.0.0.weight"].shape == (128, 24) and sd["label_emb.0.2.weight"].shape == (128, 128)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 24)
    with torch.no_grad():
        a, b = model(x, t, ctx, y=torch.zeros(2, 24)), model(x, t, ctx, y=torch.ones(2, 24))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError):
        UNetModel(UNetConfig(4, 4, 32, 1, (2,), (1, 2), num_head_channels=32, num_classes="sequential"))


def test_cross_attention_only_levels_take_context_in_attn1():
    sd = UNetModel(VARIANTS["x4-upscaler (7, label_emb)"]).state_dict()
    assert sd["input_blocks.3.1.transformer_blocks.0.attn1.to_k.weight"].shape[1] == 40
    assert sd["input_blocks.5.1.transformer_blocks.0.attn1.to_k.weight"].shape[1] == 64
    assert sd["middle_block.1.transformer_blocks.0.attn1.to_k.weight"].shape[1] == 64


def test_attention_block_head_counts():
    sem = UNetModel(VARIANTS["semantic (concat 6, AttentionBlock heads)"])
    attn = [m for m in sem.modules() if isinstance(m, AttentionBlock)]
    assert len(attn) == 1 and attn[0] is sem.middle_block[1] and attn[0].num_heads == 8
    bsr = UNetModel(VARIANTS["bsr_sr (concat 6, AttentionBlock head channels)"])
    assert {m.num_heads for m in bsr.modules() if isinstance(m, AttentionBlock)} == {2}
    ups = UNetModel(VARIANTS["scale-shift + new attention heads"])
    assert ups.input_blocks[3][1].num_heads == 4 and ups.output_blocks[0][1].num_heads == 4
    legacy = UNetModel(UNetConfig(3, 3, 32, 1, (2,), (1, 2), num_heads=4, num_heads_upsample=2))
    assert legacy.input_blocks[3][1].num_heads == 4 and legacy.output_blocks[0][1].num_heads == 2


def test_spatial_transformer_head_width():
    m = UNetModel(VARIANTS["sd2-inpainting (hybrid 9, linear)"])
    st = m.input_blocks[3][1]
    assert isinstance(st, SpatialTransformer) and isinstance(st.proj_in, torch.nn.Linear)
    assert st.transformer_blocks[0].attn1.heads == 64 // 16
    st1 = UNetModel(VARIANTS["sd1-inpainting (hybrid 9)"]).input_blocks[1][1]
    assert isinstance(st1.proj_in, torch.nn.Conv2d) and st1.transformer_blocks[0].attn1.heads == 8


def test_resblock_updown_keys():
    keys = UNetModel(VARIANTS["inpainting_big (concat 7, resblock_updown)"]).state_dict().keys()
    assert "input_blocks.3.0.in_layers.2.weight" in keys and not any(".op." in k for k in keys)
    assert "output_blocks.1.2.emb_layers.1.weight" in keys and "output_blocks.3.2.in_layers.2.weight" in keys
    plain = UNetModel(VARIANTS["semantic (concat 6, AttentionBlock heads)"]).state_dict().keys()
    assert "input_blocks.2.0.op.weight" in plain and "output_blocks.1.1.conv.weight" in plain


def reference_legacy_attention(block: AttentionBlock, x: torch.Tensor, new_order: bool) -> torch.Tensor:
    """QKV attention written out with matmuls: legacy splits heads first, new order splits q/k/v first."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    qkv = block.qkv(block.norm(flat))
    heads, ch = block.num_heads, c // block.num_heads
    if new_order:
        q, k, v = (t.reshape(b * heads, ch, h * w) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * ch, h * w).split(ch, dim=1)
    weight = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(ch), dim=-1)
    a = (v @ weight.transpose(1, 2)).reshape(b, c, h * w)
    return (flat + block.proj_out(a)).reshape(b, c, h, w)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_matches_written_out_reference(new_order):
    block = randomize_(AttentionBlock(64, num_heads=4, use_new_attention_order=new_order)).eval()
    x = torch.randn(2, 64, 5, 6)
    with torch.no_grad():
        ours, ref = block(x), reference_legacy_attention(block, x, new_order)
        other = reference_legacy_attention(block, x, not new_order)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, other, atol=1e-3)


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0.0, 3.0, 250.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb, torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1))
    assert timestep_embedding(t, 7).shape == (3, 7) and (timestep_embedding(t, 7)[:, -1] == 0).all()


def test_scale_shift_resblock_uses_film():
    block = randomize_(ResBlock(32, 16, 64, use_scale_shift_norm=True)).eval()
    assert block.emb_layers[1].out_features == 128
    x, e = torch.randn(1, 32, 4, 4), torch.randn(1, 16)
    with torch.no_grad():
        emb = block.emb_layers(e)[:, :, None, None]
        scale, shift = emb.chunk(2, 1)
        h = block.in_layers(x)
        h = block.out_layers[0](h) * (1 + scale) + shift
        ref = block.skip_connection(x) + block.out_layers[3](torch.nn.functional.silu(h))
        torch.testing.assert_close(block(x, e), ref, atol=1e-5, rtol=1e-5)


def test_channels_last_and_bfloat16_run():
    cfg = VARIANTS["sd1-inpainting (hybrid 9)"]
    model = randomize_(UNetModel(cfg)).eval()
    x, t, ctx = torch.randn(1, 9, 16, 16), torch.tensor([7]), torch.randn(1, 4, 64)
    with torch.inference_mode():
        ref = model(x, t, ctx)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t, ctx)
        bf = model.to(torch.bfloat16)(x, t, ctx)
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)
    assert bf.dtype == torch.bfloat16 and (bf.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.parametrize("make", [lambda: AttnBlock(64), lambda: AttentionBlock(64, num_heads=2),
                                  lambda: SpatialTransformer(64, 2, 32, context_dim=16),
                                  lambda: SpatialTransformer(64, 2, 32, context_dim=16, use_linear=True)],
                         ids=["AttnBlock", "AttentionBlock", "SpatialTransformer", "SpatialTransformer-linear"])
def test_attention_layers_keep_the_memory_format(make):
    layer = randomize_(make()).eval()
    x, ctx = torch.randn(2, 64, 6, 5), torch.randn(2, 3, 16)
    run = (lambda t: layer(t, ctx)) if isinstance(layer, SpatialTransformer) else layer
    with torch.inference_mode():
        a, b = run(x), run(x.to(memory_format=torch.channels_last))
    assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


VQ = AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, double_z=False, ch=32, ch_mult=(1, 2, 2),
                       num_res_blocks=1, attn_resolutions=(64,), resolution=64, n_embed=16)
KL = AutoencoderConfig(kind="kl", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32)


def test_vq_round_trip_shapes_any_multiple_of_factor():
    vq = randomize_(make_first_stage(VQ)).eval()
    assert isinstance(vq, VQModel) and VQ.factor == 4
    x = torch.rand(2, 3, 24, 40) * 2 - 1
    with torch.inference_mode():
        h = vq.encode(x)
        assert h.shape == (2, 3, 6, 10)
        assert vq.decode(h).shape == x.shape


def test_vq_decode_quantizes_to_nearest_codebook_vector():
    vq = randomize_(VQModel(VQ)).eval()
    with torch.inference_mode():
        h = vq.encode(torch.rand(1, 3, 16, 20) * 2 - 1)
        codes = vq.quantize.embedding.weight
        dist = ((h.permute(0, 2, 3, 1)[..., None, :] - codes) ** 2).sum(-1)
        nearest = codes[dist.argmin(-1)].permute(0, 3, 1, 2)
        torch.testing.assert_close(vq.quantize(h), nearest)
        quantized = vq.decode(h)
        torch.testing.assert_close(quantized, vq.decode(nearest, force_not_quantize=True))
        torch.testing.assert_close(quantized, vq.decode(nearest))
        assert not torch.allclose(quantized, vq.decode(h, force_not_quantize=True), atol=1e-4)


def test_kl_posterior_and_shapes():
    kl = randomize_(make_first_stage(KL)).eval()
    assert isinstance(kl, AutoencoderKL)
    with torch.inference_mode():
        post = kl.encode(torch.rand(1, 3, 16, 24) * 2 - 1)
        assert isinstance(post, DiagonalGaussianDistribution) and post.mean.shape == (1, 4, 8, 12)
        assert post.mode() is post.mean
        torch.testing.assert_close(post.std, torch.exp(0.5 * post.logvar))
        a = post.sample(torch.Generator().manual_seed(1))
        b = post.sample(torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, post.mean)
        assert kl.decode(a).shape == (1, 3, 16, 24)


def test_autoencoder_key_layout():
    sd = AutoencoderKL(KL).state_dict()
    assert sd["quant_conv.weight"].shape[:2] == (8, 8) and sd["post_quant_conv.weight"].shape[:2] == (4, 4)
    assert "encoder.down.0.attn.0.q.weight" not in sd and "encoder.down.1.attn.0.q.weight" in sd
    assert "encoder.down.0.downsample.conv.weight" in sd and "encoder.down.1.downsample.conv.weight" not in sd
    assert sd["decoder.up.1.block.0.conv1.weight"].shape[:2] == (64, 64)
    assert sd["decoder.up.0.block.0.conv1.weight"].shape[:2] == (32, 64)
    assert "decoder.up.0.block.0.nin_shortcut.weight" in sd and "decoder.up.1.upsample.conv.weight" in sd
    assert "decoder.up.0.upsample.conv.weight" not in sd and "decoder.up.1.attn.1.proj_out.weight" in sd
    assert "encoder.mid.attn_1.k.weight" in sd and sd["decoder.mid.attn_1.proj_out.weight"].shape == (64, 64, 1, 1)


def test_kl_attn_type_none_has_no_attention_keys():
    cfg = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), attn_type="none")
    model = AutoencoderKL(cfg).eval()
    assert not [k for k in model.state_dict() if "attn" in k]
    with torch.inference_mode():
        assert model.decode(torch.randn(1, 4, 4, 4)).shape == (1, 3, 8, 8)
    vq_none = VQModel(AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, double_z=False, ch=32, ch_mult=(1, 2),
                                        num_res_blocks=1, attn_type="none", n_embed=8))
    assert not [k for k in vq_none.state_dict() if "attn" in k]
