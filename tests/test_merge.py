"""Checkpoint merging (A1111's Checkpoint Merger): weighted sum and add difference, streamed key by key."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest_models import write_tiny
from safetensors.torch import load_file, save_file

from engine.checkpoint import load
from engine.merge import INPUT_CONV, MergeError, merge


@pytest.fixture()
def models(tmp_path):
    def make(family, seed):
        folder = tmp_path / f"{family}-{seed}"
        folder.mkdir()
        return write_tiny(folder, family, seed)

    return make


def test_weighted_sum_is_a_blend_of_the_two_and_loads_strictly(models, tmp_path):
    a, b = models("sd1", 1), models("sd1", 2)
    with_ema = load_file(a)
    with_ema["model_ema.out2weight"] = torch.zeros(1)
    save_file(with_ema, tmp_path / "a-ema.safetensors", metadata={"latent_canvas.config": load(a).metadata[
        "latent_canvas.config"]})
    info = merge(tmp_path / "a-ema.safetensors", b, tmp_path / "m.safetensors", multiplier=0.3)
    A, B, M = load_file(a), load_file(b), load_file(tmp_path / "m.safetensors")
    assert info["family"] == "sd1" and "model_ema.out2weight" not in M
    for k in A:
        assert M[k].dtype == torch.float16
        torch.testing.assert_close(M[k].float(), (A[k].float() * 0.7 + B[k].float() * 0.3).half().float())
    assert load(tmp_path / "m.safetensors").config.family == "sd1"


def test_add_difference_makes_an_inpainting_model_from_a_fine_tune(models, tmp_path):
    inpaint, tuned, base = models("sd1-inpainting", 1), models("sd1", 2), models("sd1", 3)
    merge(inpaint, tuned, tmp_path / "m.safetensors", c=base, multiplier=1.0, mode="diff", dtype="float32")
    A, B, C, M = (load_file(p) for p in (inpaint, tuned, base, tmp_path / "m.safetensors"))
    assert A[INPUT_CONV].shape[1] == 9 and B[INPUT_CONV].shape[1] == 4
    want = A[INPUT_CONV].float().clone()
    want[:, :4] += B[INPUT_CONV].float() - C[INPUT_CONV].float()
    torch.testing.assert_close(M[INPUT_CONV], want)
    k = "model.diffusion_model.out.2.weight"
    torch.testing.assert_close(M[k], A[k].float() + B[k].float() - C[k].float())
    assert load(tmp_path / "m.safetensors").config.family == "sd1-inpainting"


def test_models_that_cannot_be_merged_are_refused(models, tmp_path):
    sd1, sd2 = models("sd1", 1), models("sd2", 1)
    with pytest.raises(MergeError, match="different families"):
        merge(sd1, sd2, tmp_path / "m.safetensors")
    with pytest.raises(MergeError, match="needs a third model"):
        merge(sd1, sd1, tmp_path / "m.safetensors", mode="diff")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(MergeError, match="junk"):
        merge(sd1, tmp_path / "junk.safetensors", tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_merge_from_the_command_line(models, tmp_path):
    a, b = models("sd1", 1), models("sd1", 2)
    out = tmp_path / "cli.safetensors"
    run = subprocess.run([sys.executable, "-m", "engine", "merge", str(a), str(b), "--multiplier", "1", "--out",
                          str(out), "--dtype", "float32"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert '"merged": ' in run.stdout.splitlines()[-1]
    A, B, M = load_file(a), load_file(b), load_file(out)
    assert all(torch.equal(M[k], B[k].float()) for k in A)
