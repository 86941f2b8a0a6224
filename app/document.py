"""The Qt-free document model (napari/Krita style): layers, boxes, parameters, history, an undo stack, observers."""
from __future__ import annotations

import copy
import random
from dataclasses import asdict
from typing import Callable

import numpy as np

from app import raster
from app.prompt_edit import with_style
from app.records import Floating, HistoryEntry, LayoutBox, Params  # noqa: F401 (the document's records, re-exported)
from app.undo import BoxesCommand, PatchCommand, RegionCommand, StateCommand, UndoStack
from engine import api

LAYERS = ("image", "mask", "labels")
HISTORY_MAX_BYTES = 512 << 20  # results kept in memory and projects; every one is also a PNG in the outputs folder
SEED_MODES = ("random", "fixed", "reuse")


class Document:
    """Image, mask and semantic label layers plus layout boxes, generation parameters and results history."""

    def __init__(self, width: int = 512, height: int = 512):
        self._blank_layers(width, height)
        self.boxes: list[LayoutBox] = []
        self.region: tuple[int, int, int, int] | None = None
        self.has_image = False
        self.sketched = False  # painted on with the colour brush since its image was last set: img2img
        self.control_image: np.ndarray | None = None  # the ControlNet's guide, stretched over the canvas
        self.params = Params()
        self.task_override: str | None = None
        self.history: list[HistoryEntry] = []
        self.floating: Floating | None = None
        self.history_max_bytes = HISTORY_MAX_BYTES
        self.undo_stack = UndoStack()
        self.path: str | None = None
        self._observers: list[Callable[[str], None]] = []
        self._stroke: dict | None = None
        self._params_dirty = False

    # --- observers -------------------------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[str], None]) -> None:
        self._observers.append(fn)

    def unsubscribe(self, fn: Callable[[str], None]) -> None:
        if fn in self._observers:
            self._observers.remove(fn)

    def notify(self, *what: str) -> None:
        for part in what or ("all",):
            for fn in list(self._observers):
                fn(part)

    # --- undo ------------------------------------------------------------------------------------------------
    def _push(self, cmd, apply: bool = True) -> None:
        if apply:
            cmd.redo(self)
        self.undo_stack.push(cmd)
        self.notify(*cmd.changes, "undo")

    def undo(self) -> bool:
        cmd = self.undo_stack.undo(self)
        if cmd:
            self.notify(*cmd.changes, "undo")
        return cmd is not None

    def redo(self) -> bool:
        cmd = self.undo_stack.redo(self)
        if cmd:
            self.notify(*cmd.changes, "undo")
        return cmd is not None

    @property
    def can_undo(self) -> bool:
        return self.undo_stack.can_undo

    @property
    def can_redo(self) -> bool:
        return self.undo_stack.can_redo

    @property
    def dirty(self) -> bool:
        return self._params_dirty or not self.undo_stack.is_clean

    def mark_clean(self) -> None:
        self._params_dirty = False
        self.undo_stack.set_clean()
        self.notify("dirty")

    # --- brush strokes ---------------------------------------------------------------------------------------
    def _layer(self, layer: str) -> np.ndarray:
        if layer not in ("mask", "labels", "image"):
            raise ValueError(f"cannot paint on layer {layer!r}")
        return getattr(self, layer)

    def begin_stroke(self, layer: str, value, radius: float, hardness: float = 1.0) -> None:
        """Start a live stroke: dabs are applied as points arrive; end_stroke() makes it one undo step. On the image
        layer value is an RGB colour: a sketch, which makes the canvas an img2img source."""
        arr = self._layer(layer)
        self._stroke = dict(layer=layer, value=value, radius=float(radius), hardness=float(hardness),
                            original=arr.copy(), coverage=np.zeros(arr.shape[:2], np.float32), touched=None, last=None)

    def stroke_to(self, x: float, y: float) -> None:
        s = self._stroke
        if s is None:
            return
        p = (float(x), float(y))
        rect = raster.segment(s["coverage"], s["last"] or p, p, s["radius"], s["hardness"])
        s["last"] = p
        if rect is None:
            return
        s["touched"] = raster.union(s["touched"], rect)
        y0, y1, x0, x1 = rect
        arr = getattr(self, s["layer"])
        arr[y0:y1, x0:x1] = raster.blend(s["original"][y0:y1, x0:x1], s["coverage"][y0:y1, x0:x1], s["value"])
        self.notify(s["layer"])

    def end_stroke(self, text: str | None = None) -> bool:
        s, self._stroke = self._stroke, None
        if s is None or s["touched"] is None:
            return False
        y0, y1, x0, x1 = s["touched"]
        arr = getattr(self, s["layer"])
        before, after = s["original"][y0:y1, x0:x1].copy(), arr[y0:y1, x0:x1].copy()
        if np.array_equal(before, after):
            return False
        if s["layer"] == "image":
            self.sketched = True
        self._push(PatchCommand(text or f"paint {s['layer']}", s["layer"], y0, x0, before, after), apply=False)
        return True

    def stroke(self, layer: str, points, radius: float, hardness: float = 1.0, value=255) -> bool:
        """Rasterize a poly-line of dabs onto a layer as one undoable command."""
        self.begin_stroke(layer, value, radius, hardness)
        for x, y in points:
            self.stroke_to(x, y)
        return self.end_stroke()

    def fill(self, layer: str, point, value: int) -> bool:
        """Flood-fill the 4-connected region of equal value under point (x, y)."""
        arr = self._layer(layer)
        region = raster.flood_region(arr, int(point[0]), int(point[1]))
        rect = raster.bbox_of(region)
        if rect is None:
            return False
        y0, y1, x0, x1 = rect
        before = arr[y0:y1, x0:x1].copy()
        after = np.where(region[y0:y1, x0:x1], np.asarray(value, arr.dtype), before)
        if np.array_equal(before, after):
            return False
        self._push(PatchCommand(f"fill {layer}", layer, y0, x0, before, after))
        return True

    def clear_layer(self, layer: str) -> bool:
        arr = self._layer(layer)
        empty = 0 if layer == "mask" else -1
        if (arr == empty).all():
            return False
        self._push(PatchCommand(f"clear {layer}", layer, 0, 0, arr.copy(), np.full_like(arr, empty)))
        return True

    def invert_mask(self) -> None:
        """Repaint everything but what was masked (soft edges inverted too): one undo step."""
        self._push(PatchCommand("invert mask", "mask", 0, 0, self.mask.copy(), 255 - self.mask))

    # --- boxes -----------------------------------------------------------------------------------------------
    def _edit_boxes(self, text: str, after: list) -> None:
        self._push(BoxesCommand(text, copy.deepcopy(self.boxes), copy.deepcopy(after)))

    def add_box(self, label: str, rect, prompt: str | None = None) -> int:
        self._edit_boxes("add box", self.boxes + [LayoutBox(label, tuple(rect), prompt).normalized()])
        return len(self.boxes) - 1

    def set_box(self, index: int, rect=None, label: str | None = None, prompt: str | None = ...) -> None:
        old = self.boxes[index]
        new = LayoutBox(label if label is not None else old.label, tuple(rect) if rect is not None else old.rect,
                        old.prompt if prompt is ... else prompt).normalized()
        if new != old:
            self._edit_boxes("edit box", self.boxes[:index] + [new] + self.boxes[index + 1:])

    def add_planned_boxes(self, boxes, rect: tuple[int, int, int, int]) -> None:
        """The planner's (label, box) pairs, normalised to the generated rect, as layout boxes: one undo step."""
        x, y, w, h = rect
        new = [LayoutBox(label, ((x + b[0] * w) / self.width, (y + b[1] * h) / self.height,
                                 (x + b[2] * w) / self.width, (y + b[3] * h) / self.height)).normalized()
               for label, b in boxes]
        if new:
            self._edit_boxes("plan layout", self.boxes + new)

    def delete_box(self, index: int) -> None:
        self._edit_boxes("delete box", self.boxes[:index] + self.boxes[index + 1:])

    def box_at(self, x: float, y: float) -> int | None:
        """Topmost box containing the normalized point, or None."""
        for i in reversed(range(len(self.boxes))):
            x0, y0, x1, y1 = self.boxes[i].rect
            if x0 <= x <= x1 and y0 <= y <= y1:
                return i
        return None

    # --- whole-state edits -----------------------------------------------------------------------------------
    def _state(self, layers=LAYERS) -> dict:
        """The named layers (copies), the boxes and the small fields: what a whole-state undo step keeps."""
        return dict({k: getattr(self, k).copy() for k in layers}, boxes=copy.deepcopy(self.boxes),
                    has_image=self.has_image, region=self.region, sketched=self.sketched, control=self.control_image)

    def _restore_state(self, st: dict) -> None:
        for k in LAYERS:
            if k in st:
                setattr(self, k, st[k].copy())
        self.boxes, self.has_image, self.region = copy.deepcopy(st["boxes"]), st["has_image"], st.get("region")
        self.sketched = st.get("sketched", False)
        self.control_image = st.get("control")
        self.height, self.width = self.image.shape[:2]

    def _replace(self, text: str, **new) -> None:
        before = self._state([k for k in LAYERS if k in new])
        after = {**before, **new}
        if "image" in new:
            after["sketched"] = new.get("sketched", False)
            h, w = after["image"].shape[:2]
            same = (h, w) == before["image"].shape[:2]
            after["region"] = raster.fit_region(after["region"], w, h) if same or "region" in new else None
        self._push(StateCommand(text, before, after))

    def set_image(self, rgb: np.ndarray, text: str = "open image") -> None:
        """A new source image: layers are resized to it (mask and labels kept, nearest neighbour)."""
        rgb = _rgb(rgb)
        h, w = rgb.shape[:2]
        self._replace(text, image=rgb, mask=raster.resize_nearest(self.mask, w, h),
                      labels=raster.resize_nearest(self.labels, w, h), has_image=True)

    def set_control_image(self, rgb: np.ndarray | None, text: str = "set control image") -> None:
        """The ControlNet's guide image (None: none) in one undo step; the canvas itself is left as it is."""
        before = self._state(())
        self._push(StateCommand(text, before, {**before, "control": None if rgb is None else _rgb(rgb)},
                                changes=("control",)))

    def control_request(self, rect) -> tuple[api.Control, ...]:
        """The ControlNet unit for a generation over rect (x, y, w, h): the guide stretched over the canvas and cut to
        it; none unless a ControlNet is chosen."""
        p = self.params
        if not p.control_model:
            return ()
        image = self.control_image
        if image is not None:
            x, y, w, h = rect
            if image.shape[:2] != (self.height, self.width):
                image = raster.resize_smooth(image, self.width, self.height)
            image = image[y:y + h, x:x + w].copy()
        return (api.Control(p.control_model, image, p.control_preprocessor, float(p.control_strength),
                            float(p.control_start), float(p.control_end)),)

    def _laid(self, rgb: np.ndarray, x: int, y: int) -> np.ndarray | None:
        """A copy of the image layer with a picture's top-left at (x, y), clipped; None when nothing overlaps."""
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = max(0, x), max(0, y), min(self.width, x + w), min(self.height, y + h)
        if x1 <= x0 or y1 <= y0:
            return None
        image = self.image.copy()
        image[y0:y1, x0:x1] = rgb[y0 - y:y1 - y, x0 - x:x1 - x]
        return image

    def paste_into(self, rgb: np.ndarray, x: int, y: int) -> bool:
        """A picture laid onto the image layer with its top-left at (x, y), clipped to the canvas: one undo step
        (photobashing: paste, then mask the seams and inpaint them)."""
        image = self._laid(_rgb(rgb), int(x), int(y))
        if image is not None:
            self._replace("paste into canvas", image=image, has_image=True)
        return image is not None

    # --- a floating paste: a picture over the canvas that moves until it is anchored (GIMP, Krita) --------------
    def float_picture(self, rgb: np.ndarray, x: int, y: int) -> None:
        self.floating = Floating(_rgb(rgb), int(x), int(y))
        self.notify("floating")

    def move_floating(self, x: int, y: int, w: int | None = None, h: int | None = None) -> None:
        """Move (and with w, h scale) the floating picture."""
        f = self.floating
        if f is not None:
            w, h = (f.size if w is None else (max(int(w), 1), max(int(h), 1)))
            self.floating = Floating(f.rgb, int(x), int(y), w, h)
            self.notify("floating")

    def anchor(self) -> bool:
        """Lay the floating picture where it is (one undo step); False when there was none or it lay outside."""
        f, self.floating = self.floating, None
        if f is None:
            return False
        self.notify("floating")
        return self.paste_into(f.pixels(), f.x, f.y)

    def drop_floating(self) -> bool:
        if self.floating is None:
            return False
        self.floating = None
        self.notify("floating")
        return True

    def flattened(self) -> np.ndarray:
        """The image layer as it looks: with the floating picture laid on it, if any."""
        f = self.floating
        laid = self._laid(f.pixels(), f.x, f.y) if f else None
        return self.image if laid is None else laid

    def set_labels(self, labels: np.ndarray, text: str = "load label map") -> None:
        """A whole label map (class ids, -1 unpainted) as one undo step, resized nearest-neighbour to the canvas."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"a label map must be 2-D, got shape {labels.shape}")
        self._replace(text, labels=raster.resize_nearest(labels.astype(np.int16), self.width, self.height))

    def apply_result(self, rgb: np.ndarray, region=None) -> None:
        """Commit a result in one undo step: pasted at its region if it has that size, else as the whole image."""
        rgb = _rgb(rgb)
        h, w = rgb.shape[:2]
        if region is not None and (int(region[3]), int(region[2])) == (h, w) and self.region_fits(region):
            x, y = int(region[0]), int(region[1])
            image, mask = self.image.copy(), self.mask.copy()
            image[y:y + h, x:x + w] = rgb
            mask[y:y + h, x:x + w] = 0
            self._replace("apply result", image=image, mask=mask, has_image=True)
            return
        resized = {} if (h, w) == (self.height, self.width) else {"labels": raster.resize_nearest(self.labels, w, h)}
        self._replace("apply result", image=rgb, mask=np.zeros((h, w), np.uint8), has_image=True, **resized)

    # --- generation region -----------------------------------------------------------------------------------
    def region_fits(self, region) -> bool:
        x, y, w, h = (int(v) for v in region)
        return x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= self.width and y + h <= self.height

    def set_region(self, rect) -> bool:
        """The part of the canvas a job works on, (x, y, w, h) in pixels snapped to the latent grid; None = all."""
        new = raster.fit_region(rect, self.width, self.height)
        if new == self.region:
            return False
        self._push(RegionCommand("generation region" if new else "whole canvas", self.region, new))
        return True

    def generation_rect(self) -> tuple[int, int, int, int]:
        return self.region or (0, 0, self.width, self.height)

    def is_blank(self) -> bool:
        """Nothing made, painted, drawn, opened or undoable yet (parameters aside)."""
        return not (self.can_undo or self.can_redo or self.history or self.has_image or self.boxes or self.path
                    or self.mask.any() or (self.labels >= 0).any())

    def start_size(self, width: int, height: int) -> bool:
        """Size a blank canvas for its model (no undo step: there is nothing to go back to); False if not blank."""
        if not self.is_blank():
            return False
        if (int(width), int(height)) != (self.width, self.height):
            self._blank_layers(width, height)
            self.region = None
            self.notify("size", "image", "mask", "labels", "region")
        return True

    def _blank_layers(self, width: int, height: int) -> None:
        self.width, self.height = int(width), int(height)
        self.image = np.full((self.height, self.width, 3), 255, np.uint8)
        self.mask = np.zeros((self.height, self.width), np.uint8)
        self.labels = np.full((self.height, self.width), -1, np.int16)

    def resize(self, width: int, height: int) -> None:
        """Canvas size (the txt2img output size): every layer resampled, nearest neighbour."""
        width, height = int(width), int(height)
        if (width, height) == (self.width, self.height):
            return
        region = None
        if self.region is not None:
            sx, sy = width / self.width, height / self.height
            x, y, w, h = self.region
            region = (x * sx, y * sy, w * sx, h * sy)
        self._replace("resize", image=raster.resize_nearest(self.image, width, height),
                      mask=raster.resize_nearest(self.mask, width, height),
                      labels=raster.resize_nearest(self.labels, width, height), region=region)

    def extend(self, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0) -> bool:
        """Outpainting's canvas: grow each side by so many pixels in one undo step. The new pixels start as a blurred
        continuation of the edges and are masked, so the next generation fills them (inpainting) and every old pixel
        stays; labels there are unpainted, boxes keep their place on the image, and the whole canvas is the region."""
        pads = tuple(int(v) for v in (left, top, right, bottom))
        if min(pads) < 0:
            raise ValueError(f"the canvas can only grow: {pads}")
        if not any(pads):
            return False
        left, top, right, bottom = pads
        h, w = self.height + top + bottom, self.width + left + right
        inner = (slice(top, top + self.height), slice(left, left + self.width))
        image = raster.edge_fill(self.image, (top, bottom), (left, right))
        mask = np.full((h, w), 255, np.uint8)
        mask[inner] = self.mask
        labels = np.full((h, w), -1, np.int16)
        labels[inner] = self.labels
        grown = (-left, -top, w, h)
        boxes = [LayoutBox(b.label, raster.crop_box(b.rect, grown, self.width, self.height), b.prompt)
                 for b in self.boxes]
        self._replace("extend canvas", image=image, mask=mask, labels=labels, boxes=boxes, region=None)
        return True

    def crop(self, rect) -> bool:
        """Cut the canvas down to (x, y, w, h) pixels in one undo step: every layer cropped, boxes clipped to it (those
        left outside dropped), the whole canvas the region again."""
        x, y, w, h = (int(round(v)) for v in rect)
        x0, y0, x1, y1 = max(0, x), max(0, y), min(self.width, x + w), min(self.height, y + h)
        if x1 - x0 < 8 or y1 - y0 < 8:
            raise ValueError(f"a crop must keep at least 8×8 pixels of the {self.width}×{self.height} canvas")
        if (x0, y0, x1, y1) == (0, 0, self.width, self.height):
            return False
        kept = [(b, raster.crop_box(b.rect, (x0, y0, x1 - x0, y1 - y0), self.width, self.height)) for b in self.boxes]
        boxes = [LayoutBox(b.label, r, b.prompt) for b, r in kept if r is not None]
        self._replace("crop canvas", image=self.image[y0:y1, x0:x1].copy(), mask=self.mask[y0:y1, x0:x1].copy(),
                      labels=self.labels[y0:y1, x0:x1].copy(), boxes=boxes, region=None)
        return True

    # --- parameters, task, request ---------------------------------------------------------------------------
    def set_param(self, name: str, value) -> None:
        if not hasattr(self.params, name):
            raise AttributeError(name)
        if getattr(self.params, name) != value:
            setattr(self.params, name, value)
            self._params_dirty = True
            self.notify("params")

    def set_label_prompt(self, class_id: int, text: str) -> None:
        """The prompt one semantic class is painted with (Request.label_prompts); empty text drops it."""
        prompts = dict(self.params.label_prompts)
        if text.strip():
            prompts[int(class_id)] = text
        else:
            prompts.pop(int(class_id), None)
        self.set_param("label_prompts", prompts)

    def set_task_override(self, task: str | None) -> None:
        if task is not None and task not in api.TASKS:
            raise ValueError(task)
        self.task_override = task
        self._params_dirty = True
        self.notify("params")

    def inferred_task(self) -> str:
        """What was drawn decides: mask -> inpaint, boxes -> layout, labels -> semantic, image + x4 -> upscale, a
        colour sketch -> img2img."""
        if self.mask.any():
            return "inpaint"
        if self.boxes:
            return "layout"
        if (self.labels >= 0).any():
            return "semantic"
        if self.has_image and self.params.upscale:
            return "upscale"
        return "img2img" if self.sketched else "txt2img"

    def task(self) -> str:
        return self.task_override or self.inferred_task()

    def resolve_seed(self) -> int:
        p = self.params
        if p.seed_mode == "fixed":
            return int(p.seed)
        if p.seed_mode == "reuse" and p.last_seed is not None:
            return int(p.last_seed)
        return random.randrange(0, 2**32 - 1)

    def to_request(self, settings=None, seed: int | None = None) -> api.Request:
        """The engine request for the current task cropped to the region; settings add device, tiling, budget."""
        p, task = self.params, self.task()
        x, y, w, h = self.generation_rect()
        crop = (slice(y, y + h), slice(x, x + w))
        uses_image = task in ("img2img", "inpaint", "upscale")
        boxes = []
        if task == "layout":
            for b in self.boxes:
                r = raster.crop_box(b.rect, (x, y, w, h), self.width, self.height) if self.region else tuple(b.rect)
                if r is not None:
                    boxes.append(api.Box(b.label, r, b.prompt))
        req = api.Request(
            model=p.model, task=task, prompt=p.prompt, negative_prompt=p.negative_prompt,
            image=self.flattened()[crop].copy() if uses_image else None,
            mask=self.mask[crop].copy() if task == "inpaint" else None,
            boxes=boxes, labels=self.labels[crop].copy() if task == "semantic" else None,
            label_prompts={int(k): v.strip() for k, v in p.label_prompts.items() if v and v.strip()},
            class_id=p.class_id, sampler=p.sampler, steps=int(p.steps), cfg_scale=float(p.cfg_scale),
            clip_skip=int(p.clip_skip),
            seed=int(self.resolve_seed() if seed is None else seed),
            width=None if task == "upscale" else w, height=None if task == "upscale" else h,  # upscale: x4 the input
            variation_seed=int(p.variation_seed), variation_strength=float(p.variation_strength),
            strength=float(p.strength), batch_size=int(p.batch_size), mask_grow=int(p.mask_grow),
            mask_feather=int(p.mask_feather), inpaint_crop=bool(p.inpaint_crop),
            inpaint_strength=float(p.inpaint_strength), upscaler=p.upscaler, noise_level=int(p.noise_level),
            upscale_by=int(p.upscale_by),
            colour_fix=bool(p.colour_fix), hires=p.hires, hires_strength=float(p.hires_strength),
            hires_upscaler=p.hires_upscaler,
            refine_strength=float(p.refine_strength) if task == "upscale" else 0.0, refine_model=p.refine_model,
            best_of=int(p.best_of) if (task == "layout" and not boxes) or task == "txt2img" else 1,
            sketch_strength=float(p.sketch_strength), vae=str(p.vae), seamless=p.seamless,
            control=self.control_request((x, y, w, h)) if task != "upscale" else ())
        if settings is not None:
            style = settings.style(p.style)
            if style is not None:
                req.prompt = with_style(style["prompt"], req.prompt)
                req.negative_prompt = with_style(style["negative_prompt"], req.negative_prompt)
            req.device, req.dtype = settings.device, settings.precision
            req.tiles = api.TileSettings(mode=settings.tile_mode, tile=settings.tile_size, overlap=settings.tile_overlap)
            req.preview_interval_s = settings.preview_interval_s
            req.memory_budget_mb = settings.memory_budget_mb
        return req

    # --- history ---------------------------------------------------------------------------------------------
    def add_history(self, images, parameters: str = "", seeds=(), task: str | None = None, region=None) -> HistoryEntry:
        entry = HistoryEntry([_rgb(i) for i in images], parameters, list(seeds), asdict(self.params), task or self.task(),
                             region=tuple(region) if region else None)
        if entry.seeds:
            self.params.last_seed = int(entry.seeds[0])
        self.history.append(entry)
        held = sum(h.nbytes for h in self.history)
        while len(self.history) > 1 and held > self.history_max_bytes:
            held -= self.history.pop(0).nbytes
        self._params_dirty = True
        self.notify("history")
        return entry

    def discard_history(self, index: int) -> None:
        del self.history[index]
        self._params_dirty = True
        self.notify("history")

    def copy_parameters(self, index: int) -> None:
        """Restore the parameters a history entry was generated with (its seed becomes fixed)."""
        entry = self.history[index]
        self.params = Params.from_dict({**copy.deepcopy(entry.params), "seed_mode": "fixed",
                                        "seed": entry.seeds[0] if entry.seeds else entry.params.get("seed", 0)})
        self._params_dirty = True
        self.notify("params")


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)
