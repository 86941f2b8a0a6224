"""Diffusion samplers over a VE denoiser D(x, sigma) -> x0 (k-diffusion style; DDIM, PLMS, DDPM as in LDM).

Every sampler is `sample_<name>(model, x, sigmas, extra_args=None, callback=None, generator=None, **opts)`: x starts
at noise level sigmas[0], sigmas descend (usually ending in 0), and the result is x at sigmas[-1]. After each step
the callback gets {'i', 'total', 'x', 'sigma', 'denoised'}; an exception it raises propagates (cancellation).
Noise comes from the given CPU torch.Generator and is moved to x's device, so a seed gives the same picture anywhere.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from engine.schedules import DiscreteDenoiser

Callback = Callable[[dict], None]

__all__ = ["SAMPLERS", "SamplerSpec", "DiscreteDenoiser", "sample", "schedule", "noise_like", "ancestral_step"]


def noise_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the CPU from generator, then moved to x's device and dtype."""
    return torch.randn(x.shape, generator=generator, dtype=torch.float32, device="cpu").to(x.device, x.dtype)


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step; eta=1 is the DDPM posterior, eta=0 deterministic DDIM."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def _sigma_batch(x: Tensor, sigma: float) -> Tensor:
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.full((x.shape[0],), sigma, dtype=dtype, device=x.device)


def _floats(sigmas: Tensor) -> list[float]:
    return [float(s) for s in torch.as_tensor(sigmas).flatten()]


def _report(callback: Callback | None, i: int, total: int, x: Tensor, sigma: float, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "total": total, "x": x, "sigma": sigma, "denoised": denoised})


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, generator=None, eta: float = 0.0):
    """DDIM (Song et al. 2021) in the VE form: x' = D + sigma_down*eps + sigma_up*z, eta=0 deterministic."""
    extra_args = extra_args or {}
    s = _floats(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, _sigma_batch(x, s[i]), **extra_args)
        down, up = ancestral_step(s[i], s[i + 1], eta)
        x = denoised + (x - denoised) * (down / s[i])
        if up > 0:
            x = x + noise_like(x, generator) * up
        _report(callback, i, len(s) - 1, x, s[i], denoised)
    return x


@torch.no_grad()
def sample_euler_a(model, x, sigmas, extra_args=None, callback=None, generator=None, eta: float = 1.0, s_noise: float = 1.0):
    """Euler ancestral (Karras et al. 2022 / k-diffusion): an Euler step to sigma_down, then fresh noise sigma_up."""
    extra_args = extra_args or {}
    s = _floats(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, _sigma_batch(x, s[i]), **extra_args)
        down, up = ancestral_step(s[i], s[i + 1], eta)
        d = (x - denoised) / s[i]
        x = x + d * (down - s[i])
        if up > 0:
            x = x + noise_like(x, generator) * (s_noise * up)
        _report(callback, i, len(s) - 1, x, s[i], denoised)
    return x


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, generator=None):
    """Ancestral DDPM (Ho et al. 2020): draw x_s ~ q(x_s | x_t, x0=D) between consecutive (strided) timesteps."""
    extra_args = extra_args or {}
    s = _floats(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, _sigma_batch(x, s[i]), **extra_args)
        a_t, a_s = 1 / (1 + s[i] ** 2), 1 / (1 + s[i + 1] ** 2)
        x_vp = x * math.sqrt(a_t)
        coef_x0 = math.sqrt(a_s) * (1 - a_t / a_s) / (1 - a_t)
        coef_xt = math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)
        var = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        x_vp = coef_x0 * denoised + coef_xt * x_vp
        if s[i + 1] > 0:
            x_vp = x_vp + noise_like(x, generator) * math.sqrt(var)
        x = x_vp / math.sqrt(a_s)
        _report(callback, i, len(s) - 1, x, s[i], denoised)
    return x


@torch.no_grad()
def sample_plms(model, x, sigmas, extra_args=None, callback=None, generator=None):
    """PLMS (Liu et al. 2022, LDM): pseudo Adams-Bashforth on eps, warmed up by one pseudo improved-Euler step."""
    extra_args = extra_args or {}
    s = _floats(sigmas)
    old_eps: list[Tensor] = []
    for i in range(len(s) - 1):
        eps = (x - model(x, _sigma_batch(x, s[i]), **extra_args)) / s[i]
        if not old_eps:
            if s[i + 1] > 0:
                x_next = x + (s[i + 1] - s[i]) * eps
                eps_next = (x_next - model(x_next, _sigma_batch(x, s[i + 1]), **extra_args)) / s[i + 1]
                eps_prime = (eps + eps_next) / 2
            else:
                eps_prime = eps
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        denoised = x - s[i] * eps_prime
        x = denoised + s[i + 1] * eps_prime
        old_eps = (old_eps + [eps])[-3:]
        _report(callback, i, len(s) - 1, x, s[i], denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, generator=None):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in log-SNR time on the denoised predictions."""
    extra_args = extra_args or {}
    s = _floats(sigmas)
    old_denoised = None
    for i in range(len(s) - 1):
        denoised = model(x, _sigma_batch(x, s[i]), **extra_args)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            d = denoised
            if old_denoised is not None:
                r = (math.log(s[i - 1]) - math.log(s[i])) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * d
        old_denoised = denoised
        _report(callback, i, len(s) - 1, x, s[i], denoised)
    return x


# Euler on the probability-flow ODE (Karras et al. 2022, Algorithm 1, no churn): Euler ancestral without its noise.
sample_euler = functools.partial(sample_euler_a, eta=0.0)


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, generator=None):
    """Heun's second-order method on the same ODE (Karras et al. 2022, Algorithm 1); Euler for the step to 0."""
    extra_args = extra_args or {}
    s = _floats(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, _sigma_batch(x, s[i]), **extra_args)
        d = (x - denoised) / s[i]
        x_next = x + d * (s[i + 1] - s[i])
        if s[i + 1] > 0:
            d_next = (x_next - model(x_next, _sigma_batch(x, s[i + 1]), **extra_args)) / s[i + 1]
            x_next = x + (d + d_next) / 2 * (s[i + 1] - s[i])
        x = x_next
        _report(callback, i, len(s) - 1, x, s[i], denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, generator=None, eta: float = 1.0,
                        s_noise: float = 1.0):
    """DPM-Solver++(2M) SDE (Lu et al. 2022), midpoint form: the data-prediction SDE solved exactly in its linear part
    over each log-SNR step, a second-order correction from the previous prediction, and fresh noise of the SDE's
    variance (eta 1; eta 0 is the ODE solver)."""
    extra_args = extra_args or {}
    s = _floats(sigmas)
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = model(x, _sigma_batch(x, s[i]), **extra_args)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            eta_h = eta * h
            x = (s[i + 1] / s[i]) * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * denoised
            if old_denoised is not None:
                x = x - 0.5 * math.expm1(-h - eta_h) * (h / h_last) * (denoised - old_denoised)
            if eta:
                x = x + noise_like(x, generator) * (s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
            h_last = h
        old_denoised = denoised
        _report(callback, i, len(s) - 1, x, s[i], denoised)
    return x


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, the sigma schedule it runs on, and whether it draws noise."""

    fn: Callable[..., Tensor]
    schedule_kind: str
    stochastic: bool
    takes_eta: bool = False


SAMPLERS: dict[str, SamplerSpec] = {
    "ddim": SamplerSpec(sample_ddim, "ddim_uniform", False, takes_eta=True),
    "plms": SamplerSpec(sample_plms, "ddim_uniform", False),
    "ddpm": SamplerSpec(sample_ddpm, "ddim_uniform", True),
    "euler_a": SamplerSpec(sample_euler_a, "discrete", True),
    "euler": SamplerSpec(sample_euler, "discrete", False),
    "heun": SamplerSpec(sample_heun, "discrete", False),
    "dpmpp_2m": SamplerSpec(sample_dpmpp_2m, "discrete", False),
    "dpmpp_2m_karras": SamplerSpec(sample_dpmpp_2m, "karras", False),
    "dpmpp_2m_sde_karras": SamplerSpec(sample_dpmpp_2m_sde, "karras", True),
}


def _spec(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def skip_steps(sigmas: Tensor, steps: int, strength: float) -> Tensor:
    """img2img: keep the last int(strength * steps) steps of the schedule (LDM's t_enc); strength 0 keeps none."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    n = len(sigmas) - 1
    if strength >= 1.0:
        return sigmas
    run = min(n, int(strength * steps + 1e-6))
    return sigmas[n - run:]


def schedule(name: str, denoiser, steps: int, strength: float = 1.0) -> Tensor:
    """The descending sigmas (float64, ending in 0) that `sample` runs for this sampler, steps and img2img strength."""
    spec = _spec(name)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return skip_steps(denoiser.get_sigmas(spec.schedule_kind, steps), steps, strength)


def sample(
    name: str,
    denoiser,
    x_noise: Tensor,
    steps: int,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    strength: float = 1.0,
    init: Tensor | None = None,
    sigmas: Tensor | None = None,
) -> Tensor:
    """Run sampler `name` from unit-variance noise x_noise: txt2img starts at x_noise*sigma0, img2img (init given)
    at init + x_noise*sigma0 with the first (1 - strength) share of the schedule skipped. eta applies to DDIM only.
    `denoiser` needs get_sigmas(kind, n) (DiscreteDenoiser, or a guidance wrapper around one) unless sigmas is given.
    """
    spec = _spec(name)
    if sigmas is None:
        sigmas = schedule(name, denoiser, steps, strength if init is not None else 1.0)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    start = float(sigmas[0])
    x = x_noise * start if init is None else init + x_noise * start
    if len(sigmas) < 2:
        return x
    opts = {"eta": eta} if spec.takes_eta else {}
    return spec.fn(denoiser, x, sigmas, extra_args=extra_args, callback=callback, generator=generator, **opts)
