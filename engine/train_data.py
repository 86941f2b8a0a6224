"""Training data: shapes-world pools rendered on the fly, image folders, inpainting masks and object-removal pairs."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.world import scene as world
from engine.world import OBJECT_CLASSES, SEMANTIC_CLASSES, TRAIN_SEEDS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W,3) -> float (N,3,H,W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N,3,H,W) in [-1, 1] -> uint8 (N,H,W,3)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Pool:
    """A refreshable set of training samples: images, optional captions, boxes, label maps and low-res twins."""

    images: np.ndarray
    captions: list[str] = field(default_factory=list)
    boxes: list = field(default_factory=list)
    labels: np.ndarray | None = None
    low: np.ndarray | None = None
    seeds: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


def world_pool(seeds, size: int = 64, low_size: int = 0) -> Pool:
    """Render the shapes world for the given training seeds (and their low-resolution twins for super-resolution)."""
    b = world.batch(seeds, size)
    low = world.batch(seeds, low_size).images if low_size else None
    return Pool(b.images, list(b.captions), list(b.boxes), b.labels, low, np.asarray(list(seeds), np.int64))


def train_seeds(rng: np.random.Generator, n: int, objects: tuple[float, ...] | None = None) -> np.ndarray:
    """n random seeds from the world's training range (never the held-out EVAL_SEEDS).
    objects: relative weights of scenes with 1, 2, ... MAX_OBJECTS objects, by rejection on each seed's object count
    (None: the world's own even mix)."""
    if objects is None:
        return rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop, n)
    if len(objects) != world.MAX_OBJECTS or min(objects) < 0 or max(objects) <= 0:
        raise ValueError(f"objects: {world.MAX_OBJECTS} non-negative weights, one per object count, not {objects}")
    accept = np.asarray(objects, np.float64) / max(objects)
    out: list[int] = []
    while len(out) < n:
        for s in rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop, 4 * n):
            if rng.random() < accept[world.object_count(int(s)) - 1]:
                out.append(int(s))
    return np.asarray(out[:n], np.int64)


def _square(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(img[y:y + s, x:x + s], (size, size), interpolation=cv2.INTER_AREA)


def folder_pool(folder, size: int = 64, captions: str | None = None, low_size: int = 0) -> Pool:
    """Every image of a folder, centre-cropped and resized to size; captions.json maps file name -> caption."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    names = json.loads(Path(captions).read_text()) if captions else {}
    imgs, caps = [], []
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read image {p}")
        imgs.append(_square(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size))
        caps.append(str(names.get(p.name, names.get(p.stem, ""))))
    images = np.stack(imgs)
    low = np.stack([cv2.resize(i, (low_size, low_size), interpolation=cv2.INTER_AREA) for i in images]) if low_size else None
    return Pool(images, caps if names else [], [], None, low)


def random_masks(rng: np.random.Generator, n: int, size: int, outpaint: float = 0.0) -> np.ndarray:
    """LDM-style inpainting masks (1 = repaint): random boxes and thick random brush strokes, half each; with
    probability `outpaint` instead an outpainting band, 15-50% of the image along one side or two adjacent ones."""
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        if outpaint and rng.random() < outpaint:
            first = int(rng.integers(0, 4))
            for side in (first, (first + 1) % 4)[: int(rng.integers(1, 3))]:
                k = max(1, int(rng.uniform(0.15, 0.5) * size))
                band = {0: np.s_[:, :k], 1: np.s_[:k, :], 2: np.s_[:, size - k:], 3: np.s_[size - k:, :]}[side]
                out[i][band] = 1
        elif rng.random() < 0.5:
            w, h = (rng.uniform(0.2, 0.6, 2) * size).astype(int)
            x, y = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
            out[i, y:y + h, x:x + w] = 1
        else:
            pts = rng.uniform(0.1, 0.9, (int(rng.integers(2, 6)), 2)) * size
            thick = int(rng.integers(max(2, size // 16), max(3, size // 5)))
            cv2.polylines(out[i], [pts.astype(np.int32)], False, 1, thick)
    return out


def box_mask(box, size: int, grow: float = 0.04) -> np.ndarray:
    """A rectangular mask (1 = repaint) over a normalized box grown by `grow` on every side."""
    x0, y0, x1, y1 = box
    m = np.zeros((size, size), np.uint8)
    a, b = int(np.floor(max(0.0, x0 - grow) * size)), int(np.floor(max(0.0, y0 - grow) * size))
    c, d = int(np.ceil(min(1.0, x1 + grow) * size)), int(np.ceil(min(1.0, y1 + grow) * size))
    m[b:d, a:c] = 1
    return m


def render_without(seed: int, drop: int, size: int = 64) -> world.Scene:
    """render(seed, size) with object number `drop` left out: the same background, so (with, without) is a removal pair."""
    rng_bg, rng_obj = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    layout = world._sample_layout(rng_bg)
    textures = world._sample_textures(rng_bg)
    objects = world._sample_objects(rng_obj, int(rng_obj.integers(1, 4)))
    objects = [o for i, o in enumerate(objects) if i != drop]
    regions2x, regions1x = world.region_map(layout, 2 * size, 2 * size), world.region_map(layout, size, size)
    ids2x = world._draw_ids(objects, 2 * size, 2 * size)
    img, labels = world._compose(regions2x, regions1x, textures, ids2x, objects, [seed, 2, size])
    return world._finish(objects, rng_obj, img, labels, seed)


def removal_pairs(rng: np.random.Generator, n: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, mask over one object's grown box, the same scene without that object) for n random training seeds."""
    src, masks, tgt = [], [], []
    for seed in train_seeds(rng, n):
        s = world.render(int(seed), size)
        k = int(rng.integers(len(s.boxes)))
        src.append(s.image)
        masks.append(box_mask(s.boxes[k][1], size, grow=float(rng.uniform(0.02, 0.08))))
        tgt.append(render_without(int(seed), k, size).image)
    return np.stack(src), np.stack(masks), np.stack(tgt)


def layout_tokenizer(n_tokens: int = 1024):
    """The world's layout tokenizer: OBJECT_CLASSES on a sqrt(n_tokens) grid (taming-transformers token triples)."""
    from engine.tokenizers import LayoutTokenizer

    return LayoutTokenizer(class_names=OBJECT_CLASSES, n_tokens=n_tokens)


def one_hot_labels(labels: np.ndarray) -> torch.Tensor:
    """(N,H,W) SEMANTIC_CLASSES ids -> int64 tensor (the spatial conditioner one-hot encodes it)."""
    return torch.from_numpy(labels.astype(np.int64)).clamp_(0, len(SEMANTIC_CLASSES) - 1)
