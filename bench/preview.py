"""Preview cost per sampling step at 512x512 (64x64 latent, KL-f8): linear preview and full decode vs a UNet step."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _timeit(fn, n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main(argv: list[str]) -> int:
    import torch

    from engine.families import KL_F8, preset
    from engine.models.first_stage_model import make_first_stage
    from engine.preview import LatentPreviewer, decode_preview, fit_latent_to_rgb

    ap = argparse.ArgumentParser(prog="python -m bench preview")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--no-unet", action="store_true")
    a, _ = ap.parse_known_args(argv)
    dt = getattr(torch, a.dtype)
    torch.manual_seed(0)
    fs = make_first_stage(KL_F8).eval().to(dt)
    t0 = time.perf_counter()
    w, b = fit_latent_to_rgb(fs, 4, 6, torch.Generator().manual_seed(0), scale_factor=0.18215)
    res = {"dtype": a.dtype, "fit_seconds": round(time.perf_counter() - t0, 2)}
    x0 = torch.randn(2, 4, 64, 64)
    prev = LatentPreviewer(w, b)
    res["linear_preview_ms"] = round(_timeit(lambda: prev(x0), 50) * 1e3, 3)
    res["linear_preview_x8_ms"] = round(_timeit(lambda: LatentPreviewer(w, b, 8)(x0), 10) * 1e3, 3)
    with torch.inference_mode():
        res["full_decode_preview_256px_s"] = round(_timeit(lambda: decode_preview(fs, x0, 0.18215, max_latent=32), 1), 2)
    unet_file = Path(__file__).parents[1] / "engine" / "models" / "diffusion_model.py"
    if unet_file.exists() and not a.no_unet:
        from engine.models.diffusion_model import UNetModel

        unet = UNetModel(preset("sd1").unet).eval().to(dt)
        ctx = torch.randn(2, 77, 768, dtype=dt)
        with torch.inference_mode():
            res["unet_step_s"] = round(_timeit(lambda: unet(x0.to(dt), torch.tensor([500, 500]), ctx), 1), 2)
        res["linear_preview_overhead_pct"] = round(100 * res["linear_preview_ms"] / 1e3 / res["unet_step_s"], 4)
    for k, v in res.items():
        print(f"{k:>32}: {v}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "preview.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
