"""Command line: `python -m engine inspect|generate|train|eval ...`; errors are one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_inspect(args) -> int:
    from engine.checkpoint import inspect_file

    facts = inspect_file(args.model)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for k, v in facts.items():
            print(f"{k:18} {v}")
    return 0


def add_generate(sub) -> None:
    from engine.api import CONTROL_PREPROCESSORS, HIRES_MODES, HIRES_UPSCALERS, SEAMLESS

    p = sub.add_parser("generate", help="generate an image (text, img2img, inpaint, layout, semantic, upscale)")
    p.add_argument("--model", default=None, help="checkpoint file (default: the bundled model for the task)")
    p.add_argument("--task", default=None, choices=["txt2img", "img2img", "inpaint", "layout", "semantic", "upscale"])
    p.add_argument("--prompt", default=None)
    p.add_argument("--negative", default=None)
    p.add_argument("--image", default=None)
    p.add_argument("--mask", default=None, help="PNG, white (>= 128) = repaint")
    p.add_argument("--boxes", default=None, help='JSON list of {"label": ..., "box": [x0, y0, x1, y1], "prompt"?: ...}')
    p.add_argument("--planner", default=None,
                   help="layout without --boxes: the text-to-layout planner file that places the prompt's objects")
    p.add_argument("--best-of", type=int, default=None,
                   help="layout without --boxes: draw this many (default 4) and keep the one whose shapes the text "
                   "model reads as the prompt's")
    p.add_argument("--sketch-strength", type=float, default=None,
                   help="layout on a shapes-world model, no --image: start from a flat sketch of the prompt's "
                        "ground and sky at this strength (default 0.6; 0: from noise)")
    p.add_argument("--labels", default=None, help="PNG (mode L or P) of class ids")
    p.add_argument("--class-id", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--sampler", default=None)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--clip-skip", type=int, default=None, help="read the n-th last CLIP layer (A1111's Clip skip)")
    p.add_argument("--vae", default=None, help="another autoencoder: a file, or its name in a vae folder")
    p.add_argument("--control", default=None, help="a ControlNet: a file, or its name in a controlnet folder")
    p.add_argument("--control-image", default=None, help="the ControlNet's guide image")
    p.add_argument("--control-type", default=None, choices=CONTROL_PREPROCESSORS,
                   help="how the guide is read: canny (edges of a picture, the default), scribble, invert, none")
    p.add_argument("--control-strength", type=float, default=None)
    p.add_argument("--control-start", type=float, default=None, help="acts from this share of the denoising ...")
    p.add_argument("--control-end", type=float, default=None, help="... to this one")
    p.add_argument("--upscale-by", type=int, default=None, choices=(2, 3, 4), help="upscale: the factor (default 4)")
    p.add_argument("--seamless", default=None, choices=SEAMLESS, help="a tileable image: edges meet along x, y or both")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--variation-seed", type=int, default=None, help="A1111's variation seed: another seed's noise ...")
    p.add_argument("--variation-strength", type=float, default=None, help="... mixed in this far (0 to 1)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--strength", type=float, default=None, help="img2img: how far the image is repainted")
    p.add_argument("--inpaint-strength", type=float, default=None,
                   help="inpainting: 1 (default) fills the mask from noise, below 1 repaints what is there")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--mask-grow", type=int, default=None)
    p.add_argument("--mask-feather", type=int, default=None)
    p.add_argument("--tiles", default=None, choices=["auto", "on", "off"])
    p.add_argument("--hires", default=None, choices=HIRES_MODES,
                   help="two passes (compose at the training size, then img2img at full size): auto above 2.25x its "
                        "area; off: one pass; dilated: one pass composed by dilated sampling (DemoFusion)")
    p.add_argument("--hires-strength", type=float, default=None, help="second pass strength (0: only enlarge)")
    p.add_argument("--hires-upscaler", default=None, choices=HIRES_UPSCALERS,
                   help="how the first pass is enlarged: Lanczos, or the default x4 upscaler model")
    p.add_argument("--no-colour-fix", dest="colour_fix", action="store_const", const=False, default=None,
                   help="upscale: keep the model's own colours instead of the input's")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--from", dest="from_png", default=None, help="reproduce a PNG made by Latent Canvas")
    p.add_argument("--out", default="out.png")
    p.set_defaults(func=cmd_generate)


FIELDS = {  # CLI flag -> Request field
    "model": "model", "task": "task", "prompt": "prompt", "negative": "negative_prompt", "class_id": "class_id",
    "steps": "steps", "sampler": "sampler", "cfg": "cfg_scale", "eta": "eta", "seed": "seed", "width": "width",
    "height": "height", "strength": "strength", "batch": "batch_size", "mask_grow": "mask_grow",
    "mask_feather": "mask_feather", "device": "device", "dtype": "dtype", "colour_fix": "colour_fix",
    "hires": "hires", "hires_strength": "hires_strength", "hires_upscaler": "hires_upscaler", "planner": "planner",
    "best_of": "best_of", "sketch_strength": "sketch_strength", "inpaint_strength": "inpaint_strength",
    "clip_skip": "clip_skip", "vae": "vae", "seamless": "seamless", "upscale_by": "upscale_by",
    "variation_seed": "variation_seed",
    "variation_strength": "variation_strength",
}
INPUTS = ("image", "mask", "boxes", "labels", "control_image")
CONTROL_FLAGS = {"control_type": "preprocessor", "control_strength": "strength", "control_start": "start",
                 "control_end": "end"}


def build_request(args):
    """Request from flags, on top of the request recorded in a --from PNG (flags win)."""
    from engine.api import Box, Control, Request, TileSettings, suggested_cfg
    from engine.images import REQUEST_CHUNK, read_image, read_labels, read_mask, read_png_text

    base: dict = {}
    inputs: dict = {}
    if args.from_png:
        text = read_png_text(args.from_png)
        if REQUEST_CHUNK not in text:
            raise ValueError(f"{args.from_png} carries no Latent Canvas request (no '{REQUEST_CHUNK}' text chunk)")
        rec = json.loads(text[REQUEST_CHUNK])
        inputs = rec.pop("inputs", {})
        base = {k: v for k, v in rec.items() if k in FIELDS.values() or k in ("tiles", "boxes", "control")}
    for flag, name in FIELDS.items():
        v = getattr(args, flag)
        if v is not None:
            base[name] = v
    for name in INPUTS:
        if getattr(args, name):
            inputs[name] = str(Path(getattr(args, name)).resolve())
    tiles = TileSettings(**base.pop("tiles", {}))
    if args.tiles:
        tiles.mode = args.tiles
    boxes = [Box(b["label"], tuple(b["box"]), b.get("prompt")) for b in base.pop("boxes", [])]
    if "boxes" in inputs:
        raw = json.loads(Path(inputs["boxes"]).read_text())
        if not isinstance(raw, list) or not all(isinstance(b, dict) and "label" in b and "box" in b for b in raw):
            raise ValueError('--boxes must be a JSON list of {"label": ..., "box": [x0, y0, x1, y1]}')
        boxes = [Box(b["label"], tuple(float(c) for c in b["box"]), b.get("prompt")) for b in raw]
    units = [dict(u) for u in base.pop("control", [])]
    if args.control:
        units = [{"model": args.control, "preprocessor": "canny"}]
    for flag, name in CONTROL_FLAGS.items():
        if getattr(args, flag) is not None:
            for u in units:
                u[name] = getattr(args, flag)
    guide = read_image(inputs["control_image"]) if "control_image" in inputs and units else None
    req = Request(**base, boxes=boxes, tiles=tiles, control=tuple(Control(**u, image=guide) for u in units))
    req.image = read_image(inputs["image"]) if "image" in inputs else None
    req.mask = read_mask(inputs["mask"]) if "mask" in inputs else None
    req.labels = read_labels(inputs["labels"]) if "labels" in inputs else None
    if args.task is None and not args.from_png:
        req.task = infer_task(req)
    if args.model is None and not args.from_png:
        req.model = "default"
    if not args.from_png and args.hires_upscaler is None and args.hires_strength is None:
        req.hires_upscaler, req.hires_strength = model_hires(req)
    if not args.from_png and args.cfg is None:
        info = model_info(req)
        req.cfg_scale = suggested_cfg(info.family) if info is not None else req.cfg_scale
    return req, inputs


def model_info(req):
    """The request's model as engine.api.inspect_model reads it; None when it cannot be read here (the job itself
    then reports why)."""
    from engine.api import inspect_model
    from engine.pipelines import EngineError, resolve_model

    try:
        info = inspect_model(str(resolve_model(req.model, req.task)))
    except EngineError:
        return None
    return None if info.error else info


def model_hires(req) -> tuple[str, float]:
    """The app's large-canvas choice for the request's model (engine.api.suggested_hires); Lanczos and 0.5 for a
    model that cannot be read here."""
    from engine.api import LARGE_CANVAS_TASKS, default_model_for, suggested_hires

    info = model_info(req) if req.task in LARGE_CANVAS_TASKS else None
    if info is None or not info.image_size:
        return req.hires_upscaler, req.hires_strength
    return suggested_hires(info.image_size, default_model_for("upscale") is not None)


def infer_task(req) -> str:
    if req.mask is not None:
        return "inpaint"
    if req.boxes:
        return "layout"
    if req.labels is not None:
        return "semantic"
    if req.image is not None:
        return "img2img"
    return "txt2img"


def vocabulary_note(req) -> str:
    """A note naming the prompt's words that a closed-vocabulary text model (the bundled ones) will ignore."""
    from engine.api import default_model_for, ignored_words_note, inspect_model

    if not req.prompt:
        return ""
    info = default_model_for(req.task) if req.model in ("", "default") else inspect_model(req.model)
    note = ignored_words_note(info.name, info.vocabulary, req.prompt) if info is not None and not info.error else ""
    return f"note: {note} (it knows: {' '.join(info.vocabulary)})" if note else ""


def cmd_generate(args) -> int:
    from engine.api import Engine, Failed, Preview, Progress, Result
    from engine.images import save_png
    from engine.pipelines import request_record

    req, inputs = build_request(args)
    note = vocabulary_note(req)
    if note:
        print(note, file=sys.stderr)
    engine = Engine()
    job = engine.submit(req)
    bar = None
    try:
        while True:
            ev = engine.next_event()
            if isinstance(ev, Progress) and ev.total:
                if bar is None:
                    from tqdm import tqdm

                    bar = tqdm(total=ev.total, desc=req.task, unit="step", file=sys.stderr, leave=False)
                bar.n = ev.step
                bar.refresh()
            elif isinstance(ev, (Result, Failed)) and ev.job_id == job:
                break
            elif isinstance(ev, Preview):
                continue
    except KeyboardInterrupt:
        engine.cancel(job)
        print("cancelled", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
        engine.shutdown()
    if isinstance(ev, Failed):
        if args.debug:
            print(ev.detail, file=sys.stderr)
        print(f"error: {ev.message}", file=sys.stderr)
        return 2
    from dataclasses import replace

    record = request_record(replace(req, boxes=list(ev.boxes)) if ev.boxes else req)
    record["inputs"] = inputs
    if ev.boxes:
        print(json.dumps([{"label": b.label, "box": list(b.box)} for b in ev.boxes]), file=sys.stderr)
    out = Path(args.out)
    for i, img in enumerate(ev.images):
        path = out if len(ev.images) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        rec = dict(record, seed=ev.seeds[i], batch_size=1)
        save_png(path, img, ev.parameters.replace(f"Seed: {req.seed}", f"Seed: {ev.seeds[i]}"), rec)
        print(path)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Latent Canvas engine")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="detect a checkpoint's family and print its facts")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    add_generate(sub)
    from engine.merge import add_command as add_merge

    add_merge(sub)
    try:
        from engine.train import add_commands
    except ImportError:
        add_commands = None
    if add_commands is not None:
        add_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        if args.debug:
            raise
        from engine.checkpoint import CheckpointError

        msg = str(e) if isinstance(e, (CheckpointError, ValueError, OSError)) else f"{type(e).__name__}: {e}"
        print(f"error: {msg.splitlines()[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
