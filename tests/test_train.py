"""Training: KL / VQ autoencoder losses fall, LDM loss falls, resume continues, saved files load strictly."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import train_data as data
from engine.checkpoint import load
from engine.models.first_stage_model import make_first_stage
from engine.train import RunSpec, ae_config, ae_loss, train_ae
from engine.train_ldm import Batches, build_model, diffusion_loss, train_ldm

TINY = dict(model_channels=32, context_dim=32, n_layer=1, tiny=True)


@pytest.fixture(scope="module")
def ae_path(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("ae")
    train_ae(RunSpec(run, steps=2, batch=4, pool_size=8, progress=False), ae_config(n_embed=64, resolution=16),
             size=16, eval_n=4)
    return run / "ae.pt"


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_autoencoder_loss_falls_and_regularizer_gets_gradients(kind):
    torch.manual_seed(0)
    fs = make_first_stage(ae_config(n_embed=64, resolution=16, kind=kind))
    x = data.to_tensor(data.world_pool(range(8), 16).images)
    opt = torch.optim.AdamW(fs.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        loss, _ = ae_loss(fs, x)
        opt.zero_grad()
        loss.backward()
        reg = fs.quantize.embedding.weight if kind == "vq" else fs.quant_conv.weight
        assert reg.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_f8_first_stage_gives_latents_an_eighth_of_the_side():
    """ae_config(factor=8), the paper's LDM-8: one more level than f4, 8x8 latents for 64 px; other factors refused."""
    from engine.train import reconstruct

    fs = make_first_stage(ae_config(resolution=64, z=8, factor=8)).eval()
    assert fs.cfg.factor == 8 and len(fs.cfg.ch_mult) == 4
    x = data.to_tensor(data.world_pool(range(2), 64).images)
    with torch.no_grad():
        assert fs.encode(x).mode().shape == (2, 8, 8, 8)
        assert reconstruct(fs, x).shape == x.shape
    with pytest.raises(ValueError, match="factor"):
        ae_config(factor=2)


def test_outpainting_masks_are_bands_along_one_side_or_two_adjacent_ones():
    """random_masks(outpaint=1): every mask a band of 15-50% of the image along one side or two adjacent sides;
    the default (outpaint 0) only boxes and strokes, none a whole side; a share of 0.25 about a quarter bands."""
    rng = np.random.default_rng(0)
    masks = data.random_masks(rng, 200, 32, outpaint=1.0)
    for m in masks.astype(bool):
        full = [m[:, 0].all(), m[0, :].all(), m[:, -1].all(), m[-1, :].all()]
        assert 1 <= sum(full) <= 2 and not (full[0] and full[2]) and not (full[1] and full[3])
        assert 0.15 * 32 - 1 <= max(m.all(axis=0).sum(), m.all(axis=1).sum()) <= 0.5 * 32
    assert {sum([m[:, 0].all(), m[0, :].all(), m[:, -1].all(), m[-1, :].all()]) for m in masks.astype(bool)} == {1, 2}
    plain = data.random_masks(np.random.default_rng(1), 50, 32)
    assert np.array_equal(plain, data.random_masks(np.random.default_rng(1), 50, 32, outpaint=0.0))
    assert not any(m[:, 0].all() or m[0, :].all() for m in plain.astype(bool))
    mixed = data.random_masks(np.random.default_rng(2), 400, 32, outpaint=0.25)
    bands = sum(bool(m[:, 0].all() or m[0, :].all() or m[:, -1].all() or m[-1, :].all()) for m in mixed)
    assert 60 <= bands <= 140


def test_edge_weight_scales_the_gradient_term_alone():
    from engine.train import gradient_loss, vq_forward

    torch.manual_seed(0)
    fs = make_first_stage(ae_config(n_embed=64, resolution=16, kind="vq", z=4)).eval()
    x = data.to_tensor(data.world_pool(range(4), 16).images)
    with torch.no_grad():
        loss = {w: ae_loss(fs, x, edge=w)[0].item() for w in (0.0, 0.5, 2.0)}
        grad = gradient_loss(vq_forward(fs, x)[0], x).item()
    assert grad > 0.01
    assert loss[2.0] - loss[0.0] == pytest.approx(2.0 * grad, rel=1e-4)
    assert loss[0.5] - loss[0.0] == pytest.approx(0.5 * grad, rel=1e-4)


def test_blur_mix_smooths_half_the_batch_by_a_random_share_of_a_binomial_blur():
    from engine.train import binomial_blur, blur_mix

    z = torch.zeros(1, 1, 5, 5)
    z[0, 0, 2, 2] = 16.0
    b = binomial_blur(z)[0, 0]
    assert b[1:4, 1:4].tolist() == [[1, 2, 1], [2, 4, 2], [1, 2, 1]] and b.sum() == 16
    assert torch.allclose(binomial_blur(torch.full((1, 3, 4, 4), 0.7)), torch.full((1, 3, 4, 4), 0.7))
    torch.manual_seed(0)
    z = torch.randn(64, 3, 8, 8)
    assert torch.equal(blur_mix(z, 0.0), z)
    out = blur_mix(z, 0.6)
    d, hp = (out - z).flatten(1), (binomial_blur(z) - z).flatten(1)
    share = (d * hp).sum(1) / (hp * hp).sum(1)
    assert torch.allclose(d, share[:, None] * hp, atol=1e-5)
    untouched = share.abs() < 1e-6
    assert 16 <= int(untouched.sum()) <= 48
    assert bool((share[~untouched] > 0).all() and (share <= 0.6 + 1e-5).all()) and share.max() > 0.3


def test_train_ae_cli_latent_blur_reaches_the_loss_and_is_recorded(tmp_path, monkeypatch):
    import engine.train as train
    from engine.__main__ import main

    seen = []
    real = train.blur_mix
    monkeypatch.setattr(train, "blur_mix", lambda z, amount: seen.append(amount) or real(z, amount))
    run = tmp_path / "ae"
    assert main(["train-ae", "--steps", "2", "--batch", "2", "--pool", "4", "--size", "16", "--run-dir", str(run),
                 "--no-progress", "--latent-blur", "0.4"]) == 0
    assert seen == [0.4, 0.4]
    assert torch.load(run / "ae.pt", weights_only=True)["latent_blur"] == 0.4
    assert json.loads((run / "ae.json").read_text())["latent_blur"] == 0.4


@pytest.mark.parametrize("kind", ["txt2img", "inpaint"])
def test_ldm_loss_falls_on_a_fixed_batch(ae_path, kind):
    torch.manual_seed(0)
    model = build_model(kind, ae_path, size=16, **TINY)
    batches = Batches(model, kind, data.world_pool(range(8), 16), np.random.default_rng(0), world=False)
    params = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    z0, kw = batches(8)
    kw = {k: v.detach() for k, v in kw.items()}

    def fixed_loss():
        return diffusion_loss(model, z0, kw, torch.Generator().manual_seed(1))

    before = fixed_loss().item()
    for _ in range(20):
        opt.zero_grad()
        fixed_loss().backward()
        opt.step()
    assert fixed_loss().item() < 0.8 * before


@pytest.fixture(scope="module")
def ae4_path(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ae4")
    train_ae(RunSpec(run, steps=1, batch=2, pool_size=4, progress=False), ae_config(resolution=16, z=4), size=16,
             eval_n=2, edge=2.0)
    return run / "ae.pt"


def test_train_ae_records_its_edge_weight_and_latent_channels(ae4_path):
    out = torch.load(ae4_path, weights_only=True)
    facts = json.loads(ae4_path.with_name("ae.json").read_text())
    assert out["edge"] == facts["edge"] == 2.0 and facts["config"]["z_channels"] == 4


@pytest.mark.parametrize("kind", ["txt2img", "layout", "semantic", "inpaint", "sr4"])
def test_every_kind_trains_on_a_four_channel_first_stage(ae4_path, kind):
    torch.manual_seed(0)
    extra = {"raster": True} if kind == "layout" else {}
    model = build_model(kind, ae4_path, size=16, **TINY, **extra)
    assert model.config.unet.out_channels == 4
    pool = data.world_pool(range(4), 16, 4 if kind == "sr4" else 0)
    z0, kw = Batches(model, kind, pool, np.random.default_rng(0), world=False)(4)
    assert z0.shape[1] == 4
    loss = diffusion_loss(model, z0, kw, torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and model.model.diffusion_model.input_blocks[0][0].weight.grad.abs().sum() > 0


def test_resume_continues_from_saved_step_and_file_loads_strictly(ae_path, tmp_path):
    run = tmp_path / "run"
    out = tmp_path / "m.safetensors"
    spec = lambda steps: RunSpec(run, steps=steps, batch=2, pool_size=8, progress=False)
    first = train_ldm("layout", spec(3), ae_path, out, size=16, **TINY)
    assert first["steps"] == 3
    saved = torch.load(run / "state.pt", weights_only=True)
    second = train_ldm("layout", spec(5), ae_path, out, size=16, **TINY)
    state = torch.load(run / "state.pt", weights_only=True)
    assert second["steps"] == 5 and len(state["losses"]) == 5
    assert state["losses"][:3] == saved["losses"]
    assert (run / "loss.png").stat().st_size > 0

    model = load(out)
    keys = list(model.state_dict())
    for prefix in ("model.diffusion_model.", "first_stage_model.quant_conv.", "cond_stage_model.transformer."):
        assert any(k.startswith(prefix) for k in keys), prefix
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert set(f.keys()) == set(keys)
        assert f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").dtype == torch.float16
        facts = json.loads(f.metadata()["latent_canvas.training"])
    assert facts["steps"] == 5 and facts["first_stage"]["scale_factor"] == model.config.scale_factor
    assert "config" not in facts["first_stage"]
    assert model.config.cond.tokenizer == "layout" and model.config.family == "world-layout"
    assert model.config.first_stage.kind == "kl" and model.config.scale_factor > 0 and model.config.parameterization == "v"
    from engine.families import tasks_for

    assert "layout" in tasks_for(model.config)


def test_min_snr_weighting_down_weights_low_noise_steps(ae_path):
    torch.manual_seed(0)
    model = build_model("sr4", ae_path, size=16, **TINY)
    batches = Batches(model, "sr4", data.world_pool(range(8), 16, 4), np.random.default_rng(0), world=False)
    z0, kw = batches(8)
    with torch.no_grad():
        plain = diffusion_loss(model, z0, kw, torch.Generator().manual_seed(3), min_snr=0)
        weighted = diffusion_loss(model, z0, kw, torch.Generator().manual_seed(3))
    assert 0 < weighted < plain


def test_unbounded_min_snr_gamma_is_the_eps_loss_of_the_paper(ae_path):
    """v loss x min(SNR, gamma)/(SNR + 1) with gamma -> inf is the eps MSE (L_simple) of the eps the v output implies."""
    torch.manual_seed(0)
    model = build_model("sr4", ae_path, size=16, **TINY)
    batches = Batches(model, "sr4", data.world_pool(range(8), 16, 4), np.random.default_rng(0), world=False)
    z0, kw = batches(8)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        t = torch.randint(0, model.config.schedule.timesteps, (8,), generator=g)
        ac = model.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
        eps = torch.randn(z0.shape, generator=g)
        zt = ac.sqrt() * z0 + (1 - ac).sqrt() * eps
        eps_hat = ac.sqrt() * model.model(zt, t, **kw) + (1 - ac).sqrt() * zt
        simple = diffusion_loss(model, z0, kw, torch.Generator().manual_seed(3), min_snr=1e9)
    assert torch.allclose(simple, (eps_hat - eps).pow(2).mean(), rtol=1e-4)


def test_importance_sampled_timesteps_keep_the_objective_and_skip_near_zero_weights(ae_path):
    """Drawing t in proportion to its Min-SNR weight, with the mean weight on every sample, estimates the same loss as
    uniform t with per-sample weights, and hardly ever draws the high-noise steps whose weight is near zero."""
    from types import SimpleNamespace

    from engine.train_ldm import loss_weights

    model = build_model("txt2img", ae_path, size=16, **TINY)
    seen = []

    def zero_v(zt, t, **kw):
        seen.append(t)
        return torch.zeros_like(zt)

    fake = SimpleNamespace(config=model.config, alphas_cumprod=model.alphas_cumprod, model=zero_v)
    z0 = torch.randn(1, 3, 4, 4).expand(20000, -1, -1, -1)
    loss = {}
    for importance in (False, True):
        seen.clear()
        loss[importance] = diffusion_loss(fake, z0, {}, torch.Generator().manual_seed(5), importance=importance).item()
        t = seen[0]
        loss[(importance, "high")] = (t > 600).float().mean().item()
    w = loss_weights(model)
    assert w[700] < 0.05 * w.max()
    assert loss[True] == pytest.approx(loss[False], rel=0.03)
    assert loss[(False, "high")] > 0.35 and loss[(True, "high")] < 0.05


class _Planted:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_first_stage_and_run_state_files_load_without_running_pickled_code(tmp_path):
    """ae.pt and state.pt are read with torch's weights-only unpickler: a planted object is refused, not run."""
    from engine.train import Trainer, load_ae

    planted = _Planted()
    planted.target = str(tmp_path / "ran")
    torch.save({"config": {}, "state_dict": {}, "scale_factor": 1.0, "x": planted}, tmp_path / "ae.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        load_ae(tmp_path / "ae.pt")
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": planted}, run / "state.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        Trainer(RunSpec(run), [torch.nn.Parameter(torch.zeros(1))]).resume()
    assert not (tmp_path / "ran").exists()


def test_lr_warms_up_then_decays(tmp_path):
    from engine.train import Trainer

    trainer = Trainer(RunSpec(tmp_path, steps=1000, lr=1e-3, warmup=100, progress=False), [torch.nn.Parameter(torch.zeros(1))])
    lrs = [trainer.lr_at(s) for s in (0, 50, 100, 500, 999)]
    assert lrs[0] < lrs[1] < lrs[2] and lrs[2] > lrs[3] > lrs[4] >= 0.1e-3 - 1e-9


def test_trainer_update_is_clipped_adamw_with_an_ema(tmp_path):
    """The fused optimizer step, foreach clipping and foreach EMA equal the textbook per-tensor loop."""
    from engine.train import Trainer

    torch.manual_seed(0)
    shapes = [(8, 4, 3, 3), (8,), (5, 7)]
    live = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in live]
    trainer = Trainer(RunSpec(tmp_path, lr=1e-2, warmup=1, progress=False), live, ema_module=torch.nn.Module())
    opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.01, betas=(0.9, 0.99), foreach=False)
    ema = [p.detach().clone() for p in ref]
    for step in range(5):
        targets = [torch.randn(s) * 3 for s in shapes]
        trainer.update(sum(((p - t) ** 2).sum() for p, t in zip(live, targets)))
        for g in opt.param_groups:
            g["lr"] = trainer.lr_at(step)
        opt.zero_grad()
        sum(((p - t) ** 2).sum() for p, t in zip(ref, targets)).backward()
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in ref))
        assert norm > 1.0
        for p in ref:
            p.grad.mul_(1.0 / (norm + 1e-6))
        opt.step()
        d = min(0.998, (1 + step) / (10 + step))
        ema = [e * d + p.detach() * (1 - d) for e, p in zip(ema, ref)]
    for a, b in zip(live, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(trainer.ema, ema):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert trainer.step == 5


def test_decoder_finetune_keeps_encoder_latents_and_scale(ae_path, tmp_path):
    from engine.train import finetune_decoder, load_ae

    out = finetune_decoder(RunSpec(tmp_path / "ft", steps=3, batch=2, pool_size=8, progress=False), ae_path,
                           size=16, eval_n=4)
    _, before, scale = load_ae(ae_path)
    after = out["state_dict"]
    assert out["scale_factor"] == scale and out["steps"] == 3
    for k, v in before.items():
        same = torch.equal(v, after[k])
        assert same if k.startswith(("encoder.", "quant_conv.")) else True
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert (tmp_path / "ft" / "ae.pt").exists()


def test_multiscale_windows_pair_each_latent_window_with_its_label_crop():
    from types import SimpleNamespace

    from engine.train_ldm import ScaledScenes

    class Coded(ScaledScenes):
        """Scenes whose latent cell (Y, X) carries the label at pixel (4Y, 4X), so a misaligned crop shows."""

        def render(self, size, n):
            labels = self.rng.integers(0, 9, (n, size, size))
            return labels, torch.from_numpy(labels[:, None, ::4, ::4].astype(np.float32)).repeat(1, 3, 1, 1)

    model = SimpleNamespace(config=SimpleNamespace(factor=4), cond_stage_model=SimpleNamespace(encode=lambda t: t))
    scenes = Coded(SimpleNamespace(rng=np.random.default_rng(0), model=model, kind="semantic"), (64, 128), pool_size=8,
                   window=8)
    for step in range(3):
        z0, kw = scenes(12)
        assert z0.shape == (12, 3, 8, 8) and kw["concat"].shape == (12, 32, 32)
        assert torch.equal(z0[:, 0], kw["concat"][:, ::4, ::4].float())
        scenes.refresh(step)
    assert {len(v) for v in scenes.z.values()} == {8}


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_semantic_trains_with_any_share_of_multiscale_windows(ae_path, tmp_path, share):
    import json

    from engine.__main__ import main

    out = tmp_path / "sem.safetensors"
    assert main(["train-ldm", "--kind", "semantic", "--ae", str(ae_path), "--steps", "1", "--batch", "2", "--pool", "8",
                 "--size", "16", "--multiscale", str(share), "--out", str(out), "--run-dir", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    facts = json.loads((tmp_path / "run" / "info.json").read_text())
    assert facts["steps"] == 1 and facts["multiscale"]["share"] == share


def test_train_ldm_cli_width_and_channel_mult_shape_the_unet_and_reload(ae_path, tmp_path):
    from engine.__main__ import main

    out = tmp_path / "wide.safetensors"
    assert main(["train-ldm", "--kind", "txt2img", "--ae", str(ae_path), "--steps", "1", "--batch", "2", "--pool", "8",
                 "--size", "16", "--out", str(out), "--run-dir", str(tmp_path / "wide"), "--no-progress",
                 "--width", "64", "--channel-mult", "1,1,2"]) == 0
    model = load(out)
    unet = model.config.unet
    assert (unet.model_channels, tuple(unet.channel_mult)) == (64, (1, 1, 2))
    assert model.model.diffusion_model.input_blocks[0][0].weight.shape[0] == 64
    assert model.model.diffusion_model.middle_block[0].in_layers[0].weight.shape[0] == 128


def test_train_ldm_objects_weights_every_pool_it_renders_and_records_it(ae_path, tmp_path, monkeypatch):
    from engine.__main__ import main
    from engine.world.scene import object_count

    drawn = []
    render = data.world_pool
    monkeypatch.setattr(data, "world_pool", lambda seeds, *a, **k: drawn.extend(seeds) or render(seeds, *a, **k))
    spec = RunSpec(tmp_path / "direct", steps=3, batch=2, pool_size=16, refresh_every=1, progress=False)
    train_ldm("txt2img", spec, ae_path, tmp_path / "direct.safetensors", size=16, objects=(0, 0, 1), **TINY)
    assert len(drawn) >= 16 + 2 * 2 and {object_count(int(s)) for s in drawn} == {3}
    drawn.clear()
    spec = RunSpec(tmp_path / "scaled", steps=1, batch=4, pool_size=8, progress=False)
    train_ldm("layout", spec, ae_path, tmp_path / "scaled.safetensors", size=16, multiscale=0.5, objects=(0, 1, 0),
              **TINY)
    assert len(drawn) > 8 and {object_count(int(s)) for s in drawn} == {2}
    args = ["train-ldm", "--kind", "txt2img", "--ae", str(ae_path), "--steps", "1", "--batch", "2", "--pool", "8",
            "--size", "16", "--out", str(tmp_path / "m.safetensors"), "--run-dir", str(tmp_path / "run"),
            "--no-progress"]
    assert main([*args, "--objects", "1,2,4"]) == 0
    assert json.loads((tmp_path / "run" / "info.json").read_text())["objects"] == [1.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="image folder"):
        train_ldm("txt2img", RunSpec(tmp_path / "f", steps=1), ae_path, tmp_path / "f.safetensors",
                  images_dir=str(tmp_path), objects=(1, 1, 1))


def test_pooled_txt2img_feeds_the_captions_mean_token_through_label_emb_and_reloads(ae_path, tmp_path):
    from engine.__main__ import main

    out = tmp_path / "pooled.safetensors"
    assert main(["train-ldm", "--kind", "txt2img", "--ae", str(ae_path), "--steps", "1", "--batch", "2", "--pool", "8",
                 "--size", "16", "--out", str(out), "--run-dir", str(tmp_path / "pooled"), "--no-progress",
                 "--pooled"]) == 0
    model = load(out).float().eval()
    assert model.config.pooled_context and model.config.unet.num_classes == "sequential"
    assert model.config.unet.adm_in_channels == model.config.unet.context_dim
    x, t = torch.randn(1, model.config.first_stage.embed_dim, 4, 4), torch.tensor([300])
    ctx = model.get_learned_conditioning(["a red circle on grass"]).float()
    with torch.no_grad():
        implicit = model.model(x, t, context=ctx)
        explicit = model.model.diffusion_model(x, t, context=ctx, y=ctx.mean(1))
        other = model.model.diffusion_model(x, t, context=ctx, y=torch.zeros_like(ctx.mean(1)))
    torch.testing.assert_close(implicit, explicit)
    assert not torch.allclose(implicit, other)
    plain = build_model("txt2img", ae_path, size=16, **TINY)
    assert not plain.config.pooled_context and not hasattr(plain.model.diffusion_model, "label_emb")


def test_warm_start_copies_a_layout_unet_into_txt2img_and_the_run_records_it(ae_path, tmp_path):
    from engine.__main__ import main
    from engine.checkpoint import read_state_dict
    from engine.train_ldm import warm_start

    def train(kind, name, *extra):
        out = tmp_path / f"{name}.safetensors"
        assert main(["train-ldm", "--kind", kind, "--ae", str(ae_path), "--steps", "1", "--batch", "2", "--pool", "8",
                     "--size", "16", "--out", str(out), "--run-dir", str(tmp_path / name), "--no-progress",
                     *extra]) == 0
        return out

    src = train("layout", "layout", "--raster")
    sd, _ = read_state_dict(src)
    model = build_model("txt2img", ae_path, size=16)
    facts = warm_start(model, src)
    assert facts["unet_sliced"] == ["input_blocks.0.0.weight"] and facts["unet"] > 50
    unet = model.model.diffusion_model
    first = sd["model.diffusion_model.input_blocks.0.0.weight"]
    z = model.config.unet.out_channels
    assert first.shape[1] > unet.input_blocks[0][0].weight.shape[1] == z
    assert torch.equal(unet.input_blocks[0][0].weight, first[:, :z].float())
    assert torch.equal(unet.out[2].weight, sd["model.diffusion_model.out.2.weight"].float())
    tr = model.cond_stage_model.transformer
    assert "transformer.token_emb.weight" in facts["cond_fresh"] and facts["cond"] > 0
    assert tr.token_emb.weight.shape[0] != sd["cond_stage_model.transformer.token_emb.weight"].shape[0]
    assert torch.equal(tr.attn_layers.layers[0][1].to_q.weight,
                       sd["cond_stage_model.transformer.attn_layers.layers.0.1.to_q.weight"].float())

    with pytest.raises(ValueError, match="same UNet config"):
        warm_start(build_model("txt2img", ae_path, size=16, model_channels=64), src)

    warm = train("txt2img", "warm", "--init-from", str(src))
    sd, meta = read_state_dict(warm)
    assert json.loads(meta["latent_canvas.training"])["init_from"]["from"] == "layout.safetensors"
    emb = sd["cond_stage_model.transformer.token_emb.weight"].float()
    same = build_model("txt2img", ae_path, size=16)
    assert "transformer.token_emb.weight" not in warm_start(same, warm)["cond_fresh"]
    assert torch.equal(same.cond_stage_model.transformer.token_emb.weight, emb)
    words = tuple(reversed(same.config.cond.vocab))
    other = build_model("txt2img", ae_path, size=16, vocab=words)
    assert other.cond_stage_model.transformer.token_emb.weight.shape == emb.shape
    assert "transformer.token_emb.weight" in warm_start(other, warm)["cond_fresh"]
