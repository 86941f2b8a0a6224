"""ControlNet units (Zhang et al. 2023) for a loaded Stable Diffusion model: original-format files read strictly,
guide images prepared (canny edges, scribbles, inverted lineart), and the residuals of every unit summed into the
UNet's skip connections at each model call."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine.api import CONTROL_PREPROCESSORS, Control, EngineError, Request, asset_folders
from engine.checkpoint import CheckpointError, misfit, params_on_meta, part_state_dict
from engine.models.attention import CrossAttention
from engine.models.control_model import HINT_FACTOR, ControlNet, pack_hint, unpack_hint
from engine.models.latent_diffusion import wide_cpu_layout_

PREFIX = "control_model."
DIFFUSERS_KEYS = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")


class ControlError(ValueError):
    """A ControlNet file or guide image that cannot be used, with a message meant for the user."""


def read(path: Path, model) -> ControlNet:
    """The ControlNet in `path` (cldm's `control_model.` keys, or the same keys bare), built on the model's own UNet
    config and loaded strictly: a ControlNet made for another model is refused with the first mismatch."""
    try:
        sd = part_state_dict(path, PREFIX)
    except CheckpointError as e:
        raise ControlError(str(e)) from None
    if any(k.startswith(DIFFUSERS_KEYS) for k in sd):
        raise ControlError(f"{path.name} is a diffusers-format ControlNet; use the original-format file (.pth / "
                           f".safetensors with input_hint_block.* keys)")
    if "input_hint_block.0.weight" not in sd or "input_blocks.0.0.weight" not in sd:
        raise ControlError(f"{path.name} is not a ControlNet (it has no input_hint_block)")
    cfg = replace(model.config.unet, in_channels=sd["input_blocks.0.0.weight"].shape[1])
    with params_on_meta():
        net = ControlNet(cfg, hint_channels=sd["input_hint_block.0.weight"].shape[1])
    wrong = misfit(sd, {k: v.shape for k, v in net.state_dict().items()})
    if wrong:
        raise ControlError(f"{path.name} does not fit {model.config.family} ({wrong[1]}): it was made for another "
                           f"model")
    net.load_state_dict(sd, strict=True, assign=True)
    net = net.to(model.device, model.dtype).eval().requires_grad_(False)
    for m in net.modules():
        if isinstance(m, CrossAttention):
            m.share_qkv_()
    wide_cpu_layout_(net, model.device)
    return net


def prepare(image: np.ndarray, preprocessor: str, width: int, height: int) -> np.ndarray:
    """The guide image at the output size, as the ControlNet reads it (RGB uint8)."""
    import cv2

    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
        raise ControlError(f"a control image must be RGB uint8 (H, W, 3), got {a.shape} {a.dtype}")
    a = np.ascontiguousarray(a[..., :3])
    shrink = a.shape[0] * a.shape[1] > width * height
    a = cv2.resize(a, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if preprocessor == "none":
        return a
    gray = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    if preprocessor == "canny":
        lines = cv2.Canny(gray, 100, 200) > 0
    elif preprocessor == "scribble":
        paper = float(np.median(gray))
        lines = gray < paper - 48 if paper >= 128 else gray > paper + 48
    elif preprocessor == "invert":
        return 255 - a
    else:
        raise ControlError(f"unknown control preprocessor {preprocessor!r}; valid: {', '.join(CONTROL_PREPROCESSORS)}")
    return np.repeat((lines * 255).astype(np.uint8)[..., None], 3, axis=2)


@dataclass
class Unit:
    net: ControlNet
    strength: float
    start: float
    end: float


class Units:
    """The request's ControlNets as one function of the UNet call: summed residuals, or None when none acts at this
    timestep. The guide images arrive packed at the latent's size in the conditioning (`control`)."""

    def __init__(self, units: list[Unit], timesteps: int):
        self.units, self.timesteps = units, timesteps

    def __call__(self, x: torch.Tensor, t: torch.Tensor, packed: torch.Tensor, context=None, y=None):
        done = 1.0 - float(t.flatten()[0]) / (self.timesteps - 1)
        total, offset = None, 0
        for u in self.units:
            width = u.net.hint_channels * HINT_FACTOR**2
            part, offset = packed[:, offset:offset + width], offset + width
            if not (u.start <= done <= u.end) or u.strength == 0:
                continue
            hint = unpack_hint(part, u.net.hint_channels)
            res = u.net(x[:, :u.net.in_channels], hint, t, context, y if u.net.num_classes is not None else None)
            res = [r * u.strength for r in res]
            total = res if total is None else [a + b for a, b in zip(total, res)]
        return total


def active(request: Request) -> tuple[Control, ...]:
    """The request's ControlNet units; upscaling (whose request may be a result's, units and all) takes none."""
    return () if request.task == "upscale" else tuple(request.control)


class Loaded:
    """The ControlNets kept on a model, by file and time stamp, and those the current request uses, in its order."""

    def __init__(self):
        self.nets: dict[tuple, ControlNet] = {}
        self.current: list[ControlNet] = []


def loaded(model) -> Loaded:
    return model.__dict__.setdefault("_controlnets", Loaded())


def check(request: Request) -> None:
    for c in request.control:
        if c.image is None:
            raise ControlError(f"the ControlNet {Path(c.model).stem} has no control image")
        if c.preprocessor not in CONTROL_PREPROCESSORS:
            raise ControlError(f"unknown control preprocessor {c.preprocessor!r}; valid: "
                               f"{', '.join(CONTROL_PREPROCESSORS)}")
        if not 0.0 <= c.start < c.end <= 1.0:
            raise ControlError(f"a ControlNet acts from start to end, 0 <= start < end <= 1 (got {c.start}, {c.end})")


def for_request(request: Request, model, path: Path) -> None:
    """Load the ControlNets the request names (kept on the model while asked for) or drop those it no longer names."""
    from engine import lora

    state = loaded(model)
    state.current = []
    if not active(request):
        state.nets.clear()
        return
    try:
        check(request)
        files = [lora.find(c.model, asset_folders("controlnet", (str(path.parent),)), kind="ControlNet")
                 for c in request.control]
        keys = [(str(f.resolve()), f.stat().st_mtime) for f in files]
        for k in [k for k in state.nets if k not in keys]:
            del state.nets[k]
        for f, k in zip(files, keys):
            if k not in state.nets:
                state.nets[k] = read(f, model)
    except (ControlError, lora.LoraError) as e:
        raise EngineError(str(e)) from None
    state.current = [state.nets[k] for k in keys]


def conditioning(request: Request, model, h: int, w: int) -> tuple[torch.Tensor, Units]:
    """The guide images packed at the latent's size, for cond['control'], and the units that read them. A ControlNet
    reads its image at 8x the latent (the output's size for Stable Diffusion, twice it for a 4x autoencoder)."""
    nets = loaded(model).current
    if len(nets) != len(request.control):
        raise EngineError("internal error: the request's ControlNets were not loaded")
    try:
        f = model.config.factor
        images = [prepare(c.image, c.preprocessor, w // f * HINT_FACTOR, h // f * HINT_FACTOR) for c in request.control]
    except ControlError as e:
        raise EngineError(str(e)) from None
    hint = torch.from_numpy(np.concatenate(images, axis=2)).permute(2, 0, 1)[None].float() / 255
    packed = pack_hint(hint).to(model.device).expand(request.batch_size, -1, -1, -1)
    units = [Unit(net, float(c.strength), float(c.start), float(c.end)) for net, c in zip(nets, request.control)]
    return packed, Units(units, len(model.alphas_cumprod))


def cropped(controls: tuple[Control, ...], size: tuple[int, int], box: tuple[int, int, int, int]) -> tuple:
    """The units with their images resized to the full output `size` (h, w) and cut to `box` (x0, y0, x1, y1), as
    inpainting cut to the mask's neighbourhood needs them."""
    h, w = size
    x0, y0, x1, y1 = box
    out = []
    for c in controls:
        img = c.image
        if img is not None:
            import cv2

            img = np.ascontiguousarray(np.asarray(img)[..., :3])
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            img = img[y0:y1, x0:x1]
        out.append(replace(c, image=img))
    return tuple(out)
