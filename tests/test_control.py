"""ControlNet: parity with diffusers on random weights, strict loading of original-format files, guide images, and
the units in the engine's sampling (strength, start/end, tiles, cropped inpainting, refusals)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest_models import write_tiny
from safetensors.torch import save_file

from engine import api, control
from engine.families import tiny
from engine.models.control_model import ControlNet, pack_hint, unpack_hint
from engine.random_weights import randomize_

diffusers = pytest.importorskip("diffusers")
from diffusers import ControlNetModel  # noqa: E402
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from test_models_parity import SD1, SD2, SD15, TINY_VAE, assert_close, diffusers_unet, original_config  # noqa: E402

from engine.models.diffusion_model import UNetModel  # noqa: E402

UNET_FIELDS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
               "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
               "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block")


def diffusers_controlnet(cfg, ours: ControlNet, meta: bool = False) -> ControlNetModel:
    """diffusers' ControlNetModel holding our weights through its own single-file converter (its config helper for
    ControlNets reads the UNet's, which it is handed directly here)."""
    unet_keys = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ucfg = sfu.create_unet_diffusers_config_from_ldm(original_config(cfg, TINY_VAE), unet_keys, image_size=64)
    dcfg = {"conditioning_channels": ours.hint_channels, **{k: ucfg[k] for k in UNET_FIELDS}}
    ckpt = {f"control_model.{k}": v for k, v in ours.state_dict().items()}
    converted = sfu.convert_controlnet_checkpoint(ckpt, dcfg)
    with torch.device("meta" if meta else "cpu"):
        theirs = ControlNetModel(**dcfg)
    theirs.load_state_dict(converted, strict=True, assign=meta)
    return theirs.eval()


@pytest.mark.parametrize("cfg", [SD1, SD2], ids=["sd1", "sd2"])
def test_controlnet_and_controlled_unet_match_diffusers(cfg):
    torch.manual_seed(0)
    ours = randomize_(ControlNet(cfg)).eval()
    theirs = diffusers_controlnet(cfg, ours)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([3, 871])
    ctx, hint = torch.randn(2, 5, cfg.context_dim, generator=g), torch.rand(2, 3, 128, 128, generator=g)
    with torch.inference_mode():
        res = ours(x, hint, t, ctx)
        down, mid = theirs(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
    assert len(res) == len(down) + 1
    for a, b in zip(res, [*down, mid]):
        assert_close(a, b)
    unet = randomize_(UNetModel(cfg), seed=5).eval()
    dunet = diffusers_unet(cfg, unet)
    with torch.inference_mode():
        a = unet(x, t, ctx, control=[r * 0.7 for r in res])
        b = dunet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=[r * 0.7 for r in down],
                  mid_block_additional_residual=mid * 0.7).sample
        plain = unet(x, t, ctx)
    assert_close(a, b)
    assert (a - plain).abs().max() > 0.05 * plain.abs().max(), "the residuals must change the prediction"


def test_full_size_sd15_controlnet_on_meta_loads_strictly_into_diffusers():
    with torch.device("meta"):
        ours = ControlNet(SD15)
    theirs = diffusers_controlnet(SD15, ours, meta=True)
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in theirs.parameters())
    assert 361_000_000 < n < 362_000_000  # control_sd15_*: 361.3 M parameters
    assert len(ours.zero_convs) == 12 and ours.input_hint_block[14].out_channels == 320


def test_packed_hints_move_with_the_latent():
    """A guide image packed at the latent's size: cropping latent cells crops the same 8x8 pixel blocks."""
    img = torch.rand(1, 3, 48, 64)
    packed = pack_hint(img)
    assert packed.shape == (1, 192, 6, 8)
    assert torch.equal(unpack_hint(packed, 3), img)
    assert torch.equal(unpack_hint(packed[..., 2:5, 1:7], 3), img[..., 16:40, 8:56])


def test_guide_images():
    img = np.full((40, 60, 3), 230, np.uint8)
    img[10:30, 20:40] = 20
    edges = control.prepare(img, "canny", 120, 80)
    assert edges.shape == (80, 120, 3) and set(np.unique(edges)) == {0, 255}
    assert edges[:, :30].max() == 0 and edges[20:60, 38:42].max() == 255
    strokes = control.prepare(img, "scribble", 60, 40)
    assert strokes[20, 30].tolist() == [255] * 3 and strokes[2, 2].tolist() == [0] * 3
    dark_paper = control.prepare(255 - img, "scribble", 60, 40)
    assert np.array_equal(dark_paper, strokes)
    assert np.array_equal(control.prepare(img, "invert", 60, 40), 255 - img)
    with pytest.raises(control.ControlError, match="RGB uint8"):
        control.prepare(img[..., 0], "none", 60, 40)


def write_controlnet(path, family: str = "sd1", seed: int = 3, prefix: str = "control_model.",
                     extra: dict | None = None) -> ControlNet:
    net = randomize_(ControlNet(tiny(family).unet), seed=seed)
    save_file({f"{prefix}{k}": v.contiguous() for k, v in net.state_dict().items()} | (extra or {}), path)
    return net


def test_controlnet_files_load_strictly_or_are_refused(tmp_path):
    from engine.models.latent_diffusion import LatentDiffusion

    model = randomize_(LatentDiffusion(tiny("sd1"))).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = write_controlnet(tmp_path / "a.safetensors")
    write_controlnet(tmp_path / "bare.safetensors", prefix="")
    write_controlnet(tmp_path / "v10.safetensors", extra={"model.diffusion_model.out.2.bias": torch.zeros(4)})
    for name in ("a", "bare", "v10"):
        got = control.read(tmp_path / f"{name}.safetensors", model)
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in got.state_dict().items())
    write_controlnet(tmp_path / "sd2.safetensors", family="sd2")
    save_file({"controlnet_cond_embedding.conv_in.weight": torch.zeros(16, 3, 3, 3)},
              tmp_path / "diffusers.safetensors")
    save_file({"input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}, tmp_path / "unet.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    for name, message in (("sd2", "made for another model"), ("diffusers", "diffusers-format"),
                          ("unet", "not a ControlNet"), ("junk", "safetensors")):
        with pytest.raises(control.ControlError, match=message):
            control.read(tmp_path / f"{name}.safetensors", model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_controlnet_opened_as_a_model_says_what_it_is(tmp_path):
    from engine.checkpoint import CheckpointError, load

    write_controlnet(tmp_path / "control_sd15_canny.safetensors")
    with pytest.raises(CheckpointError, match=api.CONTROLNET_NOTE):
        load(tmp_path / "control_sd15_canny.safetensors")


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """A tiny SD 1.x model with a random ControlNet in its controlnet folder and a zero-initialised one."""
    from engine.checkpoint import load
    from engine.train_control import from_unet

    folder = tmp_path_factory.mktemp("sd1")
    path = write_tiny(folder, "sd1")
    (folder / "controlnet").mkdir()
    write_controlnet(folder / "controlnet" / "edges.safetensors")
    fresh = from_unet(load(path))
    save_file({f"control_model.{k}": v.contiguous() for k, v in fresh.state_dict().items()},
              folder / "controlnet" / "fresh.safetensors")
    engine = api.Engine()
    yield path, engine
    engine.shutdown()


SQUARE = np.zeros((64, 64, 3), np.uint8)
SQUARE[16:48, 16:48] = 255


def generate(sd1, **kw):
    path, engine = sd1
    ev = engine.wait(engine.submit(api.Request(model=str(path), prompt="a cat", width=64, height=64, steps=4, seed=1,
                                               **kw)))
    return ev


def image(sd1, **kw) -> np.ndarray:
    ev = generate(sd1, **kw)
    assert isinstance(ev, api.Result), getattr(ev, "message", ev)
    return ev.images[0].astype(int)


def unit(name="edges", **kw):
    return (api.Control(name, SQUARE, **kw),)


def test_units_act_with_their_strength_and_only_in_their_window(sd1):
    plain = image(sd1)
    full = image(sd1, control=unit(preprocessor="canny"))
    assert np.abs(full - plain).mean() > 2
    assert np.array_equal(image(sd1, control=unit(preprocessor="canny", strength=0.0)), plain)
    half = image(sd1, control=unit(preprocessor="canny", strength=0.5))
    assert 0 < np.abs(half - plain).mean() < np.abs(full - plain).mean()
    late = image(sd1, control=unit(preprocessor="canny", start=0.5))
    assert 0 < np.abs(late - plain).mean() < np.abs(full - plain).mean()
    assert not np.array_equal(late, full)
    two = image(sd1, control=unit(preprocessor="canny") + unit(preprocessor="none"))
    assert not np.array_equal(two, full)
    assert np.array_equal(image(sd1, control=unit("fresh")), plain), "a zero-initialised ControlNet changes nothing"


def test_units_follow_the_latent_through_tiles_seamless_and_cropped_inpainting(sd1):
    for kw in ({"tiles": api.TileSettings(mode="on", tile=4, overlap=2)}, {"seamless": "xy"}):
        assert not np.array_equal(image(sd1, control=unit(), **kw), image(sd1, **kw))
    mask = np.zeros((64, 64), np.uint8)
    mask[40:60, 40:60] = 255
    pic = np.full((64, 64, 3), 128, np.uint8)
    out = image(sd1, task="inpaint", image=pic, mask=mask, inpaint_crop=True, control=unit())
    assert np.array_equal(out[:30, :30], pic[:30, :30])
    cut = control.cropped(unit(), (128, 128), (16, 32, 48, 64))[0].image
    assert cut.shape == (32, 32, 3) and abs(cut.mean() - 255 / 2) < 6 and cut[:, :12].max() == 0


def test_bad_control_requests_fail_clearly_and_the_engine_goes_on(sd1):
    cases = ((unit("missing"), "ControlNet 'missing' not found"),
             ((api.Control("edges", None),), "has no control image"),
             (unit(preprocessor="depth"), "unknown control preprocessor"),
             (unit(start=0.6, end=0.4), "0 <= start < end <= 1"))
    for units, message in cases:
        ev = generate(sd1, control=units)
        assert isinstance(ev, api.Failed) and message in ev.message
    assert isinstance(generate(sd1, control=unit()), api.Result)


def test_controlnet_training_starts_as_the_model_learns_and_resumes(tmp_path):
    """train-control on the bundled text model: a few steps move the zero convs off zero, the file loads strictly
    for that model, and an interrupted run resumes from its step."""
    from engine.checkpoint import load
    from engine.train import RunSpec
    from engine.train_control import train_control

    base = "resources/models/world-txt2img.safetensors"
    spec = RunSpec(tmp_path / "run", steps=3, batch=2, lr=1e-3, pool_size=8, progress=False, warmup=1)
    info = train_control(base, spec, tmp_path / "c.safetensors")
    assert info["steps"] == 3 and np.isfinite(info["final_loss"])
    net = control.read(tmp_path / "c.safetensors", load(base))
    assert any(float(z[0].weight.abs().max()) > 0 for z in net.zero_convs)
    spec.steps = 5
    assert train_control(base, spec, tmp_path / "c.safetensors")["steps"] == 5


def test_a_controlnet_on_the_cpu_is_packed_and_reads_as_the_plain_one(tmp_path):
    """The hint block's 256-channel convs make any ControlNet wide: its convs are packed for oneDNN at load."""
    from engine.models.latent_diffusion import LatentDiffusion
    from engine.models.onednn import PackedConv2d, packable
    from engine.models.winograd import WinogradConv2d

    if not packable():
        pytest.skip("oneDNN cannot pack weights here")
    model = randomize_(LatentDiffusion(tiny("sd1"))).eval()
    plain = write_controlnet(tmp_path / "a.safetensors").eval()
    packed = control.read(tmp_path / "a.safetensors", model)
    assert any(isinstance(m, (PackedConv2d, WinogradConv2d)) for m in packed.modules())
    assert not any(isinstance(m, (PackedConv2d, WinogradConv2d)) for m in plain.modules())
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 3, 32, generator=g)
    hint = torch.rand(1, 3, 64, 64, generator=g)
    with torch.inference_mode():
        for a, b in zip(plain(x, hint, t, ctx), packed(x, hint, t, ctx)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_the_cli_takes_a_controlnet_and_a_png_made_with_one_reproduces_it(sd1, tmp_path):
    from PIL import Image

    from engine.__main__ import main
    from engine.images import read_png_text

    path, _ = sd1
    Image.fromarray(SQUARE).save(tmp_path / "guide.png")
    common = ["--steps", "3", "--out"]
    assert main(["generate", "--model", str(path), "--prompt", "a cat", "--width", "64", "--height", "64",
                 "--control", "edges", "--control-image", str(tmp_path / "guide.png"), "--control-strength", "0.7",
                 "--control-end", "0.8", *common, str(tmp_path / "a.png")]) == 0
    text = read_png_text(tmp_path / "a.png")["parameters"]
    assert '"Model: edges, Module: canny, Weight: 0.7, Guidance Start: 0.0, Guidance End: 0.8"' in text
    assert main(["generate", "--from", str(tmp_path / "a.png"), "--out", str(tmp_path / "b.png")]) == 0
    assert main(["generate", "--from", str(tmp_path / "a.png"), "--control-strength", "0", "--out",
                 str(tmp_path / "c.png")]) == 0
    a, b, c = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_the_bundled_controlnet_is_what_its_recipe_trains():
    import json
    from pathlib import Path

    from safetensors import safe_open

    from engine.api import default_models_dir
    from engine.train_control import RECIPE

    path = Path(default_models_dir()) / "controlnet" / "world-canny.safetensors"
    with safe_open(str(path), "pt") as f:
        info = json.loads(f.metadata()["latent_canvas.training"])
    assert info["base"] == "world-txt2img.safetensors" and info["preprocessor"] == "canny"
    assert [info[k] for k in ("batch", "lr", "optimizer", "seed")] == [RECIPE[k] for k in ("batch", "lr", "optimizer",
                                                                                          "seed")]
    assert abs(info["minutes"] - RECIPE["minutes"]) < 0.5
