"""CFG, mask-blended inpainting and regional prompting wrappers against direct computations."""
import pytest
import torch

from engine.config import ScheduleConfig
from engine.guidance import CFGDenoiser, DilatedDenoiser, MaskBlendDenoiser, Region, RegionalDenoiser
from engine.sampling import SAMPLERS, sample
from engine.schedules import DiscreteDenoiser, alphas_cumprod

AC = alphas_cumprod(ScheduleConfig())
B, C, H, Wd = 2, 4, 8, 8


def gen(seed):
    return torch.Generator().manual_seed(seed)


class Spy:
    """A conditional toy UNet (VP input, timestep) that records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_in, t, context=None, concat=None, y=None):
        self.calls.append(dict(x=x_in.clone(), t=t.clone(), context=context, concat=concat, y=y))
        out = torch.tanh(x_in) * 0.5 + context.mean((1, 2)).reshape(-1, 1, 1, 1) + t.reshape(-1, 1, 1, 1) / 1000
        if concat is not None:
            out = out + 0.3 * concat
        return out


def conds():
    g = gen(0)
    cond = {"context": torch.randn(B, 3, 5, generator=g), "concat": torch.randn(B, 1, H, Wd, generator=g)}
    uncond = {"context": torch.randn(B, 3, 5, generator=g)}
    return cond, uncond


def test_cfg_scale_one_is_single_conditional_pass():
    spy = Spy()
    den = DiscreteDenoiser(spy, AC)
    cond, uncond = conds()
    x, sigma = torch.randn(B, C, H, Wd, generator=gen(1)), torch.full((B,), 3.0)
    out = CFGDenoiser(den, 1.0)(x, sigma, cond=cond, uncond=uncond)
    assert len(spy.calls) == 1 and spy.calls[0]["x"].shape[0] == B
    assert torch.equal(out, den(x, sigma, **cond))


@pytest.mark.parametrize("batched", [True, False])
def test_cfg_formula_and_batching(batched):
    spy = Spy()
    den = DiscreteDenoiser(spy, AC)
    cond, uncond = conds()
    x, sigma = torch.randn(B, C, H, Wd, generator=gen(1)), torch.tensor([5.0, 0.7])
    out = CFGDenoiser(den, 7.5, batched=batched)(x, sigma, cond=cond, uncond=uncond)
    assert len(spy.calls) == (1 if batched else 2)
    if batched:
        assert spy.calls[0]["x"].shape[0] == 2 * B
    spy.calls.clear()
    d_c = den(x, sigma, **cond)
    d_u = den(x, sigma, context=uncond["context"], concat=cond["concat"])
    assert torch.allclose(out, d_u + 7.5 * (d_c - d_u), atol=1e-5)
    assert not torch.allclose(out, d_c, atol=1e-3)


def test_cfg_uncond_pass_keeps_concat_and_broadcasts_batch_one():
    spy = Spy()
    den = DiscreteDenoiser(spy, AC)
    cond, _ = conds()
    uncond = {"context": torch.zeros(1, 3, 5)}
    CFGDenoiser(den, 3.0)(torch.randn(B, C, H, Wd), torch.full((B,), 1.0), cond=cond, uncond=uncond)
    call = spy.calls[0]
    assert torch.equal(call["concat"][:B], cond["concat"]) and torch.equal(call["concat"][B:], cond["concat"])
    assert torch.equal(call["context"][:B], torch.zeros(B, 3, 5)) and torch.equal(call["context"][B:], cond["context"])


def test_cfg_runs_inside_sample_and_forwards_schedule():
    den = DiscreteDenoiser(Spy(), AC)
    cfg = CFGDenoiser(den, 4.0)
    assert cfg.sigma_max == den.sigma_max and torch.equal(cfg.get_sigmas("karras", 5), den.get_sigmas("karras", 5))
    cond, uncond = conds()
    out = sample("dpmpp_2m_karras", cfg, torch.randn(B, C, H, Wd, generator=gen(2)), 6, {"cond": cond, "uncond": uncond})
    assert out.shape == (B, C, H, Wd) and torch.isfinite(out).all()


def half_mask():
    m = torch.zeros(1, 1, H, Wd)
    m[..., :, Wd // 2:] = 1
    return m


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_mask_blend_known_region(name):
    spy = Spy()
    den = DiscreteDenoiser(spy, AC)
    cond, _ = conds()
    init = torch.randn(B, C, H, Wd, generator=gen(3))
    noise = torch.randn(B, C, H, Wd, generator=gen(4))
    mask = half_mask()
    blend = MaskBlendDenoiser(den, init, mask, noise)
    previews = []
    out = sample(name, blend, noise, 12, {"context": cond["context"]}, callback=previews.append, generator=gen(5), init=init, eta=1.0)
    known = mask.expand_as(init) == 0
    for call in spy.calls:
        sigma = den.t_to_sigma(call["t"].double()).float().reshape(-1, 1, 1, 1)
        x_ve = call["x"] * (sigma**2 + 1).sqrt()
        assert torch.allclose(x_ve[known], (init + noise * sigma)[known], atol=1e-4 * (1 + sigma.max().item()))
    assert all(torch.allclose(p["denoised"][known], init[known], atol=1e-5) for p in previews)
    assert torch.allclose(out[known], init[known], atol=1e-5)
    assert not torch.allclose(out[~known], init[~known], atol=1e-2)


def test_regional_weights_and_single_full_region():
    spy = Spy()
    den = DiscreteDenoiser(spy, AC)
    cond, _ = conds()
    x, sigma = torch.randn(B, C, H, Wd, generator=gen(6)), torch.full((B,), 2.0)
    other = {"context": torch.randn(B, 3, 5, generator=gen(7)), "concat": cond["concat"]}
    full = RegionalDenoiser(den, [Region(other, torch.ones(1, 1, H, Wd))])
    assert torch.allclose(full(x, sigma, **cond), den(x, sigma, **other), atol=1e-6)

    soft = torch.linspace(0, 0.9, Wd).expand(1, 1, H, Wd)
    two = RegionalDenoiser(den, [Region(other, soft), Region({"context": -other["context"]}, soft.flip(-1))], base_weight=0.2)
    ws = two.weights(x)
    assert len(ws) == 3 and all((w >= 0).all() for w in ws)
    assert torch.allclose(torch.stack(ws).sum(0), torch.ones_like(x), atol=1e-6)
    spy.calls.clear()
    out = two(x, sigma, **cond)
    assert len(spy.calls) == 3
    neg = {"context": -other["context"], "concat": cond["concat"]}
    expect = ws[0] * den(x, sigma, **cond) + ws[1] * den(x, sigma, **other) + ws[2] * den(x, sigma, **neg)
    assert torch.allclose(out, expect, atol=1e-6)


def test_regional_over_cfg_merges_cond_one_level():
    spy = Spy()
    den = DiscreteDenoiser(spy, AC)
    cond, uncond = conds()
    left = torch.zeros(1, 1, H, Wd)
    left[..., : Wd // 2] = 1
    region_ctx = torch.randn(B, 3, 5, generator=gen(8))
    reg = RegionalDenoiser(CFGDenoiser(den, 5.0), [Region({"cond": {"context": region_ctx}}, left)])
    x, sigma = torch.randn(B, C, H, Wd, generator=gen(9)), torch.full((B,), 1.5)
    out = reg(x, sigma, cond=cond, uncond=uncond)
    guided = CFGDenoiser(den, 5.0)
    base = guided(x, sigma, cond=cond, uncond=uncond)
    regional = guided(x, sigma, cond={**cond, "context": region_ctx}, uncond=uncond)
    lm = left.expand_as(x).bool()
    assert torch.allclose(out[lm], regional[lm], atol=1e-6) and torch.allclose(out[~lm], base[~lm], atol=1e-6)
    assert not torch.allclose(regional, base, atol=1e-3)


class Recorder:
    """A denoiser D(x, sigma, **kw) that records its inputs and returns f(x) pointwise (plus its concat)."""

    def __init__(self, f=lambda x: 0.5 * x):
        self.calls, self.f = [], f

    def __call__(self, x, sigma, context=None, concat=None):
        self.calls.append(dict(x=x.clone(), sigma=sigma.clone(), context=context, concat=concat))
        return self.f(x) + (0.0 if concat is None else concat[:, :1])


def test_dilated_is_the_plain_pass_under_one_and_a_half_times_the_trained_size():
    x, sigma = torch.randn(2, C, 11, 8, generator=gen(1)), torch.full((2,), 20.0)
    rec = Recorder()
    out = DilatedDenoiser(rec, native=8)(x, sigma, context=torch.randn(2, 3, 5))
    assert len(rec.calls) == 1 and torch.equal(rec.calls[0]["x"], x) and torch.equal(out, 0.5 * x)


def test_dilated_denoises_interleaved_sub_latents_of_the_trained_size():
    x, ctx, concat = torch.randn(2, C, 8, 12, generator=gen(2)), torch.randn(2, 3, 5), torch.randn(2, 2, 8, 12)
    rec = Recorder()
    DilatedDenoiser(rec, native=4, detail_sigma=1.0)(x, torch.full((2,), 5.0), context=ctx, concat=concat)
    assert len(rec.calls) == 1, "above detail_sigma only the sub-latent pass runs"
    call = rec.calls[0]
    assert call["x"].shape == (12, C, 4, 4) and call["sigma"].shape == (12,)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                n = b * 6 + i * 3 + j
                assert torch.equal(call["x"][n], x[b, :, i::2, j::3])
                assert torch.equal(call["concat"][n], concat[b, :, i::2, j::3])
                assert torch.equal(call["context"][n], ctx[b])


def test_dilated_keeps_the_sub_latent_band_and_adds_the_plain_pass_above_it_at_low_noise():
    x = torch.randn(1, C, 16, 16, generator=gen(3))
    den = DilatedDenoiser(Recorder(), native=8, detail_sigma=1.0)
    low = den(x, torch.full((1,), 0.5))
    assert torch.allclose(low, 0.5 * x, atol=1e-5), "a pointwise denoiser is the same on sub-latents and the whole"
    high = den(x, torch.full((1,), 3.0))
    spec, want = torch.fft.rfft2(high), torch.fft.rfft2(0.5 * x)
    band = torch.zeros(16, 9, dtype=torch.bool)
    band[:4, :4] = band[-3:, :4] = True
    assert torch.allclose(spec[..., band], want[..., band], atol=1e-4)
    assert spec[..., ~band].abs().max() < 1e-4 < want[..., ~band].abs().max()
