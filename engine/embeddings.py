"""Textual inversion embeddings (Gal et al. 2022) in prompts: a file's name (A1111) or embedding:name (ComfyUI) in the
prompt stands for the file's learned token vectors.

Reads A1111 .pt / .safetensors files (string_to_param, emb_params) and diffusers' learned_embeds ({token: vector}).
The prompt's tokenizer sees placeholders where an embedding goes; a forward hook on the text encoder's token
embedding puts the file's vectors there, so every conditioner (CLIP, OpenCLIP, LDM BERT) takes them unchanged.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from engine.api import list_assets
from engine.checkpoint import CheckpointError, read_state_dict, torch_object


class EmbeddingError(ValueError):
    """An embedding file that cannot be used, with a message meant for the user."""


def read(path: Path) -> torch.Tensor:
    """(n_vectors, dim) float32 from any of the usual embedding file layouts."""
    try:
        obj = read_state_dict(path)[0] if path.suffix == ".safetensors" else torch_object(path)
    except CheckpointError as e:
        raise EmbeddingError(str(e)) from None
    if isinstance(obj, dict) and ("clip_l" in obj or "clip_g" in obj):
        raise EmbeddingError(f"{path.name} is an SDXL embedding; Latent Canvas runs LDM and Stable Diffusion 1.x / 2.x")
    if isinstance(obj, dict) and isinstance(obj.get("string_to_param"), dict):
        obj = obj["string_to_param"]
    elif isinstance(obj, dict) and "emb_params" in obj:
        obj = {"emb_params": obj["emb_params"]}
    tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)] if isinstance(obj, dict) else [obj]
    if len(tensors) != 1 or not isinstance(tensors[0], torch.Tensor) or tensors[0].ndim not in (1, 2):
        raise EmbeddingError(f"{path.name}: not a textual inversion embedding (expected one tensor of token vectors)")
    vectors = tensors[0].detach().float()
    return vectors[None] if vectors.ndim == 1 else vectors


def token_embedding(cond: nn.Module) -> nn.Embedding:
    """The text encoder's token embedding table (CLIP, OpenCLIP or LDM BERT)."""
    for path in ("transformer.text_model.embeddings.token_embedding", "model.token_embedding", "transformer.token_emb"):
        try:
            return cond.get_submodule(path)
        except AttributeError:
            continue
    raise EmbeddingError("this model's text encoder takes no embeddings")


def available(model) -> dict[str, Path]:
    """Lower-cased name -> file for the embeddings beside the model and in the user's and bundled folders."""
    dirs = (str(Path(model.source).parent),) if getattr(model, "source", "") else ()
    return {name.lower(): f for name, f in list_assets("embedding", dirs).items()}


def split(text: str, names: dict[str, Path]) -> list[str | Path]:
    """The text with each embedding it names (whole word, or embedding:name) replaced by the embedding's file."""
    if not names:
        return [text]
    words = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w/-])(?:embedding:)?({words})(?![\w/-])", re.IGNORECASE)
    out: list[str | Path] = []
    last = 0
    for m in pattern.finditer(text):
        out += [text[last : m.start()], names[m.group(1).lower()]]
        last = m.end()
    return [p for p in [*out, text[last:]] if p != ""]


def vectors(model, path: Path) -> torch.Tensor:
    """An embedding file's vectors, checked against the model's token width; cached per file version."""
    cache = model.__dict__.setdefault("_embeddings", {})
    key = (str(path), path.stat().st_mtime)
    if key not in cache:
        v = read(path)
        width = token_embedding(model.cond_stage_model).embedding_dim
        if v.shape[1] != width:
            raise EmbeddingError(f"{path.name} has {v.shape[1]}-wide vectors, {model.config.family} reads "
                                 f"{width}-wide tokens: it was made for another model")
        cache[key] = v
    return cache[key]


@contextmanager
def placed(cond: nn.Module, fixes: list[tuple[int, int, torch.Tensor]]):
    """While encoding: the token embedding's output at (row, start) replaced by the given vectors."""
    if not fixes:
        yield
        return

    def hook(module, inputs, out):
        out = out.clone()
        for row, start, vecs in fixes:
            out[row, start : start + len(vecs)] = vecs.to(out)
        return out

    handle = token_embedding(cond).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
