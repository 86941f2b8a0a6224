"""Qt-free raster operations on document layers: brush dabs along a poly-line, flood fill, label palette."""
from __future__ import annotations

import math

import numpy as np

Rect = tuple[int, int, int, int]


def dab(coverage: np.ndarray, cx: float, cy: float, radius: float, hardness: float) -> Rect | None:
    """Stamp one round dab (linear falloff from radius*hardness to radius, 1 px anti-aliased edge) with max blending."""
    h, w = coverage.shape
    x0, x1 = max(int(math.floor(cx - radius - 1)), 0), min(int(math.ceil(cx + radius + 1)) + 1, w)
    y0, y1 = max(int(math.floor(cy - radius - 1)), 0), min(int(math.ceil(cy + radius + 1)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d = np.sqrt((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2)
    soft = max(radius * (1.0 - min(max(hardness, 0.0), 1.0)), 1.0)
    alpha = np.clip((radius + 0.5 - d) / soft, 0.0, 1.0)
    np.maximum(coverage[y0:y1, x0:x1], alpha, out=coverage[y0:y1, x0:x1])
    return (y0, y1, x0, x1)


def union(a: Rect | None, b: Rect | None) -> Rect | None:
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def segment(coverage: np.ndarray, p0, p1, radius: float, hardness: float, spacing: float = 0.25) -> Rect | None:
    """Dabs spaced spacing*radius apart from p0 to p1 (p0 excluded unless p0 == p1)."""
    (xa, ya), (xb, yb) = p0, p1
    length = math.hypot(xb - xa, yb - ya)
    step = max(radius * spacing, 0.5)
    n = max(int(math.ceil(length / step)), 1)
    touched = None
    first = 0 if length == 0 else 1
    for i in range(first, n + 1):
        t = i / n
        touched = union(touched, dab(coverage, xa + (xb - xa) * t, ya + (yb - ya) * t, radius, hardness))
    return touched


def stroke_coverage(shape: tuple[int, int], points, radius: float, hardness: float) -> tuple[np.ndarray, Rect | None]:
    """Coverage in [0,1] of a poly-line of dabs; returns it and the touched rectangle (y0, y1, x0, x1)."""
    coverage = np.zeros(shape, np.float32)
    pts = [(float(x), float(y)) for x, y in points]
    if not pts:
        return coverage, None
    touched = segment(coverage, pts[0], pts[0], radius, hardness)
    for a, b in zip(pts, pts[1:]):
        touched = union(touched, segment(coverage, a, b, radius, hardness))
    return coverage, touched


def blend(original: np.ndarray, coverage: np.ndarray, value) -> np.ndarray:
    """Paint value over original: linear mix for uint8 layers (an RGB value on an RGB layer), coverage >= 0.5 for
    label (int16) layers."""
    if original.dtype == np.uint8:
        value = np.asarray(value, np.float32)
        cover = coverage[..., None] if original.ndim == 3 else coverage
        out = original.astype(np.float32) + (value - original.astype(np.float32)) * cover
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.where(coverage >= 0.5, np.asarray(value, original.dtype), original)


def flood_region(layer: np.ndarray, x: int, y: int) -> np.ndarray:
    """Boolean mask of the 4-connected region of equal value containing (x, y) (scanline flood fill)."""
    h, w = layer.shape
    region = np.zeros((h, w), bool)
    if not (0 <= x < w and 0 <= y < h):
        return region
    same = layer == layer[y, x]
    stack = [(x, y)]
    while stack:
        sx, sy = stack.pop()
        if region[sy, sx]:
            continue
        row = same[sy]
        lo = sx
        while lo > 0 and row[lo - 1] and not region[sy, lo - 1]:
            lo -= 1
        hi = sx
        while hi < w - 1 and row[hi + 1] and not region[sy, hi + 1]:
            hi += 1
        region[sy, lo:hi + 1] = True
        for ny in (sy - 1, sy + 1):
            if 0 <= ny < h:
                cand = same[ny, lo:hi + 1] & ~region[ny, lo:hi + 1]
                if cand.any():
                    idx = np.flatnonzero(cand)
                    starts = idx[np.concatenate(([True], np.diff(idx) > 1))]
                    stack.extend((lo + int(i), ny) for i in starts)
    return region


def bbox_of(mask: np.ndarray) -> Rect | None:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)


def palette(n: int) -> np.ndarray:
    """n distinct RGB colours (golden-ratio hue walk, alternating value) for label classes."""
    out = np.zeros((max(n, 0), 3), np.uint8)
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = 0.65 + 0.3 * ((i // 3) % 2), 0.95 - 0.25 * (i % 2)
        out[i] = [int(round(c * 255)) for c in _hsv(hue, sat, val)]
    return out


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def resize_nearest(a: np.ndarray, width: int, height: int) -> np.ndarray:
    ys = np.minimum((np.arange(height) + 0.5) * a.shape[0] / height, a.shape[0] - 1).astype(int)
    xs = np.minimum((np.arange(width) + 0.5) * a.shape[1] / width, a.shape[1] - 1).astype(int)
    return a[ys][:, xs]


def resize_smooth(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resampling of an RGB picture (a pasted picture scaled on the canvas)."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


def fit_region(rect, width: int, height: int, grid: int = 8) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) snapped to the latent grid and clamped inside the canvas; None when it is the whole canvas."""
    if rect is None:
        return None
    x, y, w, h = (float(v) for v in rect)
    if w < 0:
        x, w = x + w, -w
    if h < 0:
        y, h = y + h, -h
    g = grid
    w = min(max(int(round(w / g)) * g, min(g, width)), width)
    h = min(max(int(round(h / g)) * g, min(g, height)), height)
    x = min(max(int(round(x / g)) * g, 0), width - w)
    y = min(max(int(round(y / g)) * g, 0), height - h)
    if (x, y, w, h) == (0, 0, width, height):
        return None
    return (x, y, w, h)


def crop_box(rect, region, width: int, height: int) -> tuple[float, float, float, float] | None:
    """A normalized canvas box re-expressed in normalized region coordinates, clipped; None if it misses the region."""
    rx, ry, rw, rh = region
    x0, y0, x1, y1 = rect
    a = (min(max((x0 * width - rx) / rw, 0.0), 1.0), min(max((y0 * height - ry) / rh, 0.0), 1.0))
    b = (min(max((x1 * width - rx) / rw, 0.0), 1.0), min(max((y1 * height - ry) / rh, 0.0), 1.0))
    if (b[0] - a[0]) * rw < 1 or (b[1] - a[1]) * rh < 1:
        return None
    return (a[0], a[1], b[0], b[1])


def edge_fill(image: np.ndarray, rows: tuple[int, int], cols: tuple[int, int], blur: float = 8.0) -> np.ndarray:
    """image padded by (before, after) rows and columns: the edge pixels carried outwards and blurred there (an
    outpainting start that keeps the neighbouring colours without streaks); the original pixels unchanged."""
    from PIL import Image, ImageFilter

    padded = np.pad(image, (rows, cols, (0, 0)), mode="edge")
    soft = np.asarray(Image.fromarray(padded).filter(ImageFilter.GaussianBlur(blur)))
    out = soft.copy()
    h, w = image.shape[:2]
    out[rows[0]:rows[0] + h, cols[0]:cols[0] + w] = image
    return out
