"""The "parameters" PNG text chunk (A1111 infotext layout): format, parse, write and read. No Qt."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from app.project import atomic_write

KEYS = {"Steps": ("steps", int), "Sampler": ("sampler", str), "CFG scale": ("cfg_scale", float),
        "Seed": ("seed", int), "Model": ("model", str), "Denoising strength": ("strength", float),
        "Task": ("task", str), "Batch size": ("batch_size", int)}


def format_parameters(request, seed: int | None = None) -> str:
    """Prompt line, 'Negative prompt:' line, then 'Key: value' pairs."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    pairs = [("Steps", request.steps), ("Sampler", request.sampler), ("CFG scale", request.cfg_scale),
             ("Seed", request.seed if seed is None else seed), ("Size", f"{request.width}x{request.height}"),
             ("Model", Path(str(request.model)).stem), ("Task", request.task)]
    if request.task in ("img2img", "inpaint"):
        pairs.append(("Denoising strength", request.strength))
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs))
    return "\n".join(lines)


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
    for key, value in _PAIR.findall(last):
        key, value = key.strip(), value.strip().strip('"')
        if key == "Size" and re.fullmatch(r"\d+x\d+", value):
            out["width"], out["height"] = (int(v) for v in value.split("x"))
        elif key in KEYS:
            name, cast = KEYS[key]
            try:
                out[name] = cast(value)
            except ValueError:
                pass
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
