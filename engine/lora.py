"""LoRA (Hu et al. 2021) for Stable Diffusion checkpoints, merged into the loaded weights.

Reads the two formats LoRA files come in: kohya-ss / A1111 (`lora_unet_*`, `lora_te_*` with lora_down, lora_up and
alpha; UNet names in diffusers' or the original layout, LoCon convolutions included) and diffusers / peft
(`unet.*.lora_A` / `lora_B`, `text_encoder.*`). Our modules carry the original key paths, so each UNet module is
also known by its diffusers name, derived from the block layout; SD2's OpenCLIP text tower takes its q, k and v
updates as row blocks of the packed in_proj weight. Merging is W += weight * alpha / rank * up @ down; the original
tensors are kept on the CPU and put back when the prompt asks for another set.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from engine.api import ASSET_EXTENSIONS as EXTENSIONS
from engine.api import EngineError, Request, lora_folders
from engine.checkpoint import CheckpointError, read_state_dict


class LoraError(ValueError):
    """A LoRA that cannot be used with this model, with a message meant for the user."""


def _resnet_part(rest: str) -> str:
    for ldm, diffusers in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                           ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")):
        if rest == ldm or rest.startswith(ldm + "."):
            return diffusers + rest[len(ldm):]
    return rest


def diffusers_name(path: str, unet: nn.Module) -> str | None:
    """The diffusers UNet2DConditionModel name of one of our UNet module paths (original layout), or None."""
    head = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
            "input_blocks.0.0": "conv_in", "out.2": "conv_out"}
    if path in head:
        return head[path]
    parts = path.split(".")
    if parts[0] == "middle_block" and len(parts) > 1:
        where, rest = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}.get(parts[1]), ".".join(parts[2:])
        if where is None:
            return None
        return f"mid_block.{where}.{_resnet_part(rest) if 'resnets' in where else rest}".rstrip(".")
    if len(parts) < 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    block, n, m, rest = parts[0], int(parts[1]), int(parts[2]), ".".join(parts[3:])
    per = unet.cfg.num_res_blocks + 1
    kind = type(getattr(unet, block)[n][m]).__name__
    if block == "input_blocks":
        level, j = divmod(n - 1, per)
        if kind == "Downsample":
            return f"down_blocks.{level}.downsamplers.0.{rest.replace('op', 'conv', 1)}".rstrip(".")
        prefix = f"down_blocks.{level}"
    elif block == "output_blocks":
        level, j = divmod(n, per)
        if kind == "Upsample":
            return f"up_blocks.{level}.upsamplers.0.{rest}".rstrip(".")
        prefix = f"up_blocks.{level}"
    else:
        return None
    if kind == "ResBlock":
        return f"{prefix}.resnets.{j}.{_resnet_part(rest)}".rstrip(".")
    return f"{prefix}.attentions.{j}.{rest}".rstrip(".")


def _flat(name: str) -> str:
    return name.replace(".", "_")


def targets(model) -> dict[str, tuple[str, slice | None]]:
    """kohya-style module name -> (parameter name in the model, rows of it or None), for every module a LoRA can
    change: the UNet's linear and convolution layers, and the CLIP / OpenCLIP text encoder's."""
    table: dict[str, tuple[str, slice | None]] = {}
    unet = model.model.diffusion_model
    for path, mod in unet.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            param = f"model.diffusion_model.{path}.weight"
            table["lora_unet_" + _flat(path)] = (param, None)
            alias = diffusers_name(path, unet)
            if alias:
                table["lora_unet_" + _flat(alias)] = (param, None)
    cond, kind = model.cond_stage_model, model.config.cond.kind
    if kind == "clip":
        for path, mod in cond.transformer.named_modules():
            if isinstance(mod, nn.Linear):
                table["lora_te_" + _flat(path)] = (f"cond_stage_model.transformer.{path}.weight", None)
    elif kind == "openclip":
        d = model.config.cond.embed_dim
        for i in range(len(cond.model.transformer.resblocks)):
            block = f"cond_stage_model.model.transformer.resblocks.{i}"
            te = f"lora_te_text_model_encoder_layers_{i}_"
            for k, qkv in enumerate("qkv"):
                table[f"{te}self_attn_{qkv}_proj"] = (f"{block}.attn.in_proj_weight", slice(k * d, (k + 1) * d))
            table[f"{te}self_attn_out_proj"] = (f"{block}.attn.out_proj.weight", None)
            table[f"{te}mlp_fc1"] = (f"{block}.mlp.c_fc.weight", None)
            table[f"{te}mlp_fc2"] = (f"{block}.mlp.c_proj.weight", None)
    return table


_PEFT = re.compile(r"^(unet|text_encoder)\.(.+?)\.(lora_A|lora_B|lora\.down|lora\.up|lora_down|lora_up|down|up)\.weight"
                   r"(\.alpha)?$")
_PEFT_ALPHA = re.compile(r"^(unet|text_encoder)\.(.+?)\.alpha$")
_PROCESSOR = re.compile(r"\.processor\.(to_[qkv]|to_out)_lora$")
_TE_PROCESSOR = re.compile(r"\.self_attn\.to_(q|k|v|out)_lora$")


def _kohya_name(prefix: str, module: str) -> str:
    """The kohya name of a diffusers-saved module name, old attention-processor spellings included."""
    module = module.removesuffix(".lora_linear_layer")
    if m := _PROCESSOR.search(module):
        module = module[: m.start()] + "." + ("to_out.0" if m.group(1) == "to_out" else m.group(1))
    if m := _TE_PROCESSOR.search(module):
        module = module[: m.start()] + f".self_attn.{m.group(1)}_proj"
    return ("lora_unet_" if prefix == "unet" else "lora_te_") + _flat(module)


def read(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A LoRA file as {kohya module name: {'down', 'up', optional 'alpha'}}; clear errors for what it is not."""
    try:
        sd, _ = read_state_dict(path)
    except CheckpointError as e:
        raise LoraError(str(e)) from None
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in sd):
        raise LoraError(f"{path.name} is a whole model, not a LoRA: put it in the models folder")
    if any(k.startswith(("lora_te1_", "lora_te2_")) or "lora_unet_label_emb" in k for k in sd):
        raise LoraError(f"{path.name} is an SDXL LoRA; Latent Canvas runs LDM and Stable Diffusion 1.x / 2.x models")
    odd = [k for k in sd if any(s in k for s in ("hada_", "lokr_", "dora_scale", "lora_mid", "oft_"))]
    if odd:
        raise LoraError(f"{path.name}: LyCORIS kinds (LoHa, LoKr, DoRA, OFT, Tucker) are not supported ({odd[0]})")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        if key.startswith(("lora_unet_", "lora_te_")):
            module, _, what = key.partition(".")
            part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}.get(what)
        elif m := _PEFT.match(key):
            module = _kohya_name(m.group(1), m.group(2))
            part = "alpha" if m.group(4) else "up" if m.group(3) in ("lora_B", "lora.up", "lora_up", "up") else "down"
        elif m := _PEFT_ALPHA.match(key):
            module, part = _kohya_name(m.group(1), m.group(2)), "alpha"
        else:
            part = None
        if part is None:
            raise LoraError(f"{path.name}: not a LoRA file this app reads (key {key!r})")
        groups.setdefault(module, {})[part] = t
    if not groups:
        raise LoraError(f"{path.name}: the file holds no LoRA weights")
    for module, g in groups.items():
        if "down" not in g or "up" not in g:
            raise LoraError(f"{path.name}: {module} lacks its {'up' if 'down' in g else 'down'} weight")
    return groups


def delta(g: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
    """weight * alpha / rank * up @ down, in float32, flattened to (out, in * kernel)."""
    down, up = g["down"].float().flatten(1), g["up"].float().flatten(1)
    rank = down.shape[0]
    scale = float(g["alpha"]) / rank if "alpha" in g else 1.0
    return (up @ down) * (weight * scale)


class Merged:
    """The LoRAs merged into one model, and the original tensors they replaced (kept on the CPU)."""

    def __init__(self):
        self.active: tuple = ()
        self.backup: dict[str, torch.Tensor] = {}


def apply(model, loras: list[tuple[Path, float]]) -> None:
    """Make the model's weights its own plus the given LoRAs at their weights (none: the file's weights again).
    Every file is read and checked before the model is touched, so a refused one leaves it as it was."""
    state = model.__dict__.setdefault("_loras", Merged())
    key = tuple((str(p), p.stat().st_mtime, w) for p, w in loras)
    if key == state.active:
        return
    table = model.__dict__.get("_lora_targets") or model.__dict__.setdefault("_lora_targets", targets(model))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    plans = []
    for path, weight in loras:
        groups = read(path)
        missing = [m for m in groups if m not in table]
        if missing:
            raise LoraError(f"{path.name} does not fit {model.config.family}: {len(missing)} of its {len(groups)} "
                            f"layers are not in this model (first: {missing[0]}); it was made for another model")
        for module, g in groups.items():
            name, rows = table[module]
            shape = shapes[name] if rows is None else (rows.stop - rows.start, *shapes[name][1:])
            d = delta(g, weight)
            if d.numel() != math.prod(shape):
                raise LoraError(f"{path.name} does not fit {model.config.family}: {module} is "
                                f"{tuple(g['up'].shape[:1]) + tuple(g['down'].shape[1:])}, the model's {shape}; "
                                f"it was made for another model")
            plans.append((name, rows, d.reshape(shape)))
    with model.plain_weights() as params:
        for name, original in state.backup.items():
            params[name].copy_(original)
        state.active = ()
        for name, rows, d in plans:
            p = params[name]
            if name not in state.backup:
                state.backup[name] = p.detach().to("cpu", copy=True)
            (p[rows] if rows is not None else p).add_(d.to(p.device, p.dtype))
        state.active = key


def find(name: str, folders: list[Path], kind: str = "LoRA") -> Path:
    """The file a prompt names: a path, or a file stem (with or without its folder) in one of the folders."""
    direct = Path(name).expanduser()
    if direct.suffix in EXTENSIONS and direct.is_file():
        return direct
    for folder in folders:
        for ext in EXTENSIONS:
            if (folder / f"{name}{ext}").is_file():
                return folder / f"{name}{ext}"
    low = name.lower()
    for folder in folders:
        if folder.is_dir():
            for f in sorted(folder.rglob("*")):
                relative = f.relative_to(folder).with_suffix("").as_posix().lower()
                if f.suffix in EXTENSIONS and low in (f.stem.lower(), relative):
                    return f
    where = ", ".join(str(f) for f in folders if f.is_dir()) or ", ".join(str(f) for f in folders[:2])
    raise LoraError(f"{kind} {name!r} not found (looked in {where})")


def for_request(request: Request, model, path: Path) -> None:
    """Merge the LoRAs the prompt names (<lora:name:weight>) into the model, or take back the ones it no longer
    names. Upscaling (whose prompt may be a result's, tags and all) leaves them out."""
    from engine.prompts import PromptError, lora_tags
    from engine.tasks import TEXT_KINDS, is_layout_model

    try:
        tags = lora_tags(request.prompt) if request.task != "upscale" else []
        if tags and (model.config.cond.kind not in TEXT_KINDS or is_layout_model(model)):
            raise EngineError(f"{path.name} takes no LoRA: it has no text encoder ({model.config.family})")
        apply(model, [(find(name, lora_folders((str(path.parent),))), w) for name, w in tags])
    except (LoraError, PromptError) as e:
        raise EngineError(str(e)) from None
