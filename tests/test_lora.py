"""LoRA files merged into our modules match diffusers loading the same file (peft) on random weights."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("diffusers")
pytest.importorskip("peft")
from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin as Loader  # noqa: E402
from test_models_parity import assert_close, diffusers_unet  # noqa: E402

from engine import lora  # noqa: E402
from engine.families import tiny  # noqa: E402
from engine.models.latent_diffusion import LatentDiffusion  # noqa: E402
from engine.random_weights import randomize_  # noqa: E402

RANK = 4


def sd1_model(seed: int = 0) -> LatentDiffusion:
    """Two res blocks and attention on both levels, so every block kind and index rule is crossed."""
    cfg = tiny("sd1")
    cfg = replace(cfg, unet=replace(cfg.unet, num_res_blocks=2, attention_resolutions=(1, 2)))
    return randomize_(LatentDiffusion(cfg), seed).eval()


def kohya_lora(named_modules, prefix: str, alpha: float | None = 2.0, seed: int = 3, keep=lambda name: True) -> dict:
    """Random kohya-ss LoRA weights (LoCon for convolutions) for the given modules' names."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in named_modules:
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) or not keep(name):
            continue
        k = prefix + name.replace(".", "_")
        if isinstance(mod, torch.nn.Linear):
            sd[k + ".lora_down.weight"] = torch.randn(RANK, mod.in_features, generator=g) * 0.3
            sd[k + ".lora_up.weight"] = torch.randn(mod.out_features, RANK, generator=g) * 0.3
        else:
            sd[k + ".lora_down.weight"] = torch.randn(RANK, mod.in_channels, *mod.kernel_size, generator=g) * 0.1
            sd[k + ".lora_up.weight"] = torch.randn(mod.out_channels, RANK, 1, 1, generator=g) * 0.3
        if alpha is not None:
            sd[k + ".alpha"] = torch.tensor(alpha)
    return sd


def scaled(sd: dict, weight: float) -> dict:
    return {k: v * weight if k.endswith("lora_up.weight") else v for k, v in sd.items()}


def unet_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 700]), torch.randn(2, 5, 32, generator=g)


def test_unet_lora_in_diffusers_names_matches_diffusers(tmp_path):
    ours = sd1_model()
    theirs = diffusers_unet(ours.config.unet, ours.model.diffusion_model)
    sd = kohya_lora(theirs.named_modules(), "lora_unet_", keep=lambda n: n not in ("conv_in", "conv_out"))
    assert all(any(part in k for k in sd) for part in ("downsamplers", "upsamplers", "mid_block"))
    save_file(sd, tmp_path / "style.safetensors")
    Loader.load_lora_into_unet(*Loader.lora_state_dict(scaled(sd, 0.7)), unet=theirs)
    x, t, ctx = unet_inputs()
    with torch.no_grad():
        before = ours.model.diffusion_model(x, t, ctx)
        lora.apply(ours, [(tmp_path / "style.safetensors", 0.7)])
        want = theirs(x, t, encoder_hidden_states=ctx).sample
        assert_close(ours.model.diffusion_model(x, t, ctx), want)
        assert (before - want).abs().max() > 0.05 * want.abs().max(), "the LoRA must change the output"


def test_unet_lora_in_original_names_is_the_same_lora(tmp_path):
    ours = sd1_model()
    unet = ours.model.diffusion_model
    original = kohya_lora(unet.named_modules(), "lora_unet_", seed=5)
    renamed = {}
    for k, v in original.items():
        module, _, part = k.partition(".")
        alias = lora.diffusers_name(module.removeprefix("lora_unet_").replace("_", "."), unet)
        renamed[f"lora_unet_{alias.replace('.', '_')}.{part}" if alias else k] = v
    assert len(set(renamed)) == len(original) and set(renamed) != set(original)
    save_file(original, tmp_path / "a.safetensors")
    save_file(renamed, tmp_path / "b.safetensors")
    lora.apply(ours, [(tmp_path / "a.safetensors", 1.0)])
    a = {k: v.clone() for k, v in unet.state_dict().items()}
    lora.apply(ours, [(tmp_path / "b.safetensors", 1.0)])
    for k, v in unet.state_dict().items():
        torch.testing.assert_close(v, a[k], rtol=0, atol=1e-6)


def clip_reference(model):
    from transformers import CLIPTextModel

    ref = CLIPTextModel(model.cond_stage_model.transformer.config).eval()
    sd = model.cond_stage_model.transformer.state_dict()
    if not hasattr(ref, "text_model"):
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    ref.load_state_dict(sd, strict=True)
    return ref


IDS = torch.tensor([[49406, 320, 1125, 539, 320, 2368] + [49407] * 71])


def test_sd1_text_encoder_lora_matches_diffusers(tmp_path):
    ours = sd1_model()
    ref = clip_reference(ours)
    sd = kohya_lora(ours.cond_stage_model.transformer.named_modules(), "lora_te_", alpha=8.0,
                    keep=lambda n: "encoder.layers" in n)
    save_file(sd, tmp_path / "te.safetensors")
    Loader.load_lora_into_text_encoder(*Loader.lora_state_dict(sd), text_encoder=ref)
    with torch.no_grad():
        lora.apply(ours, [(tmp_path / "te.safetensors", 1.0)])
        assert_close(ours.cond_stage_model.encode(IDS), ref(input_ids=IDS).last_hidden_state)


def test_sd2_openclip_text_lora_matches_diffusers(tmp_path):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = tiny("sd2")
    cfg = replace(cfg, cond=replace(cfg.cond, n_layer=3, n_heads=4))
    ours = randomize_(LatentDiffusion(cfg)).eval()
    d = cfg.cond.embed_dim
    ref = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=3,
                                       num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu")).eval()
    ckpt = {"cond_stage_model." + k: v for k, v in ours.cond_stage_model.state_dict().items()}
    converted = convert_open_clip_checkpoint(ref, ckpt)
    if not hasattr(ref, "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    ref.load_state_dict(converted, strict=True)
    named = [(f"text_model.{n}" if not n.startswith("text_model.") else n, m) for n, m in ref.named_modules()]
    sd = kohya_lora(named, "lora_te_", alpha=2.0, keep=lambda n: "encoder.layers" in n)
    assert any("self_attn_q_proj" in k for k in sd)
    save_file(sd, tmp_path / "sd2.safetensors")
    Loader.load_lora_into_text_encoder(*Loader.lora_state_dict(sd), text_encoder=ref)
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [0] * 70])
    with torch.no_grad():
        lora.apply(ours, [(tmp_path / "sd2.safetensors", 1.0)])
        penultimate = ref(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        assert_close(ours.cond_stage_model.encode(ids), getattr(ref, "text_model", ref).final_layer_norm(penultimate))


def test_diffusers_peft_file_is_the_same_lora_as_kohya(tmp_path):
    from peft import get_peft_model_state_dict

    ours, again = sd1_model(), sd1_model()
    theirs = diffusers_unet(ours.config.unet, ours.model.diffusion_model)
    sd = kohya_lora(theirs.named_modules(), "lora_unet_", alpha=float(RANK), keep=lambda n: "attentions" in n)
    save_file(sd, tmp_path / "kohya.safetensors")
    Loader.load_lora_into_unet(*Loader.lora_state_dict(sd), unet=theirs)
    adapter = next(iter(theirs.peft_config))
    peft = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(theirs, adapter_name=adapter).items()}
    assert any(k.endswith("lora_A.weight") for k in peft)
    save_file(peft, tmp_path / "peft.safetensors")
    lora.apply(ours, [(tmp_path / "kohya.safetensors", 1.0)])
    lora.apply(again, [(tmp_path / "peft.safetensors", 1.0)])
    for (k, a), b in zip(ours.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_switching_loras_restores_the_file_weights_exactly(tmp_path):
    model = sd1_model()
    file_weights = {k: v.clone() for k, v in model.state_dict().items()}
    unet = model.model.diffusion_model
    save_file(kohya_lora(unet.named_modules(), "lora_unet_", seed=1), tmp_path / "a.safetensors")
    save_file(kohya_lora(unet.named_modules(), "lora_unet_", seed=2), tmp_path / "b.safetensors")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    lora.apply(model, [(a, 1.0)])
    only_a = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply(model, [(a, 0.5), (b, 1.0)])
    lora.apply(model, [(a, 1.0)])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, only_a[k], rtol=0, atol=1e-6)
    lora.apply(model, [])
    assert all(torch.equal(v, file_weights[k]) for k, v in model.state_dict().items())
    out = "model.diffusion_model.out.2.weight"
    assert not torch.equal(only_a[out], file_weights[out])


def test_files_that_are_not_loras_for_this_model_are_refused_clearly(tmp_path):
    model = sd1_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = torch.zeros(4, 8)
    cases = {
        "sdxl": ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": t}, "SDXL"),
        "whole": ({"model.diffusion_model.out.2.weight": t}, "whole model"),
        "loha": ({"lora_unet_x.hada_w1_a": t}, "LyCORIS"),
        "odd": ({"something.else": t}, "not a LoRA"),
        "half": ({"lora_unet_out_2.lora_down.weight": t}, "lacks its up weight"),
        "sd2": ({"lora_unet_out_2.lora_down.weight": torch.zeros(4, 64, 3, 3),
                 "lora_unet_out_2.lora_up.weight": torch.zeros(4, 4, 1, 1)}, "made for another model"),
        "alien": ({"lora_unet_foo_bar.lora_down.weight": t, "lora_unet_foo_bar.lora_up.weight": t.T.contiguous()},
                  "made for another model"),
    }
    for name, (sd, message) in cases.items():
        save_file(sd, tmp_path / f"{name}.safetensors")
        with pytest.raises(lora.LoraError, match=message):
            lora.apply(model, [(tmp_path / f"{name}.safetensors", 1.0)])
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(lora.LoraError, match="junk"):
        lora.apply(model, [(tmp_path / "junk.safetensors", 1.0)])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_find_by_name_subfolder_and_case(tmp_path):
    (tmp_path / "loras" / "styles").mkdir(parents=True)
    (tmp_path / "loras" / "styles" / "Ink.safetensors").write_bytes(b"x")
    folders = [tmp_path / "none", tmp_path / "loras"]
    assert lora.find("styles/Ink", folders).name == "Ink.safetensors"
    assert lora.find("ink", folders).name == "Ink.safetensors"
    with pytest.raises(lora.LoraError, match="not found"):
        lora.find("oil", folders)


def test_prompt_tags_load_the_lora_through_the_job_api(tmp_path):
    """<lora:name:w> in the prompt: found in the model's loras folder, changes the image, then comes off again."""
    from conftest_models import write_tiny

    from engine.api import Engine, Failed, Request, Result, list_loras

    path = write_tiny(tmp_path, "sd1")
    model = LatentDiffusion(tiny("sd1"))
    (tmp_path / "loras").mkdir()
    save_file(kohya_lora(model.model.diffusion_model.named_modules(), "lora_unet_", seed=4),
              tmp_path / "loras" / "paint.safetensors")
    assert "paint" in list_loras((str(tmp_path),))
    engine = Engine()
    try:
        def image(prompt):
            job = engine.submit(Request(model=str(path), prompt=prompt, width=32, height=32, steps=3, seed=1))
            ev = engine.wait(job, 120)
            assert isinstance(ev, (Result, Failed))
            return ev

        plain = image("a red circle").images[0]
        with_lora = image("a red circle <lora:paint:0.8>")
        assert "<lora:paint:0.8>" in with_lora.parameters
        assert np.abs(with_lora.images[0].astype(int) - plain).mean() > 1
        missing = image("a red circle <lora:nope>")
        assert isinstance(missing, Failed) and "LoRA 'nope' not found" in missing.message
        assert np.array_equal(image("a red circle").images[0], plain)
    finally:
        engine.shutdown()


def test_a_lora_merges_into_packed_cpu_convolutions(tmp_path):
    """Wide models run on the CPU with convs packed for oneDNN or computed by Winograd: a LoRA lands there too."""
    from engine.models.onednn import PackedConv2d, cpu_inference_layout_, packable

    if not packable():
        pytest.skip("oneDNN packing is not available here")
    packed, plain = sd1_model(), sd1_model()
    cpu_inference_layout_(packed.model)
    assert any(isinstance(m, PackedConv2d) for m in packed.modules())
    save_file(kohya_lora(plain.model.diffusion_model.named_modules(), "lora_unet_", seed=6), tmp_path / "c.safetensors")
    x, t, ctx = unet_inputs()
    with torch.no_grad():
        for model in (packed, plain):
            lora.apply(model, [(tmp_path / "c.safetensors", 1.0)])
        assert_close(packed.model.diffusion_model(x, t, ctx), plain.model.diffusion_model(x, t, ctx))
        lora.apply(packed, [])
        lora.apply(plain, [])
        assert_close(packed.model.diffusion_model(x, t, ctx), plain.model.diffusion_model(x, t, ctx))


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_every_full_size_diffusers_unet_layer_has_its_place(family):
    """At full size (four levels, two res blocks, upsamplers, a level without attention) every linear and
    convolution of diffusers' UNet, as kohya names it, lands on one of our parameters of its shape."""
    from engine.checkpoint import params_on_meta
    from engine.families import preset

    with params_on_meta():
        ours = LatentDiffusion(preset(family))
    theirs = diffusers_unet(ours.config.unet, ours.model.diffusion_model, meta=True)
    table, shapes = lora.targets(ours), {n: tuple(p.shape) for n, p in ours.named_parameters()}
    layers = [(n, m) for n, m in theirs.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(layers) > 250
    for name, module in layers:
        param, rows = table["lora_unet_" + name.replace(".", "_")]
        assert rows is None and shapes[param] == tuple(module.weight.shape), name
    assert len({table["lora_unet_" + n.replace(".", "_")][0] for n, _ in layers}) == len(layers)
