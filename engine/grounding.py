"""Token grounding loss for text-to-image training (TokenCompose, Wang et al. CVPR 2024): each object word's
cross-attention should fall on its object."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from engine.models.attention import BasicTransformerBlock
from engine.tokenizers import WorldTokenizer
from engine.world.scene import COLOURS, SHAPE_CLASS, SHAPES

MAX_OBJECTS = 3


def object_words(caption: str) -> list[tuple[int, int]]:
    """Token positions (after the tokenizer's BOS) of each 'colour shape' pair, in the caption's object order."""
    words = WorldTokenizer.words(caption)
    return [(i + 1, i + 2) for i in range(len(words) - 1) if words[i] in COLOURS and words[i + 1] in SHAPES]


def object_masks(labels: np.ndarray, boxes: list) -> np.ndarray:
    """(K, H, W) float masks: each object's pixels, its shape's label inside its (one pixel grown) box."""
    h, w = labels.shape
    out = np.zeros((len(boxes), h, w), np.float32)
    for k, (label, (x0, y0, x1, y1)) in enumerate(boxes):
        shape = label.split()[-1]
        ys = slice(max(0, int(y0 * h) - 1), min(h, math.ceil(y1 * h) + 1))
        xs = slice(max(0, int(x0 * w) - 1), min(w, math.ceil(x1 * w) + 1))
        out[k, ys, xs] = labels[ys, xs] == SHAPE_CLASS[shape]
    return out


def token_targets(captions: list[str], boxes: list, labels: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Per sample up to MAX_OBJECTS objects x (colour, shape) words: token ids (n, 2K), pixel masks (n, 2K, H, W),
    valid (n, 2K). An empty caption (classifier-free dropout) has none."""
    n, (h, w) = len(captions), labels.shape[1:]
    k = 2 * MAX_OBJECTS
    tok, masks = torch.zeros(n, k, dtype=torch.long), torch.zeros(n, k, h, w)
    valid = torch.zeros(n, k, dtype=torch.bool)
    for i, cap in enumerate(captions):
        pairs = object_words(cap)[:MAX_OBJECTS]
        if not pairs or len(pairs) != len(boxes[i]):
            continue
        m = torch.from_numpy(object_masks(labels[i], boxes[i]))
        for j, pair in enumerate(pairs):
            tok[i, 2 * j:2 * j + 2] = torch.tensor(pair)
            masks[i, 2 * j:2 * j + 2] = m[j]
            valid[i, 2 * j:2 * j + 2] = bool(m[j].any())
    return tok, masks, valid


class CrossAttentionMaps:
    """Context manager: the head-averaged cross-attention probabilities (b, h*w, tokens) of every transformer block
    of a UNet, recomputed from forward hooks (the UNet itself is untouched)."""

    def __init__(self, unet: torch.nn.Module):
        self.attns = [m.attn2 for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
        self.maps: list[torch.Tensor] = []
        self.handles: list = []

    def _hook(self, attn, args, _out):
        x, context = args[0], args[1] if len(args) > 1 else None
        if context is None:
            return
        q = rearrange(attn.to_q(x), "b n (h d) -> b h n d", h=attn.heads)
        k = rearrange(attn.to_k(context), "b t (h d) -> b h t d", h=attn.heads)
        p = (q @ k.mT * q.shape[-1] ** -0.5).softmax(dim=-1)
        self.maps.append(reduce(p, "b h n t -> b n t", "mean"))

    def __enter__(self) -> list[torch.Tensor]:
        self.handles = [a.register_forward_hook(self._hook) for a in self.attns]
        return self.maps

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def grounding_loss(maps: list[torch.Tensor], tok: torch.Tensor, masks: torch.Tensor,
                   valid: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token loss: (1 - share of each object word's attention over pixels that lies on its object)^2,
    averaged over words and attention layers; the masks are max-pooled to each layer's grid (a cell an object
    touches counts as the object's)."""
    if not maps:
        return torch.zeros(())
    n = maps[0].shape[-1]
    valid = valid & (tok < n)
    if not valid.any():
        return torch.zeros(())
    tok = tok.clamp(max=n - 1)
    terms = []
    for a in maps:
        side = math.isqrt(a.shape[1])
        m = F.adaptive_max_pool2d(masks, side).flatten(2)
        at = a.gather(2, tok[:, None, :].expand(-1, a.shape[1], -1)).mT
        inside = (at * m).sum(-1) / (at.sum(-1) + 1e-8)
        terms.append((1 - inside[valid]).pow(2))
    return torch.cat(terms).mean()
