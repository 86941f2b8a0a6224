"""Plain records the document holds: layout boxes, generation parameters, finished results, a floating paste."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import numpy as np

from app import raster


@dataclass
class LayoutBox:
    """A labelled box in normalized (x0, y0, x1, y1) image coordinates, with an optional region prompt."""

    label: str
    rect: tuple[float, float, float, float]
    prompt: str | None = None

    def normalized(self) -> "LayoutBox":
        x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in self.rect)
        return LayoutBox(self.label, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), self.prompt)


@dataclass
class Params:
    """Generation parameters the panels edit (not undoable, like Krita's tool options)."""

    prompt: str = ""
    negative_prompt: str = ""
    style: str = ""  # a saved style's name (AppSettings.styles): its prompts wrap these at generation
    model: str = "default"
    sampler: str = "ddim"
    steps: int = 30
    cfg_scale: float = 5.0
    clip_skip: int = 1
    seed: int = 0
    seed_mode: str = "random"
    variation_seed: int = 0
    variation_strength: float = 0.0
    last_seed: int | None = None
    strength: float = 0.75
    batch_size: int = 1
    upscale: bool = False
    class_id: int | None = None
    mask_grow: int = 0
    mask_feather: int = 0
    inpaint_crop: bool = False
    inpaint_strength: float = 1.0
    noise_level: int = 20
    upscaler: str = "model"
    upscale_by: int = 4
    colour_fix: bool = True
    hires: str = "auto"
    hires_strength: float = 0.5
    hires_upscaler: str = "lanczos"
    refine_strength: float = 0.0
    refine_model: str = "default"
    best_of: int = 4
    sketch_strength: float = 0.6
    vae: str = ""
    seamless: str = "off"
    control_model: str = ""  # a ControlNet's name in a controlnet folder, or a file; "": none
    control_preprocessor: str = "canny"
    control_strength: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    label_prompts: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "Params":
        names = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in names})
        out.label_prompts = {int(k): str(v) for k, v in dict(out.label_prompts or {}).items()}
        return out


@dataclass
class HistoryEntry:
    """One finished job: its images, the parameters text written into PNGs, seeds and the request's settings."""

    images: list
    parameters: str = ""
    seeds: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    task: str = "txt2img"
    created: float = field(default_factory=time.time)
    region: tuple | None = None
    png: list = field(default_factory=list, compare=False, repr=False)  # the images encoded, once, when first saved

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.images) + sum(map(len, self.png))


@dataclass(frozen=True)
class Floating:
    """A pasted picture not yet laid onto the image layer: its top-left at (x, y) in canvas pixels, shown w x h
    (0: its own size)."""

    rgb: np.ndarray
    x: int
    y: int
    w: int = 0
    h: int = 0

    @property
    def size(self) -> tuple[int, int]:
        return self.w or self.rgb.shape[1], self.h or self.rgb.shape[0]

    def pixels(self) -> np.ndarray:
        w, h = self.size
        return self.rgb if (h, w) == self.rgb.shape[:2] else raster.resize_smooth(self.rgb, w, h)
