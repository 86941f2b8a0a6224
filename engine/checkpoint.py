"""Reading, detecting and strictly loading LDM / Stable Diffusion checkpoints with their original key names.

Never runs pickled code: .ckpt files go through torch.load(weights_only=True); .safetensors headers are parsed directly.
"""
from __future__ import annotations

import json
import struct
import zipfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from engine.api import CONTROLNET_NOTE, LORA_NOTE
from engine.config import ModelConfig, config_from_dict, config_to_dict
from engine.families import PRESETS, tasks_for

META_KEY = "latent_canvas.config"
UNET = "model.diffusion_model."
FIRST = "first_stage_model."
COND = "cond_stage_model."
SCHEDULE_KEYS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "lvlb_weights", "logvar",
    "scale_factor",
}
IGNORED_PREFIXES = ("model_ema.", "low_scale_model.", "first_stage_model.loss.", "control_model.")
IGNORED_SUFFIXES = ("text_model.embeddings.position_ids", "model.attn_mask")


LORA_PREFIXES = ("lora_unet_", "lora_te", "unet.", "text_encoder.")


class CheckpointError(Exception):
    """A checkpoint that cannot be used, with a message meant for the user."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path.name}: file not found")
    if path.is_dir():
        raise CheckpointError(f"{path.name}: is a folder, not a checkpoint file (diffusers folders are not supported)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name}: the file is empty")


def _safetensors_header(path: Path) -> tuple[dict, dict]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path.name}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or n > min(size - 8, 100 << 20):
            raise CheckpointError(f"{path.name}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path.name}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: corrupt safetensors header")
    meta = header.pop("__metadata__", None) or {}
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path.name}: truncated safetensors file ({size} bytes, needs {8 + n + end})")
    return {k: tuple(v["shape"]) for k, v in header.items()}, meta


def _torch_load(path: Path) -> dict:
    import torch

    obj = torch_object(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path.name}: not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def torch_object(path: Path):
    """What a torch .ckpt / .pt file holds, unpickled with weights_only (tensors, containers, numbers, strings)."""
    import pickle

    import torch

    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"PK\x03\x04":
            raise CheckpointError(f"{path.name}: corrupt or truncated checkpoint (damaged zip archive)")
        if magic[:1] != b"\x80":
            raise CheckpointError(f"{path.name}: not a checkpoint (neither safetensors nor a torch .ckpt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path.name}: refused to load: the pickle asks to run code or build objects that are not plain tensors "
            f"({str(e).splitlines()[0][:160]}). Convert it to .safetensors with a tool you trust."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path.name}: corrupt or truncated checkpoint ({str(e).splitlines()[0][:160]})") from None
    return obj


def read_shapes(path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Key -> shape and metadata without reading the weights (safetensors header; mmapped ckpt)."""
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors" or _looks_safetensors(path):
        return _safetensors_header(path)
    sd = _torch_load(path)
    return {k: tuple(v.shape) for k, v in sd.items()}, {}


def read_state_dict(path) -> tuple[dict, dict[str, str]]:
    """All tensors of a checkpoint (CPU) and its metadata."""
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors" or _looks_safetensors(path):
        _safetensors_header(path)
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            return load_file(str(path)), meta
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path.name}: corrupt safetensors file ({e})") from None
    return _torch_load(path), {}


def part_state_dict(path, prefix: str) -> dict:
    """A component file's tensors under the component's own key names: the `prefix` part of a whole checkpoint, or
    the file as it is when it holds the component alone (a VAE, a ControlNet)."""
    sd, _ = read_state_dict(path)
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def misfit(sd: dict, expected: dict[str, tuple[int, ...]]) -> tuple[str, str] | None:
    """Why tensors do not load strictly where `expected` (key -> shape) says: ("keys", ...) or ("shape", ...) and a
    phrase for the user; None when every key is there with its shape and nothing else is."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        return "keys", f"{len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[0]}"
    bad = [k for k, shape in expected.items() if tuple(sd[k].shape) != tuple(shape)]
    if bad:
        return "shape", f"{bad[0]} is {tuple(sd[bad[0]].shape)}, the model's {tuple(expected[bad[0]])}"
    return None


def _looks_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < (100 << 20)


def _count_levels(shapes: dict, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def detect(shapes: dict[str, tuple[int, ...]], metadata: dict | None = None, name: str = "") -> ModelConfig:
    """The family of a state dict from its keys and shapes (or its own metadata when the file carries a config)."""
    metadata = metadata or {}
    if META_KEY in metadata:
        return config_from_dict(json.loads(metadata[META_KEY]))
    if any(k.startswith("conditioner.embedders.") for k in shapes):
        raise CheckpointError(f"{name}: this looks like an SDXL checkpoint, which Latent Canvas does not run")
    key_in = UNET + "input_blocks.0.0.weight"
    if key_in not in shapes and any("lora" in k and k.startswith(LORA_PREFIXES) for k in shapes):
        raise CheckpointError(f"{name}: {LORA_NOTE}: put it in the models folder's loras folder and add it to the "
                              f"prompt as <lora:{Path(name).stem}:1>")
    control = ("control_model.input_hint_block.", "input_hint_block.")
    if key_in not in shapes and any(k.startswith(control) for k in shapes):
        raise CheckpointError(f"{name}: {CONTROLNET_NOTE}: put it in the models folder's controlnet folder and choose "
                              f"it under Control")
    if key_in not in shapes:
        hint = ""
        if any(k.startswith(("encoder.", "decoder.")) for k in shapes):
            hint = " It looks like a standalone autoencoder (VAE)."
        elif any(k.startswith(("down_blocks.", "conv_in.", "text_model.")) for k in shapes):
            hint = " It looks like a diffusers-format file."
        raise CheckpointError(f"{name}: not a Latent Diffusion / Stable Diffusion checkpoint (no {UNET}* keys).{hint}")
    in_ch = shapes[key_in][1]
    vq = FIRST + "quantize.embedding.weight" in shapes
    ctx_key = next((k for k in shapes if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), None)
    ctx = shapes[ctx_key][1] if ctx_key else None
    has_label = UNET + "label_emb.weight" in shapes
    cond = _cond_kind(shapes)
    fs_levels = _count_levels(shapes, FIRST + "encoder.down.")

    def pick(family: str) -> ModelConfig:
        return PRESETS[family]

    if not vq:
        if has_label and in_ch == 7:
            return pick("sd-x4-upscaler")
        table = {(4, 768): "sd1", (9, 768): "sd1-inpainting", (4, 1024): "sd2", (9, 1024): "sd2-inpainting",
                 (4, 1280): "ldm-txt2img-1p4b"}
        if (in_ch, ctx) in table:
            return pick(table[(in_ch, ctx)])
    else:
        if cond == "class":
            n = shapes[COND + "embedding.weight"][0]
            return pick("ldm-cin256" if fs_levels == 4 or n == 1000 else "ldm-cin256-v2")
        if ctx == 640:
            return pick("ldm-text2img256")
        if ctx == 512 and cond == "bert":
            return pick("ldm-layout2img")
        if in_ch == 6 and cond == "spatial":
            cfg = pick("ldm-semantic")
            return cfg.with_(latent_size=128) if "512" in name else cfg
        if in_ch == 6:
            return pick("ldm-bsr-sr")
        if in_ch == 7:
            return pick("ldm-inpainting-big")
    raise CheckpointError(
        f"{name}: unrecognised checkpoint layout ({'VQ' if vq else 'KL'} first stage, UNet input channels {in_ch}, "
        f"context dim {ctx}, conditioner {cond}). A sidecar .yaml with the original config may help."
    )


def _cond_kind(shapes: dict) -> str:
    if any(k.startswith(COND + "transformer.text_model.") for k in shapes):
        return "clip"
    if any(k.startswith(COND + "model.transformer.") for k in shapes):
        return "openclip"
    if COND + "transformer.token_emb.weight" in shapes:
        return "bert"
    if COND + "embedding.weight" in shapes:
        return "class"
    if COND + "channel_mapper.weight" in shapes:
        return "spatial"
    return "none"


def ignorable(key: str, cfg: ModelConfig) -> bool:
    if key in SCHEDULE_KEYS or key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES):
        return True
    return cfg.cond.kind == "first_stage" and key.startswith(COND)


def ema_key(key: str) -> str:
    """LitEma's buffer name for a UNet parameter: 'model_ema.' + the path below 'model.' with dots removed."""
    return "model_ema." + key[len("model."):].replace(".", "")


def label_names(cfg: ModelConfig) -> tuple[str, ...]:
    """Class names a user paints or boxes with: the model's own, else COCO-Stuff's for regional prompts on text models."""
    if cfg.cond.label_names:
        return tuple(cfg.cond.label_names)
    if "semantic" in tasks_for(cfg):
        from engine.cocostuff import COCO_STUFF_CLASSES

        return COCO_STUFF_CLASSES
    return ()


def facts(cfg: ModelConfig, n_params: int | None = None) -> dict:
    return {
        "family": cfg.family,
        "description": cfg.description,
        "parameterization": cfg.parameterization,
        "first_stage": {"kind": cfg.first_stage.kind, "factor": cfg.factor, "z_channels": cfg.first_stage.embed_dim},
        "latent_channels": cfg.unet.out_channels,
        "unet": {"in_channels": cfg.unet.in_channels, "out_channels": cfg.unet.out_channels,
                 "model_channels": cfg.unet.model_channels},
        "context_dim": cfg.unet.context_dim,
        "conditioning": cfg.conditioning_key,
        "cond_stage": cfg.cond.kind,
        "scale_factor": cfg.scale_factor,
        "image_size": cfg.image_size,
        "tasks": list(tasks_for(cfg)),
        "label_names": list(label_names(cfg)),
        "vocabulary": list(cfg.cond.vocab) if cfg.cond.tokenizer == "world" else [],
        "parameters": n_params,
    }


def inspect_file(path) -> dict:
    """`python -m engine inspect`: the detected family and its facts, from the header alone."""
    path = Path(path)
    shapes, meta = read_shapes(path)
    cfg = _config_for(path, shapes, meta)
    n = sum(_numel(s) for k, s in shapes.items() if k.startswith((UNET, FIRST, COND)) and not ignorable(k, cfg))
    out = facts(cfg, n)
    out["file"] = str(path)
    return out


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _config_for(path: Path, shapes: dict, meta: dict, override: ModelConfig | None = None) -> ModelConfig:
    if override is not None:
        return override
    sidecar = path.with_suffix(".yaml")
    if sidecar.exists():
        from engine.original_yaml import config_from_yaml

        return config_from_yaml(sidecar, family_hint=detect(shapes, meta, path.name).family)
    return detect(shapes, meta, path.name)


def load(path, device="cpu", dtype=None, parameterization: str | None = None, config: ModelConfig | None = None,
         use_ema: bool = True):
    """Build the detected family and load the file into it strictly; returns a LatentDiffusion module."""
    import torch

    from engine.models.latent_diffusion import LatentDiffusion

    path = Path(path)
    sd, meta = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cfg = _config_for(path, shapes, meta, config)
    if parameterization:
        cfg = replace(cfg, parameterization=parameterization)
    if "scale_factor" in sd and sd["scale_factor"].numel() == 1:
        cfg = replace(cfg, scale_factor=float(sd["scale_factor"]))
    with params_on_meta():
        model = LatentDiffusion(cfg)
    expected = model.state_dict()
    weights = {}
    for k in expected:
        src = k
        if use_ema and k.startswith(UNET) and ema_key(k) in sd:
            src = ema_key(k)
        if src in sd:
            weights[k] = sd[src]
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in sd if k not in expected and not ignorable(k, cfg)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path.name}: does not match the detected family {cfg.family!r}: "
            + (f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})" if unexpected else "")
        )
    bad = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if weights[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path.name}: shape mismatch for family {cfg.family!r}: {'; '.join(bad[:5])}")
    model.load_state_dict(weights, strict=True, assign=True)
    if "alphas_cumprod" in sd and sd["alphas_cumprod"].shape == (cfg.schedule.timesteps,):
        model.alphas_cumprod = sd["alphas_cumprod"].double()
    sd.clear()
    weights.clear()  # the model holds the only references: casting and packing below replace them one by one
    del expected
    model.source = str(path)
    model.metadata = meta
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{path.name}: internal error: tensors left uninitialised: {', '.join(left[:5])}")
    model = model.to(device=device, dtype=dtype or torch.float32)
    model.eval().requires_grad_(False)
    model.optimize_for(device)
    if cfg.family == "sd2" and not parameterization and config is None and META_KEY not in meta:
        if not (path.with_suffix(".yaml").exists()) and is_v_prediction(model):
            model.config = replace(model.config, family="sd2-v", parameterization="v", latent_size=96)
    return model


@contextmanager
def params_on_meta():
    """Parameters are created on the meta device (no init cost); buffers stay real (accelerate's init_empty_weights)."""
    import torch
    from torch import nn

    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def is_v_prediction(model) -> bool:
    """SD2 768-v vs base: one UNet call at t=999 on a flat latent; v-models answer with a mean below -1 (A1111's rule)."""
    import torch

    unet = model.model.diffusion_model
    p = next(unet.parameters())
    x = torch.full((1, 4, 8, 8), 0.5, device=p.device, dtype=p.dtype)
    ctx = torch.full((1, 77, model.config.unet.context_dim), 0.5, device=p.device, dtype=p.dtype)
    with torch.inference_mode():
        out = unet(x, torch.tensor([999], device=p.device), context=ctx)
    return float((out - x).float().mean()) < -1.0


def save(model, path, extra_metadata: dict | None = None, dtype=None) -> None:
    """Write a LatentDiffusion module as .safetensors in the original key layout, its config in the metadata."""
    import torch
    from safetensors.torch import save_file

    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().clone(
          memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    meta = {META_KEY: json.dumps(config_to_dict(model.config))}
    meta.update(extra_metadata or {})
    tmp = Path(str(path) + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(path)
