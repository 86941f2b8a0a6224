"""Image, mask and PNG-parameter utilities shared by the pipelines and the CLI (numpy and Pillow only)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PARAMS_CHUNK = "parameters"
REQUEST_CHUNK = "latent_canvas"


def read_image(path) -> np.ndarray:
    """An RGB uint8 array from any image file Pillow reads; a clear error otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read image {Path(path).name}: {e}") from None


def read_mask(path) -> np.ndarray:
    """A mask PNG: white (>= 128) marks the pixels to repaint; returns uint8 0/255."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read mask {Path(path).name}: {e}") from None
    return np.where(a >= 128, 255, 0).astype(np.uint8)


def read_labels(path) -> np.ndarray:
    """A label map PNG whose pixel values (mode L or P) are class ids."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"label map must be a single-channel (L or P) PNG, got mode {im.mode}")
            return np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read label map {Path(path).name}: {e}") from None


def resize_nearest(a: np.ndarray, width: int, height: int) -> np.ndarray:
    if a.shape[1] == width and a.shape[0] == height:
        return a
    ys = (np.arange(height) * a.shape[0] / height).astype(np.int64)
    xs = (np.arange(width) * a.shape[1] / width).astype(np.int64)
    return a[ys][:, xs]


def fill_unpainted(labels: np.ndarray) -> np.ndarray:
    """A label map's unpainted pixels (< 0, the app's empty label layer) take the class of the nearest painted pixel
    (Euclidean distance transform), so a few painted blobs make a whole map; all unpainted stays as it is."""
    labels = np.asarray(labels)
    unpainted = labels < 0
    if not unpainted.any() or unpainted.all():
        return labels
    import cv2

    _, nearest = cv2.distanceTransformWithLabels(unpainted.astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    return labels[~unpainted][nearest - 1].astype(labels.dtype)  # painted pixels are numbered in raster order


def resize_rgb(a: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if a.shape[1] == width and a.shape[0] == height:
        return a
    return np.array(Image.fromarray(a).resize((width, height), Image.Resampling.LANCZOS))


def grow_and_feather(mask: np.ndarray, grow: int = 0, feather: int = 0) -> np.ndarray:
    """Mask (nonzero = repaint) dilated by `grow` px, then softened outward by `feather` px; float32 in [0, 1].

    Pixels where the result is 0 are outside the edit and are returned untouched.
    """
    import cv2

    m = (mask > 0).astype(np.uint8)
    if grow > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        m = cv2.dilate(m, k)
    soft = m.astype(np.float32)
    if feather > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * feather + 1, 2 * feather + 1))
        outer = cv2.dilate(m, k).astype(np.float32)
        dist = cv2.distanceTransform((1 - m).astype(np.uint8), cv2.DIST_L2, 3)
        soft = np.where(m > 0, 1.0, np.clip(1.0 - dist / (feather + 1), 0.0, 1.0) * outer).astype(np.float32)
    return soft


def colour_fix(image: np.ndarray, reference: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Low-frequency swap (StableSR's colour fix, Wang et al. 2023): the image's detail finer than a Gaussian of
    `sigma` px over the reference's colours and shading, the reference resized (bicubic) to the image's size;
    sigma defaults to 0.6 of the scale between them (2.4 px for x4)."""
    import cv2

    h, w = image.shape[:2]
    if sigma is None:
        sigma = 0.6 * max(w / reference.shape[1], h / reference.shape[0])
    if sigma <= 0:
        return image
    ref = cv2.resize(np.ascontiguousarray(reference), (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    img = image.astype(np.float32)
    low = cv2.GaussianBlur(ref - img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return np.clip(np.rint(img + low), 0, 255).astype(np.uint8)


def composite(original: np.ndarray, generated: np.ndarray, soft_mask: np.ndarray) -> np.ndarray:
    """original where soft_mask == 0 (bit-exact), generated where 1, blended between."""
    w = soft_mask[..., None]
    mixed = np.rint(original.astype(np.float32) * (1 - w) + generated.astype(np.float32) * w).astype(np.uint8)
    return np.where(w > 0, mixed, original)


def mask_bbox(mask: np.ndarray, pad: int, multiple: int) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) of the mask grown by pad, snapped outward to `multiple`, inside the image."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = mask.shape
    x0, y0 = max(0, xs.min() - pad), max(0, ys.min() - pad)
    x1, y1 = min(w, xs.max() + 1 + pad), min(h, ys.max() + 1 + pad)
    x0, y0 = x0 // multiple * multiple, y0 // multiple * multiple
    x1 = min(w // multiple * multiple, -(-x1 // multiple) * multiple)
    y1 = min(h // multiple * multiple, -(-y1 // multiple) * multiple)
    return int(x0), int(y0), int(x1), int(y1)


def save_png(path, image: np.ndarray, parameters: str = "", request: dict | None = None) -> None:
    """PNG with the generation parameters in a 'parameters' text chunk and the full request as JSON; atomic write."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters:
        info.add_text(PARAMS_CHUNK, parameters)
    if request is not None:
        info.add_text(REQUEST_CHUNK, json.dumps(request))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)


def read_png_text(path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as im:
        return dict(getattr(im, "text", {}) or {})
