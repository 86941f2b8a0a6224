"""The "parameters" PNG text chunk (A1111 infotext layout): format, parse, write and read. No Qt."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from app.project import atomic_write
from engine.api import LARGE_CANVAS_TASKS, SAMPLERS

A1111_SAMPLERS = {"DDIM": "ddim", "PLMS": "plms", "Euler a": "euler_a", "Euler": "euler", "Heun": "heun",
                  "DPM++ 2M": "dpmpp_2m", "DPM++ 2M Karras": "dpmpp_2m_karras",
                  "DPM++ 2M SDE Karras": "dpmpp_2m_sde_karras"}

KEYS = {"Steps": ("steps", int), "Sampler": ("sampler", str), "CFG scale": ("cfg_scale", float),
        "Seed": ("seed", int), "Model": ("model", str), "Denoising strength": ("strength", float),
        "Task": ("task", str), "Batch size": ("batch_size", int), "Mask grow": ("mask_grow", int),
        "Mask feather": ("mask_feather", int), "Noise level": ("noise_level", int), "Upscaler": ("upscaler", str),
        "Refine strength": ("refine_strength", float), "Refine model": ("refine_model", str),
        "Inpaint crop": ("inpaint_crop", lambda v: v == "True"), "Colour fix": ("colour_fix", lambda v: v == "True"),
        "Hires": ("hires", str), "Hires strength": ("hires_strength", float), "Hires upscaler": ("hires_upscaler", str),
        "Sketch strength": ("sketch_strength", float), "Best of": ("best_of", int), "Clip skip": ("clip_skip", int),
        "VAE": ("vae", str), "Seamless": ("seamless", str), "Upscale by": ("upscale_by", int),
        "Variation seed": ("variation_seed", int),
        "Variation seed strength": ("variation_strength", float),
        "Tiling": ("seamless", lambda v: "xy" if v == "True" else "off")}  # A1111's


def _quote(value: str) -> str:
    return json.dumps(value) if re.search(r'[,:"\n]', value) else value


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            return value.strip('"')
    return value


def size_text(request) -> str:
    """WxH of the request's output: an upscale's is its input's times upscale_by."""
    if request.width is None and request.image is not None and request.task == "upscale":
        h, w = request.image.shape[:2]
        return f"{request.upscale_by * w}x{request.upscale_by * h}"
    return f"{request.width}x{request.height}"


def format_parameters(request, seed: int | None = None) -> str:
    """Prompt line, 'Negative prompt:' line, then 'Key: value' pairs."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    pairs = [("Steps", request.steps), ("Sampler", request.sampler), ("CFG scale", request.cfg_scale),
             ("Seed", request.seed if seed is None else seed), ("Size", size_text(request)),
             ("Model", Path(str(request.model)).stem), ("Task", request.task)]
    if request.clip_skip != 1:
        pairs.append(("Clip skip", request.clip_skip))
    if request.vae:
        pairs.append(("VAE", _quote(request.vae)))
    if request.seamless != "off":
        pairs.append(("Seamless", request.seamless))
    if request.variation_strength > 0:
        pairs += [("Variation seed", request.variation_seed), ("Variation seed strength", request.variation_strength)]
    if request.task in ("img2img", "inpaint"):
        pairs.append(("Denoising strength", request.inpaint_strength if request.task == "inpaint" else request.strength))
    if request.task == "inpaint" and (request.mask_grow or request.mask_feather):
        pairs += [("Mask grow", request.mask_grow), ("Mask feather", request.mask_feather)]
    if request.task == "inpaint" and request.inpaint_crop:
        pairs.append(("Inpaint crop", True))
    if request.task in LARGE_CANVAS_TASKS:
        pairs += [("Hires", request.hires), ("Hires strength", request.hires_strength),
                  ("Hires upscaler", request.hires_upscaler)]
    if request.task == "upscale":
        pairs += [("Upscaler", request.upscaler), ("Noise level", request.noise_level)]
        if request.upscale_by != 4:
            pairs.append(("Upscale by", request.upscale_by))
        if request.upscaler != "esrgan":
            pairs.append(("Colour fix", request.colour_fix))
        if request.refine_strength > 0:
            pairs += [("Refine strength", request.refine_strength), ("Refine model", _quote(str(request.refine_model)))]
    if request.label_prompts:
        pairs.append(("Label prompts", json.dumps(json.dumps({str(k): v for k, v in request.label_prompts.items()}))))
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs))
    return "\n".join(lines)


def merge_parameters(app_text: str, engine_text: str) -> str:
    """The app's infotext (per-image seed, its own keys) plus the engine's family, resolved model and output size."""
    app_lines, engine_lines = app_text.strip().splitlines(), engine_text.strip().splitlines()
    if not engine_lines or not app_lines or "Steps:" not in engine_lines[-1]:
        return app_text
    pairs = dict((k.strip(), v.strip()) for k, v in _PAIR.findall(app_lines[-1]))
    for k, v in _PAIR.findall(engine_lines[-1]):
        if k.strip() and (k.strip() not in pairs or k.strip() in ("Model", "Size")):
            pairs[k.strip()] = v.strip()
    return "\n".join(app_lines[:-1] + [", ".join(f"{k}: {v}" for k, v in pairs.items())])


_PAIR = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict:
    """Document parameter names from infotext; unknown keys are ignored, a missing last line is fine."""
    lines = text.strip().splitlines()
    out: dict = {}
    if not lines:
        return out
    last = lines[-1] if _PAIR.match(lines[-1]) and "Steps:" in lines[-1] else ""
    body = lines[:-1] if last else lines
    prompt, negative = [], []
    for line in body:
        if line.startswith("Negative prompt:"):
            negative.append(line[len("Negative prompt:"):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    out["prompt"] = "\n".join(prompt).strip()
    out["negative_prompt"] = "\n".join(negative).strip()
    if last:
        out.update(clip_skip=1, vae="", seamless="off", variation_strength=0.0)  # written only when not the defaults
    for key, value in _PAIR.findall(last):
        key, value = key.strip(), _unquote(value)
        if key == "Label prompts":
            try:
                out["label_prompts"] = {int(k): str(v) for k, v in json.loads(value).items()}
            except (ValueError, AttributeError):
                pass
        elif key == "Size" and re.fullmatch(r"\d+x\d+", value):
            out["width"], out["height"] = (int(v) for v in value.split("x"))
        elif key in KEYS:
            name, cast = KEYS[key]
            try:
                out[name] = cast(value)
            except ValueError:
                pass
    if out.get("sampler") not in (None, *SAMPLERS):
        karras = re.search(r"Schedule type:\s*Karras", last) and not out["sampler"].endswith("Karras")
        name = A1111_SAMPLERS.get(out["sampler"] + (" Karras" if karras else ""))
        if name is None:
            out.pop("sampler")  # a sampler this app does not have: keep the one chosen
        else:
            out["sampler"] = name
    if out.get("task") == "inpaint" and "strength" in out:
        out["inpaint_strength"] = out.pop("strength")
    return out


def write_png(path: str | os.PathLike, rgb: np.ndarray, parameters: str) -> None:
    info = PngInfo()
    info.add_text("parameters", parameters)
    atomic_write(path, lambda f: Image.fromarray(rgb).save(f, format="PNG", pnginfo=info))


def read_png_parameters(path: str | os.PathLike) -> str | None:
    try:
        with Image.open(path) as im:
            return (getattr(im, "text", None) or im.info).get("parameters")
    except (OSError, ValueError):
        return None
