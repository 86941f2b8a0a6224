"""The first stage's optional patch-adversarial term: PatchGAN layout, VQGAN's adaptive weight, training and resume."""
import numpy as np
import torch
import torch.nn.functional as F

from engine import train_data as data
from engine.adversarial import Adversary, NLayerDiscriminator, adaptive_weight, layers_for
from engine.train import RunSpec, ae_config, train_ae


def test_discriminator_keys_and_shapes_are_the_first_stage_checkpoints_loss_discriminator():
    """taming-transformers' NLayerDiscriminator (ndf 64, 3 layers, batch norm), as `loss.discriminator.main.N`."""
    bn = lambda c: {"weight": (c,), "bias": (c,), "running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}
    want = {"main.0.weight": (64, 3, 4, 4), "main.0.bias": (64,), "main.2.weight": (128, 64, 4, 4),
            "main.5.weight": (256, 128, 4, 4), "main.8.weight": (512, 256, 4, 4), "main.11.weight": (1, 512, 4, 4),
            "main.11.bias": (1,)}
    for i, c in ((3, 128), (6, 256), (9, 512)):
        want |= {f"main.{i}.{k}": s for k, s in bn(c).items()}
    got = {k: tuple(v.shape) for k, v in NLayerDiscriminator().state_dict().items()}
    assert got == want
    for size in (8, 16, 32, 64):
        assert NLayerDiscriminator(ndf=8, n_layers=layers_for(size))(torch.zeros(2, 3, size, size)).shape[2] >= 2


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer_clamped():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 4))
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    lam = adaptive_weight((w * a).sum(), (w * b).sum(), w)
    assert torch.allclose(lam, a.norm() / (b.norm() + 1e-4))
    assert float(adaptive_weight((w * a).sum() * 1e6, (w * b).sum(), w)) == 1e4
    assert not lam.requires_grad


def _world(n: int, size: int = 32) -> torch.Tensor:
    return data.to_tensor(data.world_pool(range(n), size).images)


def test_discriminator_learns_to_tell_world_images_from_blurred_ones():
    torch.manual_seed(0)
    real = _world(16)
    fake = F.interpolate(F.avg_pool2d(real, 4), scale_factor=4, mode="bilinear")
    adv = Adversary(weight=1.0, start=0, lr=2e-4, ndf=16)
    first = adv.discriminator_step(real, fake, 0)
    for step in range(1, 40):
        last = adv.discriminator_step(real, fake, step)
    assert 0.7 < first < 1.3
    assert last < 0.4
    with torch.no_grad():
        assert float(adv.disc(real).mean()) > float(adv.disc(fake).mean())


def test_generator_term_waits_for_its_start_then_reaches_the_reconstruction_but_not_the_discriminator():
    torch.manual_seed(0)
    adv = Adversary(weight=0.5, start=3, ndf=8, n_layers=layers_for(16))
    last_layer = torch.nn.Parameter(torch.randn(3, 3, 1, 1))
    x = torch.randn(2, 3, 16, 16)
    rec = F.conv2d(x, last_layer)
    rec_loss = (rec - x).abs().mean()
    assert float(adv.generator_term(rec, rec_loss, last_layer, 2)) == 0.0
    assert adv.discriminator_step(x, rec, 2) is None
    term = adv.generator_term(rec, rec_loss, last_layer, 3)
    want = 0.5 * adaptive_weight(rec_loss, -adv.disc(rec).mean(), last_layer) * -adv.disc(rec).mean()
    assert torch.allclose(term, want, atol=1e-6)
    term.backward()
    assert last_layer.grad is not None and float(last_layer.grad.abs().sum()) > 0
    assert all(p.grad is None and p.requires_grad for p in adv.disc.parameters())


def test_train_ae_with_the_adversarial_term_records_it_and_resumes_the_discriminator(tmp_path):
    torch.set_num_threads(1)
    cfg = ae_config(resolution=16, z=4)
    kw = dict(size=16, eval_n=4, adversarial=0.5, disc_start=2, disc_width=8)
    out = train_ae(RunSpec(tmp_path, steps=4, batch=4, pool_size=8, progress=False), cfg, **kw)
    assert (out["adversarial"], out["disc_start"], out["disc_width"]) == (0.5, 2, 8)
    assert not any(k.startswith("loss.") for k in out["state_dict"])
    state = torch.load(tmp_path / "state.pt", weights_only=True)["module"]
    assert state["loss.discriminator.main.0.weight"].shape == (8, 3, 4, 4)
    assert state["loss.discriminator_optimizer"]["state"][0]["step"] == 2
    train_ae(RunSpec(tmp_path, steps=6, batch=4, pool_size=8, progress=False), cfg, **kw)
    resumed = torch.load(tmp_path / "state.pt", weights_only=True)["module"]
    assert resumed["loss.discriminator_optimizer"]["state"][0]["step"] == 4
    assert not torch.equal(resumed["loss.discriminator.main.0.weight"], state["loss.discriminator.main.0.weight"])
    assert np.isfinite(torch.load(tmp_path / "ae.pt", weights_only=True)["psnr"])
