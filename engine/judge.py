"""Best-of-N by a text LDM read as a diffusion classifier (Li et al. 2023): its denoising error on an image, told the
prompt or told the prompt with one object's shape swapped, says which prompt the image agrees with."""
from __future__ import annotations

import numpy as np
import torch

from engine.schedules import noised
from engine.train_data import to_tensor
from engine.tokenizers import WorldTokenizer
from engine.world.scene import COLOURS, SHAPES

JUDGE_TIMESTEPS = (50, 150, 250, 350, 450, 600, 750, 900)
SWAP_TIMESTEPS = (25, 75, 150, 225, 300, 375) * 2  # two noise draws at each


@torch.no_grad()
def denoising_errors(judge, images: list[np.ndarray], prompts: list[str], seed: int = 0,
                     timesteps=JUDGE_TIMESTEPS) -> np.ndarray:
    """(images, prompts): the judge's mean squared error on its own target (eps or v) at the timesteps, told each
    prompt, with the same noise for every image and prompt."""
    z0 = judge.encode_first_stage(to_tensor(np.stack(images)).to(judge.device)).float()
    steps = torch.tensor(timesteps, device=judge.device)
    eps = torch.randn((len(steps), *z0.shape[1:]), generator=torch.Generator().manual_seed(seed)).to(judge.device)
    context = judge.get_learned_conditioning(list(prompts)).repeat_interleave(len(steps), 0).to(judge.dtype)
    t = steps.repeat(len(prompts))
    errors = np.zeros((len(z0), len(prompts)), np.float32)
    for i, z in enumerate(z0):
        zt, target = noised(judge.alphas_cumprod, judge.config.parameterization, z[None], steps, eps)
        out = judge.model(zt.repeat(len(prompts), 1, 1, 1).to(judge.dtype), t, context=context).float()
        err = (out - target.repeat(len(prompts), 1, 1, 1)).pow(2).mean(dim=(1, 2, 3))
        errors[i] = err.view(len(prompts), len(steps)).mean(1).cpu().numpy()
    return errors


def prompt_error(judge, images: list[np.ndarray], prompt: str, seed: int = 0) -> list[float]:
    """Per image: the judge's error told the prompt at JUDGE_TIMESTEPS (lower: the image fits the prompt better)."""
    return denoising_errors(judge, images, [prompt], seed)[:, 0].tolist()


def shape_swaps(prompt: str) -> list[list[str]]:
    """Per prompted object ('<colour> <shape>'): the prompt with that shape word replaced by each other shape."""
    words = WorldTokenizer.words(prompt)
    return [[" ".join(words[:i + 1] + [other] + words[i + 2:]) for other in SHAPES if other != words[i + 1]]
            for i in range(len(words) - 1) if words[i] in COLOURS and words[i + 1] in SHAPES]


def shape_votes(judge, images: list[np.ndarray], prompt: str, seed: int = 0) -> list[tuple[int, float]]:
    """Per image (higher is better): how many prompted objects the judge reads as their prompted shape, its error told
    the prompt below its error told every swap of that object's shape, and the summed margins. Comparing prompts on
    the same image cancels how hard that image is to denoise; low timesteps, where shapes are decided, only."""
    swaps, n = shape_swaps(prompt), len(SHAPES) - 1
    if not swaps:
        return [(0, -e) for e in prompt_error(judge, images, prompt, seed)]
    told = " ".join(WorldTokenizer.words(prompt))
    errors = denoising_errors(judge, images, [told] + [p for s in swaps for p in s], seed, SWAP_TIMESTEPS)
    margins = np.stack([errors[:, 1 + k * n:1 + (k + 1) * n].min(1) - errors[:, 0] for k in range(len(swaps))], 1)
    return [(int((m > 0).sum()), float(m.sum())) for m in margins]
