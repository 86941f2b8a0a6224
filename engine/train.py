"""Two-stage LDM training (Rombach et al. 2022): a KL-f4 (or VQ-f4) autoencoder, then latent diffusion models on its latents."""
from __future__ import annotations

import copy
import json
import math
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import AutoencoderConfig, CondConfig, ModelConfig, ScheduleConfig, UNetConfig, config_to_dict
from engine import train_data as data

WORLD_SCHEDULE = ScheduleConfig(timesteps=1000, kind="linear", linear_start=0.0015, linear_end=0.0195)
KINDS = ("txt2img", "layout", "semantic", "inpaint", "sr4", "uncond")
DEFAULT_NAMES = {"txt2img": "world-txt2img", "layout": "world-layout", "semantic": "world-semantic",
                 "inpaint": "world-inpaint", "sr4": "world-sr4"}


def ae_config(ch: int = 32, n_embed: int = 512, resolution: int = 64, kind: str = "kl", z: int = 3,
              factor: int = 4) -> AutoencoderConfig:
    """The small f4 (or f8: the paper's LDM-8) first stage: z latent channels (3 by default), no attention; KL (default)
    or VQ with n_embed codes."""
    mult = {4: (1, 2, 2), 8: (1, 2, 2, 2)}.get(factor)
    if mult is None:
        raise ValueError(f"first-stage factor 4 or 8, not {factor}")
    vq = kind != "kl"
    return AutoencoderConfig(kind="vq" if vq else "kl", embed_dim=z, z_channels=z, double_z=not vq,
                             resolution=resolution, ch=ch, ch_mult=mult, num_res_blocks=1, attn_resolutions=(),
                             attn_type="none", n_embed=n_embed if vq else 0)


def ldm_config(kind: str, first_stage: AutoencoderConfig, scale_factor: float = 1.0, size: int = 64,
               model_channels: int = 32, context_dim: int = 128, n_layer: int = 4, tiny: bool = False,
               parameterization: str = "v", attention: tuple[int, ...] | None = None,
               raster: bool = False, coords: bool = False, channel_mult: tuple[int, ...] | None = None,
               pooled: bool = False) -> ModelConfig:
    """A small world LDM of one kind on the shared first stage (UNet channel_mult (1,2,2), attention at 2 and 4);
    v-prediction by default (Salimans & Ho 2022): at high noise it regresses the image, which a short run learns.
    raster: layout as a hybrid model, the boxes' per-class coverage map concatenated to the latent as well as the box
    tokens through cross-attention; coords: with the raster's box-relative coordinate channels (implies raster);
    pooled (txt2img): the caption's mean token also through the timestep embedding, to every ResBlock."""
    from engine.world import OBJECT_CLASSES, SEMANTIC_CLASSES, VOCAB

    c = first_stage.embed_dim
    raster = raster or coords
    pooled = pooled and kind == "txt2img"
    heads = max(1, context_dim // 32)
    text = CondConfig(kind="bert", embed_dim=context_dim, n_layer=n_layer, n_heads=heads, vocab_size=len(VOCAB) + 4,
                      max_seq_len=24, tokenizer="world", vocab=tuple(VOCAB))
    conds = {
        "txt2img": (text, "crossattn", c),
        "layout": (CondConfig(kind="bert", embed_dim=context_dim, n_layer=n_layer, n_heads=heads, vocab_size=1024,
                              max_seq_len=92, use_tokenizer=False, tokenizer="layout",
                              label_names=tuple(OBJECT_CLASSES), empty_layout_uncond=True, layout_raster=raster,
                              layout_coords=coords),
                   "hybrid" if raster else "crossattn", c + (len(OBJECT_CLASSES) + 2 * coords) * raster),
        "semantic": (CondConfig(kind="spatial", n_stages=2, multiplier=0.5, method="bilinear",
                                in_channels=len(SEMANTIC_CLASSES), out_channels=c, label_names=tuple(SEMANTIC_CLASSES)),
                     "concat", 2 * c),
        "inpaint": (CondConfig(kind="first_stage"), "concat", 2 * c + 1),
        "sr4": (CondConfig(kind="identity"), "concat", c + first_stage.in_channels),
        "uncond": (CondConfig(kind="none"), "none", c),
    }
    cond, key, in_ch = conds[kind]
    xattn = key in ("crossattn", "hybrid")
    unet = UNetConfig(
        in_channels=in_ch, out_channels=c, model_channels=model_channels, num_res_blocks=1,
        attention_resolutions=attention or ((2,) if tiny else (2, 4)),
        channel_mult=tuple(channel_mult or ((1, 2) if tiny else (1, 2, 2))),
        num_head_channels=32, use_spatial_transformer=xattn, context_dim=context_dim if xattn else None,
        image_size=size // first_stage.factor,
        **({"num_classes": "sequential", "adm_in_channels": context_dim} if pooled else {}),
    )
    return ModelConfig(family=f"world-{kind}", unet=unet, first_stage=first_stage, cond=cond, conditioning_key=key,
                       parameterization=parameterization, scale_factor=scale_factor, schedule=WORLD_SCHEDULE, latent_size=size // first_stage.factor,
                       description=f"shapes-world {kind} LDM (Latent Canvas training)",
                       pooled_context=pooled)


# ---------------------------------------------------------------- first stage


def gradient_loss(a: torch.Tensor, b: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Multi-scale image-gradient L1: a cheap edge-sharpness term in place of a learned perceptual loss."""
    total = a.new_zeros(())
    for s in range(scales):
        if s:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        for d in (-1, -2):
            total = total + (a.diff(dim=d) - b.diff(dim=d)).abs().mean()
    return total / scales


def ssim_loss(a: torch.Tensor, b: torch.Tensor, k: int = 5) -> torch.Tensor:
    """1 - SSIM (Wang et al. 2004) with a box window, images in [-1, 1]."""
    a, b = (a + 1) / 2, (b + 1) / 2
    pool = lambda t: F.avg_pool2d(t, k, 1, k // 2, count_include_pad=False)
    mu_a, mu_b = pool(a), pool(b)
    va, vb, cov = pool(a * a) - mu_a**2, pool(b * b) - mu_b**2, pool(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    return 1 - s.mean()


def vq_forward(fs, x: torch.Tensor, beta: float = 0.25):
    """VQ-VAE pass with the straight-through estimator: (reconstruction, codebook + beta * commitment loss, indices)."""
    h = fs.encode(x)
    idx = fs.quantize.indices(h)
    q = fs.quantize.lookup(idx)
    vq = F.mse_loss(q, h.detach()) + beta * F.mse_loss(h, q.detach())
    q = h + (q - h).detach()
    return fs.decoder(fs.post_quant_conv(q)), vq, idx


KL_WEIGHT = 1e-6
EDGE_WEIGHT = 0.5


def binomial_blur(z: torch.Tensor) -> torch.Tensor:
    """3x3 binomial blur per channel, edges replicated."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=z.dtype, device=z.device)
    k = (k[:, None] * k[None, :] / 16).expand(z.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(z, (1, 1, 1, 1), mode="replicate"), k, groups=z.shape[1])


def blur_mix(z: torch.Tensor, amount: float) -> torch.Tensor:
    """Latent smoothing augmentation: half the batch, chosen at random, becomes (1 - a) z + a blur(z) with
    a ~ U(0, amount) per latent, the kind of error an under-trained denoiser makes, so the decoder learns to draw
    sharp shapes from smoothed latents."""
    if amount <= 0:
        return z
    b = z.shape[0]
    a = (torch.rand(b, 1, 1, 1) * amount * (torch.rand(b, 1, 1, 1) < 0.5)).to(z)
    return (1 - a) * z + a * binomial_blur(z)


def kl_forward(fs, x: torch.Tensor, latent_blur: float = 0.0):
    """KL-regularized pass (LDM appendix D.1 KL-reg): (reconstruction from a posterior sample, after `blur_mix` when
    latent_blur > 0, KL summed per image and divided by the image's pixel count, so KL_WEIGHT matches the paper's
    weight on a summed reconstruction loss)."""
    post = fs.encode(x)
    kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).sum(dim=(1, 2, 3)).mean() / x[0].numel()
    return fs.decode(blur_mix(post.sample(), latent_blur)), kl, None


def ae_loss(fs, x: torch.Tensor, edge: float = EDGE_WEIGHT, latent_blur: float = 0.0) -> tuple[torch.Tensor, dict]:
    """L1 + L2 + edge x multi-scale gradient L1 + 1-SSIM, plus VQ codebook/commitment or the KL term (KL-f: the
    decoder sees `blur_mix`ed posterior samples when latent_blur > 0)."""
    if fs.cfg.kind == "kl":
        rec, reg, idx = kl_forward(fs, x, latent_blur)
        reg_w = KL_WEIGHT
    else:
        rec, reg, idx = vq_forward(fs, x)
        reg_w = 1.0
    l1 = (rec - x).abs().mean()
    l2 = F.mse_loss(rec, x)
    grad, ssim = gradient_loss(rec, x), ssim_loss(rec, x)
    loss = l1 + l2 + edge * grad + 0.2 * ssim + reg_w * reg
    return loss, {"l1": l1.item(), "reg": reg.item(), "idx": idx, "rec": rec}


def reconstruct(fs, x: torch.Tensor) -> torch.Tensor:
    """decode(encode(x)): the posterior mode for KL, the quantized code for VQ."""
    h = fs.encode(x)
    return fs.decode(h.mode() if fs.cfg.kind == "kl" else h)


def latents(fs, x: torch.Tensor) -> torch.Tensor:
    """What the LDM diffuses (before scaling): the posterior mode for KL, pre-quantization features for VQ."""
    h = fs.encode(x)
    return h.mode() if fs.cfg.kind == "kl" else h


def restart_dead_codes(fs, h: torch.Tensor, usage: torch.Tensor, rng: torch.Generator) -> int:
    """Codebook restart (Dhariwal et al. 2020, Jukebox): unused codes jump to random current encoder outputs."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    flat = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    pick = torch.randint(0, len(flat), (len(dead),), generator=rng)
    with torch.no_grad():
        fs.quantize.embedding.weight[dead] = flat[pick] + 0.01 * torch.randn(len(dead), flat.shape[1], generator=rng)
    return len(dead)


def psnr_of(fs, images: np.ndarray, batch: int = 64) -> float:
    """Mean PSNR (dB) of first-stage reconstructions of uint8 images."""
    from engine.world.metrics import psnr

    vals = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = data.to_tensor(images[i:i + batch])
            rec = data.to_uint8(reconstruct(fs, x))
            vals += [psnr(a, b) for a, b in zip(images[i:i + batch], rec)]
    return float(np.mean(vals))


# ---------------------------------------------------------------- shared loop machinery


@dataclass
class RunSpec:
    """How long and how a run trains: steps or minutes (whichever ends first), batch, lr, checkpoint cadence."""

    run_dir: Path
    steps: int = 10**9
    minutes: float = 0.0
    batch: int = 32
    lr: float = 4e-4
    seed: int = 0
    save_every_s: float = 120.0
    pool_size: int = 4000
    refresh_every: int = 100
    progress: bool = True
    crop: int = 0
    warmup: int = 100
    ema_decay: float = 0.998
    optimizer: str = "adamw"
    progress_file: str = ""  # a JSON of step, elapsed and planned minutes and loss, rewritten every second


def plot_losses(losses: list[float], path: Path, title: str) -> None:
    """Loss curve (raw and smoothed, log scale) drawn with Pillow."""
    from PIL import Image, ImageDraw

    w, h, m = 640, 360, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((m, 8), f"{title}  ({len(losses)} steps)", fill="black")
    if len(losses) >= 2:
        y = np.log10(np.maximum(np.asarray(losses, np.float64), 1e-8))
        k = max(1, len(y) // 50)
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        lo, hi = float(y.min()), float(y.max()) + 1e-9
        pt = lambda i, v, n: (m + (w - 2 * m) * i / max(1, n - 1), h - m - (h - 2 * m) * (v - lo) / (hi - lo))
        d.line([pt(i, v, len(y)) for i, v in enumerate(y)], fill=(180, 200, 240))
        d.line([pt(i + k - 1, v, len(y)) for i, v in enumerate(smooth)], fill=(20, 60, 200), width=2)
        d.text((4, m - 4), f"{10 ** hi:.3g}", fill="black")
        d.text((4, h - m - 6), f"{10 ** lo:.3g}", fill="black")
    d.rectangle([m, m, w - m, h - m], outline="black")
    img.save(path)


class Trainer:
    """Seeded loop with AdamW (or Muon on `matrices`, spec.optimizer), optional EMA, resumable state in
    run_dir/state.pt, tqdm, loss curve."""

    def __init__(self, spec: RunSpec, params: list, ema_module=None, ema_decay: float | None = None, title: str = "loss",
                 matrices: list | None = None):
        from engine.optim import make_optimizer

        self.spec, self.params, self.title = spec, params, title
        self.opt = make_optimizer(params, spec.lr, spec.optimizer, matrices)
        self.ema_module, self.ema_decay = ema_module, ema_decay or spec.ema_decay
        self.ema = [p.detach().clone() for p in params] if ema_module is not None else None
        self.step, self.losses, self.elapsed, self.plotted = 0, [], 0.0, 0.0
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = spec.run_dir / "state.pt"

    def state(self, module_state: dict) -> dict:
        return {"step": self.step, "losses": self.losses, "elapsed": self.elapsed, "opt": self.opt.state_dict(),
                "ema": self.ema, "module": module_state, "torch_rng": torch.get_rng_state()}

    def save(self, module_state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(self.state(module_state), tmp)
        tmp.replace(self.state_path)
        plot_losses(self.losses, self.spec.run_dir / "loss.png", self.title)

    def resume(self) -> dict | None:
        """Loads run_dir/state.pt if present; returns the module state to restore (or None)."""
        if not self.state_path.exists():
            return None
        st = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.step, self.losses, self.elapsed = st["step"], st["losses"], st["elapsed"]
        self.opt.load_state_dict(st["opt"])
        if st["ema"] is not None and self.ema is not None:
            self.ema = st["ema"]
        torch.set_rng_state(st["torch_rng"])
        return st["module"]

    def lr_at(self, step: int) -> float:
        """Linear warm-up over spec.warmup steps, then cosine decay to a tenth over the step or minute budget."""
        warm = min(1.0, (step + 1) / max(1, self.spec.warmup))
        done = step / self.spec.steps if self.spec.steps < 10**8 else 0.0
        if self.spec.minutes:
            done = max(done, self.elapsed / (60 * self.spec.minutes))
        return self.spec.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done))))

    def update(self, loss: torch.Tensor) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
        self.opt.step()
        if self.ema is not None:
            d = min(self.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - d)
        self.step += 1
        self.losses.append(float(loss.detach()))

    def swap_ema(self) -> None:
        """Copies the EMA weights into the live parameters (what gets saved as the model)."""
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    p.copy_(e)

    def loop(self, step_fn, module_state_fn, on_refresh=None) -> None:
        """Runs step_fn(step) -> loss until spec.steps or spec.minutes (counted across resumes), saving periodically."""
        from tqdm import tqdm

        spec = self.spec
        budget = spec.minutes * 60 if spec.minutes else float("inf")
        bar = tqdm(total=min(spec.steps, 10**7), initial=self.step, desc=self.title, disable=not spec.progress,
                   mininterval=5.0, dynamic_ncols=True)
        t_last, t_start, base = time.time(), time.time(), self.elapsed
        t_told, stop = 0.0, []
        try:  # SIGTERM (the app's Stop): finish this step, save, return
            previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
        except ValueError:  # not the main thread
            previous = None
        while self.step < spec.steps and self.elapsed < budget and not stop:
            if on_refresh is not None and self.step % spec.refresh_every == 0 and self.step:
                on_refresh(self.step)
            loss = step_fn(self.step)
            self.update(loss)
            self.elapsed = base + time.time() - t_start
            bar.update(1)
            if self.step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(self.losses[-50:]):.4f}", min=f"{self.elapsed / 60:.1f}")
            if time.time() - t_last > spec.save_every_s:
                self.save(module_state_fn())
                t_last = time.time()
            if spec.progress_file and time.time() - t_told > 1.0:
                self.tell()
                t_told = time.time()
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        self.save(module_state_fn())
        if spec.progress_file:
            self.tell()

    def tell(self) -> None:
        """Step, elapsed and planned minutes, step budget and recent loss into spec.progress_file (atomically)."""
        path = Path(self.spec.progress_file)
        done = dict(step=self.step, steps=self.spec.steps if self.spec.steps < 10**8 else 0,
                    elapsed_min=self.elapsed / 60, minutes=self.spec.minutes,
                    loss=float(np.mean(self.losses[-50:])) if self.losses else None)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(done))
        tmp.replace(path)
        if time.time() - self.plotted > 10.0:  # the app shows the curve as it grows
            plot_losses(self.losses, self.spec.run_dir / "loss.png", self.title)
            self.plotted = time.time()


# ---------------------------------------------------------------- first stage training


def train_ae(spec: RunSpec, cfg: AutoencoderConfig | None = None, images_dir: str | None = None,
             size: int = 64, eval_n: int = 256, edge: float = EDGE_WEIGHT, latent_blur: float = 0.0,
             adversarial: float = 0.0, disc_start: int = 0, disc_width: int = 64) -> dict:
    """Trains the KL or VQ first stage (edge: weight of the gradient term in `ae_loss`; latent_blur: `blur_mix`'s
    amount, KL only; adversarial: weight of the patch-adversarial term from step disc_start, its discriminator
    disc_width wide, `engine.adversarial`);
    writes run_dir/ae.pt ({config, state_dict, scale_factor, psnr}) and returns it."""
    from engine.adversarial import Adversary, layers_for, split_state
    from engine.models.first_stage_model import make_first_stage
    from engine.world import EVAL_SEEDS

    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    cfg = cfg or ae_config(resolution=size)
    fs = make_first_stage(cfg)
    vq = cfg.kind == "vq"
    trainer = Trainer(spec, list(fs.parameters()), title=f"{cfg.kind}-f{2 ** (len(cfg.ch_mult) - 1)} autoencoder")
    adv = None
    if adversarial > 0:
        side = spec.crop if 0 < spec.crop < size else size
        adv = Adversary(adversarial, disc_start, lr=spec.lr / 10, ndf=disc_width, n_layers=layers_for(side),
                        in_channels=cfg.in_channels)
    restored = trainer.resume()
    if restored is not None:
        restored, adv_state = split_state(restored)
        fs.load_state_dict(restored)
        if adv is not None and adv_state:
            adv.load_state_dict(adv_state)
    rng = np.random.default_rng([spec.seed, trainer.step])
    if images_dir:
        pool = data.folder_pool(images_dir, size)
        held = pool.images[: max(1, len(pool) // 10)]
    else:
        pool = data.world_pool(data.train_seeds(rng, spec.pool_size), size)
        held = data.world_pool(range(EVAL_SEEDS.start, EVAL_SEEDS.start + eval_n), size).images
    usage = torch.zeros(max(cfg.n_embed, 1), dtype=torch.long)
    gen = torch.Generator().manual_seed(spec.seed)
    if restored is None and vq:
        with torch.no_grad():
            h = fs.encode(data.to_tensor(pool.images[:64]))
        restart_dead_codes(fs, h, usage, gen)

    def refresh(step):
        if not images_dir:
            k = len(pool) // 8
            new = data.world_pool(data.train_seeds(rng, k), size)
            j = rng.integers(0, len(pool) - k)
            pool.images[j:j + k] = new.images

    def step_fn(step):
        nonlocal usage
        imgs = pool.images[rng.integers(0, len(pool), spec.batch)]
        if spec.crop and spec.crop < imgs.shape[1]:
            y, x0 = rng.integers(0, imgs.shape[1] - spec.crop + 1, 2)
            imgs = imgs[:, y:y + spec.crop, x0:x0 + spec.crop]
        x = data.to_tensor(imgs)
        loss, info = ae_loss(fs, x, edge, latent_blur)
        if adv is not None:
            adv.discriminator_step(x, info["rec"], step)
            loss = loss + adv.generator_term(info["rec"], loss, fs.decoder.conv_out.weight, step)
        if vq:
            usage += torch.bincount(info["idx"].flatten(), minlength=cfg.n_embed)
            if step % 50 == 49 and step < 0.8 * min(spec.steps, 10**6):
                with torch.no_grad():
                    restart_dead_codes(fs, fs.encode(x), usage, gen)
                usage.zero_()
        return loss

    def module_state():
        return fs.state_dict() | (adv.state_dict() if adv is not None else {})

    fs.train()
    trainer.loop(step_fn, module_state, refresh)
    fs.eval()
    with torch.no_grad():
        z = torch.cat([latents(fs, data.to_tensor(held[i:i + 64])) for i in range(0, len(held), 64)])
        used = int(fs.quantize.indices(z).unique().numel()) if vq else 0
    out = {"config": config_to_dict_ae(cfg), "state_dict": fs.state_dict(), "scale_factor": float(1 / z.std()),
           "psnr": psnr_of(fs, held), "steps": trainer.step, "minutes": trainer.elapsed / 60, "codes_used": used,
           "edge": edge, "latent_blur": latent_blur, "adversarial": adversarial, "disc_start": disc_start,
           "disc_width": disc_width}
    torch.save(out, spec.run_dir / "ae.pt")
    (spec.run_dir / "ae.json").write_text(json.dumps({k: v for k, v in out.items() if k != "state_dict"}, indent=2))
    return out


def finetune_decoder(spec: RunSpec, ae_path, grad_weight: float = 1.0, noise: float = 0.05, size: int = 64,
                     eval_n: int = 256) -> dict:
    """Decoder-only fine-tuning of a trained first stage on its frozen encoder's posterior mode (what LDMs diffuse and
    sample), with a heavier edge term and latent noise for robustness to imperfect samples. The encoder and
    scale_factor stay bit-identical, so LDMs trained on ae_path pair with the result unchanged."""
    from engine.models.first_stage_model import make_first_stage
    from engine.world import EVAL_SEEDS

    torch.manual_seed(spec.seed)
    cfg, state, scale = load_ae(ae_path)
    fs = make_first_stage(cfg)
    fs.load_state_dict(state)
    fs.requires_grad_(False)
    params = [*fs.decoder.parameters(), *fs.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    trainer = Trainer(spec, params, title="decoder fine-tune")
    restored = trainer.resume()
    if restored is not None:
        fs.load_state_dict(restored)
    rng = np.random.default_rng([spec.seed, trainer.step])
    pool = data.world_pool(data.train_seeds(rng, spec.pool_size), size)
    held = data.world_pool(range(EVAL_SEEDS.start, EVAL_SEEDS.start + eval_n), size).images
    gen = torch.Generator().manual_seed(spec.seed + trainer.step)

    def refresh(step):
        k = len(pool) // 8
        j = rng.integers(0, len(pool) - k)
        pool.images[j:j + k] = data.world_pool(data.train_seeds(rng, k), size).images

    def step_fn(step):
        x = data.to_tensor(pool.images[rng.integers(0, len(pool), spec.batch)])
        with torch.no_grad():
            z = latents(fs, x)
            z = z + noise * z.std() * torch.randn(z.shape, generator=gen)
        rec = fs.decode(z)
        return ((rec - x).abs().mean() + F.mse_loss(rec, x) + grad_weight * gradient_loss(rec, x)
                + 0.2 * ssim_loss(rec, x))

    fs.decoder.train()
    trainer.loop(step_fn, fs.state_dict, refresh)
    fs.eval()
    out = {"config": config_to_dict_ae(cfg), "state_dict": fs.state_dict(), "scale_factor": scale,
           "psnr": psnr_of(fs, held), "steps": trainer.step, "minutes": trainer.elapsed / 60, "codes_used": 0,
           "finetuned_from": str(ae_path)}
    torch.save(out, spec.run_dir / "ae.pt")
    (spec.run_dir / "ae.json").write_text(json.dumps({k: v for k, v in out.items() if k != "state_dict"}, indent=2))
    return out


def config_to_dict_ae(cfg: AutoencoderConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def load_ae(path) -> tuple[AutoencoderConfig, dict, float]:
    st = torch.load(path, map_location="cpu", weights_only=True)
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in st["config"].items()}
    return AutoencoderConfig(**d), st["state_dict"], st["scale_factor"]


from engine.train_ldm import add_commands, train_ldm  # noqa: E402  (CLI and second stage live beside this module)
