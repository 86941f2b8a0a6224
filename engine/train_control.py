"""ControlNet training (Zhang, Rao & Agrawala 2023) on a frozen text LDM: the UNet's encoder copied, the zero convs
at zero, the diffusion loss through the frozen UNet with the ControlNet's residuals added. Guide images are made
from the training images by a preprocessor (canny edges by default); half the captions are dropped, as the paper
does, so that the guide alone is followed too."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from engine import train_data as data
from engine.control import prepare
from engine.models.control_model import HINT_FACTOR, ControlNet
from engine.train import RunSpec, Trainer
from engine.train_ldm import MIN_SNR_GAMMA, PoolEncoder, diffusion_loss

CAPTION_DROPOUT = 0.5
RECIPE = {"minutes": 45.0, "batch": 16, "lr": 3e-3, "optimizer": "muon", "seed": 0}  # the bundled world-canny's run


def from_unet(model) -> ControlNet:
    """A ControlNet for the model: its UNet encoder's weights copied, every output conv (and the hint block's last
    conv) zero, so that training starts from the model exactly as it was."""
    unet = model.model.diffusion_model
    net = ControlNet(replace(model.config.unet), hint_channels=3)
    own = unet.state_dict()
    shared = {k: v for k, v in own.items() if k in net.state_dict()}
    net.load_state_dict(shared, strict=False)
    last = net.input_hint_block[-1]
    with torch.no_grad():
        for conv in [*(z[0] for z in net.zero_convs), net.middle_block_out[0], last]:
            conv.weight.zero_()
            conv.bias.zero_()
    return net


def hints(images: np.ndarray, preprocessor: str, side: int, rng: np.random.Generator) -> torch.Tensor:
    """Guide images for training scenes at the ControlNet's size (8x the latent), in [0, 1]; half of the edge maps
    thickened by a pixel, so that scribbled strokes read like edges."""
    import cv2

    out = []
    for img in images:
        h = prepare(img, preprocessor, side, side)
        if preprocessor != "none" and rng.random() < 0.5:
            h = cv2.dilate(h, np.ones((3, 3), np.uint8))
        out.append(h)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


class Controlled:
    """The LDM as diffusion_loss sees it, its UNet given the ControlNet's residuals for the batch's guide images."""

    def __init__(self, model, net: ControlNet):
        self.base, self.net = model, net
        self.alphas_cumprod, self.config = model.alphas_cumprod, model.config

    def model(self, zt, t, context=None, hint=None):
        return self.base.model(zt, t, context=context, control=self.net(zt, hint, t, context))


def train_control(base_path: str | Path, spec: RunSpec, out: Path, preprocessor: str = "canny",
                  min_snr: float = MIN_SNR_GAMMA) -> dict:
    """Trains a ControlNet for the text LDM in `base_path` on the shapes world and writes it (float16, the original
    `control_model.` keys) to `out`."""
    from safetensors.torch import save_file

    from engine.checkpoint import load

    torch.manual_seed(spec.seed)
    model = load(base_path, dtype=torch.float32)
    if model.config.cond.kind != "bert" or model.config.cond.tokenizer != "world":
        raise ValueError("train-control trains on the shapes world for its text model (world-txt2img)")
    model.requires_grad_(False).eval()
    size = model.config.image_size
    side = size // model.config.factor * HINT_FACTOR
    net = from_unet(model).train()
    params = list(net.parameters())
    matrices = [p for n, p in net.named_parameters() if p.ndim >= 2 and not n.startswith("input_blocks.0.")]
    trainer = Trainer(spec, params, ema_module=net, title=f"ControlNet ({preprocessor})", matrices=matrices)
    restored = trainer.resume()
    if restored is not None:
        with torch.no_grad():
            for p, v in zip(params, restored):
                p.copy_(v)
    rng = np.random.default_rng([spec.seed, trainer.step])
    pool = data.world_pool(data.train_seeds(rng, spec.pool_size), size)
    encode = PoolEncoder(model)
    z = torch.cat([encode(pool.images[i:i + 128]) for i in range(0, len(pool), 128)])
    gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + trainer.step)
    wrapped = Controlled(model, net)

    def step_fn(step):
        idx = rng.integers(0, len(pool), spec.batch)
        caps = ["" if rng.random() < CAPTION_DROPOUT else pool.captions[i] for i in idx]
        with torch.no_grad():
            context = model.cond_stage_model.encode(caps)
        kw = {"context": context, "hint": hints(pool.images[idx], preprocessor, side, rng)}
        return diffusion_loss(wrapped, z[idx], kw, gen, min_snr, importance=True)

    def refresh(step):
        k = max(1, len(pool) // 8)
        j = int(rng.integers(0, len(pool) - k + 1))
        new = data.world_pool(data.train_seeds(rng, k), size)
        pool.images[j:j + k], pool.captions[j:j + k] = new.images, new.captions
        z[j:j + k] = encode(new.images)

    trainer.loop(step_fn, lambda: [p.detach().clone() for p in params], refresh)
    trainer.swap_ema()
    info = {"base": Path(base_path).name, "preprocessor": preprocessor, "steps": trainer.step,
            "minutes": round(trainer.elapsed / 60, 2), "batch": spec.batch, "lr": spec.lr, "seed": spec.seed,
            "optimizer": spec.optimizer,
            "threads": torch.get_num_threads(), "caption_dropout": CAPTION_DROPOUT,
            "final_loss": float(np.mean(trainer.losses[-100:])), "data": "shapes world (engine.world, TRAIN_SEEDS)"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"control_model.{k}": v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(out), metadata={"latent_canvas.training": json.dumps(info)})
    (spec.run_dir / "info.json").write_text(json.dumps(info, indent=2))
    return info


def cmd_train_control(args) -> int:
    from engine.train_ldm import _spec, _threads

    _threads(args)
    info = train_control(args.base, _spec(args, Path(args.run_dir)), Path(args.out), args.preprocessor)
    print(json.dumps(info))
    return 0


def add_command(sub) -> None:
    from engine.train_ldm import _common

    p = sub.add_parser("train-control", help="train a ControlNet for the bundled text model on the shapes world")
    _common(p, RECIPE["minutes"])
    p.set_defaults(**{k: v for k, v in RECIPE.items() if k != "minutes"})
    p.add_argument("--base", default="resources/models/world-txt2img.safetensors")
    p.add_argument("--preprocessor", default="canny", choices=["canny"], help="how guide images are made from scenes")
    p.add_argument("--out", default="resources/models/controlnet/world-canny.safetensors")
    p.add_argument("--run-dir", default="runs/defaults/control")
    p.set_defaults(func=cmd_train_control)
