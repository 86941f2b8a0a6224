"""Full-size presets against the key/shape lists dumped from the ORIGINAL CompVis / Stability-AI modules.

tests/data/original_keys.json.gz was produced by instantiating the original LatentDiffusion classes from their
released configs on the meta device (CompVis/latent-diffusion, CompVis/stable-diffusion, runwayml/stable-diffusion,
Stability-AI/stablediffusion); see its _source and _notes entries.
"""
import gzip
import json
from pathlib import Path

import pytest
import torch

from engine.checkpoint import ignorable, inspect_file, load, params_on_meta
from engine.families import PRESETS
from engine.models.latent_diffusion import LatentDiffusion

REFERENCE = json.loads(gzip.decompress((Path(__file__).parent / "data" / "original_keys.json.gz").read_bytes()))


def reference(family: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in REFERENCE[family].items() if not ignorable(k, PRESETS[family])}


def ours(family: str) -> dict[str, tuple[int, ...]]:
    with params_on_meta():
        m = LatentDiffusion(PRESETS[family])
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("family", sorted(PRESETS))
def test_keys_and_shapes_equal_the_original_modules(family):
    ref, got = reference(family), ours(family)
    assert sorted(set(ref) - set(got)) == [] and sorted(set(got) - set(ref)) == []
    assert {k: s for k, s in got.items() if ref[k] != s} == {}


def test_reference_sanity():
    counts = REFERENCE["_counts"]["sd1"]
    text = json.dumps(counts)
    assert "859" in text or len(REFERENCE["sd1"]) == 686 + 248 + 197


def _random_file(family: str, path: Path) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=g) * 0.02).half() if len(s) else torch.tensor(1.0).half()
          for k, s in REFERENCE[family].items()}
    save_file(sd, str(path))


def _round_trip(family: str, tmp_path: Path) -> None:
    path = tmp_path / f"{family}.safetensors"
    _random_file(family, path)
    facts = inspect_file(path)
    assert facts["family"] == family
    m = load(path, dtype=torch.float32)
    assert m.config.family == family
    key = next(k for k in REFERENCE[family] if k.startswith("model.diffusion_model.out."))
    assert m.state_dict()[key].shape == tuple(REFERENCE[family][key])


def test_full_size_bsr_file_round_trips(tmp_path):
    _round_trip("ldm-bsr-sr", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(set(PRESETS) - {"ldm-bsr-sr", "sd2-v"}))
def test_full_size_file_round_trips(family, tmp_path):
    _round_trip(family, tmp_path)
