"""Shapes-world evaluation metrics (caption match, layout recall at IoU 0.5, pixel accuracy, inpainting check, PSNR).

All are pure functions of numpy images (HxWx3 uint8, or float in [0, 1]) and the conditioning that produced them;
the detector in engine.world.detect does the seeing. Their ceilings are measured on ground-truth renders and their
chance levels on noise and on shuffled conditioning in tests/test_world.py.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from engine.world.detect import Detection, detect, segment
from engine.world.scene import COLOURS, REGIONS, SHAPES, parse_caption, relation_holds

Box = tuple[float, float, float, float]
GROUND_SHARE = 0.75


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre(d: Detection) -> dict:
    return {"center": ((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2)}


def caption_match(image: np.ndarray, caption: str, strict: bool = False) -> bool:
    """The detected objects are exactly the caption's (colour, shape) multiset: right colours, shapes and count.

    strict also requires the relation between its first two objects to hold (relation_holds on detected centres), its
    ground word (a non-sky region of segment() with at least GROUND_SHARE of the largest one's pixels) and
    sky mention (sky covers over 2% of the image) to hold.
    """
    want = parse_caption(caption)
    dets = detect(image)
    wanted = [f"{c} {s}" for c, s in want.objects]
    if Counter(d.label for d in dets) != Counter(wanted):
        return False
    if not strict:
        return True
    if want.relation and want.relation != "and":
        a = [d for d in dets if d.label == wanted[0]]
        b = [d for d in dets if d.label == wanted[1]]
        if not any(x is not y and relation_holds(_centre(x), _centre(y), want.relation) for x in a for y in b):
            return False
    labels = segment(image, dets)
    counts = np.bincount(labels.ravel(), minlength=len(REGIONS))[:len(REGIONS)]
    if want.ground and counts[REGIONS.index(want.ground)] < GROUND_SHARE * max(counts[1:].max(), 1):
        return False
    return (counts[0] > 0.02 * labels.size) == want.sky


def layout_score(image: np.ndarray, boxes, iou: float = 0.5) -> list[bool]:
    """Per box: matched (greedily, one-to-one) by a detected object of its 'colour shape' label with IoU >= iou.

    boxes: (label, (x0, y0, x1, y1)) pairs in normalized coordinates, or objects with .label and .box.
    """
    dets = detect(image)
    used = set()
    out = []
    for b in boxes:
        label, box = (b.label, b.box) if hasattr(b, "label") else b
        best, best_iou = None, iou
        for k, d in enumerate(dets):
            if k not in used and d.label == label:
                v = box_iou(d.box, tuple(box))
                if v >= best_iou:
                    best, best_iou = k, v
        if best is not None:
            used.add(best)
        out.append(best is not None)
    return out


def pixel_accuracy(image: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of pixels where segment(image) equals the SEMANTIC_CLASSES id map (resized nearest if needed)."""
    pred = segment(image)
    labels = np.asarray(labels, np.uint8)
    if labels.shape != pred.shape:
        labels = cv2.resize(labels, pred.shape[::-1], interpolation=cv2.INTER_NEAREST)
    return float((pred == labels).mean())


@dataclass
class InpaintScore:
    """Outcome of inpaint_score: outside-mask equality, what is mostly inside the mask, and whether that was asked."""

    outside_unchanged: bool
    outside_max_diff: int
    inside_labels: list[str]
    expected_inside: list[str]
    target_found: bool

    @property
    def inside_ok(self) -> bool:
        return sorted(self.inside_labels) == sorted(self.expected_inside)

    @property
    def ok(self) -> bool:
        return self.outside_unchanged and self.inside_ok


def parse_instruction(instruction: str) -> tuple[str, str | None, str | None]:
    """('remove' | 'replace' | 'add', target label or None, new label or None) from an inpainting instruction.

    Grammar: 'remove [the] red circle' (or 'remove'), 'replace [the] red circle with a blue square',
    anything else is a prompt for what fills the mask ('a blue square', 'add a blue square').
    """
    words = instruction.lower().replace(",", " ").split()
    pairs = [f"{w} {n}" for w, n in zip(words, words[1:]) if w in COLOURS and n in SHAPES]
    if words and words[0] in ("remove", "delete", "erase"):
        return "remove", (pairs[0] if pairs else None), None
    if words and words[0] == "replace":
        return "replace", (pairs[0] if pairs else None), (pairs[1] if len(pairs) > 1 else None)
    return "add", None, (pairs[0] if pairs else None)


def _mostly_inside(dets: list[Detection], mask: np.ndarray) -> list[Detection]:
    return [d for d in dets if (d.mask & mask).sum() >= 0.5 * d.mask.sum()]


def inpaint_score(original: np.ndarray, result: np.ndarray, mask: np.ndarray, instruction: str) -> InpaintScore:
    """Outside the mask the result equals the original exactly; the objects lying mostly inside the mask are
    exactly what the instruction asks for: none after 'remove', the new object after 'replace' or a prompt.

    mask: HxW, nonzero (or > 0.5 for floats) where the image was to be repainted.
    """
    original, result = np.asarray(original), np.asarray(result)
    if original.shape != result.shape:
        raise ValueError(f"original {original.shape} and result {result.shape} differ in shape")
    mask = np.asarray(mask)
    mask = mask > 0.5 if mask.dtype.kind == "f" else mask != 0
    if mask.ndim == 3:
        mask = mask.any(-1)
    diff = np.abs(original.astype(np.int32) - result.astype(np.int32))[~mask]
    max_diff = int(diff.max()) if diff.size else 0
    verb, target, new = parse_instruction(instruction)
    before = _mostly_inside(detect(original), mask)
    found = any(d.label == target for d in before) if target else bool(before) or verb == "add"
    inside = [d.label for d in _mostly_inside(detect(result), mask)]
    expected = [] if verb == "remove" or new is None else [new]
    return InpaintScore(max_diff == 0, max_diff, inside, expected, found)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images); use peak=1.0 for float images in [0, 1]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak * peak / mse))
