"""Parity of engine.models with diffusers on random weights, through diffusers' own single-file converters.

Tolerance: float32, max |ours - diffusers| <= 1e-4 * max |diffusers| (both run the same maths in a different
order; observed differences are around 1e-6 relative).
"""
from __future__ import annotations

import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL as DiffusersAutoencoderKL  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.loaders import single_file_utils as sfu  # noqa: E402

from engine.config import AutoencoderConfig, UNetConfig  # noqa: E402
from engine.models.diffusion_model import UNetModel  # noqa: E402
from engine.models.first_stage_model import AutoencoderKL  # noqa: E402
from engine.random_weights import randomize_  # noqa: E402

RTOL = 1e-4
TINY_VAE = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=32)


def original_config(unet: UNetConfig | None, vae: AutoencoderConfig) -> dict:
    """The LatentDiffusion yaml layout diffusers' create_*_diffusers_config_from_ldm helpers read."""
    ddconfig = dict(double_z=vae.double_z, z_channels=vae.z_channels, resolution=vae.resolution,
                    in_channels=vae.in_channels, out_ch=vae.out_ch, ch=vae.ch, ch_mult=list(vae.ch_mult),
                    num_res_blocks=vae.num_res_blocks, attn_resolutions=list(vae.attn_resolutions))
    params = {"first_stage_config": {"params": {"embed_dim": vae.embed_dim, "ddconfig": ddconfig}}}
    if unet is not None:
        up = dict(in_channels=unet.in_channels, out_channels=unet.out_channels, model_channels=unet.model_channels,
                  attention_resolutions=list(unet.attention_resolutions), num_res_blocks=unet.num_res_blocks,
                  channel_mult=list(unet.channel_mult), transformer_depth=unet.transformer_depth,
                  context_dim=unet.context_dim, use_linear_in_transformer=unet.use_linear_in_transformer,
                  legacy=unet.legacy)
        if unet.num_heads != -1:
            up["num_heads"] = unet.num_heads
        if unet.num_head_channels != -1:
            up["num_head_channels"] = unet.num_head_channels
        if unet.num_classes is not None:
            up["num_classes"] = unet.num_classes
        if unet.disable_self_attentions is not None:
            up["disable_self_attentions"] = list(unet.disable_self_attentions)
        params["unet_config"] = {"params": up}
    return {"model": {"params": params}}


def diffusers_unet(cfg: UNetConfig, ours: UNetModel, meta: bool = False) -> UNet2DConditionModel:
    ckpt = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcfg = sfu.create_unet_diffusers_config_from_ldm(original_config(cfg, TINY_VAE), ckpt, image_size=64)
    converted = sfu.convert_ldm_unet_checkpoint(ckpt, dcfg)
    with torch.device("meta" if meta else "cpu"):
        theirs = UNet2DConditionModel(**dcfg)
    theirs.load_state_dict(converted, strict=True, assign=meta)
    return theirs.eval()


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    scale = theirs.abs().max().item()
    assert scale > 1e-3, "degenerate output: the comparison would prove nothing"
    err = (ours - theirs).abs().max().item()
    assert err <= RTOL * scale, f"max abs diff {err:.3e} > {RTOL} x output scale {scale:.3e}"


SD1 = UNetConfig(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1, attention_resolutions=(2, 1),
                 channel_mult=(1, 2), num_heads=8, use_spatial_transformer=True, context_dim=64, legacy=False)
SD2 = UNetConfig(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1, attention_resolutions=(2, 1),
                 channel_mult=(1, 2), num_head_channels=16, use_spatial_transformer=True, context_dim=48,
                 use_linear_in_transformer=True, legacy=False)
X4 = UNetConfig(in_channels=7, out_channels=4, model_channels=32, num_res_blocks=1, attention_resolutions=(2, 4),
                channel_mult=(1, 2, 2), num_heads=8, use_spatial_transformer=True, context_dim=40, legacy=False,
                use_linear_in_transformer=True, num_classes=1000, disable_self_attentions=(True, True, False))


@pytest.mark.parametrize("cfg", [SD1, SD2, X4], ids=["sd1", "sd2", "x4-upscaler"])
def test_unet_matches_diffusers(cfg: UNetConfig):
    torch.manual_seed(0)
    ours = randomize_(UNetModel(cfg)).eval()
    theirs = diffusers_unet(cfg, ours)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, 16, 16, generator=g)
    t = torch.tensor([3, 871])
    ctx = torch.randn(2, 5, cfg.context_dim, generator=g)
    y = torch.tensor([20, 350]) if cfg.num_classes else None
    with torch.inference_mode():
        a = ours(x, t, ctx, y=y)
        b = theirs(x, t, encoder_hidden_states=ctx, class_labels=y).sample
    assert_close(a, b)


def test_unet_parity_detects_a_wrong_timestep():
    ours = randomize_(UNetModel(SD1)).eval()
    theirs = diffusers_unet(SD1, ours)
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 64)
    with torch.inference_mode():
        a = ours(x, torch.tensor([10]), ctx)
        b = theirs(x, torch.tensor([11]), encoder_hidden_states=ctx).sample
    with pytest.raises(AssertionError):
        assert_close(a, b)


@pytest.fixture(scope="module")
def vae_pair():
    ours = randomize_(AutoencoderKL(TINY_VAE), seed=3).eval()
    ckpt = {f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcfg = sfu.create_vae_diffusers_config_from_ldm(original_config(None, TINY_VAE), ckpt, image_size=32)
    theirs = DiffusersAutoencoderKL(**dcfg)
    theirs.load_state_dict(sfu.convert_ldm_vae_checkpoint(ckpt, dcfg), strict=True)
    return ours, theirs.eval()


def test_kl_encode_matches_diffusers(vae_pair):
    ours, theirs = vae_pair
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.inference_mode():
        a = ours.encode(x)
        b = theirs.encode(x).latent_dist
    assert_close(a.mean, b.mean)
    assert_close(a.std, b.std)


def test_kl_decode_matches_diffusers(vae_pair):
    ours, theirs = vae_pair
    z = torch.randn(2, 4, 16, 8, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        assert_close(ours.decode(z), theirs.decode(z).sample)


SD15 = UNetConfig(in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2, attention_resolutions=(4, 2, 1),
                  channel_mult=(1, 2, 4, 4), num_heads=8, use_spatial_transformer=True, transformer_depth=1,
                  context_dim=768, legacy=False)


def test_full_size_sd15_unet_on_meta_loads_strictly_into_diffusers():
    with torch.device("meta"):
        ours = UNetModel(SD15)
    sd = ours.state_dict()
    theirs = diffusers_unet(SD15, ours, meta=True)
    assert len(theirs.state_dict()) == len(sd) == 686
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
