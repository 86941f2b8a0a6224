"""Tiled vs untiled KL-f8 decode: wall time and peak resident memory (VmHWM), one subprocess per size and mode."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def worker(size: int, mode: str, dtype: str, tile: int, save: str | None) -> dict:
    import numpy as np
    import torch

    from engine.families import KL_F8
    from engine.models.first_stage_model import make_first_stage
    from engine.tiling import decode_tiled

    torch.manual_seed(0)
    fs = make_first_stage(KL_F8).eval().to(getattr(torch, dtype))
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    rss_model = _vm("VmRSS")
    t0 = time.perf_counter()
    with torch.inference_mode():
        if mode == "tiled":
            img = np.empty((size, size, 3), np.uint8)
            decode_tiled(fs, z, tile=tile, out=img)
        else:
            fs.to(memory_format=torch.channels_last)
            zc = z.to(getattr(torch, dtype)).contiguous(memory_format=torch.channels_last)
            x = fs.decode(zc)[0].float()
            img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    dt = time.perf_counter() - t0
    if save:
        np.save(save, img)
    return {"size": size, "mode": mode, "dtype": dtype, "tile": tile, "seconds": round(dt, 2),
            "peak_rss_mb": round(_vm("VmHWM") / 2**20), "model_rss_mb": round(rss_model / 2**20)}


def parity(size: int, tile: int) -> dict:
    """float32: tiled decode (tiles of `tile` latent pixels) against the untiled decode, uint8 output."""
    import numpy as np
    import torch

    from engine.families import KL_F8
    from engine.models.first_stage_model import make_first_stage
    from engine.tiling import decode_tiled

    torch.manual_seed(0)
    fs = make_first_stage(KL_F8).eval()
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = ((fs.decode(z)[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        img = np.empty_like(ref)
        decode_tiled(fs, z, tile=tile, out=img)
    d = np.abs(img.astype(np.int16) - ref.astype(np.int16))
    return {"size": size, "tile": tile, "tiles": (size // 8 // tile) ** 2, "max_abs_diff_uint8": int(d.max()),
            "mean_abs_diff_uint8": float(d.mean())}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench tiling")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--untiled-max", type=int, default=2048, help="largest size decoded untiled (bigger: skipped)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--tile", type=int, default=64, help="tile in latent pixels")
    ap.add_argument("--worker", nargs=2, metavar=("SIZE", "MODE"))
    ap.add_argument("--save")
    ap.add_argument("--parity-size", type=int, default=512, help="float32 tiled-vs-untiled check at this size (0: skip)")
    ap.add_argument("--parity-worker", type=int, help=argparse.SUPPRESS)
    a, _ = ap.parse_known_args(argv)
    if a.parity_worker:
        print(json.dumps(parity(a.parity_worker, a.tile // 2)))
        return 0
    if a.worker:
        print(json.dumps(worker(int(a.worker[0]), a.worker[1], a.dtype, a.tile, a.save)))
        return 0
    rows, tmp = [], tempfile.mkdtemp()
    for size in a.sizes:
        for mode in ("untiled", "tiled"):
            if mode == "untiled" and size > a.untiled_max:
                rows.append({"size": size, "mode": mode, "skipped": "does not fit in memory"})
                continue
            save = os.path.join(tmp, f"{size}_{mode}.npy") if size == min(a.sizes) else None
            cmd = [sys.executable, "-m", "bench.tiling", "--worker", str(size), mode, "--dtype", a.dtype,
                   "--tile", str(a.tile)] + (["--save", save] if save else [])
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
            row = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
                {"size": size, "mode": mode, "failed": p.stderr.strip().splitlines()[-1:]}
            rows.append(row)
            print(row, flush=True)
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "tiling.json").write_text(json.dumps({"dtype": a.dtype, "rows": rows, "partial": True}, indent=1))
    first = [os.path.join(tmp, f"{min(a.sizes)}_{m}.npy") for m in ("untiled", "tiled")]
    extra = {}
    if all(os.path.exists(f) for f in first):
        import numpy as np

        u, t = (np.load(f).astype(np.int16) for f in first)
        extra = {"size": min(a.sizes), "max_abs_diff_uint8": int(np.abs(u - t).max()),
                 "mean_abs_diff_uint8": float(np.abs(u - t).mean())}
    if a.parity_size:
        cmd = [sys.executable, "-m", "bench.tiling", "--parity-worker", str(a.parity_size)]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
        if p.returncode == 0:
            extra["float32"] = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"\n{'size':>6} {'mode':>8} {'seconds':>9} {'peak RSS MB':>12}")
    for r in rows:
        note = r.get("skipped") or r.get("failed")
        print(f"{r['size']:>6} {r['mode']:>8} " + (f"{note}" if note else f"{r['seconds']:>9} {r['peak_rss_mb']:>12}"))
    if "size" in extra:
        print(f"tiled vs untiled at {extra['size']} px: max |diff| {extra['max_abs_diff_uint8']}/255, "
              f"mean {extra['mean_abs_diff_uint8']:.3f}/255 ({a.dtype})")
    if "float32" in extra:
        f = extra["float32"]
        print(f"float32 at {f['size']} px, {f['tiles']} tiles: max |diff| {f['max_abs_diff_uint8']}/255, "
              f"mean {f['mean_abs_diff_uint8']:.4f}/255")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tiling.json").write_text(json.dumps({"dtype": a.dtype, "rows": rows, "parity": extra}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
