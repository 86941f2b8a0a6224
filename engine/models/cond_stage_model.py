"""cond_stage_model.*: the conditioners of LDM and Stable Diffusion, with the original checkpoint key layout."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from engine.config import CondConfig


def _is_text(c) -> bool:
    return isinstance(c, str) or (isinstance(c, (list, tuple)) and len(c) > 0 and isinstance(c[0], str))


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _layers_skipped(cfg: CondConfig, clip_skip: int) -> int:
    """Final layers left out: the family's own choice (SD2: the penultimate layer) plus clip_skip - 1 more."""
    skip = (1 if cfg.layer == "penultimate" else 0) + clip_skip - 1
    if clip_skip < 1 or skip >= cfg.n_layer:
        raise ValueError(f"clip skip must be between 1 and {cfg.n_layer - (1 if cfg.layer == 'penultimate' else 0)}")
    return skip


class _TextModelHolder(nn.Module):
    """Keeps transformers' CLIPTextModel under `text_model` (transformers 5 dropped that level)."""

    def __init__(self, text_model: nn.Module):
        super().__init__()
        self.text_model = text_model
        self.config = text_model.config

    def forward(self, *args, **kwargs):
        return self.text_model(*args, **kwargs)


def _clip_text_transformer(cfg: CondConfig) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.embed_dim * cfg.ff_mult,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_heads, max_position_embeddings=cfg.max_seq_len,
        hidden_act="quick_gelu", projection_dim=cfg.embed_dim, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )
    model = CLIPTextModel(config)
    return model if hasattr(model, "text_model") else _TextModelHolder(model)


class FrozenCLIPEmbedder(nn.Module):
    """SD1 text encoder: OpenAI CLIP ViT-L/14 text transformer (transformers CLIPTextModel), last hidden state."""

    POSITION_IDS = "transformer.text_model.embeddings.position_ids"

    def __init__(self, cfg: CondConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = _clip_text_transformer(cfg)
        self.tokenizer = None
        self._keeps_position_ids = self.POSITION_IDS in self.state_dict()
        self._register_load_state_dict_pre_hook(self._drop_position_ids)

    def _drop_position_ids(self, state_dict, prefix, *args, **kwargs):
        if not self._keeps_position_ids:
            state_dict.pop(prefix + self.POSITION_IDS, None)

    def tokenize(self, text) -> torch.LongTensor:
        if self.tokenizer is None:
            from engine.tokenizers import clip_tokenizer

            self.tokenizer = clip_tokenizer("eos", self.cfg.max_seq_len)
        return self.tokenizer(text)

    def encode(self, c, clip_skip: int = 1) -> torch.Tensor:
        """clip_skip n > 1 reads the output of the n-th last layer (A1111's "Clip skip"), through the final norm."""
        ids = self.tokenize(c) if _is_text(c) else c
        ids = ids.to(_device_of(self))
        text_model = self.transformer.text_model
        skip = _layers_skipped(self.cfg, clip_skip)
        if skip:
            out = text_model(input_ids=ids, output_hidden_states=True)
            return text_model.final_layer_norm(out.hidden_states[-1 - skip])
        return text_model(input_ids=ids).last_hidden_state

    forward = encode


class _InProjAttention(nn.Module):
    """Multi-head self-attention with torch.nn.MultiheadAttention's parameter names (packed q/k/v projection)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class _ResidualAttentionBlock(nn.Module):
    """open_clip ResidualAttentionBlock: pre-LN attention and GELU MLP (c_fc, c_proj)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = _InProjAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(dim, dim * mlp_ratio), gelu=nn.GELU(), c_proj=nn.Linear(dim * mlp_ratio, dim)
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _ResBlocks(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.resblocks = nn.ModuleList([_ResidualAttentionBlock(dim, heads, mlp_ratio) for _ in range(layers)])


class OpenCLIPTextTower(nn.Module):
    """The text half of open_clip.CLIP (visual tower deleted, as FrozenOpenCLIPEmbedder does); causal mask."""

    def __init__(self, cfg: CondConfig):
        super().__init__()
        width = cfg.embed_dim
        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.max_seq_len, width))
        self.transformer = _ResBlocks(width, cfg.n_layer, cfg.n_heads, cfg.ff_mult)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.6592600536346436))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)


class FrozenOpenCLIPEmbedder(nn.Module):
    """SD2 text encoder: OpenCLIP ViT-H/14 text transformer; layer 'penultimate' stops before the last resblock."""

    def __init__(self, cfg: CondConfig):
        super().__init__()
        self.cfg = cfg
        self.model = OpenCLIPTextTower(cfg)
        self.tokenizer = None

    def tokenize(self, text) -> torch.LongTensor:
        if self.tokenizer is None:
            from engine.tokenizers import clip_tokenizer

            self.tokenizer = clip_tokenizer("zero", self.cfg.max_seq_len)
        return self.tokenizer(text)

    def encode(self, c, clip_skip: int = 1) -> torch.Tensor:
        """clip_skip n > 1 stops n - 1 blocks before the family's own layer (the penultimate one for SD2)."""
        ids = self.tokenize(c) if _is_text(c) else c
        m = self.model
        x = m.token_embedding(ids.to(m.positional_embedding.device)) + m.positional_embedding[: ids.shape[1]]
        blocks = m.transformer.resblocks
        for block in blocks[: len(blocks) - _layers_skipped(self.cfg, clip_skip)]:
            x = block(x)
        return m.ln_final(x)

    forward = encode


class _XAttention(nn.Module):
    """x-transformers Attention: bias-free q/k/v, biased output projection, dim_head 64."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(p(x), "b n (h d) -> b h n d", h=self.heads) for p in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class _XFeedForward(nn.Module):
    """x-transformers FeedForward: net = (Linear+GELU, Dropout, Linear)."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU()), nn.Dropout(0.0),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Residual(nn.Module):
    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return x + residual


class _AbsolutePositionalEmbedding(nn.Module):
    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(torch.arange(x.shape[1], device=x.device))[None]


class _AttentionLayers(nn.Module):
    """x-transformers Encoder: pre-norm ('a', 'f') blocks, each layers.N = [LayerNorm, block, Residual]."""

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: int):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            for block in (_XAttention(dim, heads), _XFeedForward(dim, ff_mult)):
                self.layers.append(nn.ModuleList([nn.LayerNorm(dim), block, _Residual()]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block, residual in self.layers:
            x = residual(block(norm(x)), x)
        return x


class TransformerWrapper(nn.Module):
    """x-transformers TransformerWrapper as vendored in latent-diffusion (to_logits kept: it is in the checkpoints)."""

    def __init__(self, cfg: CondConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.max_seq_len = cfg.max_seq_len
        self.token_emb = nn.Embedding(cfg.vocab_size, dim)
        self.pos_emb = _AbsolutePositionalEmbedding(dim, cfg.max_seq_len)
        self.attn_layers = _AttentionLayers(dim, cfg.n_layer, cfg.n_heads, cfg.ff_mult)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, cfg.vocab_size)
        nn.init.normal_(self.token_emb.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_emb(tokens)
        x = x + self.pos_emb(x)
        return self.norm(self.attn_layers(x))


class BERTEmbedder(nn.Module):
    """LDM BERTEmbedder: BERT (or word/layout) tokens -> x-transformers encoder embeddings (B, max_seq_len, dim)."""

    def __init__(self, cfg: CondConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = TransformerWrapper(cfg)
        self.tokenizer = None

    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def tokenize(self, text) -> torch.LongTensor:
        if not self.cfg.use_tokenizer:
            raise TypeError("this BERTEmbedder (use_tokenizer=False) takes token ids, e.g. from LayoutTokenizer")
        if self.tokenizer is None:
            from engine import tokenizers

            if self.cfg.tokenizer == "world":
                if not self.cfg.vocab:
                    raise ValueError("a 'world' tokenizer needs its vocabulary: cfg.vocab or set_tokenizer()")
                self.tokenizer = tokenizers.WorldTokenizer(list(self.cfg.vocab), self.cfg.max_seq_len)
            else:
                self.tokenizer = tokenizers.bert_tokenizer(self.cfg.max_seq_len)
        return self.tokenizer(text)

    def encode(self, c) -> torch.Tensor:
        ids = self.tokenize(c) if _is_text(c) else c
        return self.transformer(ids.to(_device_of(self)))

    forward = encode


class ClassEmbedder(nn.Module):
    """LDM ClassEmbedder: class id -> learned embedding (B, 1, dim) for cross-attention."""

    def __init__(self, cfg: CondConfig):
        super().__init__()
        self.n_classes = cfg.n_classes
        self.embedding = nn.Embedding(cfg.n_classes, cfg.embed_dim)

    def encode(self, c) -> torch.Tensor:
        if isinstance(c, dict):
            c = c["class"]
        ids = torch.as_tensor(c, dtype=torch.long, device=self.embedding.weight.device).reshape(-1)
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.n_classes):
            raise ValueError(f"class id out of range 0..{self.n_classes - 1}: {ids.tolist()}")
        return self.embedding(ids[:, None])

    forward = encode


class SpatialRescaler(nn.Module):
    """LDM SpatialRescaler: n_stages interpolations by multiplier, then an optional 1x1 channel_mapper conv."""

    def __init__(self, cfg: CondConfig):
        super().__init__()
        self.n_stages = cfg.n_stages
        self.multiplier = cfg.multiplier
        self.method = cfg.method
        self.in_channels = cfg.in_channels
        if cfg.out_channels:
            self.channel_mapper = nn.Conv2d(cfg.in_channels, cfg.out_channels, 1, bias=cfg.bias)
        else:
            self.channel_mapper = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: one-hot (B, C, H, W) float, or a (B, H, W) integer label map (one-hot encoded here)."""
        ref = self.channel_mapper.weight if self.channel_mapper is not None else None
        if not torch.is_floating_point(x):
            if x.dim() != 3:
                raise ValueError(f"a label map must be (B, H, W), got {tuple(x.shape)}")
            if x.min() < 0 or x.max() >= self.in_channels:
                raise ValueError(f"label ids must lie in 0..{self.in_channels - 1}")
            x = rearrange(F.one_hot(x.long(), self.in_channels), "b h w c -> b c h w")
        if ref is not None:
            x = x.to(device=ref.device, dtype=ref.dtype)
        else:
            x = x.float()
        for _ in range(self.n_stages):
            x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method)
        return self.channel_mapper(x) if self.channel_mapper is not None else x

    forward = encode


class IdentityEncoder(nn.Module):
    """Conditioning passed through unchanged (LDM super-resolution: the low-resolution image)."""

    def encode(self, x):
        return x

    forward = encode


class FirstStageEncoder(nn.Module):
    """cond_stage_config '__is_first_stage__': the first stage encodes the conditioning image (LDM inpainting_big).

    The first stage is held without being registered, so it adds no state-dict keys of its own."""

    def __init__(self, first_stage: nn.Module):
        super().__init__()
        object.__setattr__(self, "first_stage", first_stage)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        ref = next(self.first_stage.parameters())
        out = self.first_stage.encode(x.to(device=ref.device, dtype=ref.dtype))
        return out if isinstance(out, torch.Tensor) else out.mode()

    forward = encode


_BUILDERS = {
    "clip": FrozenCLIPEmbedder,
    "openclip": FrozenOpenCLIPEmbedder,
    "bert": BERTEmbedder,
    "class": ClassEmbedder,
    "spatial": SpatialRescaler,
}


def make_cond_stage(cfg: CondConfig, first_stage: nn.Module | None = None) -> nn.Module | None:
    """The conditioner cfg.kind names; its encode(c) returns the conditioning tensor (None for 'none')."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "identity":
        return IdentityEncoder()
    if cfg.kind == "first_stage":
        if first_stage is None:
            raise ValueError("cond kind 'first_stage' needs the first stage model")
        return FirstStageEncoder(first_stage)
    try:
        return _BUILDERS[cfg.kind](cfg)
    except KeyError:
        raise ValueError(f"unknown cond_stage kind {cfg.kind!r}") from None


__all__: Sequence[str] = (
    "make_cond_stage", "FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder", "BERTEmbedder", "ClassEmbedder",
    "SpatialRescaler", "IdentityEncoder", "FirstStageEncoder", "OpenCLIPTextTower", "TransformerWrapper",
)
