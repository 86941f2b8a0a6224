"""Another VAE for a model (A1111's SD VAE): loaded strictly into its first stage, and its own put back."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_models import write_tiny
from safetensors.torch import save_file

from engine import vae
from engine.families import tiny
from engine.models.latent_diffusion import LatentDiffusion
from engine.random_weights import randomize_


def other_vae(family: str = "sd1", seed: int = 7) -> dict:
    first = randomize_(LatentDiffusion(tiny(family)), seed).first_stage_model
    return {k: v.clone() for k, v in first.state_dict().items()}


def test_a_vae_file_replaces_the_first_stage_and_comes_off_again(tmp_path):
    from engine.models.onednn import cpu_inference_layout_, packable

    model = randomize_(LatentDiffusion(tiny("sd1"))).eval()
    if packable():
        cpu_inference_layout_(model.first_stage_model)
    own = {k: v.clone() for k, v in model.first_stage_model.state_dict().items()}
    theirs = other_vae()
    save_file({**theirs, "loss.logvar": torch.zeros(())}, tmp_path / "ft-mse.safetensors")
    save_file({f"first_stage_model.{k}": v for k, v in theirs.items()} | {"model.diffusion_model.x": torch.zeros(1)},
              tmp_path / "whole.safetensors")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.decode_first_stage(z)
        for name in ("ft-mse", "whole"):
            assert vae.apply(model, tmp_path / f"{name}.safetensors")
            for k, v in model.first_stage_model.state_dict().items():
                assert torch.equal(v, theirs[k]), k
        assert not vae.apply(model, tmp_path / "whole.safetensors"), "the same file again changes nothing"
        assert not torch.allclose(model.decode_first_stage(z), before, atol=1e-3)
        assert vae.apply(model, None)
        assert all(torch.equal(v, own[k]) for k, v in model.first_stage_model.state_dict().items())
        torch.testing.assert_close(model.decode_first_stage(z), before)


def test_vae_files_that_do_not_fit_are_refused_and_change_nothing(tmp_path):
    model = randomize_(LatentDiffusion(tiny("sd1"))).eval()
    own = {k: v.clone() for k, v in model.first_stage_model.state_dict().items()}
    save_file({"encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, tmp_path / "diffusers.safetensors")
    save_file(other_vae("ldm-bsr-sr"), tmp_path / "f4.safetensors")
    wide = {k: torch.zeros(v.shape[0] * 2, *v.shape[1:]) if k == "decoder.conv_in.weight" else v
            for k, v in other_vae().items()}
    save_file(wide, tmp_path / "wide.safetensors")
    for name, message in (("diffusers", "diffusers-format"), ("f4", "not a VAE for this model"),
                          ("wide", "made for another model")):
        with pytest.raises(vae.VaeError, match=message):
            vae.apply(model, tmp_path / f"{name}.safetensors")
    assert all(torch.equal(v, own[k]) for k, v in model.first_stage_model.state_dict().items())


def test_the_request_names_a_vae_from_the_vae_folder(tmp_path):
    from engine.api import Engine, Failed, Request, Result, list_assets

    path = write_tiny(tmp_path, "sd1")
    (tmp_path / "vae").mkdir()
    save_file(other_vae(), tmp_path / "vae" / "ft-mse.safetensors")
    assert "ft-mse" in list_assets("vae", (str(tmp_path),))
    engine = Engine()
    try:
        def run(**kw):
            job = engine.submit(Request(model=str(path), prompt="a red circle", width=32, height=32, steps=2, seed=1,
                                        **kw))
            return engine.wait(job, 120)

        own, other, missing, again = run(), run(vae="ft-mse"), run(vae="nope"), run()
        assert isinstance(own, Result) and isinstance(other, Result) and isinstance(again, Result)
        assert "VAE: ft-mse" in other.parameters and "VAE" not in own.parameters
        assert np.abs(other.images[0].astype(int) - own.images[0]).mean() > 1
        assert isinstance(missing, Failed) and "VAE 'nope' not found" in missing.message
        assert np.array_equal(again.images[0], own.images[0])
    finally:
        engine.shutdown()
