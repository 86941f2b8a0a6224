"""Second stage: eps-prediction latent diffusion on a frozen first stage (Rombach et al. 2022), plus the training CLI."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine import train_data as data
from engine.grounding import CrossAttentionMaps, grounding_loss, token_targets
from engine.schedules import noised
from engine.train import RunSpec, Trainer, ae_config, ldm_config, load_ae, train_ae

TEXT_DROPOUT = 0.1
REMOVAL_SHARE = 0.4


class PoolEncoder:
    """The frozen first stage's encoder for training scenes, run through a channels_last copy: the same latents to
    float rounding, about 1.5x faster on a CPU, where re-encoding refreshed pools took a fifth of a txt2img run."""

    def __init__(self, model):
        from engine.models.cond_stage_model import FirstStageEncoder

        fs = copy.deepcopy(model.first_stage_model).eval().requires_grad_(False)
        self.enc, self.scale = FirstStageEncoder(fs.to(memory_format=torch.channels_last)), model.scale_factor

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Unscaled first-stage features of images in [-1, 1] (KL: the posterior mode; VQ: before quantizing)."""
        return self.enc.encode(x.contiguous(memory_format=torch.channels_last)).contiguous()

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """encode_first_stage of uint8 images."""
        return self.features(data.to_tensor(images)) * self.scale


class Batches:
    """Training batches for one LDM kind from a refreshable pool: latents, concat/context inputs, dropout; grounded
    (txt2img on the world): each batch's `token_targets` kept in .targets for the grounding loss."""

    def __init__(self, model, kind: str, pool: data.Pool, rng: np.random.Generator, world: bool,
                 grounded: bool = False, objects: tuple[float, ...] | None = None, outpaint: float = 0.0):
        self.model, self.kind, self.pool, self.rng, self.world = model, kind, pool, rng, world
        self.objects, self.outpaint = objects, outpaint
        self.grounded, self.targets = grounded, None
        self.fs = model.first_stage_model
        self.encoder = PoolEncoder(model)
        self.tok = data.layout_tokenizer(model.config.cond.vocab_size) if kind == "layout" else None
        self.z = self.encode(pool.images)
        self.tokens = self.layout_tokens(pool.boxes) if kind == "layout" else None
        self.empty = self.tok.encode([]) if kind == "layout" else None
        self.removal = self.removal_pool(len(pool) // 4) if kind == "inpaint" and world else None

    def encode(self, images: np.ndarray, chunk: int = 128) -> torch.Tensor:
        return torch.cat([self.encoder(images[i:i + chunk]) for i in range(0, len(images), chunk)])

    def layout_tokens(self, boxes) -> torch.Tensor:
        return torch.stack([self.tok.encode(b[: self.tok.max_objects]) for b in boxes])

    @torch.no_grad()
    def inpaint_cond(self, images: np.ndarray, masks: np.ndarray) -> torch.Tensor:
        """LDM inpainting_big conditioning: VQ features of the image with the hole set to -1, plus the mask in [-1, 1]."""
        x = data.to_tensor(images)
        m = torch.from_numpy(masks.astype(np.float32))[:, None]
        cond = self.model.cond_stage_model
        c = (self.encoder.features if getattr(cond, "first_stage", None) is self.fs else cond.encode)((1 - m) * x - m)
        return torch.cat([c, F.interpolate(m * 2 - 1, size=c.shape[-2:])], dim=1)

    def removal_pool(self, n: int) -> dict:
        src, masks, tgt = data.removal_pairs(self.rng, n, self.pool.images.shape[1])
        return {"z": self.encode(tgt), "c": self.inpaint_cond(src, masks)}

    def refresh(self, step: int) -> None:
        """Replace an eighth of the pool with newly rendered training scenes."""
        if not self.world:
            return
        k = max(1, len(self.pool) // 8)
        j = int(self.rng.integers(0, len(self.pool) - k + 1))
        low = self.pool.low.shape[1] if self.pool.low is not None else 0
        new = data.world_pool(data.train_seeds(self.rng, k, self.objects), self.pool.images.shape[1], low)
        self.pool.images[j:j + k] = new.images
        if self.pool.labels is not None:
            self.pool.labels[j:j + k] = new.labels
        if low:
            self.pool.low[j:j + k] = new.low
        self.pool.captions[j:j + k] = new.captions
        self.pool.boxes[j:j + k] = new.boxes
        self.z[j:j + k] = self.encode(new.images)
        if self.tokens is not None:
            self.tokens[j:j + k] = self.layout_tokens(new.boxes)
        if self.removal is not None and step % (4 * 100) == 0:
            self.removal = self.removal_pool(len(self.removal["z"]))

    def layout_kw(self, tokens: torch.Tensor, empty: torch.Tensor, rasters: list | None) -> dict:
        """Context (and a hybrid model's box map) for layout token rows; with empty-layout dropout a tenth of them
        become the empty layout with an empty map, the unconditional input of classifier-free guidance."""
        drop = torch.zeros(len(tokens), dtype=torch.bool)
        if self.model.config.cond.empty_layout_uncond:
            drop = torch.from_numpy(self.rng.random(len(tokens)) < TEXT_DROPOUT)
        kw = {"context": self.model.cond_stage_model.encode(torch.where(drop[:, None], empty, tokens))}
        if rasters is not None:
            kw["concat"] = torch.where(drop[:, None, None, None], 0.0, torch.stack(rasters))
        return kw

    def __call__(self, n: int) -> tuple[torch.Tensor, dict]:
        """(clean latents z0, UNet keyword inputs) for n samples; gradients flow into the conditioner."""
        idx = self.rng.integers(0, len(self.pool), n)
        z0, kw = self.z[idx], {}
        cond = self.model.cond_stage_model
        if self.kind == "txt2img":
            caps = ["" if self.rng.random() < TEXT_DROPOUT else self.pool.captions[i] for i in idx]  # CFG (Ho & Salimans)
            kw["context"] = cond.encode(caps)
            if self.grounded:
                self.targets = token_targets(caps, [self.pool.boxes[i] for i in idx], self.pool.labels[idx])
        elif self.kind == "layout":
            h, w = z0.shape[-2:]
            rasters = None
            if self.model.config.cond.layout_raster:
                coords = self.model.config.cond.layout_coords
                rasters = [self.tok.raster(self.pool.boxes[i][: self.tok.max_objects], h, w, coords) for i in idx]
            kw = self.layout_kw(self.tokens[idx], self.empty.expand(n, -1), rasters)
        elif self.kind == "semantic":
            kw["concat"] = cond.encode(data.one_hot_labels(self.pool.labels[idx]))
        elif self.kind == "sr4":
            kw["concat"] = data.to_tensor(self.pool.low[idx])
        elif self.kind == "inpaint":
            n_rem = int(round(REMOVAL_SHARE * n)) if self.removal is not None else 0
            masks = data.random_masks(self.rng, n - n_rem, self.pool.images.shape[1], self.outpaint)
            c = self.inpaint_cond(self.pool.images[idx[: n - n_rem]], masks)
            z0 = z0[: n - n_rem]
            if n_rem:
                r = self.rng.integers(0, len(self.removal["z"]), n_rem)
                z0, c = torch.cat([z0, self.removal["z"][r]]), torch.cat([c, self.removal["c"][r]])
            kw["concat"] = c
        return z0, kw


class ScaledScenes:
    """Multi-scale semantic or layout batches for convolutional sampling (Rombach et al. 2022, sec. 4.3.2): window x
    window latents of scenes rendered at each of `sizes` px (for a 64 px model: whole 128 px scenes, random windows of
    256 px ones), so it sees objects up to 4x their training size, larger than its view, and has to keep one colour per
    object. Layout windows keep the scene's boxes with the window as crop tokens, as tiled sampling gives them."""

    def __init__(self, batches: Batches, sizes: tuple[int, ...] = (128, 256), pool_size: int = 256, window: int = 32):
        self.b, self.rng, self.sizes, self.window = batches, batches.rng, sizes, window
        self.f = batches.model.config.factor
        self.sources, self.z = {}, {}  # per size: label maps (semantic) or box lists (layout)
        for s in sizes:
            self.sources[s], self.z[s] = self.render(s, pool_size)

    @torch.no_grad()
    def render(self, size: int, n: int) -> tuple[np.ndarray | list, torch.Tensor]:
        pool = data.world_pool(data.train_seeds(self.rng, n, self.b.objects), size)
        z = self.b.encode(pool.images, 16)
        return (pool.boxes if self.b.kind == "layout" else pool.labels), z

    def refresh(self, step: int) -> None:
        """Replace an eighth of each size's pool with newly rendered scenes."""
        for s in self.sizes:
            k = max(1, len(self.z[s]) // 8)
            j = int(self.rng.integers(0, len(self.z[s]) - k + 1))
            self.sources[s][j:j + k], self.z[s][j:j + k] = self.render(s, k)

    def __call__(self, n: int) -> tuple[torch.Tensor, dict]:
        """(z0, UNet keyword inputs) for n random windows, each from a scene of a random size in `sizes`."""
        w, f = self.window, self.f
        zs, parts = [], []
        for s in self.rng.choice(self.sizes, n):
            i = int(self.rng.integers(0, len(self.z[s])))
            side = self.z[s].shape[-1]
            y, x = (int(v) for v in self.rng.integers(0, side - w + 1, 2))
            zs.append(self.z[s][i, :, y:y + w, x:x + w])
            if self.b.kind == "layout":
                parts.append(window_layout(self.b, self.sources[s][i], side, y, x, w))
            else:
                parts.append(self.sources[s][i, f * y:f * (y + w), f * x:f * (x + w)])
        if self.b.kind == "layout":
            tokens, empty, rasters = zip(*parts)
            rasters = list(rasters) if self.b.model.config.cond.layout_raster else None
            return torch.stack(zs), self.b.layout_kw(torch.stack(tokens), torch.stack(empty), rasters)
        return torch.stack(zs), {"concat": self.b.model.cond_stage_model.encode(data.one_hot_labels(np.stack(parts)))}


def window_layout(batches: Batches, boxes: list, side: int, y: int, x: int, w: int):
    """A w x w latent window at (y, x) of a side x side scene: its box tokens with the window as crop tokens, the
    empty layout with the same crop tokens, and the window of the scene's box map."""
    tok = batches.tok
    boxes = boxes[: tok.max_objects]
    window = (x / side, y / side, (x + w) / side, (y + w) / side)
    return (tok.with_crop(tok.encode(boxes), window), tok.with_crop(batches.empty, window),
            tok.raster(boxes, side, side, batches.model.config.cond.layout_coords)[:, y:y + w, x:x + w])


MIN_SNR_GAMMA = 5.0


def loss_weights(model, min_snr: float = MIN_SNR_GAMMA) -> torch.Tensor:
    """Per-timestep weight of the eps or v MSE: Min-SNR (Hang et al. 2023), min(SNR, gamma)/SNR for eps and
    /(SNR+1) for v; all ones for min_snr=0 (the plain loss)."""
    ac = model.alphas_cumprod.float()
    if not min_snr:
        return torch.ones_like(ac)
    snr = ac / (1 - ac)
    return snr.clamp(max=min_snr) / (snr + 1 if model.config.parameterization == "v" else snr)


def diffusion_loss(model, z0: torch.Tensor, kw: dict, gen: torch.Generator | None = None,
                   min_snr: float = MIN_SNR_GAMMA, importance: bool = False) -> torch.Tensor:
    """DDPM MSE on the eps or v target (Ho et al. 2020) weighted by loss_weights, at a uniformly drawn timestep; or,
    importance=True, at a timestep drawn in proportion to its weight with the mean weight on every sample (the same
    objective in expectation, without spending samples where the weight is near zero)."""
    w = loss_weights(model, min_snr)
    n = z0.shape[0]
    if importance:
        t = torch.multinomial(w / w.sum(), n, replacement=True, generator=gen)
        scale = w.mean().expand(n)
    else:
        t = torch.randint(0, model.config.schedule.timesteps, (n,), generator=gen)
        scale = w[t]
    eps = torch.randn(z0.shape, generator=gen)
    zt, target = noised(model.alphas_cumprod, model.config.parameterization, z0, t, eps)
    err = (model.model(zt, t, **kw) - target).pow(2).mean(dim=(1, 2, 3))
    return (err * scale).mean()


def build_model(kind: str, ae_path, size: int = 64, vocab: tuple[str, ...] | None = None, **cfg_kw):
    """LatentDiffusion of one kind with the shared, frozen first stage loaded from ae.pt."""
    from dataclasses import replace

    from engine.models.latent_diffusion import LatentDiffusion

    fs_cfg, fs_state, scale = load_ae(ae_path)
    cfg = ldm_config(kind, fs_cfg, scale_factor=scale, size=size, **cfg_kw)
    if vocab is not None and kind == "txt2img":
        cfg = replace(cfg, cond=replace(cfg.cond, vocab=tuple(vocab), vocab_size=len(vocab) + 4))
    model = LatentDiffusion(cfg)
    model.first_stage_model.load_state_dict(fs_state)
    model.first_stage_model.requires_grad_(False).eval()
    return model


def init_conditioner(model, kind: str, token_std: float = 1.0, pos_std: float = 0.5) -> None:
    """Start the text/layout encoder with token and position embeddings at the scale of its blocks' outputs (the
    x-transformers 0.02 init lets the first, nearly uniform attention over mostly padding wash every token out); for
    layout tokens, which share ids between 24 classes and 32x32 grid cells, 2-D Fourier features of each cell's
    coordinates (nearby cells start alike) and colour + shape sums for the class ids."""
    tr = model.cond_stage_model.transformer
    g = torch.Generator().manual_seed(0)
    weight = tr.token_emb.weight
    with torch.no_grad():
        tr.pos_emb.emb.weight.normal_(0, pos_std, generator=g)
        weight.normal_(0, token_std, generator=g)
        if kind != "layout":
            return
        tok = data.layout_tokenizer(model.config.cond.vocab_size)
        n, dim = tok.sections, weight.shape[1]
        ids = torch.arange(tok.n_tokens, dtype=torch.float32)
        xy = torch.stack([ids % n, torch.div(ids, n, rounding_mode="floor")], 1) / (n - 1)
        ang = xy[:, :, None] * torch.pi * torch.logspace(0, np.log2(n / 2), dim // 4, base=2.0)
        feats = torch.cat([ang.sin(), ang.cos()], 2).flatten(1)
        weight[:, : feats.shape[1]] = token_std * np.sqrt(2) * feats
        words = sorted({w for name in tok.class_names for w in name.split()})
        vec = dict(zip(words, torch.randn(len(words), dim, generator=g) * token_std / np.sqrt(2)))
        for i, name in enumerate(tok.class_names):
            weight[i] = sum(vec[w] for w in name.split())


def warm_start(model, path) -> dict:
    """Fine-tuning from another LDM file (as SD's inpainting and depth models start from SD): every UNet tensor is
    copied from `path`, the first convolution's input channels as far as both have them (concat inputs come after
    the latent), and every conditioner tensor whose name and shape match (token embeddings only for the same
    vocabulary); the rest keep their fresh init."""
    from engine.checkpoint import META_KEY, read_state_dict

    src, meta = read_state_dict(path)
    src_vocab = json.loads(meta.get(META_KEY, "{}")).get("cond", {}).get("vocab")
    if src_vocab is not None and tuple(src_vocab) != tuple(model.config.cond.vocab):
        src = {k: v for k, v in src.items() if not k.endswith(("token_emb.weight", "to_logits.weight", "to_logits.bias"))}
    counts = {"unet": 0, "unet_sliced": [], "cond": 0, "cond_fresh": []}
    with torch.no_grad():
        for name, p in model.model.diffusion_model.named_parameters():
            v = src.get(f"model.diffusion_model.{name}")
            if v is not None and v.shape == p.shape:
                p.copy_(v)
                counts["unet"] += 1
            elif v is not None and name == "input_blocks.0.0.weight" and v.shape[0] == p.shape[0] \
                    and v.shape[2:] == p.shape[2:] and v.shape[1] >= p.shape[1]:
                p.copy_(v[:, : p.shape[1]])
                counts["unet_sliced"].append(name)
            else:
                raise ValueError(f"warm start: {path} has no UNet tensor {name} of shape {tuple(p.shape)} "
                                 f"({'missing' if v is None else tuple(v.shape)}); it needs the same UNet config")
        cond = getattr(model, "_modules", {}).get("cond_stage_model")
        for name, p in (cond.named_parameters() if cond is not None else ()):
            v = src.get(f"cond_stage_model.{name}")
            if v is not None and v.shape == p.shape:
                p.copy_(v)
                counts["cond"] += 1
            else:
                counts["cond_fresh"].append(name)
    return {"from": Path(path).name, **counts}


def trained_modules(model) -> list:
    """The UNet wrapper and, where the model has a registered one, its conditioner."""
    cond = getattr(model, "_modules", {}).get("cond_stage_model")
    return [model.model] + ([cond] if cond is not None else [])


def trainable(model) -> list:
    return [p for m in trained_modules(model) for p in m.parameters()]


def matrices(model) -> list:
    """The weights Muon updates: every UNet and encoder matrix or convolution but the first and last convolutions and
    the embeddings (Jordan et al. 2024 leave input and output layers to AdamW)."""
    skip = ("input_blocks.0.0.weight", "out.2.weight", "token_emb.weight", "pos_emb.emb.weight", "to_logits.weight")
    return [p for m in trained_modules(model) for n, p in m.named_parameters() if p.ndim >= 2 and not n.endswith(skip)]


def train_ldm(kind: str, spec: RunSpec, ae_path, out: Path, images_dir: str | None = None,
              captions: str | None = None, size: int = 64, multiscale: float = 0.0, min_snr: float = MIN_SNR_GAMMA,
              importance: bool = False, init_from: str | Path | None = None, grounding: float = 0.0,
              objects: tuple[float, ...] | None = None, outpaint: float = 0.0, **cfg_kw) -> dict:
    """Trains one LDM (UNet + conditioner, EMA) and writes the EMA weights as float16 safetensors to `out`.
    multiscale: share of each semantic or layout world batch drawn from ScaledScenes (2x/4x larger scenes);
    min_snr: the Min-SNR gamma of diffusion_loss (0: the plain eps or v loss); importance: its timestep sampling;
    init_from: an LDM file to fine-tune from (`warm_start`) instead of starting from random weights;
    grounding: weight of the token grounding loss (txt2img on the world: `engine.grounding`, TokenCompose);
    objects: the world's training scenes weighted by object count (`train_data.train_seeds`);
    outpaint: inpainting's share of random masks that are outpainting bands along the image's sides."""
    from engine.checkpoint import save
    from engine.tokenizers import WorldTokenizer

    if grounding and (kind != "txt2img" or images_dir):
        raise ValueError("the grounding loss needs the world's object masks: txt2img on the shapes world only")
    if objects and images_dir:
        raise ValueError("objects weights the shapes world's scenes by object count; an image folder has none")
    torch.manual_seed(spec.seed)
    low = size // 4 if kind == "sr4" else 0
    pool_rng = np.random.default_rng(spec.seed)
    if images_dir:
        pool = data.folder_pool(images_dir, size, captions, low)
        if kind == "txt2img" and not pool.captions:
            raise ValueError("txt2img on an image folder needs --captions captions.json")
        vocab = tuple(WorldTokenizer.from_texts(pool.captions).vocab) if kind == "txt2img" else None
    else:
        pool = data.world_pool(data.train_seeds(pool_rng, spec.pool_size, objects), size, low)
        vocab = None
    model = build_model(kind, ae_path, size, vocab, **cfg_kw)
    params = trainable(model)
    trainer = Trainer(spec, params, ema_module=model, title=f"{model.config.family} LDM", matrices=matrices(model))
    restored = trainer.resume()
    if restored is not None:
        with torch.no_grad():
            for p, v in zip(params, restored):
                p.copy_(v)
    else:
        if kind in ("txt2img", "layout"):
            init_conditioner(model, kind)
        if init_from:
            spec.run_dir.mkdir(parents=True, exist_ok=True)
            (spec.run_dir / "warm_start.json").write_text(json.dumps(warm_start(model, init_from)))
        trainer.ema = [p.detach().clone() for p in params]
    rng = np.random.default_rng([spec.seed, trainer.step])
    batches = Batches(model, kind, pool, rng, world=images_dir is None, grounded=grounding > 0, objects=objects,
                      outpaint=outpaint)
    gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + trainer.step)
    model.model.train()

    scaled = None
    if multiscale and kind in ("semantic", "layout") and images_dir is None:
        window, pool_n = 2 * size // model.config.factor, min(256, max(4, spec.pool_size // 8))
        scaled = ScaledScenes(batches, (2 * size, 4 * size), pool_n, window)
    n_big = int(round(multiscale * spec.batch)) if scaled else 0

    def step_fn(step):
        if batches.grounded:
            with CrossAttentionMaps(model.model) as maps:
                loss = diffusion_loss(model, *batches(spec.batch), gen, min_snr, importance)
            return loss + grounding * grounding_loss(maps, *batches.targets)
        parts = [(batches, spec.batch - n_big), (scaled, n_big)]
        return sum(diffusion_loss(model, *source(n), gen, min_snr, importance) * n for source, n in parts if n) / spec.batch

    def refresh(step):
        batches.refresh(step)
        if scaled:
            scaled.refresh(step)

    trainer.loop(step_fn, lambda: [p.detach().clone() for p in params], refresh)
    trainer.swap_ema()
    model.eval()
    n_params = sum(p.numel() for p in params)
    info = {"kind": kind, "steps": trainer.step, "minutes": round(trainer.elapsed / 60, 2), "batch": spec.batch,
            "lr": spec.lr, "optimizer": spec.optimizer, "seed": spec.seed, "min_snr": min_snr, "importance": importance,
            "threads": torch.get_num_threads(),
            "params_trained": n_params,
            "final_loss": float(np.mean(trainer.losses[-100:])),
            "data": images_dir or "shapes world (engine.world, TRAIN_SEEDS)"}
    if grounding:
        info["grounding"] = grounding
    if objects:
        info["objects"] = [float(v) for v in objects]
    if outpaint:
        info["outpaint"] = outpaint
    if init_from:
        info["init_from"] = json.loads((spec.run_dir / "warm_start.json").read_text())
    if n_big:
        info["multiscale"] = {"share": n_big / spec.batch, "sizes": list(scaled.sizes), "window_latent": scaled.window}
    facts = Path(ae_path).with_name("ae.json")
    if facts.exists():
        info["first_stage"] = {k: v for k, v in json.loads(facts.read_text()).items() if k != "config"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save(model, out, extra_metadata={"latent_canvas.training": json.dumps(info)}, dtype=torch.float16)
    (spec.run_dir / "info.json").write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------- CLI


def _spec(args, run_dir) -> RunSpec:
    return RunSpec(Path(run_dir), steps=args.steps or 10**9, minutes=args.minutes or 0.0, batch=args.batch,
                   lr=args.lr, seed=args.seed, pool_size=args.pool, progress=not args.no_progress, crop=args.crop,
                   optimizer=args.optimizer, progress_file=args.progress_file)


def _threads(args) -> None:
    torch.set_num_threads(max(1, args.threads))


def cmd_train_ae(args) -> int:
    _threads(args)
    run = Path(args.run_dir)
    cfg = ae_config(args.ch, args.n_embed, args.size, args.ae_kind, z=args.z, factor=args.factor)
    out = train_ae(_spec(args, run), cfg, args.images, args.size, edge=args.edge, latent_blur=args.latent_blur,
                   adversarial=args.adversarial, disc_start=args.disc_start, disc_width=args.disc_width)
    print(json.dumps({k: v for k, v in out.items() if k not in ("state_dict", "config")}))
    return 0


def cmd_train_ldm(args) -> int:
    _threads(args)
    kind = args.kind or ("txt2img" if args.captions else "uncond" if args.images else "txt2img")
    out = args.out or f"runs/{kind}.safetensors"
    run = Path(args.run_dir or f"runs/ldm-{kind}")
    info = train_ldm(kind, _spec(args, run), args.ae, Path(out), args.images, args.captions, args.size,
                     multiscale=args.multiscale, min_snr=args.min_snr, importance=args.importance,
                     raster=args.raster, coords=args.coords, pooled=args.pooled, init_from=args.init_from,
                     grounding=args.grounding, objects=_weights(args.objects), outpaint=args.outpaint,
                     **_unet_shape(args))
    print(json.dumps(info))
    return 0


def _weights(text: str | None) -> tuple[float, ...] | None:
    return tuple(float(v) for v in text.split(",")) if text else None


def _unet_shape(args) -> dict:
    """ldm_config's model_channels / channel_mult from --width / --channel-mult, only those given."""
    shape = {"model_channels": args.width} if args.width else {}
    if args.channel_mult:
        shape["channel_mult"] = tuple(int(m) for m in args.channel_mult.split(","))
    return shape


def _common(p, minutes: float) -> None:
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: no step limit)")
    p.add_argument("--minutes", type=float, default=minutes, help="stop after this much training time")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="peak lr (100-step warm-up, cosine decay to a tenth)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"],
                   help="muon: Muon on the weight matrices (LDM runs), AdamW on the rest, at the same lr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=3000, help="rendered scenes held at once (an eighth refreshed often)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared, oversubscribed CPU")
    p.add_argument("--crop", type=int, default=0, help="train the autoencoder on random crops of this size")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--progress-file", default="", help="keep a JSON of step, minutes and loss there (for the app)")
    p.add_argument("--ae-kind", default="kl", choices=["kl", "vq"], help="first stage: KL-f4 (default) or VQ-f4")


def add_commands(sub) -> None:
    """Registers train-ae, train-ldm, train-defaults, train-planner and eval on the `python -m engine` parser."""
    from engine.train_defaults import FIRST_STAGE

    p = sub.add_parser("train-ae", help="train the KL-f4 / VQ-f4 first stage (shapes world or --images DIR)")
    _common(p, 6.0)
    p.add_argument("--images", default=None)
    p.add_argument("--run-dir", default="runs/ae")
    p.add_argument("--ch", type=int, default=32)
    p.add_argument("--n-embed", type=int, default=512)
    p.add_argument("--z", type=int, default=FIRST_STAGE["z"], help="latent channels")
    p.add_argument("--factor", type=int, default=4, choices=[4, 8], help="downsampling factor (f4, or f8: LDM-8)")
    p.add_argument("--edge", type=float, default=FIRST_STAGE["edge"], help="weight of the image-gradient loss term")
    p.add_argument("--latent-blur", type=float, default=FIRST_STAGE["latent_blur"],
                   help="KL: decode half of each batch from latents smoothed by up to this share (engine.train.blur_mix)")
    p.add_argument("--adversarial", type=float, default=0.0,
                   help="weight of the patch-adversarial term (PatchGAN, hinge, VQGAN's adaptive weight); 0: off")
    p.add_argument("--disc-start", type=int, default=2000, help="step at which the discriminator joins")
    p.add_argument("--disc-width", type=int, default=64, help="the discriminator's first layer width (PatchGAN ndf)")
    p.set_defaults(func=cmd_train_ae)
    p = sub.add_parser("train-ldm", help="train one LDM on a trained first stage")
    _common(p, 9.0)
    p.add_argument("--kind", default=None, choices=["txt2img", "layout", "semantic", "inpaint", "sr4", "uncond"])
    p.add_argument("--ae", default="runs/ae/ae.pt")
    p.add_argument("--images", default=None)
    p.add_argument("--captions", default=None, help="JSON {file name: caption}")
    p.add_argument("--out", default=None)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--multiscale", type=float, default=0.0,
                   help="semantic, layout: share of each batch from 128/256 px scenes (32x32-latent windows)")
    p.add_argument("--min-snr", type=float, default=MIN_SNR_GAMMA, help="Min-SNR loss weighting gamma (0: plain loss)")
    p.add_argument("--importance", action="store_true",
                   help="draw timesteps in proportion to their loss weight (the same objective, less variance)")
    p.add_argument("--raster", action="store_true",
                   help="layout: a hybrid model, the boxes also as a per-class coverage map beside the box tokens")
    p.add_argument("--coords", action="store_true",
                   help="layout: --raster plus each cell's box-relative coordinates (two more map channels)")
    p.add_argument("--pooled", action="store_true",
                   help="txt2img: the caption's mean token also through the timestep embedding (label_emb)")
    p.add_argument("--grounding", type=float, default=0.0,
                   help="txt2img on the world: token grounding loss weight (object words attend to their objects)")
    p.add_argument("--objects", default=None,
                   help="the world's scenes weighted by object count, e.g. 1,2,4 (default: its even mix of 1-3)")
    p.add_argument("--outpaint", type=float, default=0.0,
                   help="inpaint: share of random masks that are outpainting bands along the sides")
    p.add_argument("--init-from", default=None,
                   help="fine-tune from this LDM file (the same UNet config; extra concat input channels dropped)")
    p.add_argument("--width", type=int, default=0, help="UNet model_channels, a multiple of 32 (GroupNorm32); 0: 32")
    p.add_argument("--channel-mult", default=None, help="UNet channel_mult per level, e.g. 1,1,2 (default 1,2,2)")
    p.set_defaults(func=cmd_train_ldm)
    from engine.train_defaults import add_command as add_train_defaults

    add_train_defaults(sub)
    from engine.planner import add_command as add_train_planner

    add_train_planner(sub)
    from engine.train_control import add_command as add_train_control

    add_train_control(sub)
    try:
        from engine.evaluate import add_command
    except ImportError:
        return
    add_command(sub)
