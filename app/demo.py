"""A fake engine runner (no torch) for demos, screenshots and GUI tests: a synthetic sunset with progress and previews."""
from __future__ import annotations

import time

import numpy as np

from engine import api


def fake_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth sky gradient with a sun whose position depends on the seed."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = np.array([40, 30, 120], np.float32), np.array([250, 140, 60], np.float32)
    img = np.broadcast_to(top + (bottom - top) * y, (height, width, 3)).copy()
    rng = np.random.default_rng(seed)
    cx, cy, r = width * rng.uniform(0.3, 0.7), height * 0.6, min(width, height) * 0.15
    yy, xx = np.mgrid[0:height, 0:width]
    sun = np.clip((r - np.hypot(xx - cx, yy - cy)) / 3.0, 0, 1)[..., None]
    img = img * (1 - sun) + np.array([255, 230, 120], np.float32) * sun
    return img.astype(np.uint8)


def fake_runner(request: api.Request, ctx: api.JobContext, cache: dict, step_s: float = 0.05) -> api.Result:
    """Emits Started, Progress every step and a noisy Preview, then the image (x4 for upscale)."""
    ctx.emit(api.Started(ctx.job_id, device="cpu (demo)", dtype="float32", family="demo"))
    if request.task == "upscale":  # the input times upscale_by, as the engine makes it
        h, w = (request.upscale_by * n for n in request.image.shape[:2])
    else:
        w, h = request.width or 512, request.height or 512
    total = max(int(request.steps), 1)
    images = [fake_image(w, h, request.seed + i) for i in range(request.batch_size)]
    rng = np.random.default_rng(request.seed)
    for step in range(1, total + 1):
        time.sleep(step_s)
        ctx.progress(step, total)
        if ctx.wants_preview() or step == total:
            noise = rng.normal(0, 80 * (1 - step / total), images[0].shape)
            ctx.preview(step, np.clip(images[0] + noise, 0, 255).astype(np.uint8))
    params = f"{request.prompt}\nSteps: {total}, Sampler: {request.sampler}, Seed: {request.seed}, Size: {w}x{h}, Task: {request.task}"
    return api.Result(ctx.job_id, tuple(images), params, tuple(request.seed + i for i in range(request.batch_size)),
                      time.perf_counter() - ctx.t0)
