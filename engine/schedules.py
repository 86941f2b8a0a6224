"""DDPM beta schedules (LDM make_beta_schedule) and the discrete VP-model denoiser (k-diffusion DiscreteSchedule)."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from engine.config import ScheduleConfig

SIGMA_KINDS = ("ddim_uniform", "karras", "discrete")


def make_betas(cfg: ScheduleConfig) -> Tensor:
    """Per-step betas in float64 with LDM's naming: 'linear' is linear in sqrt(beta), 'sqrt_linear' linear in beta."""
    n = cfg.timesteps
    if cfg.kind == "linear":
        return torch.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, n, dtype=torch.float64) ** 2
    if cfg.kind == "sqrt_linear":
        return torch.linspace(cfg.linear_start, cfg.linear_end, n, dtype=torch.float64)
    if cfg.kind == "cosine":
        s = 8e-3
        f = torch.cos((torch.arange(n + 1, dtype=torch.float64) / n + s) / (1 + s) * math.pi / 2) ** 2
        f = f / f[0]
        return (1 - f[1:] / f[:-1]).clamp(0.0, 0.999)
    raise ValueError(f"unknown beta schedule {cfg.kind!r}; valid: linear, sqrt_linear, cosine")


def alphas_cumprod(cfg: ScheduleConfig) -> Tensor:
    """Cumulative product of (1 - beta), float64, one entry per training timestep."""
    return torch.cumprod(1.0 - make_betas(cfg), dim=0)


def noised(alphas_cumprod: Tensor, parameterization: str, z0: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """q(z_t | z_0) at timesteps t with noise eps, and the model's regression target there (eps, or v: Salimans & Ho
    2022)."""
    ac = alphas_cumprod.float().to(z0.device)[t].view(-1, 1, 1, 1)
    zt = ac.sqrt() * z0 + (1 - ac).sqrt() * eps
    return zt, ac.sqrt() * eps - (1 - ac).sqrt() * z0 if parameterization == "v" else eps


def ddim_timesteps(num_steps: int, num_train: int) -> list[int]:
    """LDM's 'uniform' DDIM timesteps: range(0, T, T // n) + 1, ascending (n + 1 entries when n does not divide T)."""
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"steps must be in 1..{num_train}, got {num_steps}")
    c = num_train // num_steps
    return [t + 1 for t in range(0, num_train, c) if t + 1 < num_train]


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022 (EDM) noise levels, interpolated in sigma^(1/rho), with a final zero appended."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


class DiscreteDenoiser:
    """A VP discrete-time eps/v model as a VE denoiser D(x, sigma) -> x0 (Karras et al. 2022, k-diffusion style).

    x lives in the 'scaled' space x = x0 + sigma*eps; the model sees x / sqrt(sigma^2 + 1) and a timestep t found by
    (optionally quantized) interpolation of log-sigma over the training schedule.
    """

    def __init__(self, unet_fn: Callable[..., Tensor], alphas_cumprod: Tensor, parameterization: str = "eps", quantize: bool = False):
        if parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization must be 'eps' or 'v', got {parameterization!r}")
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.unet_fn = unet_fn
        self.parameterization = parameterization
        self.quantize = quantize
        self.alphas_cumprod = ac
        self.sigmas = ((1 - ac) / ac).sqrt()
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_schedule(cls, unet_fn: Callable[..., Tensor], cfg: ScheduleConfig, parameterization: str = "eps", quantize: bool = False) -> "DiscreteDenoiser":
        return cls(unet_fn, alphas_cumprod(cfg), parameterization, quantize)

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor, quantize: bool | None = None) -> Tensor:
        """Timestep (float) whose interpolated log-sigma equals log(sigma); nearest integer when quantizing."""
        quantize = self.quantize if quantize is None else quantize
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64, device=sigma.device).log()
        low = (torch.searchsorted(log_sigmas, log_sigma.contiguous(), right=True) - 1).clamp(0, len(log_sigmas) - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        if quantize:
            return torch.where((log_sigma - lo).abs() <= (hi - log_sigma).abs(), low, low + 1).to(torch.float32)
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).to(torch.float32)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Inverse of sigma_to_t: log-linear interpolation of the training sigmas (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        log_sigmas = self.log_sigmas.to(t.device)
        low = t.floor().long().clamp(0, len(log_sigmas) - 1)
        high = t.ceil().long().clamp(0, len(log_sigmas) - 1)
        w = t - t.floor()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def get_sigmas(self, kind: str, n: int, rho: float = 7.0) -> Tensor:
        """Descending noise levels ending in 0 (float64): 'ddim_uniform' (LDM DDIM/PLMS timesteps), 'karras', 'discrete'."""
        if kind == "ddim_uniform":
            ts = torch.tensor(ddim_timesteps(n, self.num_timesteps)[::-1])
            return torch.cat([self.sigmas[ts], torch.zeros(1, dtype=torch.float64)])
        if kind == "karras":
            return karras_sigmas(n, self.sigma_min, self.sigma_max, rho)
        if kind == "discrete":
            t = torch.linspace(self.num_timesteps - 1, 0, n, dtype=torch.float64)
            return torch.cat([self.t_to_sigma(t), torch.zeros(1, dtype=torch.float64)])
        raise ValueError(f"unknown sigma schedule {kind!r}; valid: {', '.join(SIGMA_KINDS)}")

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor:
        s = sigma.to(torch.float32 if x.dtype not in (torch.float32, torch.float64) else x.dtype)
        s = s.reshape(-1, *([1] * (x.ndim - 1)))
        c_in = (s**2 + 1).rsqrt()
        out = self.unet_fn((x * c_in).to(x.dtype), self.sigma_to_t(sigma), **extra_args).to(s.dtype)
        if self.parameterization == "eps":
            d = x - s * out
        else:
            d = x * c_in**2 - out * s * c_in
        return d.to(x.dtype)
