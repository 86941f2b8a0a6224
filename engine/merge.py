"""Checkpoint merging, as A1111's Checkpoint Merger does it: a weighted sum of two models, or one model plus the
difference of two others (for example an inpainting model made from any fine-tune of its base:
sd-1.5-inpainting + (my-model - sd-1.5)). Tensors are read one at a time and streamed to the output file, so memory
stays at a few tensors whatever the models' size."""
from __future__ import annotations

import json
import math
import struct
from contextlib import ExitStack
from pathlib import Path

import torch

from engine.checkpoint import META_KEY, UNET, CheckpointError, detect, read_shapes, read_state_dict

MODES = ("sum", "diff")
INPUT_CONV = UNET + "input_blocks.0.0.weight"
DTYPES = {"float16": (torch.float16, "F16"), "float32": (torch.float32, "F32")}


class MergeError(ValueError):
    """Models that cannot be merged, with a message meant for the user."""


class _Reader:
    """Tensors of a checkpoint by key, read when asked (safetensors) or from its mmapped state dict (.ckpt)."""

    def __init__(self, path: Path, stack: ExitStack):
        self.path = Path(path)
        self.shapes, self.meta = read_shapes(self.path)
        if self.path.suffix == ".safetensors":
            from safetensors.torch import safe_open

            self._file = stack.enter_context(safe_open(str(self.path), framework="pt"))
            self._sd = None
        else:
            self._sd = read_state_dict(self.path)[0]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._file.get_tensor(key) if self._sd is None else self._sd[key]

    def floating(self, key: str) -> bool:
        if self._sd is not None:
            return self._sd[key].is_floating_point()
        return self._file.get_slice(key).get_dtype() in ("F16", "BF16", "F32", "F64")


def _family(reader: _Reader) -> str:
    try:
        return detect(reader.shapes, reader.meta, reader.path.name).family
    except CheckpointError as e:
        raise MergeError(str(e)) from None


def _mixed(key: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, m: float, mode: str) -> torch.Tensor:
    a32, b32 = a.float(), b.float()
    if mode == "sum":
        return a32 * (1 - m) + b32 * m
    diff = (b32 - c.float()) * m
    if a.shape == b.shape:
        return a32 + diff
    out = a32.clone()  # an inpainting UNet's first conv: the difference goes to the latent channels it shares
    out[:, : b.shape[1]] += diff
    return out


def merge(a: str | Path, b: str | Path, out: str | Path, c: str | Path | None = None, multiplier: float = 0.5,
          mode: str = "sum", dtype: str = "float16", progress=None) -> dict:
    """Write A * (1 - m) + B * m (mode 'sum') or A + (B - C) * m ('diff') to `out` (.safetensors), key by key in
    A's layout and config. B (and C) must be of A's family, or of its base family when A is an inpainting model (its
    UNet's extra input channels are kept from A). Returns what was done."""
    if mode not in MODES:
        raise MergeError(f"unknown merge mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "diff" and c is None:
        raise MergeError("'diff' (add difference) needs a third model C: A + (B - C) x multiplier")
    if dtype not in DTYPES:
        raise MergeError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    out = Path(out)
    with ExitStack() as stack:
        try:
            readers = [_Reader(Path(p), stack) for p in (a, b, c) if p is not None]
        except CheckpointError as e:
            raise MergeError(str(e)) from None
        ra, rb, *rc = readers
        families = [_family(r) for r in readers]
        for r, fam in zip(readers[1:], families[1:]):
            if fam != families[0] and fam + "-inpainting" != families[0]:
                raise MergeError(f"{r.path.name} is {fam}, {ra.path.name} is {families[0]}: models of different "
                                 f"families cannot be merged")
        # EMA copies would be loaded in place of the merged weights; integer buffers (position ids) are not needed
        written = [k for k in ra.shapes if not k.startswith("model_ema.") and ra.floating(k)]
        keys = {k for k in written if k in rb.shapes and all(k in r.shapes for r in rc)}
        for k in keys:
            shapes = [r.shapes[k] for r in readers]
            if len(set(shapes[1:])) > 1 or (shapes[0] != shapes[1] and not (mode == "diff" and k == INPUT_CONV)):
                raise MergeError(f"{k} has shapes {', '.join(map(str, shapes))}: these models cannot be merged")
        torch_dtype, code = DTYPES[dtype]
        meta = dict(ra.meta)
        names = {"a": Path(a).name, "b": Path(b).name, "c": Path(c).name if c else None}
        meta["latent_canvas.merge"] = json.dumps({**names, "mode": mode, "multiplier": multiplier})
        entries, offset = {}, 0
        for k in written:
            size = math.prod(ra.shapes[k]) * torch_dtype.itemsize
            entries[k] = {"dtype": code, "shape": list(ra.shapes[k]), "data_offsets": [offset, offset + size]}
            offset += size
        header = json.dumps({"__metadata__": meta, **entries}).encode()
        header += b" " * (-len(header) % 8)
        tmp = Path(str(out) + ".tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            for i, k in enumerate(written):
                t = ra[k]
                if k in keys:
                    t = _mixed(k, t, rb[k], rc[0][k] if rc else None, multiplier, mode)
                f.write(t.to(torch_dtype).contiguous().view(torch.uint8).numpy().tobytes())
                if progress is not None:
                    progress(i + 1, len(entries))
        tmp.replace(out)
    return {"out": str(out), "family": families[0], "mode": mode, "multiplier": multiplier, "tensors": len(entries),
            "merged": len(keys), "config": META_KEY in meta}


def cmd_merge(args) -> int:
    def tell(i: int, n: int) -> None:
        if i == n or i % 50 == 0:
            print(json.dumps({"tensor": i, "of": n}), flush=True)

    info = merge(args.a, args.b, args.out, c=args.c, multiplier=args.multiplier, mode=args.mode, dtype=args.dtype,
                 progress=tell)
    print(json.dumps(info), flush=True)
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("merge", help="merge checkpoints: A x (1 - m) + B x m, or A + (B - C) x m")
    p.add_argument("a", help="model A (its layout and config are kept)")
    p.add_argument("b", help="model B")
    p.add_argument("--c", default=None, help="model C, for --mode diff")
    p.add_argument("--mode", choices=MODES, default="sum", help="sum: weighted sum; diff: add the difference B - C")
    p.add_argument("--multiplier", type=float, default=0.5)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float16")
    p.add_argument("--out", required=True, help="the merged .safetensors")
    p.set_defaults(func=cmd_merge)
