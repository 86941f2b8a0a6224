"""Typed configuration of every LDM component; presets per family live in engine/families.py."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Parameterization = Literal["eps", "v"]
ConditioningKey = Literal["none", "crossattn", "concat", "hybrid", "adm", "hybrid-adm"]


@dataclass(frozen=True)
class UNetConfig:
    """openaimodel.UNetModel arguments (CompVis/latent-diffusion, Stability-AI/stablediffusion)."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_heads: int = -1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_spatial_transformer: bool = False
    transformer_depth: int = 1
    context_dim: int | None = None
    use_linear_in_transformer: bool = False
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    num_classes: int | str | None = None  # "sequential": a vector y through label_emb's MLP (SDXL's ADM input)
    adm_in_channels: int | None = None
    legacy: bool = True
    image_size: int = 64
    disable_middle_self_attn: bool = False
    disable_self_attentions: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class AutoencoderConfig:
    """ddconfig plus the KL (AutoencoderKL) or VQ (VQModelInterface) head."""

    kind: Literal["kl", "vq"] = "kl"
    embed_dim: int = 4
    z_channels: int = 4
    double_z: bool = True
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    attn_type: Literal["vanilla", "none"] = "vanilla"
    n_embed: int = 0

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class CondConfig:
    """cond_stage_model: which conditioner and its size.

    kinds: none, clip (transformers CLIPTextModel, SD1), openclip (SD2, penultimate layer), bert (LDM BERTEmbedder,
    x-transformers layout; use_tokenizer for text, False for the layout box tokens), class (ClassEmbedder),
    spatial (SpatialRescaler over a one-hot label map), identity (super-resolution), first_stage (inpainting_big).
    """

    kind: Literal["none", "clip", "openclip", "bert", "class", "spatial", "identity", "first_stage"] = "none"
    embed_dim: int = 768
    n_layer: int = 12
    n_heads: int = 8
    vocab_size: int = 49408
    max_seq_len: int = 77
    use_tokenizer: bool = True
    tokenizer: Literal["clip", "bert", "world", "layout", "none"] = "none"
    ff_mult: int = 4
    layer: Literal["last", "penultimate"] = "last"
    n_classes: int = 1000
    n_stages: int = 2
    multiplier: float = 0.5
    method: str = "bilinear"
    in_channels: int = 182
    out_channels: int = 3
    bias: bool = False
    label_names: tuple[str, ...] = ()
    vocab: tuple[str, ...] = ()
    empty_layout_uncond: bool = False  # trained with empty-layout dropout: that layout is its CFG unconditional input
    layout_raster: bool = False  # hybrid layout model: LayoutTokenizer.raster of the boxes is also concatenated
    layout_coords: bool = False  # ... with the raster's two box-relative coordinate channels


@dataclass(frozen=True)
class ScheduleConfig:
    """DDPM beta schedule: LDM 'linear' is linear in sqrt(beta)."""

    timesteps: int = 1000
    kind: Literal["linear", "cosine", "sqrt_linear"] = "linear"
    linear_start: float = 0.00085
    linear_end: float = 0.012


@dataclass(frozen=True)
class ModelConfig:
    """One LatentDiffusion checkpoint family: the three parts plus how they are wired."""

    family: str
    unet: UNetConfig
    first_stage: AutoencoderConfig
    cond: CondConfig = field(default_factory=CondConfig)
    conditioning_key: ConditioningKey = "crossattn"
    parameterization: Parameterization = "eps"
    scale_factor: float = 1.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    latent_size: int = 64
    noise_level_max: int = 0
    pooled_context: bool = False  # y is the context's mean over tokens (a "sequential" label_emb; world txt2img)
    description: str = ""

    @property
    def factor(self) -> int:
        return self.first_stage.factor

    @property
    def image_size(self) -> int:
        return self.latent_size * self.factor

    def with_(self, **kw) -> "ModelConfig":
        return replace(self, **kw)


def config_to_dict(cfg: ModelConfig) -> dict:
    """A JSON-ready dict (stored in safetensors metadata under 'latent_canvas.config')."""
    from dataclasses import asdict

    return asdict(cfg)


def config_from_dict(d: dict) -> ModelConfig:
    """Inverse of config_to_dict; unknown keys are ignored so newer files still load."""
    from dataclasses import fields

    def build(cls, data):
        names = {f.name: f for f in fields(cls)}
        kw = {}
        for k, v in data.items():
            if k in names:
                kw[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)

    d = dict(d)
    d["unet"] = build(UNetConfig, d["unet"])
    d["first_stage"] = build(AutoencoderConfig, d["first_stage"])
    d["cond"] = build(CondConfig, d.get("cond", {}))
    d["schedule"] = build(ScheduleConfig, d.get("schedule", {}))
    return build(ModelConfig, d)
