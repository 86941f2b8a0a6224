"""Tiled vs untiled denoiser step time against the tile-grid prediction (MultiDiffusion cost model)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> int:
    from engine.checkpoint import params_on_meta
    from engine.families import preset
    from engine.models.latent_diffusion import LatentDiffusion
    from engine.pipelines import base_denoiser
    from engine.tiling import TiledDenoiser, n_tiles

    p = argparse.ArgumentParser(prog="python -m bench tiled_step")
    p.add_argument("--family", default="ldm-bsr-sr")
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--tile", type=int, default=32)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    args, _ = p.parse_known_args(argv)
    torch.manual_seed(0)
    with params_on_meta():
        m = LatentDiffusion(preset(args.family))
    m.load_state_dict({k: torch.randn(v.shape) * 0.02 for k, v in m.state_dict().items()}, assign=True)
    m.eval().optimize_for("cpu")
    c = m.config.unet.out_channels
    x = torch.randn(1, c, args.latent, args.latent)
    extra = {"concat": torch.randn(1, m.config.unet.in_channels - c, args.latent, args.latent)} \
        if m.config.unet.in_channels > c else {}
    plain = base_denoiser(m)
    tiled = TiledDenoiser(plain, args.tile, args.overlap)
    sigma = torch.ones(1)
    times = {"untiled": [], "tiled": []}
    with torch.inference_mode():
        for name, den in (("untiled", plain), ("tiled", tiled)):
            den(x, sigma, **extra)
        for _ in range(args.runs):
            for name, den in (("untiled", plain), ("tiled", tiled)):
                t = time.perf_counter()
                den(x, sigma, **extra)
                times[name].append(time.perf_counter() - t)
    k = n_tiles(args.latent, args.latent, args.tile, args.overlap)
    predicted = k * args.tile**2 / args.latent**2
    med = {n: statistics.median(v) for n, v in times.items()}
    res = {"family": args.family, "latent": args.latent, "tile": args.tile, "overlap": args.overlap, "tiles": k,
           "untiled_s": round(med["untiled"], 3), "tiled_s": round(med["tiled"], 3),
           "measured_ratio": round(med["tiled"] / med["untiled"], 3), "predicted_ratio": round(predicted, 3),
           "load": os.getloadavg()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tiled_step.json").write_text(json.dumps(res, indent=1))
    print(f"{args.family} latent {args.latent}: {k} tiles of {args.tile} (overlap {args.overlap}); untiled "
          f"{res['untiled_s']} s, tiled {res['tiled_s']} s; ratio {res['measured_ratio']} vs predicted "
          f"(tiles x tile area / canvas area) {res['predicted_ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
