"""Canvases larger than a model: where to compose (the trained object size), the two-pass hires fix, inpainting at
the trained size, and enlarging a composition (Lanczos or the x4 upscaler model)."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from engine.api import LARGE_CANVAS_TASKS, EngineError, JobContext, Request, Result


# A layout model's typical object: its box's longer side as a share of the training size (the shapes world draws
# 0.2-0.45; layouts of photographs spread wider around a similar middle).
TRAINED_BOX_SHARE = 0.325


def object_scale(request: Request, native: int, h: int, w: int) -> float:
    """How many times the size a model drew objects at in training a request's objects come out on an h x w canvas:
    a layout's median box; an inpainting mask's bounding box (a masked object); a label map's lower quartile of
    connected regions (specks under 0.1% left out), since its large regions are background. 0 when there is nothing
    to measure."""
    if request.task == "layout":
        sides = [max((b.box[2] - b.box[0]) * w, (b.box[3] - b.box[1]) * h) for b in request.boxes]
        return float(np.median(sides)) / (TRAINED_BOX_SHARE * native) if sides else 0.0
    if request.task == "inpaint":
        ys, xs = np.nonzero(np.asarray(request.mask) > 0)
        if not len(ys):
            return 0.0
        mh, mw = request.mask.shape[:2]
        side = max((ys.max() - ys.min() + 1) * h / mh, (xs.max() - xs.min() + 1) * w / mw)
        return float(side) / (TRAINED_BOX_SHARE * native)
    if request.task != "semantic" or request.labels is None:
        return 0.0
    import cv2

    lab = np.asarray(request.labels)
    lab = lab[::max(1, max(lab.shape) // 512), ::max(1, max(lab.shape) // 512)]
    sy, sx = h / lab.shape[0], w / lab.shape[1]
    sides = []
    for c in np.unique(lab):
        _, _, stats, _ = cv2.connectedComponentsWithStats((lab == c).astype(np.uint8), connectivity=4)
        sides += [max(bw * sx, bh * sy) for _, _, bw, bh, area in stats[1:] if area >= 0.001 * lab.size]
    return float(np.percentile(sides, 25)) / (TRAINED_BOX_SHARE * native) if sides else 0.0


def first_pass_size(request: Request, model, h: int, w: int) -> tuple[int, int] | None:
    """The two-pass size: the canvas's aspect at about the model's training area, a multiple of the UNet's stride;
    None for one pass ('off', 'dilated', other tasks, or under 2.25x the training area in 'auto'); img2img and
    inpainting need their image (and mask), the other tasks none (with one they are img2img repaints). A layout,
    label map or inpainting mask in 'auto' is composed or filled where its objects come out at the size the model
    drew them in training (object_scale): objects at most 1.5x that size keep one pass at any canvas size, since
    convolutional sampling draws many objects of the trained size well and a composition at the training size would
    shrink them below it."""
    if request.hires in ("off", "dilated") or request.task not in LARGE_CANVAS_TASKS:
        return None
    takes_image = request.task in ("img2img", "inpaint")
    if (request.image is not None) != takes_image or (request.task == "inpaint" and request.mask is None):
        return None
    native = model.config.image_size
    if request.hires == "auto" and h * w <= 2.25 * native * native:
        return None
    m = model.config.factor * 2 ** (len(model.config.unet.channel_mult) - 1)
    k = min(1.0, native / (h * w) ** 0.5)
    scale = object_scale(request, native, h, w) if request.hires == "auto" else 0.0
    if scale:
        if scale <= 1.5:
            return None
        k = min(1.0, max(k, 1 / scale))
    h0, w0 = (max(m, int(round(v * k / m)) * m) for v in (h, w))
    return None if (h0, w0) == (h, w) else (h0, w0)


def run_two_pass(request: Request, ctx: JobContext, cache: dict, t0: float, first: tuple[int, int],
                 size: tuple[int, int], model, small: Result | None = None) -> Result:
    """A1111's hires fix: compose at about the model's training size (img2img: from its image scaled down), enlarge
    (Lanczos, or the x4 upscaler model as A1111's LDSR upscaler), then img2img at the canvas size under the same
    prompt, boxes or label map (convolutional sampling from the enlarged composition); strength 0 keeps the
    enlargement as it is. small: the first pass when the caller has already made it."""
    from engine.api import HIRES_UPSCALERS
    from engine.pipelines import parameters_text, run_request
    from engine.images import resize_nearest

    if not 0.0 <= request.hires_strength <= 1.0:
        raise EngineError(f"hires strength must be in [0, 1], got {request.hires_strength}")
    if request.hires_upscaler not in HIRES_UPSCALERS:
        raise EngineError(f"hires upscaler must be one of {', '.join(HIRES_UPSCALERS)}, got {request.hires_upscaler!r}")
    (h0, w0), (h, w) = first, size
    if small is None:
        labels = None if request.labels is None else resize_nearest(request.labels, w0, h0)
        small = run_request(replace(request, width=w0, height=h0, labels=labels, hires="off"), ctx, cache)
    out = []
    for img, seed in zip(small.images, small.seeds):
        big = enlarge(request, img, seed, (h, w), ctx, cache)
        if request.hires_strength == 0:
            out.append(big)
            continue
        sub = replace(request, image=big, strength=request.hires_strength, width=w, height=h, batch_size=1, seed=seed,
                      hires="off")
        out.append(run_request(sub, ctx, cache).images[0])
    text = (parameters_text(request, model, h, w) + f", Hires strength: {request.hires_strength}, First pass: {w0}x{h0}"
            + f", Hires upscaler: {request.hires_upscaler}")
    return Result(ctx.job_id, tuple(out), text, small.seeds, time.perf_counter() - t0)


def run_scaled_inpaint(request: Request, ctx: JobContext, cache: dict, t0: float, small: tuple[int, int],
                       size: tuple[int, int], model) -> Result:
    """Inpainting where the masked object comes out at the trained size (A1111's 'only masked' at a resolution):
    the image and mask scaled down, filled there, the fill enlarged as a hires pass would (Lanczos or the x4
    upscaler model) and composited into the full image under its grown, feathered mask: pixels outside stay exact."""
    import cv2

    from engine.images import composite, grow_and_feather, resize_nearest, resize_rgb
    from engine.pipelines import parameters_text, run_request

    (h0, w0), (h, w) = small, size
    k = h0 / h
    image = resize_rgb(request.image, w, h)
    mask = cv2.resize((np.asarray(request.mask) > 0).astype(np.float32), (w0, h0), interpolation=cv2.INTER_AREA)
    sub = replace(request, image=resize_rgb(image, w0, h0), mask=((mask > 0) * 255).astype(np.uint8), width=w0,
                  height=h0, hires="off", mask_grow=int(np.ceil(request.mask_grow * k)),
                  mask_feather=int(np.ceil(request.mask_feather * k)))
    filled = run_request(sub, ctx, cache)
    soft = grow_and_feather(resize_nearest(np.asarray(request.mask), w, h), request.mask_grow, request.mask_feather)
    out = tuple(composite(image, enlarge(request, img, seed, (h, w), ctx, cache), soft)
                for img, seed in zip(filled.images, filled.seeds))
    text = (parameters_text(request, model, h, w) + f", Hires: {request.hires}, First pass: {w0}x{h0}"
            + f", Hires upscaler: {request.hires_upscaler}")
    return Result(ctx.job_id, out, text, filled.seeds, time.perf_counter() - t0)


def enlarge(request: Request, img: np.ndarray, seed: int, size: tuple[int, int], ctx: JobContext, cache: dict):
    """The first pass's image at the canvas size: Lanczos, or x4 steps of the default upscaler model (each sampled
    under the request's steps and seed, with the colour fix) and Lanczos for the rest. An image over a quarter of the
    canvas is first shrunk to the multiple of 64 px over it, so that x4 lands near the canvas instead of past it
    (a 128 px composition for 256 px: 64 -> 256 rather than 128 -> 512 -> 256, a quarter of the cost)."""
    from engine.images import resize_rgb
    from engine.pipelines import run_request

    h, w = size
    while request.hires_upscaler == "model" and (img.shape[0] < h or img.shape[1] < w):
        fit = [-(-v // 256) * 64 for v in (h, w)]
        if fit[0] < img.shape[0] and fit[1] < img.shape[1]:
            img = resize_rgb(img, fit[1], fit[0])
        up = Request(model="default", task="upscale", image=img, steps=request.steps, seed=seed,
                     sampler=request.sampler, device=request.device, dtype=request.dtype, tiles=request.tiles,
                     preview_interval_s=request.preview_interval_s, memory_budget_mb=request.memory_budget_mb)
        img = run_request(up, ctx, cache).images[0]
    return resize_rgb(img, w, h)
