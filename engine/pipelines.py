"""Flat pipeline functions: one Request in, one Result out (text, img2img, inpaint, layout, semantic, upscale)."""
from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.api import (HIRES_MODES, HIRES_TASKS, LARGE_CANVAS_TASKS, TASKS, EngineError, JobContext, Request, Result,
                        SEAMLESS, Started, ASSET_EXTENSIONS)
from engine.sampling import SAMPLERS, sample, schedule
from engine.schedules import DiscreteDenoiser
from engine.guidance import CFGDenoiser, DilatedDenoiser, PromptEditDenoiser, SeamlessDenoiser, map_spatial
from engine.prompts import plain
from engine.large_canvas import first_pass_size, run_scaled_inpaint, run_two_pass


@dataclass
class Plan:
    """What a task hands the shared sampling core: conditioning, start latent, wrappers and the paste-back."""

    cond: dict
    uncond: dict | None
    height: int
    width: int
    init: torch.Tensor | None = None
    strength: float = 1.0
    wrap: list = field(default_factory=list)
    finish: object = None
    crop_extra: object = None
    latent_mask: torch.Tensor | None = None
    controls: object = None  # engine.control.Units reading cond['control']


def pick_device(request: Request) -> tuple[torch.device, torch.dtype]:
    """CUDA fp16 when present (auto), else CPU fp32; bf16 on CPU on request."""
    cuda = torch.cuda.is_available()
    if request.device == "cuda" and not cuda:
        raise EngineError("CUDA was requested but no CUDA device is available")
    device = torch.device("cuda" if request.device == "cuda" or (request.device == "auto" and cuda) else "cpu")
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if request.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = names[request.dtype]
    if device.type == "cpu" and dtype == torch.float16:
        raise EngineError("float16 is not supported on the CPU; use float32 or bfloat16")
    return device, dtype


def resolve_model(name: str, task: str) -> Path:
    """A file path, or 'default': the bundled model whose family serves the task best."""
    from engine.api import default_model_for

    if name and name != "default":
        p = Path(name).expanduser()
        if not p.exists():
            raise EngineError(f"model not found: {name}")
        return p
    info = default_model_for(task)
    if info is None:
        raise EngineError(f"no bundled default model serves {task!r}; add a checkpoint or run `make models`")
    return Path(info.path)


def get_model(request: Request, cache: dict, device, dtype):
    """The loaded model, cached on the worker and swapped when the request names another file or device."""
    from engine.checkpoint import CheckpointError, load

    path = resolve_model(request.model, request.task)
    key = (str(path.resolve()), path.stat().st_mtime, str(device), str(dtype))
    if cache.get("key") != key:
        had = cache.pop("model", None) is not None
        cache.pop("previewer", None)
        cache["key"] = None
        if had:
            gc.collect()
        try:
            cache["model"] = load(path, device=device, dtype=dtype)
        except CheckpointError as e:
            raise EngineError(str(e)) from None
        cache["key"] = key
    from engine import control, lora, vae

    lora.for_request(request, cache["model"], path)
    control.for_request(request, cache["model"], path)
    if vae.for_request(request, cache["model"], path):
        cache.pop("previewer", None)
    return cache["model"]


def warm_up() -> None:
    """Run a tiny model once on the worker so torch's lazy imports and kernel setup happen before the first job."""
    from engine.checkpoint import params_on_meta
    from engine.families import tiny
    from engine.models.latent_diffusion import LatentDiffusion

    with params_on_meta():
        m = LatentDiffusion(tiny("ldm-bsr-sr", latent_size=4))
    m.load_state_dict({k: torch.zeros(v.shape) for k, v in m.state_dict().items()}, assign=True)
    with torch.inference_mode():
        den = base_denoiser(m)
        z = den(torch.zeros(1, 3, 4, 4), torch.ones(1), concat=torch.zeros(1, 3, 4, 4))
        m.decode_first_stage(z)


def validate(request: Request, model) -> None:
    cfg = model.config
    if request.task not in TASKS:
        raise EngineError(f"unknown task {request.task!r}; valid: {', '.join(TASKS)}")
    if request.sampler not in SAMPLERS:
        raise EngineError(f"unknown sampler {request.sampler!r}; valid: {', '.join(SAMPLERS)}")
    if request.hires not in HIRES_MODES:
        raise EngineError(f"unknown large-canvas mode {request.hires!r}; valid: {', '.join(HIRES_MODES)}")
    if not 0.0 <= request.sketch_strength <= 1.0:
        raise EngineError(f"sketch strength must be in [0, 1], got {request.sketch_strength}")
    if not 0.0 < request.inpaint_strength <= 1.0:
        raise EngineError(f"inpainting strength must be in (0, 1], got {request.inpaint_strength}")
    if not 0.0 <= request.variation_strength <= 1.0:
        raise EngineError(f"variation strength must be in [0, 1], got {request.variation_strength}")
    if request.seamless not in SEAMLESS:
        raise EngineError(f"unknown seamless mode {request.seamless!r}; valid: {', '.join(SEAMLESS)}")
    if not 1 <= request.clip_skip <= 12:
        raise EngineError(f"clip skip must be between 1 and 12, got {request.clip_skip}")
    if request.steps < 1 or request.steps > 1000:
        raise EngineError(f"steps must be between 1 and 1000, got {request.steps}")
    if request.batch_size < 1:
        raise EngineError("batch size must be at least 1")
    from engine.families import tasks_for

    if request.task not in tasks_for(cfg) and not (request.task == "img2img" and "txt2img" in tasks_for(cfg)):
        raise EngineError(f"{cfg.family} models cannot do {request.task!r} (they do: {', '.join(tasks_for(cfg))})")
    needs_image = request.task in ("img2img", "inpaint", "upscale")
    if needs_image and request.image is None:
        raise EngineError(f"{request.task} needs an input image")
    if request.image is not None and (request.image.ndim != 3 or request.image.shape[2] != 3):
        raise EngineError(f"input image must be H x W x 3 RGB, got shape {request.image.shape}")
    if request.task == "inpaint":
        if request.mask is None:
            raise EngineError("inpaint needs a mask (white = repaint)")
        if request.mask.shape[:2] != request.image.shape[:2]:
            raise EngineError(
                f"mask size {request.mask.shape[1]}x{request.mask.shape[0]} does not match the image size "
                f"{request.image.shape[1]}x{request.image.shape[0]}"
            )
    if request.task == "txt2img" and cfg.cond.kind in ("clip", "openclip", "bert") and not request.prompt.strip():
        raise EngineError("text-to-image needs a prompt")
    if cfg.cond.kind == "spatial" and request.labels is None:
        raise EngineError(f"{cfg.family} models need a label map (paint one) for {request.task}")
    if request.task == "layout" and not request.boxes:
        raise EngineError("layout-to-image needs at least one box, or a prompt whose objects the planner can place")


def output_size(request: Request, model) -> tuple[int, int]:
    """Explicit size, else the input's size (x4 for upscale), else the model's training size; multiple of the factor."""
    f = model.config.factor
    src = next((a for a in (request.image, request.mask, request.labels) if a is not None), None)
    if request.width and request.height:
        w, h = request.width, request.height
    elif src is not None:
        h, w = src.shape[:2]
        if request.task == "upscale":
            h, w = 4 * h, 4 * w
    else:
        w = h = model.config.image_size
    if w % f or h % f:
        raise EngineError(f"size {w}x{h} must be a multiple of {f} for {model.config.family}")
    if w < f * 4 or h < f * 4:
        raise EngineError(f"size {w}x{h} is too small (at least {f * 4} px per side)")
    return h, w


def to_tensor(img: np.ndarray, device, dtype) -> torch.Tensor:
    """uint8 HxWx3 -> (1,3,H,W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1
    return t.to(device, dtype)


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [a.permute(1, 2, 0).cpu().numpy() for a in x]


class PadToMultiple:
    """Reflect-pads the latent to the UNet's stride and crops the prediction back: any size a multiple of the factor."""

    def __init__(self, inner, multiple: int):
        self.inner, self.multiple = inner, multiple

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, sigma, **kw):
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if not ph and not pw:
            return self.inner(x, sigma, **kw)
        pad = lambda t: F.pad(t, (0, pw, 0, ph), mode="replicate")  # noqa: E731
        return self.inner(pad(x), sigma, **map_spatial(kw, pad, h, w))[..., :h, :w]


def base_denoiser(model, controls=None):
    """The UNet as a VE denoiser; the sampler state stays float32 whatever the model's dtype. controls: ControlNet
    units (engine.control.Units) that read the guide images passed as `control`."""
    unet, dtype = model.model, model.dtype

    def unet_fn(x, t, context=None, concat=None, y=None, control=None):
        cast = lambda v: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
        x, t, context = cast(x), t.to(x.device), cast(context)
        residuals = controls(x, t, cast(control), context, y) if controls is not None and control is not None else None
        return unet(x, t, context=context, concat=cast(concat), y=y, control=residuals).float()

    den = DiscreteDenoiser(unet_fn, model.alphas_cumprod, model.config.parameterization)
    return PadToMultiple(den, 2 ** (len(model.config.unet.channel_mult) - 1))


def seeds_for(request: Request) -> list[int]:
    return [int(request.seed) + i for i in range(request.batch_size)]


def initial_noise(seeds: list[int], shape: tuple[int, ...], variation_seeds: list[int] | None = None,
                  strength: float = 0.0) -> torch.Tensor:
    """One CPU generator per image, so a seed gives the same picture in any batch and on any device; a variation
    (A1111's variation seed) slerps each image's noise towards its variation seed's by strength."""
    def draw(s: int) -> torch.Tensor:
        return torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(s))

    noise = torch.cat([draw(s) for s in seeds])
    if strength > 0 and variation_seeds:
        noise = slerp(strength, noise, torch.cat([draw(s) for s in variation_seeds]))
    return noise


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per sample (Shoemake 1985): keeps Gaussian noise at its norm, where a straight mix of
    two noises would shrink it."""
    af, bf = a.flatten(1).double(), b.flatten(1).double()
    cos = ((af / af.norm(dim=1, keepdim=True)) * (bf / bf.norm(dim=1, keepdim=True))).sum(1).clamp(-1, 1)
    omega = torch.acos(cos)[:, None]
    sin = torch.sin(omega)
    straight = sin.abs() < 1e-6
    wa = torch.where(straight, 1 - t, torch.sin((1 - t) * omega) / torch.where(straight, 1, sin))
    wb = torch.where(straight, t, torch.sin(t * omega) / torch.where(straight, 1, sin))
    return (wa * af + wb * bf).reshape(a.shape).to(a.dtype)


def planner_path(name: str) -> Path:
    """A planner file, or 'default': the bundled one (resources/models/planner/)."""
    from engine.api import default_models_dir

    p = Path(default_models_dir()) / "planner" / "world-planner.safetensors" if name in ("", "default") else Path(name)
    if not p.exists():
        raise EngineError(f"layout planner not found: {p} (draw boxes, or run `make models`)")
    return p


def cached(cache: dict, slot: str, path: Path, load_fn, *extra):
    """cache[slot] from load_fn(), loaded again when the file (path, mtime) or `extra` change."""
    key = (str(path.resolve()), path.stat().st_mtime, *extra)
    if cache.get(f"{slot}_key") != key:
        cache[slot], cache[f"{slot}_key"] = load_fn(), key
    return cache[slot]


def plan_boxes(request: Request, cache: dict) -> list:
    """The prompt's objects placed by the text-to-layout planner (engine.planner), seeded by the request."""
    from engine import planner
    from engine.api import Box

    path = planner_path(request.planner)
    try:
        model = cached(cache, "planner", path, lambda: planner.load(path))
        return [Box(label, box) for label, box in planner.plan(model, plain(request.prompt), seed=request.seed)]
    except planner.PlannerError as e:
        raise EngineError(str(e)) from None


def check_best_of(request: Request) -> None:
    if request.best_of < 1 or request.best_of > 64:
        raise EngineError(f"best_of must be between 1 and 64, got {request.best_of}")


def run_planned(request: Request, ctx: JobContext, cache: dict, t0: float) -> Result:
    """Layout from the prompt alone: boxes planned, then drawn; best_of > 1 draws that many, each with its own plan
    and seed (seed + 7919 k), and keeps the judge's pick (`run_judged`). A batch (batch_size > 1) shares one plan and
    is not judged."""
    check_best_of(request)
    tries = request.best_of if request.batch_size == 1 else 1
    subs = [replace(request, seed=int(request.seed) + 7919 * k, best_of=1) for k in range(tries)]
    subs = [replace(sub, boxes=plan_boxes(sub, cache)) for sub in subs]
    if len(subs) == 1:
        return replace(run_request(subs[0], ctx, cache), boxes=tuple(subs[0].boxes), elapsed_s=time.perf_counter() - t0)
    res, best = run_judged(request, subs, ctx, cache, t0)
    return replace(res, boxes=tuple(subs[best].boxes), elapsed_s=time.perf_counter() - t0)


def judged_text(request: Request, model) -> bool:
    """Text-to-image worth drawing best_of times and judging: one image from noise, on a closed-vocabulary (project
    trained) text model, whose prompt names objects the judge can read."""
    from engine.judge import shape_swaps

    return (request.task == "txt2img" and request.best_of > 1 and request.batch_size == 1 and request.image is None
            and model.config.cond.tokenizer == "world" and bool(shape_swaps(plain(request.prompt))))


def run_text_tries(request: Request, ctx: JobContext, cache: dict, t0: float) -> Result:
    """Text-to-image best of N by the model's own reading (`run_judged`); reported under the request's seed and
    best_of, which draw the same tries and pick again."""
    check_best_of(request)
    subs = [replace(request, seed=int(request.seed) + 7919 * k, best_of=1) for k in range(request.best_of)]
    judged = replace(request, judge=request.model) if request.judge in ("", "default") else request
    res, best = run_judged(judged, subs, ctx, cache, t0)
    *head, last = res.parameters.splitlines()
    last = last.replace(f"Seed: {subs[best].seed}", f"Seed: {int(request.seed)}") + f", Best of: {request.best_of}"
    return replace(res, seeds=(int(request.seed),), parameters="\n".join([*head, last]),
                   elapsed_s=time.perf_counter() - t0)


class TryContext:
    """The job's context for try k of n: progress counted over all the tries, so one bar spans them."""

    def __init__(self, ctx: JobContext, k: int, n: int):
        self._ctx, self._k, self._n = ctx, k, n

    def progress(self, step: int, total: int) -> None:
        self._ctx.progress(self._k * total + step, self._n * total)

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def run_judged(request: Request, subs: list[Request], ctx: JobContext, cache: dict, t0: float) -> tuple[Result, int]:
    """Draws each sub-request and keeps the one whose objects the judge text model reads as the prompted shapes most
    often (engine.judge.shape_votes). On a two-pass canvas the tries are judged at their first pass's size and only
    the kept one is enlarged. Returns the kept result and its index."""
    from engine.images import resize_rgb

    model = get_model(request, cache, *pick_device(request))
    size = output_size(request, model)
    firsts = [first_pass_size(sub, model, *size) for sub in subs]
    made = [run_request(sub if f is None else replace(sub, height=f[0], width=f[1], hires="off"),
                        TryContext(ctx, k, len(subs)), cache) for k, (sub, f) in enumerate(zip(subs, firsts))]
    images = [res.images[0] for res in made]
    h, w = min(im.shape[0] for im in images), min(im.shape[1] for im in images)
    images = [im if im.shape[:2] == (h, w) else resize_rgb(im, w, h) for im in images]
    best = max(range(len(made)), key=judge_votes(request, images, cache).__getitem__)
    res = made[best]
    if firsts[best] is not None:
        res = run_two_pass(subs[best], ctx, cache, t0, firsts[best], size, model, small=res)
    return res, best


def judge_votes(request: Request, images: list, cache: dict) -> list[tuple[int, float]]:
    from engine.checkpoint import CheckpointError, load
    from engine.families import tasks_for
    from engine.judge import shape_votes

    path = resolve_model(request.judge, "txt2img")
    device, dtype = pick_device(request)
    try:
        judge = cached(cache, "judge", path, lambda: load(path, device=device, dtype=dtype), str(device), str(dtype))
    except CheckpointError as e:
        raise EngineError(f"judge: {e}") from None
    if "txt2img" not in tasks_for(judge.config):
        raise EngineError(f"the judge must be a text-to-image model; {path.name} is {judge.config.family}")
    with torch.inference_mode():
        return shape_votes(judge, images, plain(request.prompt), int(request.seed))


def make_plan(request: Request, model, h: int, w: int) -> Plan:
    from engine import tasks

    return tasks.plan(request, model, h, w)


def run_request(request: Request, ctx: JobContext, cache: dict) -> Result:
    """Run one job on the worker: load (cached), validate, plan the task, sample with previews, decode, paste back."""
    t0 = time.perf_counter()
    if request.labels is not None and (np.asarray(request.labels) < 0).any():
        from engine.images import fill_unpainted

        request = replace(request, labels=fill_unpainted(request.labels))
    if request.task == "layout" and not request.boxes and request.prompt.strip():
        return run_planned(request, ctx, cache, t0)
    if request.task == "upscale" and (request.upscale_by != 4 or request.refine_strength > 0
                                      or request.upscaler == "esrgan"):
        from engine import upscaling

        return upscaling.run(request, ctx, cache, t0)
    device, dtype = pick_device(request)
    model = get_model(request, cache, device, dtype)
    validate(request, model)
    h, w = output_size(request, model)
    if judged_text(request, model):
        return run_text_tries(request, ctx, cache, t0)
    first = first_pass_size(request, model, h, w)
    if first is not None and request.task == "inpaint":
        return run_scaled_inpaint(request, ctx, cache, t0, first, (h, w), model)
    if first is not None:
        return run_two_pass(request, ctx, cache, t0, first, (h, w), model)
    ctx.emit(Started(ctx.job_id, device=str(device), dtype=str(dtype).replace("torch.", ""), family=model.config.family))
    with torch.inference_mode():
        try:
            plan = make_plan(request, model, h, w)
            images = sample_plan(request, model, plan, ctx, cache)
        except torch.cuda.OutOfMemoryError:
            raise EngineError("Out of memory on the GPU: try a smaller size, tiling, or the CPU device.") from None
        except ValueError as e:
            raise EngineError(str(e)) from None
    seeds = seeds_for(request)
    return Result(ctx.job_id, tuple(images), parameters_text(request, model, h, w), tuple(seeds), time.perf_counter() - t0)


def sample_plan(request: Request, model, plan: Plan, ctx: JobContext, cache: dict) -> list[np.ndarray]:
    seeds = seeds_for(request)
    f, c = model.config.factor, model.config.unet.out_channels
    lh, lw = plan.height // f, plan.width // f
    variations = [int(request.variation_seed) + i for i in range(len(seeds))]
    noise = initial_noise(seeds, (c, lh, lw), variations, request.variation_strength).to(model.device)
    den = base_denoiser(model, plan.controls)
    if request.hires == "dilated" and request.task in LARGE_CANVAS_TASKS:
        den = DilatedDenoiser(den, model.config.image_size // model.config.factor)
    if plan.uncond is not None and request.cfg_scale != 1.0:
        den = CFGDenoiser(den, request.cfg_scale)
        extra = {"cond": plan.cond, "uncond": plan.uncond}
    else:
        den = CFGDenoiser(den, 1.0)
        extra = {"cond": plan.cond}
    tiled = use_tiles(request, model, plan)
    if tiled:
        from engine.tiling import TiledDenoiser

        skip = None
        if plan.latent_mask is not None:
            m = plan.latent_mask
            skip = lambda sl: not bool(m[..., sl[0], sl[1]].any())  # noqa: E731  (inpainting: tiles off the mask)
        den = TiledDenoiser(den, request.tiles.tile, request.tiles.overlap, crop_extra=plan.crop_extra, skip=skip)
    if request.seamless != "off":
        if tiled and plan.crop_extra is not None:
            raise EngineError("a seamless image with layout boxes cannot be tiled: turn Tiling off, or Seamless")
        den = SeamlessDenoiser(den, request.seamless)
    for wrap in plan.wrap:
        den = wrap(den, noise)
    previewer = preview_fn(model, cache)
    sigmas = schedule(request.sampler, den, request.steps, plan.strength if plan.init is not None else 1.0)
    total = len(sigmas) - 1
    from engine.tasks import prompt_edits

    edits = prompt_edits(request, model, plan, total)
    if edits is not None:
        den = PromptEditDenoiser(den, sigmas, *edits)

    every = request.full_preview_every

    def callback(info):
        i = info["i"] + 1
        if every and i % every == 0:
            from engine.preview import decode_preview

            ctx.preview(i, decode_preview(model.first_stage_model, info["denoised"][:1], model.scale_factor))
        elif previewer is not None and (ctx.wants_preview() or i == total):
            ctx.preview(i, previewer(info["denoised"][:1]))
        ctx.progress(i, total)

    gen = torch.Generator("cpu").manual_seed(int(request.seed) + 7919)
    ctx.progress(0, total)
    z = sample(request.sampler, den, noise, request.steps, extra_args=extra, callback=callback, generator=gen,
               eta=request.eta, strength=plan.strength, init=plan.init)
    ctx.check_cancel()
    images = to_uint8(decode(model, z, tiled, request.tiles.vae_tile, request.seamless))
    if plan.finish is not None:
        images = [plan.finish(img) for img in images]
    return images


def use_tiles(request: Request, model, plan: Plan) -> bool:
    """Tiling on request, or automatically when the estimated memory of a step or the decode exceeds the budget."""
    mode = request.tiles.mode
    if mode == "off":
        return False
    if mode == "on":
        return True
    from engine.tiling import should_tile

    budget = request.memory_budget_mb * 2**20 or None
    return should_tile(plan.height, plan.width, model.config, budget, request.batch_size, model.device,
                       torch.finfo(model.dtype).bits // 8)


def decode(model, z: torch.Tensor, tiled: bool = False, vae_tile: int = 512, wrap: str = "off") -> torch.Tensor:
    """Latents -> images in [-1, 1]; the seamless tiled decoder keeps memory flat on large canvases. wrap ('x', 'y',
    'xy'): a tileable image, decoded from the latent padded by wrapping around and cropped, so its edges meet."""
    if wrap != "off":
        f, (h, w) = model.config.factor, z.shape[-2:]
        py, px = (min(8, h) if "y" in wrap else 0), (min(8, w) if "x" in wrap else 0)
        images = decode(model, F.pad(z, (px, px, py, py), mode="circular"), tiled, vae_tile)
        return images[..., py * f:(py + h) * f, px * f:(px + w) * f]
    if tiled:
        from engine.tiling import decode_tiled

        tile = max(8, vae_tile // model.config.factor)
        return decode_tiled(model.first_stage_model, z.to(model.dtype) / model.scale_factor, tile=tile)
    return torch.cat([model.decode_first_stage(z[i:i + 1]) for i in range(z.shape[0])])


def preview_fn(model, cache: dict):
    """A cheap latent -> RGB preview: the linear map fitted from this model's own decoder (cached per model)."""
    if "previewer" not in cache:
        from engine.preview import LatentPreviewer, fit_latent_to_rgb

        cache_dir = None
        if model.source:
            import platformdirs

            cache_dir = platformdirs.user_cache_path("latent-canvas") / "previews"
        w, b = fit_latent_to_rgb(model.first_stage_model, model.config.unet.out_channels,
                                 scale_factor=model.scale_factor, cache_dir=cache_dir, model_path=model.source or None)
        cache["previewer"] = LatentPreviewer(w, b)
    return cache["previewer"]


def request_record(request: Request) -> dict:
    """The request as JSON-ready data (arrays left out), embedded in output PNGs."""
    d = {k: v for k, v in asdict(request).items() if not isinstance(v, np.ndarray) and v is not None}
    d["control"] = [{k: v for k, v in unit.items() if k != "image"} for unit in d.get("control", ())]
    return json.loads(json.dumps(d, default=str))


def asset_name(name: str) -> str:
    """A VAE or ControlNet as the parameters text names it: a file by its stem, a name as it is."""
    return Path(name).stem if Path(name).suffix in ASSET_EXTENSIONS else name


def parameters_text(request: Request, model, h: int, w: int) -> str:
    """The 'parameters' text users know from other tools: prompt, negative prompt, then 'Key: value' pairs."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    pairs = {
        "Steps": request.steps, "Sampler": request.sampler, "CFG scale": request.cfg_scale, "Seed": request.seed,
        "Size": f"{w}x{h}", "Model": Path(model.source).stem, "Family": model.config.family, "Task": request.task,
    }
    if request.image is not None and request.task in ("img2img", *HIRES_TASKS):
        pairs["Denoising strength"] = request.strength
    if request.task == "inpaint" and request.inpaint_strength < 1.0:
        pairs["Denoising strength"] = request.inpaint_strength
    if request.task == "upscale" and request.upscaler != "esrgan":
        pairs["Colour fix"] = request.colour_fix
    if request.hires == "dilated" and request.task in LARGE_CANVAS_TASKS:
        pairs["Large canvas"] = "dilated sampling"
    from engine.tasks import wants_sketch

    if wants_sketch(request, model):
        pairs["Sketch strength"] = request.sketch_strength
    if request.eta:
        pairs["Eta"] = request.eta
    if request.clip_skip != 1:
        pairs["Clip skip"] = request.clip_skip
    if request.seamless != "off":
        pairs["Seamless"] = request.seamless
    if request.variation_strength > 0:
        pairs["Variation seed"] = request.variation_seed
        pairs["Variation seed strength"] = request.variation_strength
    if request.vae and request.task != "upscale":
        pairs["VAE"] = asset_name(request.vae)
    from engine.control import active

    for i, c in enumerate(active(request)):
        pairs[f"ControlNet {i}"] = json.dumps(f"Model: {asset_name(c.model)}, Module: {c.preprocessor}, "
                                              f"Weight: {c.strength}, Guidance Start: {c.start}, Guidance End: {c.end}")
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs.items()))
    return "\n".join(lines)
