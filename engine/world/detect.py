"""Shapes-world detector: nearest-prototype colour segmentation plus contour shape analysis (solidity, rectangularity).

Pixels nearer an object colour than any background prototype are object pixels; 4-connected components of them
are candidate objects, coloured by majority vote and rejected when impure or too small. The shape comes from
the component's solidity (area / convex hull area: stars are concave) and its fill of the minimum-area
rectangle (square 1, circle pi/4, triangle 1/2), both invariant to rotation and to stretching along the box axes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from engine.world.scene import COLOUR_RGB, COLOURS, REGION_RGB, REGIONS, SHAPE_CLASS

MIN_AREA = 0.006
MAX_AREA = 0.9
MIN_PURITY = 0.7
MAX_COLOUR_DIST = 55.0
STAR_SOLIDITY = 0.81
SMALL_STAR_SOLIDITY = 0.87
SMALL_STAR_FILL = 0.59
SQUARE_FILL = 0.84
TRIANGLE_FILL = 0.66
_PROTOS = np.concatenate([COLOUR_RGB, REGION_RGB]).astype(np.float32)


@dataclass
class Detection:
    """One detected object: 'colour shape' label, normalized (x0, y0, x1, y1) box, HxW bool mask and features."""

    label: str
    colour: str
    shape: str
    box: tuple[float, float, float, float]
    mask: np.ndarray
    solidity: float = 0.0
    fill: float = 0.0


def _rgb(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 from uint8 or float ([0, 1] or [0, 255]) RGB(A)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    img = image[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest prototype (objects then regions), its distance, and nearest region, per 6-bit-per-channel colour."""
    levels = np.arange(64, dtype=np.float32) * 4 + 1.5
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    d = np.linalg.norm(grid[:, None, :] - _PROTOS[None], axis=-1)
    idx = d.argmin(1)
    region = d[:, len(COLOURS):].argmin(1)
    return idx.astype(np.uint8), d[np.arange(idx.size), idx].astype(np.float32), region.astype(np.uint8)


def _key(img: np.ndarray) -> np.ndarray:
    q = (img >> 2).astype(np.int32)
    return (q[..., 0] << 12) | (q[..., 1] << 6) | q[..., 2]


def _nearest(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest prototype (objects first, then regions) and its distance, per pixel."""
    idx, dist, _ = _tables()
    key = _key(img)
    return idx[key], dist[key]


def soft_mask(img: np.ndarray, colour: int, box: tuple[int, int, int, int], pad: int = 2) -> tuple[np.ndarray, tuple]:
    """Per-pixel object coverage in a padded crop: d_region / (d_object + d_region), exact for a blend of the two."""
    h, w, _ = img.shape
    x, y, bw, bh = box
    x0, y0, x1, y1 = max(x - pad, 0), max(y - pad, 0), min(x + bw + pad, w), min(y + bh + pad, h)
    crop = img[y0:y1, x0:x1].astype(np.float32)
    d_obj = np.linalg.norm(crop - COLOUR_RGB[colour], axis=-1)
    d_reg = np.linalg.norm(crop[..., None, :] - REGION_RGB, axis=-1).min(-1)
    return np.clip(d_reg / (d_obj + d_reg + 1e-6), 0, 1), (x0, y0)


def shape_features(mask: np.ndarray) -> tuple[float, float]:
    """(solidity, min-area-rectangle fill) of a binary mask, measured on pixel squares rather than pixel centres."""
    area = float(np.count_nonzero(mask))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    xs, ys = np.concatenate(contours).reshape(-1, 2).T
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(np.float32)
    hull = cv2.convexHull(corners)
    hull_area = max(cv2.contourArea(hull), 1.0)
    (_, _), (rw, rh), _ = cv2.minAreaRect(hull)
    return area / hull_area, area / max(rw * rh, 1.0)


def classify_shape(solidity: float, fill: float) -> str:
    """Star if concave (or, when tiny and blurred, fairly concave but fuller than a triangle), else by how much of
    its minimum-area rectangle the shape fills."""
    if solidity < STAR_SOLIDITY or (solidity < SMALL_STAR_SOLIDITY and fill > SMALL_STAR_FILL):
        return "star"
    if fill >= SQUARE_FILL:
        return "square"
    if fill < TRIANGLE_FILL:
        return "triangle"
    return "circle"


def detect(image: np.ndarray) -> list[Detection]:
    """Objects in an HxWx3 image (uint8, or float in [0, 1] or [0, 255]), largest first."""
    img = _rgb(image)
    h, w, _ = img.shape
    idx, dist = _nearest(img)
    n, comp, stats, _ = cv2.connectedComponentsWithStats((idx < len(COLOURS)).astype(np.uint8), connectivity=4)
    out = []
    for j in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[j])
        if not MIN_AREA * h * w <= area <= MAX_AREA * h * w:
            continue
        crop = comp[y:y + bh, x:x + bw] == j
        votes = np.bincount(idx[y:y + bh, x:x + bw][crop], minlength=len(COLOURS))
        colour = int(votes.argmax())
        if votes[colour] < MIN_PURITY * area:
            continue
        sel = crop & (idx[y:y + bh, x:x + bw] == colour)
        if dist[y:y + bh, x:x + bw][sel].mean() > MAX_COLOUR_DIST:
            continue
        alpha, (ox, oy) = soft_mask(img, colour, (x, y, bw, bh))
        keep = np.zeros(alpha.shape, np.uint8)
        keep[y - oy:y - oy + bh, x - ox:x - ox + bw] = crop
        keep = cv2.dilate(keep, np.ones((3, 3), np.uint8))
        up = int(np.clip(round(64 / max(bw, bh)), 1, 6))
        hr = cv2.resize(alpha * keep, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR) > 0.5
        solidity, fill = shape_features(hr)
        shape = classify_shape(solidity, fill)
        mask = np.zeros((h, w), bool)
        mask[y:y + bh, x:x + bw] = crop
        out.append(Detection(f"{COLOURS[colour]} {shape}", COLOURS[colour], shape,
                             (x / w, y / h, (x + bw) / w, (y + bh) / h), mask, solidity, fill))
    out.sort(key=lambda d: -int(d.mask.sum()))
    return out


def segment(image: np.ndarray, detections: list[Detection] | None = None) -> np.ndarray:
    """SEMANTIC_CLASSES id map: detected objects get their shape class, other pixels the majority region class
    of nearest-prototype votes in a small window (objects' pixels do not vote)."""
    img = _rgb(image)
    h, w, _ = img.shape
    dets = detect(image) if detections is None else detections
    k = max(3, (min(h, w) // 32) | 1)
    smooth = cv2.blur(img, (3, 3)) if min(h, w) >= 16 else img
    region = _tables()[2][_key(smooth)]
    obj = np.zeros((h, w), bool)
    for d in dets:
        obj |= d.mask
    votes = np.stack([cv2.blur(((region == c) & ~obj).astype(np.float32), (k, k)) for c in range(len(REGIONS))], -1)
    labels = np.where(votes.max(-1) > 0, votes.argmax(-1), region).astype(np.uint8)
    for d in dets:
        labels[d.mask] = SHAPE_CLASS[d.shape]
    return labels
