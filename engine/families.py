"""Named presets: the original configs of every CompVis LDM release and Stable Diffusion 1.x/2.x family."""
from __future__ import annotations

from engine.cocostuff import COCO_STUFF_CLASSES
from engine.config import AutoencoderConfig, CondConfig, ModelConfig, ScheduleConfig, UNetConfig
from engine.openimages_classes import OPENIMAGES_CLASS_NAMES

KL_F8 = AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, double_z=True, ch_mult=(1, 2, 4, 4))
KL_F4 = AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, double_z=True, ch_mult=(1, 2, 4))
VQ_F4 = AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, double_z=False, ch_mult=(1, 2, 4), n_embed=8192)
VQ_F4_NOATTN = AutoencoderConfig(
    kind="vq", embed_dim=3, z_channels=3, double_z=False, ch_mult=(1, 2, 4), n_embed=8192, attn_type="none"
)
VQ_F8 = AutoencoderConfig(
    kind="vq", embed_dim=4, z_channels=4, double_z=False, ch_mult=(1, 2, 2, 4), n_embed=16384, attn_resolutions=(32,)
)

SD_SCHEDULE = ScheduleConfig(linear_start=0.00085, linear_end=0.012)
CLIP_L = CondConfig(kind="clip", embed_dim=768, n_layer=12, n_heads=12, vocab_size=49408, tokenizer="clip")
OPENCLIP_H = CondConfig(
    kind="openclip", embed_dim=1024, n_layer=24, n_heads=16, vocab_size=49408, tokenizer="clip", layer="penultimate"
)


def _sd_unet(in_channels: int, context_dim: int, sd2: bool) -> UNetConfig:
    return UNetConfig(
        in_channels=in_channels,
        out_channels=4,
        model_channels=320,
        attention_resolutions=(4, 2, 1),
        channel_mult=(1, 2, 4, 4),
        num_heads=-1 if sd2 else 8,
        num_head_channels=64 if sd2 else -1,
        use_spatial_transformer=True,
        context_dim=context_dim,
        use_linear_in_transformer=sd2,
        legacy=False,
        image_size=32,
    )


PRESETS: dict[str, ModelConfig] = {}


def _add(cfg: ModelConfig) -> None:
    PRESETS[cfg.family] = cfg


_add(ModelConfig(
    family="sd1", description="Stable Diffusion 1.x (v1-inference.yaml)",
    unet=_sd_unet(4, 768, False), first_stage=KL_F8, cond=CLIP_L, conditioning_key="crossattn",
    scale_factor=0.18215, schedule=SD_SCHEDULE, latent_size=64,
))
_add(ModelConfig(
    family="sd1-inpainting", description="Stable Diffusion 1.5 inpainting (v1-inpainting-inference.yaml)",
    unet=_sd_unet(9, 768, False), first_stage=KL_F8, cond=CLIP_L, conditioning_key="hybrid",
    scale_factor=0.18215, schedule=SD_SCHEDULE, latent_size=64,
))
_add(ModelConfig(
    family="sd2", description="Stable Diffusion 2.x base, eps (v2-inference.yaml)",
    unet=_sd_unet(4, 1024, True), first_stage=KL_F8, cond=OPENCLIP_H, conditioning_key="crossattn",
    scale_factor=0.18215, schedule=SD_SCHEDULE, latent_size=64,
))
_add(ModelConfig(
    family="sd2-v", description="Stable Diffusion 2.x 768-v, v-prediction (v2-inference-v.yaml)",
    unet=_sd_unet(4, 1024, True), first_stage=KL_F8, cond=OPENCLIP_H, conditioning_key="crossattn",
    parameterization="v", scale_factor=0.18215, schedule=SD_SCHEDULE, latent_size=96,
))
_add(ModelConfig(
    family="sd2-inpainting", description="Stable Diffusion 2 inpainting (v2-inpainting-inference.yaml)",
    unet=_sd_unet(9, 1024, True), first_stage=KL_F8, cond=OPENCLIP_H, conditioning_key="hybrid",
    scale_factor=0.18215, schedule=SD_SCHEDULE, latent_size=64,
))
_add(ModelConfig(
    family="sd-x4-upscaler", description="Stable Diffusion x4 upscaler (x4-upscaling.yaml)",
    unet=UNetConfig(
        in_channels=7, out_channels=4, model_channels=256, attention_resolutions=(2, 4, 8), channel_mult=(1, 2, 2, 4),
        num_heads=8, use_spatial_transformer=True, context_dim=1024, use_linear_in_transformer=True, legacy=False,
        num_classes=1000, image_size=128, disable_self_attentions=(True, True, True, False),
    ),
    first_stage=KL_F4, cond=OPENCLIP_H, conditioning_key="hybrid-adm", parameterization="v",
    scale_factor=0.08333, schedule=ScheduleConfig(linear_start=0.0001, linear_end=0.02), latent_size=128,
    noise_level_max=350,
))
_add(ModelConfig(
    family="ldm-txt2img-1p4b", description="LDM text-to-image 1.45B (txt2img-1p4B-eval.yaml)",
    unet=UNetConfig(
        in_channels=4, out_channels=4, model_channels=320, attention_resolutions=(4, 2, 1), channel_mult=(1, 2, 4, 4),
        num_heads=8, use_spatial_transformer=True, context_dim=1280, legacy=False, image_size=32,
    ),
    first_stage=KL_F8,
    cond=CondConfig(kind="bert", embed_dim=1280, n_layer=32, vocab_size=30522, max_seq_len=77, tokenizer="bert"),
    scale_factor=0.18215, schedule=SD_SCHEDULE, latent_size=32,
))
_add(ModelConfig(
    family="ldm-text2img256", description="LDM text-to-image on VQ-f4 (models/ldm/text2img256)",
    unet=UNetConfig(
        in_channels=3, out_channels=3, model_channels=192, attention_resolutions=(8, 4, 2), channel_mult=(1, 2, 3, 5),
        num_head_channels=32, use_spatial_transformer=True, context_dim=640,
    ),
    first_stage=VQ_F4,
    cond=CondConfig(kind="bert", embed_dim=640, n_layer=32, vocab_size=30522, max_seq_len=77, tokenizer="bert"),
    schedule=ScheduleConfig(linear_start=0.0015, linear_end=0.0195), latent_size=64,
))
_add(ModelConfig(
    family="ldm-layout2img", description="LDM layout-to-image, OpenImages (models/ldm/layout2img-openimages256)",
    unet=UNetConfig(
        in_channels=3, out_channels=3, model_channels=128, attention_resolutions=(8, 4, 2), channel_mult=(1, 2, 3, 4),
        num_head_channels=32, use_spatial_transformer=True, transformer_depth=3, context_dim=512,
    ),
    first_stage=VQ_F4,
    cond=CondConfig(
        kind="bert", embed_dim=512, n_layer=16, vocab_size=8192, max_seq_len=92, use_tokenizer=False, tokenizer="layout",
        label_names=OPENIMAGES_CLASS_NAMES,
    ),
    schedule=ScheduleConfig(linear_start=0.0015, linear_end=0.0205), latent_size=64,
))
_add(ModelConfig(
    family="ldm-semantic", description="LDM semantic synthesis, COCO-Stuff 182 classes (semantic_synthesis256/512)",
    unet=UNetConfig(
        in_channels=6, out_channels=3, model_channels=128, attention_resolutions=(32, 16, 8), channel_mult=(1, 4, 8),
        num_heads=8,
    ),
    first_stage=VQ_F4,
    cond=CondConfig(kind="spatial", n_stages=2, in_channels=182, out_channels=3, label_names=COCO_STUFF_CLASSES),
    conditioning_key="concat", schedule=ScheduleConfig(linear_start=0.0015, linear_end=0.0205), latent_size=64,
))
_add(ModelConfig(
    family="ldm-bsr-sr", description="LDM-BSR x4 super-resolution (models/ldm/bsr_sr)",
    unet=UNetConfig(
        in_channels=6, out_channels=3, model_channels=160, attention_resolutions=(16, 8), channel_mult=(1, 2, 2, 4),
        num_head_channels=32,
    ),
    first_stage=VQ_F4, cond=CondConfig(kind="identity"), conditioning_key="concat",
    schedule=ScheduleConfig(linear_start=0.0015, linear_end=0.0155), latent_size=64,
))
_add(ModelConfig(
    family="ldm-inpainting-big", description="LDM inpainting (models/ldm/inpainting_big)",
    unet=UNetConfig(
        in_channels=7, out_channels=3, model_channels=256, attention_resolutions=(8, 4, 2), channel_mult=(1, 2, 3, 4),
        num_heads=8, resblock_updown=True,
    ),
    first_stage=VQ_F4_NOATTN, cond=CondConfig(kind="first_stage"), conditioning_key="concat",
    schedule=ScheduleConfig(linear_start=0.0015, linear_end=0.0205), latent_size=64,
))
_add(ModelConfig(
    family="ldm-cin256", description="LDM class-conditional ImageNet on VQ-f8 (models/ldm/cin256)",
    unet=UNetConfig(
        in_channels=4, out_channels=4, model_channels=256, attention_resolutions=(4, 2, 1), channel_mult=(1, 2, 4),
        num_head_channels=32, use_spatial_transformer=True, context_dim=512,
    ),
    first_stage=VQ_F8, cond=CondConfig(kind="class", embed_dim=512, n_classes=1000),
    schedule=ScheduleConfig(linear_start=0.0015, linear_end=0.0195), latent_size=32,
))
_add(ModelConfig(
    family="ldm-cin256-v2", description="LDM class-conditional ImageNet v2 on VQ-f4 (cin256-v2.yaml)",
    unet=UNetConfig(
        in_channels=3, out_channels=3, model_channels=192, attention_resolutions=(8, 4, 2), channel_mult=(1, 2, 3, 5),
        num_heads=1, use_spatial_transformer=True, context_dim=512,
    ),
    first_stage=VQ_F4, cond=CondConfig(kind="class", embed_dim=512, n_classes=1001),
    schedule=ScheduleConfig(linear_start=0.0015, linear_end=0.0195), latent_size=64,
))


def tasks_for(cfg: ModelConfig) -> tuple[str, ...]:
    """The app's tasks a family can serve (mask-blended inpainting works for every non-upscaler)."""
    kind = cfg.cond.kind
    if cfg.conditioning_key == "hybrid-adm" or kind == "identity":
        return ("upscale",)
    if kind == "first_stage" or cfg.unet.in_channels == 9:
        return ("inpaint",)
    if kind == "spatial":
        return ("semantic", "inpaint")
    if kind == "bert" and cfg.cond.tokenizer == "layout":
        return ("layout", "inpaint")
    if kind in ("clip", "openclip", "bert"):
        return ("txt2img", "img2img", "inpaint", "layout", "semantic")
    return ("txt2img", "img2img", "inpaint")


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def tiny(family: str, latent_size: int = 8) -> ModelConfig:
    """A few-thousand-parameter member of a family (same classes, same wiring) for tests and demos."""
    from dataclasses import replace

    cfg = preset(family)
    u, fs, c = cfg.unet, cfg.first_stage, cfg.cond
    ctx = 32 if u.context_dim else None
    unet = replace(
        u, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
        num_heads=2 if u.num_heads > 0 else -1, num_head_channels=16 if u.num_head_channels > 0 else -1,
        transformer_depth=1, context_dim=ctx,
        disable_self_attentions=(True, False) if u.disable_self_attentions else None,
    )
    first = replace(fs, ch=32, ch_mult=(1,) * len(fs.ch_mult), num_res_blocks=1,
                    n_embed=64 if fs.kind == "vq" else 0, attn_resolutions=())
    cond = c
    if c.kind in ("clip", "openclip", "bert"):
        cond = replace(c, embed_dim=32, n_layer=2, n_heads=2)
    elif c.kind == "class":
        cond = replace(c, embed_dim=32)
    return replace(cfg, unet=unet, first_stage=first, cond=cond, latent_size=latent_size)
