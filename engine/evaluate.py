"""Held-out evaluation of world LDMs through the real Engine path, with ground-truth ceiling and random-weight chance."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.world import EVAL_SEEDS, render, render_from_layout  # noqa: F401  (render_from_layout: public twin)
from engine.world import metrics

TASKS = ("txt2img", "planned", "layout", "semantic", "inpaint", "upscale", "control")
ALIASES = {"sr": "upscale", "sr4": "upscale", "text": "txt2img"}
ENGINE_TASK = {"planned": "layout", "control": "txt2img"}  # the Request.task an evaluation task sends
HEADLINE = {"txt2img": "caption_match", "planned": "caption_match", "layout": "box_recall",
            "semantic": "pixel_accuracy", "inpaint": "removal_ok", "upscale": "psnr_gain_db", "control": "box_recall"}


@dataclass
class Case:
    """One held-out evaluation input: the scene, and for inpainting the object to remove and its mask."""

    seed: int
    scene: object
    mask: np.ndarray | None = None
    target: int = -1
    low: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def instruction(self) -> str:
        return f"remove the {self.scene.boxes[self.target][0]}" if self.target >= 0 else ""


def make_cases(task: str, n: int, offset: int = 0, size: int = 64) -> list[Case]:
    """n scenes from EVAL_SEEDS (never seen in training); inpainting masks one object's grown box."""
    from engine.train_data import box_mask

    out = []
    for i in range(n):
        seed = EVAL_SEEDS.start + offset + i
        s = render(seed, size)
        c = Case(seed, s)
        if task == "inpaint":
            from engine.train_data import render_without

            c.target = i % len(s.boxes)
            c.mask = box_mask(s.boxes[c.target][1], size) * 255
            c.extra["truth"] = render_without(seed, c.target, size).image
        if task == "upscale":
            c.low = render(seed, size // 4).image
        out.append(c)
    return out


def wide_cases(task: str, n: int, offset: int = 0, size: int = 256, native: int = 64,
               max_boxes: int = 30) -> list[Case]:
    """The same n held-out scenes as make_cases at the training size, tiled over size x size canvases (a wider view
    with every object at the size the model was trained on: convolutional sampling, not enlargement). A layout canvas
    takes whole scenes while their boxes fit the layout tokenizer (max_boxes); empty tiles are left as the first
    tile's background. Each canvas's extra["tiles"] holds (row, column, Case) in native-size tiles."""
    from engine.world.scene import Scene

    k = size // native
    if k < 2 or size % native:
        raise ValueError(f"a wide canvas must be a multiple of {native} px, at least twice it; got {size}")
    scenes, out, i = make_cases(task, n, offset, native), [], 0
    while i < len(scenes):
        tiles, nboxes = [], 0
        while i < len(scenes) and len(tiles) < k * k and (
                task != "layout" or nboxes + len(scenes[i].scene.boxes) <= max_boxes):
            tiles.append((*divmod(len(tiles), k), scenes[i]))
            nboxes, i = nboxes + len(scenes[i].scene.boxes), i + 1
        image = np.tile(tiles[0][2].scene.image, (k, k, 1))
        labels = np.tile(tiles[0][2].scene.labels, (k, k))
        boxes = []
        for r, q, c in tiles:
            image[r * native:(r + 1) * native, q * native:(q + 1) * native] = c.scene.image
            labels[r * native:(r + 1) * native, q * native:(q + 1) * native] = c.scene.labels
            boxes += [(lab, ((q + b[0]) / k, (r + b[1]) / k, (q + b[2]) / k, (r + b[3]) / k))
                      for lab, b in c.scene.boxes]
        out.append(Case(tiles[0][2].seed, Scene(image, "", boxes, labels), extra={"tiles": tiles}))
    return out


def score_rows(task: str, case: Case, image: np.ndarray) -> list[dict]:
    """score() of a case, or of each tile's own scene on its crop of a wide canvas (comparable row for row with the
    same scenes made at the training size)."""
    tiles = case.extra.get("tiles")
    if not tiles:
        return [score(task, case, image)]
    side = image.shape[0] // (case.scene.image.shape[0] // tiles[0][2].scene.image.shape[0])
    return [score(task, c, image[r * side:(r + 1) * side, q * side:(q + 1) * side]) for r, q, c in tiles]


def request_for(task: str, case: Case, model: str, steps: int, cfg_scale: float, sampler: str = "ddim",
                colour_fix: bool = True, hires: str = "auto", control: str = "", **hires_kw):
    """control: the ControlNet file of the control task (the caption and the scene's canny edges); "" draws the
    caption alone, one try, as the control task's baseline."""
    from engine.api import Box, Control, Request

    s = case.scene
    r = Request(model=model, task=ENGINE_TASK.get(task, task), steps=steps, cfg_scale=cfg_scale,
                sampler=sampler, seed=case.seed, colour_fix=colour_fix, hires=hires, **hires_kw)
    if task in ("txt2img", "planned", "layout", "control"):
        r.width = r.height = s.image.shape[0]
    if task in ("txt2img", "planned", "control"):
        r.prompt = s.caption
    if task == "control":
        r.best_of = 1
        r.control = (Control(control, s.image, "canny"),) if control else ()
    elif task == "layout":
        r.boxes = [Box(label, tuple(box)) for label, box in s.boxes]
    elif task == "semantic":
        r.labels = s.labels
    elif task == "inpaint":
        r.image, r.mask = s.image, case.mask
    elif task == "upscale":
        r.image = case.low
    return r


def generate(engine, requests) -> list[np.ndarray]:
    """Runs requests through an engine.api.Engine; raises on a failed job."""
    from engine.api import Failed, Result

    out = []
    for r in requests:
        ev = engine.wait(engine.submit(r))
        if not isinstance(ev, Result):
            raise RuntimeError(f"generation failed: {getattr(ev, 'message', ev)}")
        out.append(ev.images[0])
    return out


def bicubic(low: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)


def _partial(image: np.ndarray, scene, at_box: bool = True) -> dict:
    """Diagnostics below the headline: share of the scene's objects whose colour (any shape) is among the detected
    objects (one-to-one), whose colour lies at IoU >= 0.5 of its box, and whether the detected count is right; for
    each object matched by a detection of its colour (at_box: at IoU >= 0.5 of its box, as layout asks; else
    anywhere, as a caption allows), the asked and the drawn shape ("shapes": [asked, drawn], summed by summarize)."""
    from collections import Counter

    from engine.world.detect import detect

    dets = detect(image)
    objs = scene.objects
    want, got = Counter(o["colour"] for o in objs), Counter(d.colour for d in dets)
    colour = sum(min(n, got[c]) for c, n in want.items()) / max(1, len(objs))
    def match(near: bool) -> list:
        used, pairs = set(), []
        for o in objs:
            best = next((k for k, d in enumerate(dets) if k not in used and d.colour == o["colour"]
                         and (not near or metrics.box_iou(d.box, tuple(o["box"])) >= 0.5)), None)
            if best is not None:
                used.add(best)
                pairs.append([o["shape"], dets[best].shape])
        return pairs

    placed = match(True)
    return {"colour_recall": colour, "colour_box_recall": len(placed) / max(1, len(objs)),
            "count_ok": float(len(dets) == len(objs)), "shapes": placed if at_box else match(False)}


def score(task: str, case: Case, image: np.ndarray) -> dict:
    """Per-case scores with engine.world.metrics (headline first, then _partial diagnostics for text and layout)."""
    s = case.scene
    if task in ("txt2img", "planned"):
        return {"caption_match": float(metrics.caption_match(image, s.caption)),
                "caption_match_strict": float(metrics.caption_match(image, s.caption, strict=True)),
                "objects": len(s.objects), **_partial(image, s, at_box=False)}
    if task in ("layout", "control"):
        hits = metrics.layout_score(image, s.boxes)
        extra = {"caption_match": float(metrics.caption_match(image, s.caption))} if task == "control" else {}
        return {"box_recall": float(np.mean(hits)), "boxes": len(hits), **extra, **_partial(image, s)}
    if task == "semantic":
        return {"pixel_accuracy": metrics.pixel_accuracy(image, s.labels)}
    if task == "inpaint":
        r = metrics.inpaint_score(s.image, image, case.mask, case.instruction)
        inside = case.mask > 0
        return {"removal_ok": float(r.ok), "outside_exact": float(r.outside_unchanged), "inside_ok": float(r.inside_ok),
                "inside_psnr_db": min(99.0, metrics.psnr(image[inside], case.extra["truth"][inside]))}
    base = metrics.psnr(bicubic(case.low, s.image.shape[0]), s.image)
    p = metrics.psnr(image, s.image)
    return {"psnr_gain_db": p - base, "psnr_db": p, "bicubic_psnr_db": base}


def ceiling_images(task: str, cases: list[Case], model_path: str | None) -> list[np.ndarray]:
    """The world's own answer: the ground-truth scene; the scene without the object (inpaint); for
    super-resolution the first stage's reconstruction of the true image (what any LDM decoder can reach)."""
    if task == "inpaint":
        return [c.extra["truth"] for c in cases]
    if task == "upscale" and model_path:
        import torch

        from engine.checkpoint import load
        from engine.train_data import to_tensor, to_uint8

        m = load(model_path)
        with torch.no_grad():
            x = to_tensor(np.stack([c.scene.image for c in cases]))
            return list(to_uint8(m.decode_first_stage(m.encode_first_stage(x))))
    return [c.scene.image for c in cases]


def autoencoder_ceiling(fs, n: int = 32, size: int = 64) -> dict:
    """What any LDM on this first stage can reach: decode(encode(truth)) of n held-out scenes scored by the world metrics."""
    import torch

    from engine.train import reconstruct
    from engine.train_data import to_tensor, to_uint8

    scenes = [render(EVAL_SEEDS.start + i, size) for i in range(n)]
    with torch.no_grad():
        rec = to_uint8(reconstruct(fs, to_tensor(np.stack([s.image for s in scenes]))))
    hits = [h for s, r in zip(scenes, rec) for h in metrics.layout_score(r, s.boxes)]
    return {"psnr_db": float(np.mean([metrics.psnr(r, s.image) for s, r in zip(scenes, rec)])),
            "caption_match": float(np.mean([metrics.caption_match(r, s.caption) for s, r in zip(scenes, rec)])),
            "box_recall": float(np.mean(hits)),
            "pixel_accuracy": float(np.mean([metrics.pixel_accuracy(r, s.labels) for s, r in zip(scenes, rec)]))}


def random_copy(model_path: str, out: Path, seed: int = 0) -> Path:
    """The same config with freshly initialised UNet and conditioner (the trained first stage kept): chance level."""
    import torch

    from engine.checkpoint import load, save
    from engine.models.latent_diffusion import LatentDiffusion

    trained = load(model_path)
    torch.manual_seed(seed)
    rnd = LatentDiffusion(trained.config)
    rnd.first_stage_model.load_state_dict(trained.first_stage_model.state_dict())
    save(rnd, out, dtype=torch.float32)
    return out


def shape_confusion(pairs: list) -> dict:
    """Asked shape -> drawn shape counts over matched objects, and the share drawn right (None if none matched)."""
    from engine.world.scene import SHAPES

    table = {a: {d: 0 for d in SHAPES} for a in SHAPES}
    for asked, drawn in pairs:
        table[asked][drawn] += 1
    right = sum(table[s][s] for s in SHAPES)
    return {"shape_right": right / len(pairs) if pairs else None, "shape_confusion": table}


def summarize(rows: list[dict]) -> dict:
    """Means over cases; box recall over all boxes; the shape confusion over every matched object; caption match by
    the caption's object count."""
    keys = [k for k in rows[0] if k not in ("boxes", "shapes", "objects")] if rows else []
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    if rows and "boxes" in rows[0]:
        total = sum(r["boxes"] for r in rows)
        out["box_recall"] = float(sum(r["box_recall"] * r["boxes"] for r in rows) / max(total, 1))
    if rows and "shapes" in rows[0]:
        out.update(shape_confusion([p for r in rows for p in r["shapes"]]))
    if rows and "objects" in rows[0]:
        counts = sorted({r["objects"] for r in rows})
        out["caption_match_by_objects"] = {
            str(n): float(np.mean([r["caption_match"] for r in rows if r["objects"] == n])) for n in counts}
    return out


def grid(rows: list[list[np.ndarray]], path: Path, labels: list[str]) -> None:
    """Rows of images, one column per source, each at the largest image's size (at most 256 px), saved as a PNG."""
    from PIL import Image, ImageDraw

    import cv2

    h = min(256, max(a.shape[0] for row in rows for a in row))
    cols = len(rows[0])
    img = Image.new("RGB", (cols * (h + 4) + 4, len(rows) * (h + 4) + 18), "white")
    d = ImageDraw.Draw(img)
    for j, name in enumerate(labels):
        d.text((4 + j * (h + 4), 2), name[:11], fill="black")
    for i, row in enumerate(rows):
        for j, a in enumerate(row):
            a = cv2.resize(a, (h, h), interpolation=cv2.INTER_NEAREST) if a.shape[0] != h else a
            img.paste(Image.fromarray(a), (4 + j * (h + 4), 18 + i * (h + 4)))
    img.save(path)


def evaluate(model: str, task: str, n: int = 32, out: str | Path | None = None, steps: int = 20, cfg_scale: float = 3.0,
             sampler: str = "ddim", offset: int = 0, chance: bool = True, ceiling: bool = True, size: int = 64,
             colour_fix: bool = True, hires: str = "auto", wide: bool = False, control: str = "", **hires_kw) -> dict:
    """Scores a model on n held-out scenes through Engine; returns (and writes to out/) JSON with model/ceiling/chance.
    size: the scene size in pixels (larger than the training size: the paper's convolutional sampling, sec. 4.3.2);
    colour_fix: the upscale task's Request.colour_fix; hires: Request.hires ('auto' makes 4x the training size two
    passes, 'off' samples it in one); wide (layout, semantic): the same n scenes tiled over size px canvases at the
    training size (wide_cases) instead of each enlarged to size; hires_kw: other Request fields of the two passes
    (hires_strength, hires_upscaler); control: the control task's ControlNet file, whose chance level is the same
    text model without it."""
    from engine.api import Engine
    from engine.pipelines import resolve_model

    task = ALIASES.get(task, task)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    path = str(resolve_model(model, ENGINE_TASK.get(task, task)))
    if task == "control" and not control:
        raise ValueError("the control task needs a ControlNet file (--control)")
    if wide and task not in ("layout", "semantic"):
        raise ValueError("wide canvases are for the layout and semantic tasks")
    cases = wide_cases(task, n, offset, size) if wide else make_cases(task, n, offset, size)
    engine = Engine()
    try:
        made = generate(engine, [request_for(task, c, path, steps, cfg_scale, sampler, colour_fix, hires, control,
                                             **hires_kw) for c in cases])
        result = {"model": path, "task": task, "n": n, "size": size, "steps": steps, "cfg_scale": cfg_scale, "sampler": sampler,
                  "seeds": [cases[0].seed, cases[-1].seed], "headline": HEADLINE[task]}
        if task == "upscale":
            result["colour_fix"] = colour_fix
        if task == "control":
            result["control"] = control
        if size != 64:
            result["hires"], result["wide"] = hires, wide
            result.update(hires_kw)
        rows = {"model": [r for c, im in zip(cases, made) for r in score_rows(task, c, im)]}
        images = {"model": made}
        if ceiling:
            images["ceiling"] = ceiling_images(task, cases, path)
            rows["ceiling"] = [r for c, im in zip(cases, images["ceiling"]) for r in score_rows(task, c, im)]
        if chance and task == "control":
            images["chance"] = generate(engine, [request_for(task, c, path, steps, cfg_scale, sampler)
                                                 for c in cases])
            rows["chance"] = [score(task, c, im) for c, im in zip(cases, images["chance"])]
        elif chance:
            with tempfile.TemporaryDirectory() as tmp:
                rnd = str(random_copy(path, Path(tmp) / "random.safetensors"))
                images["chance"] = generate(engine, [request_for(task, c, rnd, steps, cfg_scale, sampler, colour_fix,
                                                                 hires, **hires_kw) for c in cases])
            rows["chance"] = [r for c, im in zip(cases, images["chance"]) for r in score_rows(task, c, im)]
    finally:
        engine.shutdown()
    result["scores"] = {k: summarize(v) for k, v in rows.items()}
    result["per_case"] = rows["model"]
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        name = (f"{Path(path).stem}-{task}" + (f"-{size}" if size != 64 else "") + ("-wide" if wide else "")
                + {"off": "-onepass", "dilated": "-dilated"}.get(hires, "")
                + ("-nofix" if task == "upscale" and not colour_fix else ""))
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        first = [c.low if task == "upscale" else (c.mask[..., None].repeat(3, -1) if task == "inpaint" else c.scene.image)
                 for c in cases]
        cols = ["input" if task in ("upscale", "inpaint") else "truth", *images]
        grid([[first[i], *(images[k][i] for k in images)] for i in range(min(8, len(cases)))], out / f"{name}.png",
             cols)
    return result


def cmd_eval(args) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    res = evaluate(args.model, args.task, args.n, args.out, args.steps, args.cfg, args.sampler, args.offset,
                   chance=not args.no_chance, size=args.size, colour_fix=not args.no_colour_fix,
                   hires=args.hires, wide=args.wide, hires_strength=args.hires_strength,
                   hires_upscaler=args.hires_upscaler, planner=args.planner, control=args.control,
                   **({} if args.best_of is None else {"best_of": args.best_of}),
                   **({} if args.sketch_strength is None else {"sketch_strength": args.sketch_strength}))
    print(json.dumps({"model": res["model"], "task": res["task"], "n": res["n"], "scores": res["scores"]}, indent=2))
    return 0


def add_command(sub) -> None:
    from engine.api import HIRES_MODES, HIRES_UPSCALERS

    p = sub.add_parser("eval", help="score a model on held-out world scenes (with ceiling and chance levels)")
    p.add_argument("--model", default="default")
    p.add_argument("--task", required=True, choices=[*TASKS, *ALIASES])
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--offset", type=int, default=0, help="first EVAL_SEEDS index")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=64, help="scene size in px (e.g. 256: convolutional sampling at 4x)")
    p.add_argument("--no-chance", action="store_true")
    p.add_argument("--wide", action="store_true",
                   help="layout, semantic with --size: tile the held-out scenes over the canvas at the training size "
                        "(a wider view) instead of enlarging each one")
    p.add_argument("--hires", default="auto", choices=HIRES_MODES,
                   help="two passes over 2.25x the training area (auto), always, or never (plain convolutional "
                        "sampling; dilated: one pass by dilated sampling)")
    p.add_argument("--hires-strength", type=float, default=0.5, help="two passes: the second pass's strength")
    p.add_argument("--hires-upscaler", default="lanczos", choices=HIRES_UPSCALERS,
                   help="two passes: enlarge with Lanczos or the default x4 upscaler model")
    p.add_argument("--no-colour-fix", action="store_true", help="upscale: the model's own colours (Request.colour_fix)")
    p.add_argument("--planner", default="default", help="planned: the text-to-layout planner file")
    p.add_argument("--control", default="", help="control: the ControlNet file (chance: the model without it)")
    p.add_argument("--best-of", type=int, default=None,
                   help="planned: draw this many per scene and keep the text model's pick (default: Request.best_of)")
    p.add_argument("--sketch-strength", type=float, default=None,
                   help="planned: start from a sketch of the caption's ground and sky "
                        "(default: Request.sketch_strength)")
    p.set_defaults(func=cmd_eval)
