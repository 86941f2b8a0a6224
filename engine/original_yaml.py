"""A user's original LDM/SD config .yaml beside an unusual checkpoint, read into a typed ModelConfig (no `target:` imports)."""
from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

from engine.config import AutoencoderConfig, CondConfig, ModelConfig, ScheduleConfig, UNetConfig
from engine.families import PRESETS

_COND_TARGETS = {
    "FrozenCLIPEmbedder": "clip", "FrozenOpenCLIPEmbedder": "openclip", "BERTEmbedder": "bert",
    "ClassEmbedder": "class", "SpatialRescaler": "spatial", "Identity": "identity",
}


def _pick(cls, params: dict, base):
    names = {f.name for f in fields(cls)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items() if k in names}
    return replace(base, **kw)


def config_from_yaml(path, family_hint: str = "sd1") -> ModelConfig:
    """Map model.params of an original config onto the preset detected from the weights."""
    import yaml

    from engine.checkpoint import CheckpointError

    try:
        doc = yaml.safe_load(Path(path).read_text())
        params = doc["model"]["params"]
    except Exception as e:
        raise CheckpointError(f"{Path(path).name}: unreadable config yaml ({e})") from None
    cfg = PRESETS[family_hint]
    unet = _pick(UNetConfig, params.get("unet_config", {}).get("params", {}), cfg.unet)
    fs_params = params.get("first_stage_config", {}).get("params", {})
    fs_target = params.get("first_stage_config", {}).get("target", "")
    fs = _pick(AutoencoderConfig, {**fs_params.get("ddconfig", {}), **{k: v for k, v in fs_params.items() if k != "ddconfig"}},
               cfg.first_stage)
    fs = replace(fs, kind="vq" if "VQ" in fs_target else "kl" if fs_target else fs.kind)
    cond_cfg = params.get("cond_stage_config", {})
    cond = cfg.cond
    if cond_cfg == "__is_first_stage__":
        cond = CondConfig(kind="first_stage")
    elif cond_cfg == "__is_unconditional__":
        cond = CondConfig(kind="none")
    elif isinstance(cond_cfg, dict):
        kind = _COND_TARGETS.get(cond_cfg.get("target", "").rsplit(".", 1)[-1], cond.kind)
        cp = dict(cond_cfg.get("params") or {})
        if "n_embed" in cp:
            cp["embed_dim"] = cp.pop("n_embed")
        cond = _pick(CondConfig, cp, replace(cond, kind=kind))
    key = params.get("conditioning_key") or ("concat" if params.get("concat_mode") else cfg.conditioning_key)
    sched = _pick(ScheduleConfig, {k: params[k] for k in ("timesteps", "linear_start", "linear_end") if k in params},
                  cfg.schedule)
    return replace(
        cfg, family=cfg.family, unet=unet, first_stage=fs, cond=cond, conditioning_key=key,
        parameterization=params.get("parameterization", cfg.parameterization),
        scale_factor=float(params.get("scale_factor", cfg.scale_factor if fs.kind == "kl" else 1.0)),
        schedule=sched, latent_size=int(params.get("image_size", cfg.latent_size)),
    )
