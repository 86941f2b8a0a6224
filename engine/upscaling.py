"""Upscaling beyond one x4 model pass: x2 / x3 by resizing the x4 result, a tiled img2img refine after enlarging, and
Real-ESRGAN (its own ncnn runtime) for photographs."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from engine.api import EngineError, JobContext, Request, Result, Started
from engine.pipelines import run_request


def run(request: Request, ctx: JobContext, cache: dict, t0: float) -> Result:
    """An upscale job that is more than one x4 model pass."""
    if request.upscale_by != 4:
        return upscale_by(request, ctx, cache)
    if request.refine_strength > 0:
        return upscale_and_refine(request, ctx, cache, t0)
    return run_esrgan(request, ctx, cache, t0)


def upscale_by(request: Request, ctx: JobContext, cache: dict) -> Result:
    """x2 or x3: the x4 upscale (refined after resizing, when asked), then Lanczos down to the factor."""
    from engine.images import resize_rgb

    if request.upscale_by not in (2, 3, 4):
        raise EngineError(f"upscale by must be 2, 3 or 4, got {request.upscale_by}")
    if request.image is None:
        raise EngineError("upscale needs an input image")
    big = run_request(replace(request, upscale_by=4, refine_strength=0.0), ctx, cache)
    h, w = (request.upscale_by * n for n in request.image.shape[:2])
    images = tuple(resize_rgb(img, w, h) for img in big.images)
    res = replace(big, images=images, parameters=big.parameters + f", Upscale by: {request.upscale_by}")
    if request.refine_strength <= 0:
        return res
    refined = [refine(request, img, seed, ctx, cache) for img, seed in zip(images, big.seeds)]
    text = res.parameters + f", Refine strength: {request.refine_strength}, Refine model: {request.refine_model}"
    return replace(res, images=tuple(refined), parameters=text)


def refine(request: Request, image: np.ndarray, seed: int, ctx: JobContext, cache: dict) -> np.ndarray:
    """An enlarged image repainted tile by tile with img2img at the refine strength."""
    tiles = request.tiles if request.tiles.mode != "off" else replace(request.tiles, mode="auto")
    sub = replace(request, task="img2img", model=request.refine_model, image=image, strength=request.refine_strength,
                  width=None, height=None, batch_size=1, seed=seed, refine_strength=0.0, tiles=tiles, hires="off",
                  upscale_by=4)
    return run_request(sub, ctx, cache).images[0]


def upscale_and_refine(request: Request, ctx: JobContext, cache: dict, t0: float) -> Result:
    """Enlarge x4 (LDM/SD upscaler or Real-ESRGAN), then refine tile by tile with img2img at low strength."""
    big = run_request(replace(request, refine_strength=0.0), ctx, cache)
    refined = [refine(request, img, seed, ctx, cache) for img, seed in zip(big.images, big.seeds)]
    text = big.parameters + f", Refine strength: {request.refine_strength}, Refine model: {request.refine_model}"
    return Result(ctx.job_id, tuple(refined), text, big.seeds, time.perf_counter() - t0)


def run_esrgan(request: Request, ctx: JobContext, cache: dict, t0: float) -> Result:
    from engine import esrgan

    if request.image is None:
        raise EngineError("upscale needs an input image")
    ctx.emit(Started(ctx.job_id, device="vulkan", dtype="float16", family="real-esrgan-x4plus"))
    ctx.progress(0, 1)
    image = esrgan.upscale(request.image, cache)
    ctx.progress(1, 1)
    h, w = image.shape[:2]
    text = f"{request.prompt}\nSteps: 1, Size: {w}x{h}, Model: realesrgan-x4plus, Task: upscale"
    return Result(ctx.job_id, (image,), text, (int(request.seed),), time.perf_counter() - t0)
