"""Tiny random-weight checkpoints of every family, written once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest


def write_tiny(folder: Path, family: str, seed: int = 0) -> Path:
    import torch

    from engine.checkpoint import save
    from engine.families import tiny
    from engine.models.latent_diffusion import LatentDiffusion

    torch.manual_seed(seed)
    path = folder / f"tiny-{family}.safetensors"
    if not path.exists():
        save(LatentDiffusion(tiny(family)), path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-models")
    return lambda family: write_tiny(folder, family)
