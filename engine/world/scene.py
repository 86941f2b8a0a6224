"""Procedural shapes world: textured background regions plus coloured shapes, with captions, boxes and label maps.

Every draw comes from numpy Generators seeded by the scene seed, and all geometry and texture parameters are in
normalized coordinates, so `render(seed, 64)` and `render(seed, 256)` show the same scene (super-resolution pairs).
Images are drawn at twice the size and area-downsampled (2x2 supersampling antialiasing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

REGIONS = ("sky", "grass", "water", "sand", "rock")
SHAPES = ("circle", "square", "triangle", "star")
COLOURS = ("red", "green", "blue", "yellow", "white", "purple")
OBJECT_CLASSES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
SEMANTIC_CLASSES = REGIONS + SHAPES
SHAPE_CLASS = {s: len(REGIONS) + i for i, s in enumerate(SHAPES)}
RELATIONS = ("above", "below", "left of", "right of", "and")
VOCAB = tuple(sorted({"a", "above", "below", "left", "right", "of", "and", "on", "under", "the",
                      *REGIONS, *COLOURS, *SHAPES}))

REGION_RGB = np.array([[150, 195, 230], [80, 135, 50], [40, 105, 125], [205, 185, 135], [110, 105, 105]], np.float32)
COLOUR_RGB = np.array([[215, 35, 40], [50, 220, 70], [40, 70, 225], [245, 215, 30], [245, 245, 245], [150, 50, 200]],
                      np.float32)

MAX_OBJECTS = 3
TRAIN_SEEDS = range(0, 10_000_000)
EVAL_SEEDS = range(10_000_000, 10_100_000)

Box = tuple[float, float, float, float]


@dataclass
class Scene:
    """One sample: image (HxWx3 uint8 RGB), caption, boxes [(label, (x0, y0, x1, y1))] normalized with origin top-left,
    labels (HxW uint8 SEMANTIC_CLASSES ids), objects: dicts with label, colour, shape, box, center, size, rotation,
    shade (in drawing order, the same order as boxes and as the caption's objects)."""

    image: np.ndarray
    caption: str
    boxes: list[tuple[str, Box]]
    labels: np.ndarray
    objects: list[dict] = field(default_factory=list)
    seed: int = 0


@dataclass
class SceneBatch:
    """Stacked scenes: images (N,H,W,3) uint8, labels (N,H,W) uint8, captions, boxes and seeds."""

    images: np.ndarray
    labels: np.ndarray
    captions: list[str]
    boxes: list[list[tuple[str, Box]]]
    seeds: np.ndarray


@dataclass
class Caption:
    """A parsed caption: (colour, shape) objects in order, the relation of the first two, ground word, sky flag."""

    objects: list[tuple[str, str]]
    relation: str | None
    ground: str | None
    sky: bool


def _unit_polygon(shape: str) -> np.ndarray:
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    if shape == "triangle":
        return np.array([[0, -1], [1, 1], [-1, 1]], np.float64)
    t = np.deg2rad(-90 + 36 * np.arange(10))
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


UNIT_POLYGONS = {s: _unit_polygon(s) for s in SHAPES}


def _rotate(poly: np.ndarray, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return poly @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])


def polygon_in_box(shape: str, box: Box, rotation: float = 0.0) -> np.ndarray:
    """The shape's outline (k,2) in normalized image coordinates, rotated, then stretched to fill `box` exactly."""
    p = _rotate(UNIT_POLYGONS[shape], rotation)
    lo, hi = p.min(0), p.max(0)
    p = (p - lo) / (hi - lo)
    x0, y0, x1, y1 = box
    return p * np.array([x1 - x0, y1 - y0]) + np.array([x0, y0])


def _gaps_ok(box: Box, placed: list[Box], gap: float) -> bool:
    return all(box[0] >= b[2] + gap or b[0] >= box[2] + gap or box[1] >= b[3] + gap or b[1] >= box[3] + gap
               for b in placed)


def _extent(shape: str, rotation: float) -> tuple[float, float]:
    p = _rotate(UNIT_POLYGONS[shape], rotation)
    w, h = p.max(0) - p.min(0)
    return float(w), float(h)


_EXTENT_STEPS = {s: [_extent(s, r / 4) for r in range(-60, 289)] for s in SHAPES}


def _sample_objects(rng: np.random.Generator, n: int) -> list[dict]:
    objects, placed = [], []
    for _ in range(n):
        draws = rng.random((60, 8))
        for attempt, (us, uc, usize, urot, ux, uy, s0, s1) in enumerate(draws.tolist()):
            shape, colour = SHAPES[int(us * 4)], COLOURS[int(uc * 6)]
            size = 0.2 + usize * ((0.45 if attempt < 30 else 0.3) - 0.2)
            rot = 72 * urot if shape == "star" else (30 * urot - 15 if shape in ("square", "triangle") else 0.0)
            ew, eh = _EXTENT_STEPS[shape][round(rot * 4) + 60]
            w, h = ew * size / max(ew, eh), eh * size / max(ew, eh)
            x0, y0 = 0.02 + ux * (0.96 - w), 0.02 + uy * (0.96 - h)
            box = (x0, y0, x0 + w, y0 + h)
            if _gaps_ok(box, placed, 0.05):
                placed.append(box)
                objects.append(_object(colour, shape, box, round(rot * 4) / 4, (0.5 * s0 - 0.25, 0.5 * s1 - 0.25)))
                break
    return objects


def _object(colour: str, shape: str, box: Box, rotation: float, shade) -> dict:
    return {"label": f"{colour} {shape}", "colour": colour, "shape": shape, "box": box, "rotation": float(rotation),
            "center": ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), "size": max(box[2] - box[0], box[3] - box[1]),
            "shade": tuple(float(s) for s in shade)}


def _distinct(rng: np.random.Generator, k: int, pool: tuple[int, ...]) -> list[int]:
    out = []
    for _ in range(k):
        out.append(int(rng.choice([c for c in pool if not out or c != out[-1]])))
    return out


def _sample_layout(rng: np.random.Generator) -> dict:
    ground = (1, 2, 3, 4)
    u = rng.random()
    if u < 0.35:
        axis, classes = "h", [0, int(rng.choice(ground))]
    elif u < 0.55:
        axis, classes = "h", [0, *_distinct(rng, 2, ground)]
    elif u < 0.7:
        axis, classes = "h", _distinct(rng, int(rng.integers(2, 4)), ground)
    elif u < 0.85:
        axis, classes = "v", _distinct(rng, int(rng.integers(2, 4)), ground)
    else:
        axis, classes = "h", [int(rng.choice(ground))]
    k = len(classes) - 1
    if k == 1:
        pos = [rng.uniform(0.3, 0.6)]
    elif k == 2:
        a = rng.uniform(0.25, 0.45)
        pos = [a, a + rng.uniform(0.2, 0.35)]
    else:
        pos = []
    bounds = [(p, rng.uniform(0, 0.04), rng.uniform(0.5, 2.5), rng.uniform(0, 2 * np.pi)) for p in pos]
    return {"axis": axis, "classes": classes, "bounds": bounds}


def region_map(layout: dict, h: int, w: int) -> np.ndarray:
    """Region class ids (h,w) of a band layout evaluated at pixel centres."""
    if "map" in layout:
        return cv2.resize(layout["map"].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    classes = np.array(layout["classes"], np.uint8)
    along, across = ((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
    if layout["axis"] == "v":
        along, across = across, along
    idx = np.zeros((across.size, along.size), np.uint8)
    for pos, amp, freq, phase in layout["bounds"]:
        edge = pos + amp * np.sin(2 * np.pi * freq * along + phase)
        idx += across[:, None] > edge[None, :]
    if layout["axis"] == "v":
        idx = idx.T
    return classes[idx]


def _sample_textures(rng: np.random.Generator) -> list[dict]:
    u = rng.random((len(REGIONS), 616), dtype=np.float32)
    return [{"jitter": 12 * r[0:3] - 6, "grad": 16 * r[3:5] - 8, "low": (2 * r[5:30] - 1).reshape(5, 5),
             "fine": (2 * r[30:606] - 1).reshape(24, 24), "freq": 0.8 + 0.45 * float(r[606]),
             "angle": 0.4 * float(r[607]) - 0.2, "phase": 2 * np.pi * float(r[608]), "wobble": 1.5 * float(r[609])}
            for r in u]


def _wave(ax: np.ndarray, by: np.ndarray) -> np.ndarray:
    """sin(a(x) + b(y)) from 1-D phases, by the angle-sum identity."""
    return np.sin(by)[:, None] * np.cos(ax)[None, :] + np.cos(by)[:, None] * np.sin(ax)[None, :]


def _texture(cls: int, p: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Planar (3, h, w) float texture of region class `cls`: base colour, gradient, value noise and stripes."""
    h, w = y.size, x.size
    base = REGION_RGB[cls] + p["jitter"]
    gx, gy = (float(g) for g in p["grad"])
    f, ph, ang = float(p["freq"]), float(p["phase"]), float(p["angle"])
    lum = (gx * (x - 0.5))[None, :] + (gy * (y - 0.5))[:, None]
    tint = None
    if cls == 0:
        lum = 0.3 * lum + (12 * (y - 0.5))[:, None] + 9 * np.maximum(_resize(p["low"], w, h), 0)
        tint = np.array([1.0, 1.0, 0.4], np.float32)
    elif cls == 1:
        k = 2 * np.pi * 24 * f
        lum = lum + 6 * _resize(p["fine"], w, h) + 4 * _wave(k * np.cos(ang) * x + ph, k * np.sin(ang) * y)
        tint = np.array([0.8, 1.0, 0.6], np.float32)
    elif cls == 2:
        k = 2 * np.pi * 12 * f
        wob = k * 0.02 * float(p["wobble"]) * np.sin(2 * np.pi * 3 * x + ph)
        lum = lum + 3 * _resize(p["low"], w, h) + 6 * _wave(wob, k * y + ph)
    elif cls == 3:
        k = 2 * np.pi * 14 * f
        lum = lum + 4 * _resize(p["fine"], w, h) + 5 * _wave(k * np.cos(0.8 + ang) * x + ph, k * np.sin(0.8 + ang) * y)
    else:
        lum = lum + 9 * _resize(p["low"], w, h) + 7 * _resize(p["fine"], w, h)
    base, lum = base[:, None, None], lum.astype(np.float32)[None]
    return base + (lum if tint is None else lum * tint[:, None, None])


def _resize(a: np.ndarray, w: int, h: int) -> np.ndarray:
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)


def _axes(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(w, dtype=np.float32) + 0.5) / w, (np.arange(h, dtype=np.float32) + 0.5) / h


def _coverage(mask2x: np.ndarray, w: int, h: int) -> np.ndarray:
    return cv2.resize(mask2x.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=8)
def _grain_tile(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(20251122).uniform(-3, 3, (2 * h, 2 * w)).astype(np.float32)


def _grain(h: int, w: int, key) -> np.ndarray:
    """Film grain: a window of a fixed noise tile at an offset hashed from `key` (integers)."""
    k = sum(int(v) * m for v, m in zip(key, (2654435761, 40503, 97, 13)))
    oy, ox = (k // w) % h, k % w
    return _grain_tile(h, w)[oy:oy + h, ox:ox + w][None]


def _compose(regions2x: np.ndarray, regions1x: np.ndarray, textures: list[dict], ids2x: np.ndarray,
             objects: list[dict], grain_seed, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Textures and object colours evaluated at the output size, blended by coverages measured at 2x."""
    h, w = regions1x.shape
    x, y = _axes(h, w)
    present = np.flatnonzero(np.bincount(regions2x.ravel(), minlength=len(REGIONS)))
    if present.size == 1:
        img = _texture(int(present[0]), textures[present[0]], x, y)
    else:
        img = np.zeros((3, h, w), np.float32)
        for cls in present:
            img += _coverage(regions2x == cls, w, h)[None] * _texture(int(cls), textures[cls], x, y)
    for k, o in enumerate(objects):
        x0, y0, x1, y1 = o["box"]
        c0, r0 = max(int(x0 * w) - 1, 0), max(int(y0 * h) - 1, 0)
        c1, r1 = min(int(np.ceil(x1 * w)) + 1, w), min(int(np.ceil(y1 * h)) + 1, h)
        if c1 <= c0 or r1 <= r0:
            continue
        cov = _coverage(ids2x[2 * r0:2 * r1, 2 * c0:2 * c1] == k + 1, c1 - c0, r1 - r0)[None]
        (sx, sy), (cx, cy) = o["shade"], o["center"]
        gain = 1 + (sx * (x[c0:c1] - cx))[None, :] + (sy * (y[r0:r1] - cy))[:, None]
        col = COLOUR_RGB[COLOURS.index(o["colour"])][:, None, None] * gain[None].astype(np.float32)
        img[:, r0:r1, c0:c1] = img[:, r0:r1, c0:c1] * (1 - cov) + col * cov
    img += _grain(h, w, grain_seed)
    img = cv2.merge([cv2.convertScaleAbs(c) for c in np.maximum(img, 0)])
    if labels is None:
        lut = np.zeros(256, np.uint8)
        for k, o in enumerate(objects):
            lut[k + 1] = SHAPE_CLASS[o["shape"]]
        cov = _coverage(ids2x > 0, w, h)
        sid = lut[ids2x]
        shape1x = np.maximum(np.maximum(sid[0::2, 0::2], sid[1::2, 0::2]), np.maximum(sid[0::2, 1::2], sid[1::2, 1::2]))
        labels = np.where(cov >= 0.5, shape1x, regions1x).astype(np.uint8)
    return img, labels


def _draw_ids(objects: list[dict], h: int, w: int) -> np.ndarray:
    ids = np.zeros((h, w), np.uint8)
    for k, o in enumerate(objects):
        pts = polygon_in_box(o["shape"], o["box"], o["rotation"]) * np.array([w, h])
        lo, hi = pts.min(0), pts.max(0)
        pts = lo + (pts - lo) * np.maximum(hi - lo - 1, 0) / np.maximum(hi - lo, 1e-6)
        cv2.fillPoly(ids, [np.round(pts * 16).astype(np.int32)], k + 1, lineType=cv2.LINE_8, shift=4)
    return ids


def _ground_word(regions: np.ndarray) -> tuple[str | None, bool]:
    counts = np.bincount(regions.ravel(), minlength=len(REGIONS))[:len(REGIONS)]
    ground = int(np.argmax(counts[1:])) + 1 if counts[1:].any() else None
    return (REGIONS[ground] if ground else None), bool(counts[0])


def relation(a: dict, b: dict) -> str:
    """Spatial relation of object a to object b from their box centres: above, below, left of, right of."""
    dx, dy = a["center"][0] - b["center"][0], a["center"][1] - b["center"][1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def relation_holds(a: dict, b: dict, rel: str, slack: float = 0.75) -> bool:
    """a is `rel` of b: displaced the right way along that axis by at least `slack` times the other axis."""
    dx, dy = a["center"][0] - b["center"][0], a["center"][1] - b["center"][1]
    along, across = {"above": (-dy, dx), "below": (dy, dx), "left of": (-dx, dy), "right of": (dx, dy)}.get(rel, (1, 0))
    return along > 0 and along >= slack * abs(across)


def make_caption(objects: list[dict], ground: str | None, sky: bool, use_and: bool = False) -> str:
    """'a red circle above a blue square and a white star on grass under the sky' ('and' for near-diagonal pairs)."""
    names = [f"a {o['colour']} {o['shape']}" for o in objects]
    if len(names) >= 2 and not use_and:
        rel = relation(objects[0], objects[1])
        use_and = not relation_holds(objects[0], objects[1], rel, 0.8)
    if len(names) >= 2:
        text = f"{names[0]} {'and' if use_and else relation(objects[0], objects[1])} {names[1]}"
        text = " and ".join([text, *names[2:]])
    else:
        text = names[0] if names else ""
    if ground:
        text += f" on {ground}"
    if sky:
        text += " under the sky"
    return text.strip()


def parse_caption(caption: str) -> Caption:
    """Inverse of make_caption; unknown words are ignored."""
    words = caption.lower().replace(",", " ").split()
    objects, relation_, ground = [], None, None
    i = 0
    while i < len(words):
        w = words[i]
        if w in COLOURS and i + 1 < len(words) and words[i + 1] in SHAPES:
            objects.append((w, words[i + 1]))
            i += 2
            continue
        if len(objects) == 1 and relation_ is None and w in ("above", "below", "left", "right", "and"):
            relation_ = f"{w} of" if w in ("left", "right") else w
        if w == "on" and i + 1 < len(words) and words[i + 1] in REGIONS:
            ground = words[i + 1]
        i += 1
    return Caption(objects, relation_, ground, "sky" in words)


def _finish(objects: list[dict], rng: np.random.Generator, img, labels, seed) -> Scene:
    ground, sky = _ground_word(labels)
    caption = make_caption(objects, ground, sky, use_and=len(objects) >= 2 and rng.random() < 0.2)
    boxes = [(o["label"], tuple(float(v) for v in o["box"])) for o in objects]
    return Scene(img, caption, boxes, labels, objects, seed)


def object_count(seed: int) -> int:
    """How many objects render(seed) draws, without rendering it: the first draw of its object generator."""
    return int(np.random.default_rng([seed, 1]).integers(1, MAX_OBJECTS + 1))


def render(seed: int, size: int = 64, drop: tuple[int, ...] = ()) -> Scene:
    """A random scene: band layout of textured regions and 1-3 non-overlapping shapes.

    drop: indices of objects to leave out, keeping everything else (object-removal pairs for inpainting).
    """
    rng_bg, rng_obj = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    layout = _sample_layout(rng_bg)
    textures = _sample_textures(rng_bg)
    objects = _sample_objects(rng_obj, int(rng_obj.integers(1, MAX_OBJECTS + 1)))
    objects = [o for i, o in enumerate(objects) if i not in drop]
    regions2x, regions1x = region_map(layout, 2 * size, 2 * size), region_map(layout, size, size)
    ids2x = _draw_ids(objects, 2 * size, 2 * size)
    img, labels = _compose(regions2x, regions1x, textures, ids2x, objects, [seed, 2, size])
    return _finish(objects, rng_obj, img, labels, seed)


def batch(seeds, size: int = 64) -> SceneBatch:
    """render() for each seed, stacked."""
    scenes = [render(int(s), size) for s in seeds]
    return SceneBatch(np.stack([s.image for s in scenes]), np.stack([s.labels for s in scenes]),
                      [s.caption for s in scenes], [s.boxes for s in scenes], np.asarray(list(seeds), np.int64))


def _box_items(boxes) -> list[tuple[str, Box]]:
    out = []
    for b in boxes:
        label, box = (b.label, b.box) if hasattr(b, "label") else b
        if label not in OBJECT_CLASSES:
            raise ValueError(f"unknown object class {label!r}; expected one of OBJECT_CLASSES")
        out.append((label, tuple(float(v) for v in box)))
    return out


def render_from_layout(boxes, background: str | np.ndarray = "grass", size: int = 64, seed: int = 0) -> Scene:
    """Ground-truth render of a layout: each (label, box) shape stretched to fill its normalized box.

    `background` is a region name (one region) or a region class-id map of any size. Boxes may be
    engine.api.Box objects or (label, (x0, y0, x1, y1)) pairs; later boxes are painted over earlier ones.
    """
    if isinstance(background, str):
        layout = {"axis": "h", "classes": [REGIONS.index(background)], "bounds": []}
    else:
        layout = {"map": np.asarray(background)}
    rng_bg, rng_obj = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    textures = _sample_textures(rng_bg)
    objects = []
    for label, box in _box_items(boxes):
        colour, shape = label.split()
        objects.append(_object(colour, shape, box, 0.0, rng_obj.uniform(-0.25, 0.25, 2)))
    regions2x, regions1x = region_map(layout, 2 * size, 2 * size), region_map(layout, size, size)
    ids2x = _draw_ids(objects, 2 * size, 2 * size)
    img, labels = _compose(regions2x, regions1x, textures, ids2x, objects, [seed, 2, size])
    return _finish(objects, rng_obj, img, labels, seed)


def render_from_labels(label_map: np.ndarray, seed: int = 0, size: int | None = None) -> Scene:
    """Ground-truth render of a SEMANTIC_CLASSES id map: region textures, each shape component in a random colour.

    `size` (default: the map's height) rescales the map with nearest-neighbour first; pixels follow the map exactly.
    """
    label_map = np.asarray(label_map, np.uint8)
    h, w = label_map.shape
    if size is not None and size != h:
        w, h = round(w * size / h), size
        label_map = cv2.resize(label_map, (w, h), interpolation=cv2.INTER_NEAREST)
    rng_bg, rng_obj = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    textures = _sample_textures(rng_bg)
    is_obj = label_map >= len(REGIONS)
    regions1x = label_map.copy()
    if is_obj.any():
        fill = np.bincount(label_map[~is_obj], minlength=len(REGIONS)).argmax() if (~is_obj).any() else 1
        regions1x[is_obj] = fill
    ids = np.zeros((h, w), np.int32)
    objects = []
    for shape in SHAPES:
        n, comp, stats, _ = cv2.connectedComponentsWithStats((label_map == SHAPE_CLASS[shape]).astype(np.uint8), 4)
        for j in range(1, n):
            x, y, bw, bh = stats[j, :4]
            box = (x / w, y / h, (x + bw) / w, (y + bh) / h)
            objects.append(_object(COLOURS[rng_obj.integers(6)], shape, box, 0.0, rng_obj.uniform(-0.25, 0.25, 2)))
            ids[comp == j] = len(objects)
    up = lambda a: cv2.resize(a, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    ids2x = up(ids.astype(np.uint8) if len(objects) < 255 else np.minimum(ids, 255).astype(np.uint8))
    img, labels = _compose(up(regions1x), regions1x, textures, ids2x, objects, [seed, 2, h], labels=label_map)
    return _finish(objects, rng_obj, img, labels, seed)
