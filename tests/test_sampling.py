"""Samplers against a closed-form denoiser (2-D Gaussian mixture) and against LDM's DDIM/PLMS update formulas."""
import math

import pytest
import torch

from engine.config import ScheduleConfig
from engine.sampling import SAMPLERS, sample, sample_ddim, sample_ddpm, schedule
from engine.schedules import DiscreteDenoiser, alphas_cumprod, ddim_timesteps, make_betas

MU = torch.tensor([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]], dtype=torch.float64)
STD = torch.tensor([0.3, 0.25, 0.35], dtype=torch.float64)
W = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
AC = alphas_cumprod(ScheduleConfig())
LOG_SIGMAS = ((1 - AC) / AC).sqrt().log()
MIX_MEAN = (W[:, None] * MU).sum(0)
MIX_STD = ((W[:, None] * (STD[:, None] ** 2 + MU**2)).sum(0) - MIX_MEAN**2).sqrt()
N_SAMPLES = 4000


def posterior_mean(x, sigma):
    """E[x0 | x0 + sigma*eps = x] for the isotropic Gaussian mixture, exactly."""
    v = STD**2 + sigma[:, None] ** 2
    d2 = ((x[:, None, :] - MU[None]) ** 2).sum(-1)
    resp = (W.log() - d2 / (2 * v) - v.log()).softmax(-1)
    means = MU[None] + (STD**2 / v)[..., None] * (x[:, None, :] - MU[None])
    return (resp[..., None] * means).sum(1)


def mixture_unet(param):
    """The exact VP model: takes x_t = sqrt(a) x0 + sqrt(1-a) eps and a (fractional) timestep, returns eps or v."""

    def fn(x_in, t):
        t = t.double()
        lo, hi = t.floor().long(), t.ceil().long()
        sigma = ((1 - (t - lo)) * LOG_SIGMAS[lo] + (t - lo) * LOG_SIGMAS[hi]).exp()
        sa, sb = (1 / (1 + sigma**2)).sqrt()[:, None], (sigma**2 / (1 + sigma**2)).sqrt()[:, None]
        x_vp = x_in.double()
        x0 = posterior_mean(x_vp / sa, sigma)
        eps = (x_vp - sa * x0) / sb
        return (eps if param == "eps" else sa * eps - sb * x0).to(x_in.dtype)

    return fn


def mode_fractions(x):
    return torch.bincount(((x[:, None] - MU[None]) ** 2).sum(-1).argmin(1), minlength=len(W)).double() / len(x)


@pytest.mark.parametrize("param", ["eps", "v"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_reproduces_mixture(name, param):
    """Tolerances: mean within 0.05 (deterministic samplers carry a ~0.03 bias from the finite sigma_max), std within
    5%, each mode's weight within 0.03 (4000 samples: standard errors about 0.02, 0.5%, 0.007)."""
    den = DiscreteDenoiser(mixture_unet(param), AC, param)
    g = torch.Generator().manual_seed(0)
    steps = 20 if name.endswith("karras") else 50
    x = sample(name, den, torch.randn(N_SAMPLES, 2, generator=g), steps, generator=g)
    x = x.double()
    assert torch.isfinite(x).all()
    assert (x.mean(0) - MIX_MEAN).abs().max() < 0.05
    assert ((x.std(0) / MIX_STD) - 1).abs().max() < 0.05
    assert (mode_fractions(x) - W).abs().max() < 0.03


def test_eps_and_v_wrappers_agree_with_posterior_mean():
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3
    den_eps, den_v = (DiscreteDenoiser(mixture_unet(p), AC, p) for p in ("eps", "v"))
    for t in (0, 17, 500, 999):
        sigma = den_eps.sigmas[t].expand(64)
        exact = posterior_mean(x, sigma)
        assert torch.allclose(den_eps(x, sigma), exact, atol=1e-8)
        assert torch.allclose(den_v(x, sigma), exact, atol=1e-8)


def test_schedules():
    cfg = ScheduleConfig()
    betas = make_betas(cfg)
    assert betas.dtype == torch.float64 and len(betas) == 1000
    assert math.isclose(betas[0], 0.00085) and math.isclose(betas[-1], 0.012)
    assert math.isclose(betas[500].sqrt(), (0.00085**0.5 * 499 + 0.012**0.5 * 500) / 999, rel_tol=1e-12)
    lin = make_betas(ScheduleConfig(kind="sqrt_linear"))
    assert torch.allclose(lin[1:] - lin[:-1], torch.full((999,), (0.012 - 0.00085) / 999, dtype=torch.float64))
    cos = make_betas(ScheduleConfig(kind="cosine"))
    assert (cos > 0).all() and (cos <= 0.999).all() and (cos[1:] >= cos[:-1]).all()
    ac = alphas_cumprod(cfg)
    assert (ac[1:] < ac[:-1]).all() and math.isclose(ac[0], 1 - 0.00085)
    with pytest.raises(ValueError):
        make_betas(ScheduleConfig(kind="nope"))


def test_sigma_tables_and_timesteps():
    den = DiscreteDenoiser(mixture_unet("eps"), AC)
    assert ddim_timesteps(50, 1000) == list(range(1, 1000, 20))
    sig = den.get_sigmas("ddim_uniform", 50)
    assert torch.equal(sig[:-1], den.sigmas[torch.arange(981, 0, -20)]) and sig[-1] == 0
    k = den.get_sigmas("karras", 10)
    assert len(k) == 11 and math.isclose(k[0], den.sigma_max) and math.isclose(k[-2], den.sigma_min) and k[-1] == 0
    assert (k[1:] < k[:-1]).all()
    d = den.get_sigmas("discrete", 7)
    assert math.isclose(d[0], den.sigma_max) and math.isclose(d[-2], den.sigma_min)
    t = torch.tensor([0.0, 3.25, 500.5, 998.9, 999.0])
    assert torch.allclose(den.sigma_to_t(den.t_to_sigma(t)).double(), t.double(), atol=1e-4)
    assert torch.equal(den.sigma_to_t(den.t_to_sigma(t), quantize=True), torch.tensor([0.0, 3, 500, 999, 999]))
    with pytest.raises(ValueError):
        den.get_sigmas("linear-ish", 10)


def tiny_eps(x, t):
    """A deterministic nonlinear 'UNet' for formula checks."""
    return torch.tanh(0.7 * x + 0.3 * x.roll(1, -1)) + t.double().reshape(-1, 1) / 2000


def test_ddim_eta0_matches_ldm_formula():
    ts = ddim_timesteps(25, 1000)
    a = AC[ts]
    a_prev = torch.cat([AC[:1], AC[ts[:-1]]])
    x_t = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x_t.clone()
    for idx in reversed(range(len(ts))):
        e = tiny_eps(x, torch.full((3,), ts[idx]))
        pred_x0 = (x - (1 - a[idx]).sqrt() * e) / a[idx].sqrt()
        x = a_prev[idx].sqrt() * pred_x0 + (1 - a_prev[idx]).sqrt() * e
    seen_t = []

    def spy(x_in, t):
        seen_t.append(t.clone())
        return tiny_eps(x_in, t)

    den = DiscreteDenoiser(spy, AC)
    sigmas = torch.cat([den.sigmas[torch.tensor(ts[::-1])], den.sigmas[:1]])
    ours = sample_ddim(den, x_t / a[-1].sqrt(), sigmas)
    assert torch.allclose(ours * AC[0].sqrt(), x, atol=1e-10, rtol=0)
    assert [int(t[0]) for t in seen_t] == ts[::-1] and all(float(t[0]).is_integer() for t in seen_t)


def test_plms_matches_ldm_formula():
    ts = ddim_timesteps(10, 1000)
    a = AC[ts]
    a_prev = torch.cat([AC[:1], AC[ts[:-1]]])
    x_t = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def step(x, e, idx):
        pred_x0 = (x - (1 - a[idx]).sqrt() * e) / a[idx].sqrt()
        return a_prev[idx].sqrt() * pred_x0 + (1 - a_prev[idx]).sqrt() * e

    x, old = x_t.clone(), []
    order = list(reversed(range(len(ts))))
    for i, idx in enumerate(order):
        e = tiny_eps(x, torch.full((2,), ts[idx]))
        if not old:
            e_next = tiny_eps(step(x, e, idx), torch.full((2,), ts[order[i + 1]]))
            ep = (e + e_next) / 2
        elif len(old) == 1:
            ep = (3 * e - old[-1]) / 2
        elif len(old) == 2:
            ep = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            ep = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = step(x, ep, idx)
        old = (old + [e])[-3:]
    den = DiscreteDenoiser(tiny_eps, AC)
    sigmas = torch.cat([den.sigmas[torch.tensor(ts[::-1])], den.sigmas[:1]])
    ours = SAMPLERS["plms"].fn(den, x_t / a[-1].sqrt(), sigmas)
    assert torch.allclose(ours * AC[0].sqrt(), x, atol=1e-10, rtol=0)


def test_ddpm_posterior_equals_ddim_eta1():
    den = DiscreteDenoiser(tiny_eps, AC)
    sigmas = den.get_sigmas("ddim_uniform", 20)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    a = sample_ddpm(den, x, sigmas, generator=torch.Generator().manual_seed(5))
    b = sample_ddim(den, x, sigmas, generator=torch.Generator().manual_seed(5), eta=1.0)
    c = sample_ddim(den, x, sigmas, generator=torch.Generator().manual_seed(5), eta=0.0)
    assert torch.allclose(a, b, atol=1e-9) and not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_seeds_reproducible_and_distinct(name):
    den = DiscreteDenoiser(mixture_unet("eps"), AC)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return sample(name, den, torch.randn(16, 2, generator=g), 8, generator=g, eta=0.5)

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2), atol=1e-3)


def test_callback_contents_and_cancel_stops_immediately():
    calls = []

    def counting(x_in, t):
        calls.append(1)
        return tiny_eps(x_in, t)

    den = DiscreteDenoiser(counting, AC)
    seen = []

    class Stop(Exception):
        pass

    def cb(info):
        seen.append(info)
        if info["i"] == 2:
            raise Stop

    with pytest.raises(Stop):
        sample("ddim", den, torch.randn(2, 3), 10, callback=cb)
    assert len(calls) == 3 and [s["i"] for s in seen] == [0, 1, 2]
    assert all(s["total"] == 10 and set(s) == {"i", "total", "x", "sigma", "denoised"} for s in seen)
    assert seen[0]["sigma"] == pytest.approx(float(den.sigmas[901]))


def test_unknown_sampler_lists_valid_names():
    den = DiscreteDenoiser(tiny_eps, AC)
    with pytest.raises(ValueError) as err:
        sample("heun_plus", den, torch.randn(1, 2), 10)
    assert all(name in str(err.value) for name in SAMPLERS)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_img2img_strength(name):
    den = DiscreteDenoiser(mixture_unet("eps"), AC)
    init = torch.randn(8, 2, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sample(name, den, noise, 20, init=init, strength=0.0), init)
    steps = []
    out = sample(name, den, noise, 20, init=init, strength=0.5, callback=steps.append, generator=torch.Generator())
    full = schedule(name, den, 20)
    assert len(steps) == 10 and steps[0]["sigma"] == pytest.approx(float(full[-11]))
    assert not torch.allclose(out, init, atol=1e-3)


@pytest.mark.parametrize("name,order", [("dpmpp_2m_karras", 2), ("plms", 2), ("heun", 2), ("ddim", 1), ("euler", 1)])
def test_convergence_order(name, order):
    """Halving the step size cuts the error ~4x for second-order solvers and ~2x for first-order DDIM."""
    den = DiscreteDenoiser(mixture_unet("eps"), AC)
    fn = SAMPLERS[name].fn
    x = torch.randn(128, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * den.sigma_max
    ref = fn(den, x, den.get_sigmas("karras", 400))
    e20, e40 = ((fn(den, x, den.get_sigmas("karras", n)) - ref).abs().median() for n in (20, 40))
    assert (e20 / e40 > 3.2) if order == 2 else (1.6 < e20 / e40 < 2.8)


def test_dpmpp_2m_sde_without_noise_is_dpmpp_2m_and_with_it_differs():
    """The SDE solver's deterministic part is the ODE solver's update (eta 0); eta 1 adds the SDE's noise."""
    from engine.sampling import sample_dpmpp_2m, sample_dpmpp_2m_sde

    den = DiscreteDenoiser(mixture_unet("eps"), AC)
    sigmas = den.get_sigmas("karras", 12)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * den.sigma_max
    ode = sample_dpmpp_2m(den, x, sigmas)
    torch.testing.assert_close(sample_dpmpp_2m_sde(den, x, sigmas, eta=0.0), ode)
    sde = sample_dpmpp_2m_sde(den, x, sigmas, generator=torch.Generator().manual_seed(1))
    assert (sde - ode).abs().mean() > 0.05
