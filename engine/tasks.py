"""Per-task planning: conditioning, start latent, denoiser wrappers and paste-back for each of the five tasks."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from engine.api import HIRES_TASKS, EngineError, Request
from engine.guidance import MaskBlendDenoiser, Region, RegionalDenoiser
from engine.images import colour_fix, composite, grow_and_feather, mask_bbox, resize_nearest, resize_rgb
from engine.pipelines import Plan, to_tensor
from engine.prompts import plain

TEXT_KINDS = ("clip", "openclip", "bert")


def is_layout_model(model) -> bool:
    return model.config.cond.kind == "bert" and model.config.cond.tokenizer == "layout"


TEXT_CACHE = 8


def text_cond(model, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
    """The text encoder's context for prompts: each distinct prompt encoded once, and the last TEXT_CACHE kept per
    model, device, dtype, weight version and embedding files (a re-run prompt, or the usual empty negative prompt,
    skips the encoder, like A1111's cached c/uc)."""
    from engine import embeddings

    cache = model.__dict__.setdefault("_text_cache", OrderedDict())
    params = model.cond_stage_model.parameters() if model.cond_stage_model is not None else ()
    names = embeddings.available(model)
    files = tuple((n, f.stat().st_mtime) for n, f in names.items())
    where = (str(model.device), str(model.dtype), sum(t._version for t in params), files, clip_skip)
    enc = {}
    for p in dict.fromkeys(prompts):
        key = (p, *where)
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = prompt_context(model, p, names, clip_skip)
            while len(cache) > TEXT_CACHE:
                cache.popitem(last=False)
        enc[p] = cache[key]
    return torch.cat([enc[p] for p in prompts])


def prompt_context(model, prompt: str, names: dict | None = None, clip_skip: int = 1) -> torch.Tensor:
    """(1, k * max_len, dim): A1111's long prompts, emphasis and embeddings. The prompt's tokens go in chunks of
    max_len - 2 (BREAK starts a new one; an embedding is not split), each framed and encoded on its own, then
    concatenated along the sequence; an emphasis weight scales its tokens' embeddings, and each chunk is rescaled to
    keep its mean. `names` (engine.embeddings.available) are the embedding files the prompt may name; clip_skip
    (CLIP and OpenCLIP encoders) reads an earlier layer."""
    from engine import embeddings
    from engine.prompts import BREAK, chunked, parse

    cond = model.cond_stage_model
    cond.tokenize("")
    tok = cond.tokenizer

    def groups():
        for text, w in parse(prompt).segments:
            if text is BREAK:
                yield None
                continue
            for piece in embeddings.split(text, names or {}):
                if isinstance(piece, str):
                    yield from ([(i, w, None)] for i in tok.encode(piece))
                else:
                    yield [(tok.pad_id, w, v) for v in embeddings.vectors(model, piece)]

    chunks = chunked(groups(), tok.max_len - 2)
    ids = torch.tensor([tok.frame([i for i, _, _ in c]) for c in chunks])
    fixes = [(r, 1 + j, v[None]) for r, c in enumerate(chunks) for j, (_, _, v) in enumerate(c) if v is not None]
    with embeddings.placed(cond, fixes):
        skip = {"clip_skip": clip_skip} if model.config.cond.kind in ("clip", "openclip") else {}
        z = model.get_learned_conditioning(ids.to(model.device), **skip)
    if any(w != 1.0 for c in chunks for _, w, _ in c):
        mult = torch.ones(ids.shape)
        for row, c in zip(mult, chunks):
            row[1 : 1 + len(c)] = torch.tensor([w for _, w, _ in c])
        mean = z.mean(dim=(1, 2), keepdim=True)
        z = z * mult[..., None].to(z)
        z = z * (mean / z.mean(dim=(1, 2), keepdim=True))
    return rearrange(z, "k n d -> 1 (k n) d")


def prompt_edits(request: Request, model, plan, total: int) -> tuple[list | None, list | None] | None:
    """The cond and uncond contexts over the steps for a prompt or negative prompt with A1111's prompt editing
    ([from:to:when], [a|b]): [(first step after the range, context), ...] each, None for one without; None when
    neither has edits or the model reads no text."""
    from engine.prompts import steps

    if "context" not in plan.cond or model.config.cond.kind not in TEXT_KINDS or is_layout_model(model):
        return None
    out = []
    for prompt in (request.prompt, request.negative_prompt):
        ranges = steps(prompt, total)
        out.append(None if ranges == [(total, prompt)] else [
            (end, text_cond(model, [text] * request.batch_size, request.clip_skip)) for end, text in ranges])
    return None if out == [None, None] else (out[0], out[1])


def layout_tokenizer(model):
    from engine.tokenizers import LayoutTokenizer

    from engine.openimages_classes import OPENIMAGES_CLASS_NAMES

    names = tuple(model.config.cond.label_names)
    default = not names or names == tuple(OPENIMAGES_CLASS_NAMES)
    return LayoutTokenizer(class_names=None if default else names, n_tokens=model.config.cond.vocab_size)


def base_conditioning(request: Request, model, h: int, w: int) -> tuple[dict, dict | None]:
    """cond and uncond dicts for the family's own conditioner (text, class, layout tokens, label map, none)."""
    cfg, b = model.config, request.batch_size
    kind = cfg.cond.kind
    if kind in TEXT_KINDS and not is_layout_model(model):
        skip = request.clip_skip
        return ({"context": text_cond(model, [request.prompt] * b, skip)},
                {"context": text_cond(model, [request.negative_prompt] * b, skip)})
    if kind == "bert":
        tok = layout_tokenizer(model)
        boxes = [(bx.label, bx.box) for bx in request.boxes]
        cond = {"context": model.get_learned_conditioning(tok.encode(boxes)[None].expand(b, -1).to(model.device))}
        uncond = None
        if cfg.cond.empty_layout_uncond:
            uncond = {"context": model.get_learned_conditioning(tok.encode([])[None].expand(b, -1).to(model.device))}
        if cfg.cond.layout_raster:
            raster = tok.raster(boxes, h // cfg.factor, w // cfg.factor, coords=cfg.cond.layout_coords)
            cond["concat"] = raster[None].expand(b, -1, -1, -1).to(model.device)
            if uncond is not None:
                uncond["concat"] = torch.zeros_like(cond["concat"])
        return cond, uncond
    if kind == "class":
        cid = 0 if request.class_id is None else int(request.class_id)
        n = cfg.cond.n_classes
        if not 0 <= cid < n:
            raise EngineError(f"class id {cid} out of range 0..{n - 1}")
        ids = torch.full((b,), cid, dtype=torch.long, device=model.device)
        cond = {"context": model.get_learned_conditioning(ids)}
        uncond = {"context": model.get_learned_conditioning(torch.full_like(ids, n - 1))} if n == 1001 else None
        return cond, uncond
    if kind == "spatial":
        labels = resize_nearest(np.asarray(request.labels), w, h).astype(np.int64)
        n = cfg.cond.in_channels
        if (labels < 0).all():
            raise EngineError("the label map is empty: paint at least one class")
        bad = labels[(labels < 0) | (labels >= n)]
        if bad.size:
            raise EngineError(f"label map has class id {int(bad[0])} outside the model's {n} classes (0..{n - 1})")
        t = torch.from_numpy(labels)[None].expand(b, -1, -1).to(model.device)
        return {"concat": model.get_learned_conditioning(t)}, None
    return {}, None


def soft_box(box, lh: int, lw: int, device) -> torch.Tensor:
    """A box in normalized coordinates as a latent-size weight map with a one-pixel soft edge."""
    x0, y0, x1, y1 = box
    ys = (torch.arange(lh, device=device) + 0.5) / lh
    xs = (torch.arange(lw, device=device) + 0.5) / lw
    wy = ((ys - y0) * lh + 0.5).clamp(0, 1) * ((y1 - ys) * lh + 0.5).clamp(0, 1)
    wx = ((xs - x0) * lw + 0.5).clamp(0, 1) * ((x1 - xs) * lw + 0.5).clamp(0, 1)
    return (wy[:, None] * wx[None, :])[None, None]


def regions_for(request: Request, model, h: int, w: int) -> list[Region]:
    """Regional prompts for text models: one per layout box, or one per painted class of a label map."""
    f, b = model.config.factor, request.batch_size
    lh, lw = h // f, w // f
    regions = []
    if request.task == "layout":
        for bx in request.boxes:
            ctx = text_cond(model, [bx.prompt or bx.label] * b, request.clip_skip)
            regions.append(Region({"cond": {"context": ctx}}, soft_box(bx.box, lh, lw, model.device)))
    elif request.task == "semantic" and request.labels is not None:
        labels = resize_nearest(np.asarray(request.labels), w, h)
        from engine.checkpoint import label_names

        names = dict(enumerate(label_names(model.config))) | dict(request.label_prompts)
        for cid in np.unique(labels):
            if cid < 0:
                continue
            if int(cid) not in names:
                raise EngineError(f"label map class {int(cid)} has no name to prompt with")
            m = torch.from_numpy((labels == cid).astype(np.float32))[None, None].to(model.device)
            m = F.interpolate(m, size=(lh, lw), mode="area")
            ctx = text_cond(model, [names[int(cid)]] * b, request.clip_skip)
            regions.append(Region({"cond": {"context": ctx}}, m))
    return regions


def layout_tile_conditioning(request: Request, model, lh: int, lw: int):
    """Per-tile layout conditioning: the same boxes with the tile's crop tokens, as LDM's own tiled sampling does."""
    from engine.tiling import crop_spatial

    tok = layout_tokenizer(model)
    tokens = tok.encode([(bx.label, bx.box) for bx in request.boxes])
    empty = tok.encode([])
    cache: dict = {}

    def context(t: torch.Tensor, window) -> torch.Tensor:
        key = (window, t is empty)
        if key not in cache:
            t = tok.with_crop(t, window)[None].expand(request.batch_size, -1).to(model.device)
            cache[key] = model.get_learned_conditioning(t)
        return cache[key]

    def crop_extra(extra: dict, slices) -> dict:
        sy, sx = slices
        window = (sx.start / lw, sy.start / lh, sx.stop / lw, sy.stop / lh)
        out = crop_spatial(extra, slices, (lh, lw))
        out["cond"] = {**out["cond"], "context": context(tokens, window)}
        if "uncond" in out:
            out["uncond"] = {**out["uncond"], "context": context(empty, window)}
        return out

    return crop_extra


def wants_sketch(request: Request, model) -> bool:
    """A layout request without a start image, on a model of the shapes world (its classes), whose prompt names a
    ground or the sky: it starts from their sketch at sketch_strength."""
    from engine.planner import names_background
    from engine.world.scene import OBJECT_CLASSES

    if request.task != "layout" or request.image is not None or request.sketch_strength <= 0:
        return False
    if not is_layout_model(model) or tuple(model.config.cond.label_names) != OBJECT_CLASSES:
        return False
    return names_background(plain(request.prompt))


def sketch_for(request: Request, model, h: int, w: int) -> np.ndarray | None:
    """The flat sketch of the prompt's ground and sky to start from (engine.planner.background_sketch), or None."""
    from engine.planner import background_sketch

    return background_sketch(plain(request.prompt), h, w) if wants_sketch(request, model) else None


def plan(request: Request, model, h: int, w: int) -> Plan:
    from engine import control

    p = plan_task(request, model, h, w)
    if control.active(request) and p.controls is None:
        packed, p.controls = control.conditioning(request, model, p.height, p.width)
        p.cond = {**p.cond, "control": packed}
    return p


def plan_task(request: Request, model, h: int, w: int) -> Plan:
    cfg = model.config
    if request.task == "upscale":
        return plan_upscale(request, model, h, w)
    if request.task == "inpaint" and request.inpaint_crop:
        return plan_cropped_inpaint(request, model)
    if request.task == "inpaint" and (cfg.cond.kind == "first_stage" or cfg.unet.in_channels == 9):
        return plan_dedicated_inpaint(request, model, h, w)
    text_model = cfg.cond.kind in TEXT_KINDS and not is_layout_model(model)
    cond, uncond = base_conditioning(request, model, h, w)
    p = Plan(cond, uncond, h, w)
    if is_layout_model(model):
        p.crop_extra = layout_tile_conditioning(request, model, h // cfg.factor, w // cfg.factor)
    if text_model and request.task in ("layout", "semantic"):
        regions = regions_for(request, model, h, w)
        p.wrap.append(lambda den, noise: RegionalDenoiser(den, regions))
    sketch = sketch_for(request, model, h, w)
    if sketch is not None or (request.image is not None and request.task in ("img2img", *HIRES_TASKS)):
        image = sketch if sketch is not None else resize_rgb(request.image, w, h)
        p.init = model.encode_first_stage(to_tensor(image, model.device, model.dtype)).float()
        p.init = p.init.expand(request.batch_size, -1, -1, -1)
        p.strength = request.sketch_strength if sketch is not None else request.strength
    if request.task == "inpaint":
        add_mask_blend(request, model, p)
    return p


def latent_mask(soft: np.ndarray, model) -> torch.Tensor:
    """Pixel mask -> latent mask: a latent cell regenerates if any pixel it covers is (partly) masked."""
    f = model.config.factor
    m = torch.from_numpy((soft > 0).astype(np.float32))[None, None].to(model.device)
    return F.max_pool2d(m, kernel_size=f, stride=f)


def add_mask_blend(request: Request, model, p: Plan) -> None:
    """Mask-blended latent inpainting for any checkpoint; pixels outside the grown, feathered mask stay exact."""
    image = request.image
    soft = grow_and_feather(request.mask, request.mask_grow, request.mask_feather)
    z0 = model.encode_first_stage(to_tensor(image, model.device, model.dtype)).float()
    z0 = z0.expand(request.batch_size, -1, -1, -1)
    mlat = latent_mask(soft, model)
    p.init, p.strength, p.latent_mask = z0, request.inpaint_strength, mlat
    p.wrap.append(lambda den, noise: MaskBlendDenoiser(den, z0, mlat, noise))
    p.finish = lambda img: composite(image, img, soft)


def plan_dedicated_inpaint(request: Request, model, h: int, w: int) -> Plan:
    """LDM inpainting_big (VQ masked image + mask, 7 ch) and SD inpainting (mask + masked-image latent, 9 ch)."""
    cfg, b = model.config, request.batch_size
    image = request.image
    soft = grow_and_feather(request.mask, request.mask_grow, request.mask_feather)
    x = to_tensor(image, model.device, model.dtype)
    m = torch.from_numpy((soft > 0.5).astype(np.float32))[None, None].to(model.device, model.dtype)
    lh, lw = h // cfg.factor, w // cfg.factor
    if cfg.cond.kind == "first_stage":
        c = model.cond_stage_model.encode((1 - m) * x - m)
        concat = torch.cat([c, F.interpolate(m * 2 - 1, size=(lh, lw))], dim=1)
        cond, uncond = {"concat": concat.expand(b, -1, -1, -1)}, None
    else:
        masked = model.encode_first_stage(x * (1 - m))
        concat = torch.cat([F.interpolate(m, size=(lh, lw)), masked], dim=1).expand(b, -1, -1, -1)
        cond = {"context": text_cond(model, [request.prompt] * b, request.clip_skip), "concat": concat}
        uncond = {"context": text_cond(model, [request.negative_prompt] * b, request.clip_skip)}
    p = Plan(cond, uncond, h, w, finish=lambda img: composite(image, img, soft))
    if request.inpaint_strength < 1.0:
        p.init = model.encode_first_stage(x).float().expand(b, -1, -1, -1)
        p.strength = request.inpaint_strength
    return p


def plan_cropped_inpaint(request: Request, model) -> Plan:
    """Inpaint only the mask's bounding box (with padding) at full resolution, then paste it back."""
    f = model.config.factor * 2 ** (len(model.config.unet.channel_mult) - 1)
    soft = grow_and_feather(request.mask, request.mask_grow, request.mask_feather)
    box = mask_bbox(soft > 0, pad=max(32, f), multiple=model.config.factor)
    if box is None:
        raise EngineError("the mask is empty: paint the area to repaint")
    x0, y0, x1, y1 = box
    from engine.control import cropped

    sub = replace(request, image=request.image[y0:y1, x0:x1], mask=request.mask[y0:y1, x0:x1], inpaint_crop=False,
                  width=x1 - x0, height=y1 - y0, control=cropped(request.control, request.image.shape[:2], box))
    p = plan(sub, model, y1 - y0, x1 - x0)
    inner, full = p.finish, request.image

    def paste(img):
        out = full.copy()
        out[y0:y1, x0:x1] = inner(img) if inner else img
        return out

    p.finish = paste
    return p


def plan_upscale(request: Request, model, h: int, w: int) -> Plan:
    """x4 super-resolution: LDM-BSR (low-res concat) or the SD x4 upscaler (noise-augmented concat + noise level)."""
    cfg, b = model.config, request.batch_size
    lh, lw = h // cfg.factor, w // cfg.factor
    low = resize_rgb(request.image, lw, lh) if request.image.shape[:2] != (lh, lw) else request.image
    x = to_tensor(low, model.device, model.dtype).expand(b, -1, -1, -1)
    finish = (lambda img: colour_fix(img, request.image)) if request.colour_fix else None
    if cfg.conditioning_key != "hybrid-adm":
        return Plan({"concat": model.get_learned_conditioning(x)}, None, h, w, finish=finish)
    from engine.config import ScheduleConfig
    from engine.schedules import alphas_cumprod

    level = int(request.noise_level)
    if not 0 <= level <= max(cfg.noise_level_max, 1):
        raise EngineError(f"noise level must be between 0 and {cfg.noise_level_max}")
    ac = alphas_cumprod(ScheduleConfig(linear_start=0.0001, linear_end=0.02))[level].item()
    g = torch.Generator("cpu").manual_seed(int(request.seed) + 104729)
    noise = torch.randn(x.shape, generator=g).to(x)
    aug = ac**0.5 * x + (1 - ac) ** 0.5 * noise
    y = torch.full((b,), level, dtype=torch.long, device=model.device)
    cond = {"context": text_cond(model, [request.prompt] * b, request.clip_skip), "concat": aug, "y": y}
    uncond = {"context": text_cond(model, [request.negative_prompt] * b, request.clip_skip)}
    return Plan(cond, uncond, h, w, finish=finish)
