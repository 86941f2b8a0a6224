"""Best-of-N by a text LDM's denoising error on the prompt (a diffusion classifier, Li et al. 2023): the image the
judge reconstructs best when told the prompt is the one that agrees with it most."""
from __future__ import annotations

import numpy as np
import torch

from engine.schedules import noised
from engine.train_data import to_tensor

JUDGE_TIMESTEPS = (50, 150, 250, 350, 450, 600, 750, 900)


@torch.no_grad()
def prompt_error(judge, images: list[np.ndarray], prompt: str, seed: int = 0) -> list[float]:
    """Per image: the judge's mean squared error on its own target (eps or v) at JUDGE_TIMESTEPS, conditioned on the
    prompt, with the same noise for every image (lower: the image fits the prompt better)."""
    z0 = judge.encode_first_stage(to_tensor(np.stack(images)).to(judge.device)).float()
    steps = torch.tensor(JUDGE_TIMESTEPS, device=judge.device)
    eps = torch.randn((len(steps), *z0.shape[1:]), generator=torch.Generator().manual_seed(seed)).to(judge.device)
    context = judge.get_learned_conditioning([prompt] * len(steps))
    errors = []
    for z in z0:
        zt, target = noised(judge.alphas_cumprod, judge.config.parameterization, z[None], steps, eps)
        out = judge.model(zt.to(judge.dtype), steps, context=context.to(judge.dtype)).float()
        errors.append(float((out - target).pow(2).mean()))
    return errors
