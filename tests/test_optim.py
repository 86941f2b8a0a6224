"""Muon and the combined optimizer the trainer steps; the channels_last pool encoder of LDM training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.optim import Muon, Optimizers, make_optimizer, orthogonalize
from engine.train import RunSpec, Trainer


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-6), (torch.float32, 2e-3)])
def test_newton_schulz_flattens_the_spectrum_and_keeps_the_singular_vectors(dtype, atol):
    """In float32 the Gram form's rounding grows with 1 / (smallest singular value); Muon's reference runs in bf16."""
    torch.manual_seed(0)
    for shape in [(3, 16, 40), (2, 40, 16), (1, 8, 8)]:
        u, _, vh = torch.linalg.svd(torch.randn(shape, dtype=torch.float64), full_matrices=False)
        s = torch.logspace(0, -2, min(shape[1:]), dtype=torch.float64).expand(shape[0], -1)
        o = orthogonalize((u @ torch.diag_embed(s) @ vh).to(dtype)).double()
        core = u.mT @ o @ vh.mT
        diag = core.diagonal(dim1=-2, dim2=-1)
        assert diag.min() > 0.6 and diag.max() < 1.25, diag
        torch.testing.assert_close(core, torch.diag_embed(diag), atol=atol, rtol=0)


def test_newton_schulz_on_the_gram_matrix_is_the_plain_iteration():
    """Wide matrices iterate on X X^T (cheaper); the result is the plain quintic iteration's, tall ones transposed."""
    torch.manual_seed(0)
    a, b, c = 3.4445, -4.7750, 2.0315
    for shape in [(4, 8, 72), (3, 64, 16), (2, 6, 12)]:
        g = torch.randn(shape, dtype=torch.float64)
        x = g if shape[1] <= shape[2] else g.mT
        x = x / x.norm(dim=(-2, -1), keepdim=True)
        for _ in range(5):
            s = x @ x.mT
            x = a * x + (b * s + c * s @ s) @ x
        want = x if shape[1] <= shape[2] else x.mT
        torch.testing.assert_close(orthogonalize(g), want, rtol=0, atol=1e-7)
        torch.testing.assert_close(orthogonalize(g.float()), want.float(), rtol=0, atol=2e-5)


def test_muon_step_is_the_orthogonalised_nesterov_momentum_at_adamw_scale():
    torch.manual_seed(0)
    conv = torch.nn.Parameter(torch.randn(6, 4, 3, 3))
    start = conv.detach().clone()
    opt = Muon([conv], lr=0.1, momentum=0.9, weight_decay=0.5)
    grads = [torch.randn_like(conv) for _ in range(2)]
    buf = torch.zeros_like(conv)
    want = start.clone()
    for g in grads:
        conv.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g
        u = (0.1 * g + 0.9 * buf).reshape(6, -1)
        want = want * (1 - 0.1 * 0.5) - 0.1 * 0.2 * math.sqrt(36) * orthogonalize(u[None])[0].view_as(conv)
    torch.testing.assert_close(conv.detach(), want, rtol=1e-5, atol=1e-6)

    one = torch.nn.Parameter(start.clone())
    one.grad = grads[0]
    Muon([one], lr=0.1, weight_decay=0.0).step()
    rms = float((one.detach() - start).pow(2).mean().sqrt())
    assert 0.6 * 0.2 * 0.1 < rms < 1.1 * 0.2 * 0.1  # Moonlight's scaling: an update RMS of about 0.2 lr, as AdamW's


def test_muon_with_adamw_fits_a_small_regression():
    """Muon on the weight matrices and AdamW on the biases drive a two-layer net's loss down as AdamW alone does."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = torch.tanh(x @ torch.randn(8, 3))
    losses = {}
    for kind in ("adamw", "muon"):
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
        params = list(net.parameters())
        opt = make_optimizer(params, 1e-2, kind, matrices=[net[0].weight, net[2].weight])
        first = None
        for _ in range(200):
            loss = (net(x) - y).pow(2).mean()
            first = first if first is not None else float(loss.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[kind] = (first, float(loss.detach()))
    for first, last in losses.values():
        assert last < 0.1 * first
    assert len(make_optimizer(params, 1e-2, "muon", matrices=[net[0].weight]).opts) == 2


def test_optimizer_choices_are_checked():
    p = [torch.nn.Parameter(torch.zeros(4, 4))]
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(p, 1e-3, "sgd")
    with pytest.raises(ValueError, match="weight matrices"):
        make_optimizer(p, 1e-3, "muon", matrices=[])


def test_a_muon_run_resumes_and_an_old_adamw_state_still_loads(tmp_path):
    torch.manual_seed(0)
    w, b = torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.zeros(8))
    spec = RunSpec(tmp_path / "m", lr=1e-2, progress=False, optimizer="muon")
    tr = Trainer(spec, [w, b], matrices=[w])
    for _ in range(3):
        tr.update((w.sum(1) + b).pow(2).sum())
    tr.save([w.detach().clone(), b.detach().clone()])
    again = Trainer(spec, [w, b], matrices=[w])
    again.resume()
    assert again.step == 3
    muon_state = again.opt.opts[0].state_dict()["state"]
    assert set(muon_state) == {0} and muon_state[0]["momentum_buffer"].abs().sum() > 0

    old = torch.optim.AdamW([w, b], lr=1e-2)
    (w.sum() + b.sum()).backward()
    old.step()
    plain = Optimizers(torch.optim.AdamW([w, b], lr=1e-2))
    plain.load_state_dict(old.state_dict())
    assert plain.opts[0].state_dict()["state"][0]["step"] == 1
    with pytest.raises(ValueError, match="holds 1 optimizers"):
        again.opt.load_state_dict(old.state_dict())


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    from engine.models.first_stage_model import make_first_stage
    from engine.train import ae_config, config_to_dict

    torch.manual_seed(0)
    cfg = ae_config(resolution=16)
    path = tmp_path_factory.mktemp("ae") / "ae.pt"
    torch.save({"config": config_to_dict(cfg), "state_dict": make_first_stage(cfg).state_dict(), "scale_factor": 0.7},
               path)
    return path


TINY = dict(model_channels=32, context_dim=32, n_layer=1, tiny=True)


def test_pool_encoder_gives_the_models_latents(tiny_ae):
    from engine import train_data as data
    from engine.train_ldm import PoolEncoder, build_model

    model = build_model("txt2img", tiny_ae, size=16, **TINY)
    images = data.world_pool(range(5), 16).images
    with torch.no_grad():
        want = model.encode_first_stage(data.to_tensor(images))
    got = PoolEncoder(model)(images)
    assert got.is_contiguous() and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert float(want.abs().mean()) > 0.01
    assert next(model.first_stage_model.parameters()).is_contiguous()


def test_inpaint_conditioning_through_the_pool_encoder_is_the_models_own(tiny_ae):
    from engine import train_data as data
    from engine.train_ldm import Batches, build_model

    model = build_model("inpaint", tiny_ae, size=16, **TINY)
    rng = np.random.default_rng(0)
    pool = data.world_pool(range(6), 16)
    batches = Batches(model, "inpaint", pool, rng, world=True)
    masks = data.random_masks(rng, 6, 16)
    got = batches.inpaint_cond(pool.images, masks)
    x, m = data.to_tensor(pool.images), torch.from_numpy(masks.astype(np.float32))[:, None]
    with torch.no_grad():
        want = model.cond_stage_model.encode((1 - m) * x - m)
    assert got.shape[1] == want.shape[1] + 1
    torch.testing.assert_close(got[:, :-1], want, rtol=1e-4, atol=1e-5)


def test_an_ldm_trains_with_muon_on_every_matrix_but_the_ends_and_embeddings(tiny_ae, tmp_path, monkeypatch):
    import engine.train as train
    from engine.train_ldm import matrices, train_ldm

    made = []
    real = train.Trainer.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(train.Trainer, "__init__", spy)
    spec = RunSpec(tmp_path / "run", steps=3, batch=2, pool_size=8, progress=False, optimizer="muon")
    info = train_ldm("txt2img", spec, tiny_ae, tmp_path / "m.safetensors", size=16, **TINY)
    assert info["optimizer"] == "muon" and info["steps"] == 3
    muon, adamw = made[0].opt.opts
    on_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    assert len(on_muon) > 20 and all(p.ndim >= 2 for g in muon.param_groups for p in g["params"])
    model = made[0].ema_module
    names = {id(p): n for n, p in [*model.model.named_parameters(), *model.cond_stage_model.named_parameters()]}
    left = sorted(names[id(p)] for g in adamw.param_groups for p in g["params"] if p.ndim >= 2)
    assert left == sorted(["diffusion_model.input_blocks.0.0.weight", "diffusion_model.out.2.weight",
                           "transformer.token_emb.weight", "transformer.pos_emb.emb.weight",
                           "transformer.to_logits.weight"]), left
    assert on_muon == {id(p) for p in matrices(model)}
    assert all(len(muon.state[p]["momentum_buffer"]) for g in muon.param_groups for p in g["params"])
