"""Checkpoint reading, family detection, strict loading, EMA, wrappers and bad files."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from conftest_models import tiny_models  # noqa: F401

from engine.checkpoint import CheckpointError, detect, inspect_file, load, read_shapes, save
from engine.families import PRESETS, tiny
from engine.models.latent_diffusion import LatentDiffusion


def test_every_tiny_family_round_trips_and_is_detected(tiny_models):
    for family in PRESETS:
        path = tiny_models(family)
        facts = inspect_file(path)
        assert facts["family"] == family
        m = load(path)
        assert m.config == tiny(family)
        assert set(m.state_dict()) == set(read_shapes(path)[0])
        assert m.dtype == torch.float32 and not any(p.is_meta for p in m.parameters())


def test_loaded_weights_equal_saved(tmp_path):
    torch.manual_seed(3)
    m = LatentDiffusion(tiny("ldm-layout2img"))
    save(m, tmp_path / "m.safetensors")
    m2 = load(tmp_path / "m.safetensors")
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def _ckpt(tmp_path, sd, name="m.ckpt", wrap=True):
    path = tmp_path / name
    torch.save({"state_dict": sd, "global_step": 10} if wrap else sd, path)
    return path


def _tiny_sd(family="sd1"):
    torch.manual_seed(0)
    return LatentDiffusion(tiny(family)).state_dict()


def test_ckpt_state_dict_wrapper_and_ema_preferred(tmp_path):
    sd = _tiny_sd("ldm-semantic")
    cfg = tiny("ldm-semantic")
    with torch.device("meta"):
        pass
    key = "model.diffusion_model.out.2.weight"
    ema = {"model_ema." + k[len("model."):].replace(".", ""): torch.full_like(v, 0.25)
           for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    full = {**sd, **ema, "model_ema.decay": torch.tensor(0.999), "betas": torch.zeros(1000)}
    path = _ckpt(tmp_path, full)
    m = load(path, config=cfg)
    assert torch.all(m.state_dict()[key] == 0.25)
    m2 = load(path, config=cfg, use_ema=False)
    assert torch.equal(m2.state_dict()[key], sd[key])


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path):
    sd = _tiny_sd("ldm-bsr-sr")
    cfg = tiny("ldm-bsr-sr")
    extra = dict(sd, **{"model.diffusion_model.surprise.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected keys.*surprise"):
        load(_ckpt(tmp_path, extra, "extra.ckpt"), config=cfg)
    missing = {k: v for k, v in sd.items() if not k.endswith("out.2.bias")}
    with pytest.raises(CheckpointError, match=r"missing keys.*out\.2\.bias"):
        load(_ckpt(tmp_path, missing, "missing.ckpt"), config=cfg)
    bad = dict(sd)
    bad["model.diffusion_model.out.2.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load(_ckpt(tmp_path, bad, "shape.ckpt"), config=cfg)


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("hello, I am not a checkpoint\n" * 10)
    good = tmp_path / "good.safetensors"
    save(LatentDiffusion(tiny("ldm-bsr-sr")), good)
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(os.urandom(4096))
    ck = _ckpt(tmp_path, _tiny_sd("ldm-bsr-sr"), "full.ckpt")
    (tmp_path / "trunc.ckpt").write_bytes(ck.read_bytes()[:3000])
    cases = {"empty.safetensors": "empty", "text.ckpt": "not a checkpoint", "trunc.safetensors": "truncated",
             "garbage.safetensors": "safetensors", "trunc.ckpt": "corrupt|truncated", "nothere.ckpt": "not found"}
    for name, pattern in cases.items():
        with pytest.raises(CheckpointError, match=pattern):
            load(tmp_path / name)
        with pytest.raises(CheckpointError):
            inspect_file(tmp_path / name)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path):
    _Evil.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load(path)
    raw = tmp_path / "evil_raw.ckpt"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        load(raw)
    assert not (tmp_path / "pwned").exists()


def test_foreign_architectures_are_named(tmp_path):
    resnet = {"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}
    with pytest.raises(CheckpointError, match="not a Latent Diffusion"):
        load(_ckpt(tmp_path, resnet, "resnet.ckpt", wrap=False))
    vae = {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}
    with pytest.raises(CheckpointError, match="autoencoder"):
        load(_ckpt(tmp_path, vae, "vae.ckpt", wrap=False))
    sdxl = {"conditioner.embedders.0.transformer.x": torch.zeros(1), "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}
    with pytest.raises(CheckpointError, match="SDXL"):
        load(_ckpt(tmp_path, sdxl, "sdxl.ckpt", wrap=False))


def test_detection_from_full_size_shapes_without_metadata():
    from engine.checkpoint import params_on_meta

    for family, cfg in PRESETS.items():
        with params_on_meta():
            m = LatentDiffusion(cfg)
        shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        got = detect(shapes, {}, f"{family}.ckpt")
        expect = "sd2" if family == "sd2-v" else family
        assert got.family == expect, (family, got.family)


def test_sidecar_yaml_sets_v_parameterization(tmp_path):
    from engine.original_yaml import config_from_yaml

    y = tmp_path / "v2.yaml"
    y.write_text(
        "model:\n  params:\n    parameterization: \"v\"\n    linear_start: 0.00085\n    linear_end: 0.0120\n"
        "    image_size: 96\n    conditioning_key: crossattn\n    scale_factor: 0.18215\n"
        "    unet_config:\n      params:\n        num_head_channels: 64\n        use_linear_in_transformer: True\n"
        "        context_dim: 1024\n        channel_mult: [1, 2, 4, 4]\n"
        "    first_stage_config:\n      target: ldm.models.autoencoder.AutoencoderKL\n      params:\n        embed_dim: 4\n"
        "        ddconfig:\n          ch_mult: [1, 2, 4, 4]\n"
        "    cond_stage_config:\n      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder\n"
        "      params:\n        layer: penultimate\n"
    )
    cfg = config_from_yaml(y, family_hint="sd2")
    assert cfg.parameterization == "v" and cfg.latent_size == 96
    assert cfg.unet == PRESETS["sd2"].unet and cfg.cond.kind == "openclip"


def test_inspect_cli_json(tiny_models):
    path = tiny_models("sd-x4-upscaler")
    out = subprocess.run([sys.executable, "-m", "engine", "inspect", str(path), "--json"], capture_output=True,
                         text=True, check=True).stdout
    facts = json.loads(out)
    assert facts["family"] == "sd-x4-upscaler" and facts["parameterization"] == "v"
    assert facts["first_stage"] == {"kind": "kl", "factor": 4, "z_channels": 4}
    assert facts["unet"]["in_channels"] == 7 and facts["tasks"] == ["upscale"]
    r = subprocess.run([sys.executable, "-m", "engine", "inspect", "/nonexistent.ckpt"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_v_prediction_rule_reads_the_unet_at_t999():
    from types import SimpleNamespace

    from engine.checkpoint import is_v_prediction

    class FakeUNet(torch.nn.Module):
        def __init__(self, offset):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.offset = offset

        def forward(self, x, t, context=None):
            assert int(t[0]) == 999 and context.shape == (1, 77, 1024)
            return x + self.offset

    for offset, expect in [(-1.5, True), (-0.2, False)]:
        model = SimpleNamespace(model=SimpleNamespace(diffusion_model=FakeUNet(offset)),
                                config=PRESETS["sd2"])
        assert is_v_prediction(model) is expect
