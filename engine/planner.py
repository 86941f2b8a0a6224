"""Text-to-layout planner, the first stage of two-stage text-to-image (LayoutGPT, Feng et al. 2023; LMD, Lian et al.
2023): a small causal transformer writes each caption object's box as four grid-cell tokens, which the layout LDM
then draws."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from engine.tokenizers import WorldTokenizer

META_KEY = "latent_canvas.planner"


class PlannerError(ValueError):
    """A planner file that cannot be read, or a prompt it cannot plan."""


@dataclass(frozen=True)
class PlannerConfig:
    dim: int = 96
    depth: int = 3
    heads: int = 4
    bins: int = 32
    max_len: int = 64


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP (GPT-2)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(rearrange(a, "b h n d -> b n (h d)"))
        return x + self.mlp(self.norm2(x))


class LayoutPlanner(nn.Module):
    """Caption words, then per object its colour and shape words and its box as x0, y0, x1, y1 grid cells."""

    def __init__(self, cfg: PlannerConfig, vocab: list[str]):
        super().__init__()
        self.cfg, self.tokenizer = cfg, WorldTokenizer(vocab, cfg.max_len)
        self.coord0 = self.tokenizer.vocab_size
        self.tok_emb = nn.Embedding(self.coord0 + cfg.bins, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.bins)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(b, n) token ids -> (b, n, bins) logits of the next coordinate."""
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(ids.shape[1], device=ids.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))

    def objects_of(self, caption: str) -> list[tuple[str, str]]:
        from engine.world.scene import parse_caption

        return parse_caption(caption).objects

    def prefix(self, caption: str) -> list[int]:
        t = self.tokenizer
        return [t.BOS, *t.encode(caption), t.EOS]

    def encode(self, caption: str, boxes) -> tuple[list[int], list[int]]:
        """Token ids and, per position, the coordinate bin to predict there (-1: none)."""
        objs = self.objects_of(caption)
        if len(objs) != len(boxes):
            raise PlannerError(f"caption names {len(objs)} objects but the scene has {len(boxes)} boxes")
        ids = self.prefix(caption)
        for (colour, shape), (_, box) in zip(objs, boxes):
            ids += [self.tokenizer.ids[colour], self.tokenizer.ids[shape]]
            ids += [self.coord0 + b for b in to_bins(box, self.cfg.bins)]
        targets = [ids[i + 1] - self.coord0 if i + 1 < len(ids) and ids[i + 1] >= self.coord0 else -1
                   for i in range(len(ids))]
        if len(ids) > self.cfg.max_len:
            raise PlannerError(f"caption too long for the planner ({len(ids)} tokens, at most {self.cfg.max_len})")
        return ids, targets


def to_bins(box, bins: int) -> list[int]:
    """A normalised (x0, y0, x1, y1) box as the grid cells of its first and last pixel."""
    x0, y0, x1, y1 = box
    lo = lambda v: min(bins - 1, max(0, int(math.floor(v * bins))))
    hi = lambda v: min(bins - 1, max(0, int(math.ceil(v * bins)) - 1))
    return [lo(x0), lo(y0), max(lo(x0), hi(x1)), max(lo(y0), hi(y1))]


def from_bins(cells, bins: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = cells
    return x0 / bins, y0 / bins, (x1 + 1) / bins, (y1 + 1) / bins


def collate(batch: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(ids) for ids, _ in batch)
    ids = torch.zeros(len(batch), n, dtype=torch.long)
    tgt = torch.full((len(batch), n), -1, dtype=torch.long)
    for i, (a, b) in enumerate(batch):
        ids[i, :len(a)], tgt[i, :len(b)] = torch.tensor(a), torch.tensor(b)
    return ids, tgt


def loss_of(model: LayoutPlanner, ids: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(rearrange(model(ids), "b n k -> (b n) k"), tgt.flatten(), ignore_index=-1)


def gap(a, b) -> int:
    """Empty grid cells between two boxes along the axis that separates them (negative: they share cells)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) - 1


def plausible(cells: list[list[int]], relation: str | None, bins: int) -> bool:
    """No two boxes share a grid cell, and the first is `relation` of the second (the world's rules)."""
    from engine.world.scene import relation_holds

    if any(gap(a, b) < 0 for i, a in enumerate(cells) for b in cells[i + 1:]):
        return False
    if relation and relation != "and" and len(cells) >= 2:
        centre = lambda c: {"center": ((c[0] + c[2] + 1) / 2, (c[1] + c[3] + 1) / 2)}
        return relation_holds(centre(cells[0]), centre(cells[1]), relation)
    return True


def smallest_area(cells: list[list[int]]) -> int:
    return min((c[2] - c[0] + 1) * (c[3] - c[1] + 1) for c in cells)


def smallest_gap(cells: list[list[int]], cap: int = 4) -> int:
    """The gap between the two closest boxes, at most cap."""
    return min([cap, *(gap(a, b) for i, a in enumerate(cells) for b in cells[i + 1:])])


CHOICES = ("spread", "first", "likely", "large")


@torch.no_grad()
def plan(model: LayoutPlanner, caption: str, seed: int = 0, candidates: int = 16, temperature: float = 1.0,
         choose: str = "spread") -> list[tuple[str, tuple[float, float, float, float]]]:
    """(label, box) per caption object: `candidates` layouts sampled at once; of those that keep the world's rules
    (else all), the first with the widest gap between its two closest boxes (up to 4 cells; abutting objects merge
    when drawn), the first drawn, the one the planner finds most likely, or the one whose smallest box is largest."""
    from engine.world.scene import parse_caption

    if choose not in CHOICES:
        raise PlannerError(f"unknown choice {choose!r}; valid: {', '.join(CHOICES)}")
    objs = model.objects_of(caption)
    if not objs:
        raise PlannerError("the prompt names no object the planner knows (a colour then a shape, e.g. 'a red circle')")
    tok, bins = model.tokenizer, model.cfg.bins
    if len(model.prefix(caption)) + 6 * len(objs) > model.cfg.max_len:
        raise PlannerError(f"the prompt is too long for the planner (at most {model.cfg.max_len} tokens)")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([model.prefix(caption)] * candidates)
    cells = torch.zeros(candidates, len(objs), 4, dtype=torch.long)
    logp = torch.zeros(candidates)
    for k, (colour, shape) in enumerate(objs):
        ids = torch.cat([ids, torch.tensor([[tok.ids[colour], tok.ids[shape]]] * candidates)], 1)
        for j in range(4):
            logits = model(ids)[:, -1].float()
            if j >= 2:
                logits = logits.masked_fill(torch.arange(bins)[None] < cells[:, k, j - 2, None], float("-inf"))
            pick = torch.multinomial((logits / max(temperature, 1e-4)).softmax(-1), 1, generator=gen)
            logp += logits.log_softmax(-1).gather(1, pick)[:, 0]
            cells[:, k, j] = pick[:, 0]
            ids = torch.cat([ids, pick + model.coord0], 1)
    rel = parse_caption(caption).relation
    order = [i for i in range(candidates) if plausible(cells[i].tolist(), rel, bins)] or list(range(candidates))
    if choose == "likely":
        best = max(order, key=lambda i: float(logp[i]))
    elif choose == "spread":
        best = max(order, key=lambda i: smallest_gap(cells[i].tolist()))
    elif choose == "large":
        best = max(order, key=lambda i: smallest_area(cells[i].tolist()))
    else:
        best = order[0]
    return [(f"{colour} {shape}", from_bins(c, bins)) for (colour, shape), c in zip(objs, cells[best].tolist())]


def names_background(caption: str) -> bool:
    """The caption names a ground ('on grass') or the sky: what background_sketch draws."""
    from engine.world.scene import parse_caption

    c = parse_caption(caption)
    return c.ground is not None or c.sky


def background_sketch(caption: str, h: int, w: int, horizon: float = 0.4) -> np.ndarray | None:
    """A flat colour sketch (SDEdit's stroke input, Meng et al. 2022) of the caption's ground and sky in the world's
    region colours: the sky above `horizon` of the height, the ground below (each alone fills it); None when the
    caption names neither."""
    import cv2

    from engine.world.scene import REGION_RGB, REGIONS, parse_caption

    if not names_background(caption):
        return None
    c = parse_caption(caption)
    img = np.empty((h, w, 3), np.float32)
    img[:] = REGION_RGB[REGIONS.index(c.ground or "sky")]
    if c.sky and c.ground:
        img[:int(round(h * horizon))] = REGION_RGB[0]
    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.5 * max(h, w) / 64), 0, 255).astype(np.uint8)


def save(model: LayoutPlanner, path: str | Path, training: dict | None = None) -> None:
    from safetensors.torch import save_file

    meta = {"config": asdict(model.cfg), "vocab": model.tokenizer.vocab, "training": training or {}}
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={META_KEY: json.dumps(meta)})


def load(path: str | Path) -> LayoutPlanner:
    """A planner file (safetensors only, loaded strictly), float32 on the CPU."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get(META_KEY)
            state = {k: f.get_tensor(k).float() for k in f.keys()}
    except Exception as e:
        raise PlannerError(f"cannot read layout planner {path}: {e}") from None
    if meta is None:
        raise PlannerError(f"{path} is not a layout planner (no {META_KEY} metadata)")
    meta = json.loads(meta)
    model = LayoutPlanner(PlannerConfig(**meta["config"]), meta["vocab"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PlannerError(f"layout planner {path} does not match its config: {e}") from None
    return model.eval()


def world_examples(seeds) -> list[tuple[str, list]]:
    """(caption, boxes) of world scenes (rendered small: only the caption and boxes are used)."""
    from engine.world import render

    out = []
    for s in seeds:
        scene = render(int(s), 16)
        out.append((scene.caption, scene.boxes))
    return out


def train_planner(spec, out: str | Path, examples: int = 40000, cfg: PlannerConfig = PlannerConfig()) -> Path:
    """Teacher-forced cross-entropy on the boxes of world scenes (TRAIN_SEEDS), AdamW, EMA; resumable (Trainer)."""
    from engine.train import Trainer
    from engine.world import EVAL_SEEDS, TRAIN_SEEDS
    from engine.world.scene import COLOURS, REGIONS, SHAPES

    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    data = world_examples(rng.choice(len(TRAIN_SEEDS), examples, replace=False) + TRAIN_SEEDS.start)
    vocab = sorted(set(WorldTokenizer.from_texts(c for c, _ in data).vocab) | set(COLOURS + SHAPES + REGIONS))
    model = LayoutPlanner(cfg, vocab)
    encoded = [model.encode(c, b) for c, b in data]
    params = [p for p in model.parameters()]
    trainer = Trainer(spec, params, ema_module=model, title="layout planner")
    state = trainer.resume()
    if state is not None:
        model.load_state_dict(state)

    def step(i: int) -> torch.Tensor:
        idx = np.random.default_rng([spec.seed, i]).integers(0, len(encoded), spec.batch)
        return loss_of(model, *collate([encoded[j] for j in idx]))

    trainer.loop(step, model.state_dict)
    trainer.swap_ema()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    held = world_examples(range(EVAL_SEEDS.stop - 512, EVAL_SEEDS.stop))
    with torch.no_grad():
        model.eval()
        val = float(loss_of(model, *collate([model.encode(c, b) for c, b in held])))
    save(model, out, {"steps": trainer.step, "minutes": round(trainer.elapsed / 60, 1), "batch": spec.batch,
                      "lr": spec.lr, "seed": spec.seed, "examples": examples, "threads": torch.get_num_threads(),
                      "val_loss": round(val, 4)})
    return out


# What ships in resources/models/planner: steps, batch, peak lr, world examples learned from, seed (3000 steps took
# 10.9 minutes on one thread beside another run; its held-out loss had flattened by about 2000).
RECIPE = {"steps": 3000, "batch": 128, "lr": 1e-3, "examples": 40000, "seed": 0}


def cmd_train_planner(args) -> int:
    from engine.train import RunSpec

    torch.set_num_threads(max(1, args.threads))
    spec = RunSpec(Path(args.run_dir), steps=args.steps or 10**9, minutes=args.minutes, batch=args.batch, lr=args.lr,
                   seed=args.seed, progress=not args.no_progress)
    out = train_planner(spec, args.out, examples=args.examples)
    print(json.dumps(json.loads(metadata_of(out))["training"]))
    return 0


def metadata_of(path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()[META_KEY]


def add_command(sub) -> None:
    p = sub.add_parser("train-planner", help="train the text-to-layout planner on the world's captions and boxes")
    p.add_argument("--out", default="runs/planner.safetensors")
    p.add_argument("--run-dir", default="runs/planner")
    p.add_argument("--minutes", type=float, default=0.0, help="stop after this much training time (0: no limit)")
    p.add_argument("--steps", type=int, default=RECIPE["steps"], help="stop after this many steps (0: no step limit)")
    p.add_argument("--batch", type=int, default=RECIPE["batch"])
    p.add_argument("--lr", type=float, default=RECIPE["lr"])
    p.add_argument("--examples", type=int, default=RECIPE["examples"], help="world scenes to learn from")
    p.add_argument("--seed", type=int, default=RECIPE["seed"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_planner)
