"""Another autoencoder for a model (A1111's "SD VAE"): a standalone first-stage file such as SD's ft-MSE VAE, loaded
strictly into the model's first_stage_model in place of the checkpoint's own, and put back when no longer asked for."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.api import EngineError, Request, asset_folders
from engine.checkpoint import FIRST, CheckpointError, misfit, part_state_dict


class VaeError(ValueError):
    """A VAE file that cannot be used with this model, with a message meant for the user."""


def read(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The file's first-stage weights under our key names (a 'first_stage_model.' prefix, training-only 'loss.' and
    'model_ema.' entries and a whole checkpoint's other parts dropped), checked strictly against `expected`."""
    try:
        sd = part_state_dict(path, FIRST)
    except CheckpointError as e:
        raise VaeError(str(e)) from None
    sd = {k: v for k, v in sd.items() if not k.startswith(("loss.", "model_ema."))}
    if any(".down_blocks." in k or ".mid_block." in k for k in sd):
        raise VaeError(f"{path.name} is a diffusers-format VAE; use the original-format file (.safetensors / .ckpt "
                       f"with encoder.down.* keys)")
    wrong = misfit(sd, expected)
    if wrong and wrong[0] == "keys":
        raise VaeError(f"{path.name} does not fit this model's autoencoder ({wrong[1]}); it is not a VAE for this "
                       f"model")
    if wrong:
        raise VaeError(f"{path.name} does not fit this model's autoencoder: {wrong[1]}; it was made for another model")
    return sd


class Swapped:
    """The VAE file in use (or None) and the checkpoint's own first-stage tensors it replaced (on the CPU)."""

    def __init__(self):
        self.active: tuple | None = None
        self.backup: dict[str, torch.Tensor] = {}


def apply(model, path: Path | None) -> bool:
    """Give the model the VAE in `path`, or its own again (None); True when its first stage changed."""
    state = model.__dict__.setdefault("_vae", Swapped())
    key = None if path is None else (str(path), path.stat().st_mtime)
    if key == state.active:
        return False
    prefix = FIRST
    sd = None
    if path is not None:
        expected = {k: tuple(v.shape) for k, v in model.first_stage_model.state_dict().items()}
        sd = read(path, expected)
    with model.plain_weights() as params:
        for name, original in state.backup.items():
            params[name].copy_(original)
        state.active = None
        if sd is not None:
            for k, v in sd.items():
                p = params[prefix + k]
                if prefix + k not in state.backup:
                    state.backup[prefix + k] = p.detach().to("cpu", copy=True)
                p.copy_(v.to(p.device, p.dtype))
            state.active = key
    return True


def for_request(request: Request, model, path: Path) -> bool:
    """The autoencoder the request names, or the model's own; upscaling keeps the upscaler's. True when it changed."""
    from engine import lora

    try:
        found = None
        if request.vae and request.task != "upscale":
            found = lora.find(request.vae, asset_folders("vae", (str(path.parent),)), kind="VAE")
        return apply(model, found)
    except (VaeError, lora.LoraError) as e:
        raise EngineError(str(e)) from None
