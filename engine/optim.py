"""Optimizers for the trainer: fused AdamW, or Muon (Jordan et al. 2024) on weight matrices with AdamW on the rest."""
from __future__ import annotations

import math

import torch

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Newton-Schulz quintic iteration towards U V^T of g = U S V^T (Muon's zeroth power), on a batch of matrices.
    Each iterate is p(X X^T) X, so for a matrix at least twice as wide as tall the iteration runs on the small Gram
    matrix instead (X_k = Q_k X, Q_k a polynomial in X X^T) and touches the wide one twice in all."""
    a, b, c = NS_COEFFS
    wide = g.shape[-2] <= g.shape[-1]
    x = g if wide else g.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    if x.shape[-1] >= 2 * x.shape[-2]:
        gram = x @ x.mT
        q = torch.eye(x.shape[-2], dtype=x.dtype, device=x.device).expand_as(gram)
        for _ in range(steps):
            s = q @ gram @ q
            q = a * q + (b * s + c * s @ s) @ q
        x = q @ x
    else:
        for _ in range(steps):
            s = x @ x.mT
            x = a * x + (b * s + c * s @ s) @ x
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose update for each weight (viewed as out x fan-in) is orthogonalised by Newton-Schulz, scaled by
    0.2 sqrt(max(out, fan-in)) so one learning rate serves it and AdamW alike (Liu et al. 2025, Moonlight); decoupled
    weight decay. Same-shaped weights are orthogonalised together as one batch."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, weight_decay: float = 0.01, ns_steps: int = 5):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "ns_steps": ns_steps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                buf = st.setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                u = p.grad.lerp(buf, group["momentum"])
                by_shape.setdefault(tuple(p.shape), []).append((p, u.reshape(p.shape[0], -1)))
            lr, wd = group["lr"], group["weight_decay"]
            for shape, items in by_shape.items():
                o = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"])
                rows, cols = o.shape[-2:]
                scale = 0.2 * math.sqrt(max(rows, cols))
                for (p, _), upd in zip(items, o):
                    p.mul_(1 - lr * wd).add_(upd.view_as(p), alpha=-lr * scale)


class Optimizers:
    """Several optimizers stepped as one: their param_groups side by side, one state dict for resuming."""

    def __init__(self, *opts):
        self.opts = [o for o in opts if o is not None]
        self.param_groups = [g for o in self.opts for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.opts:
            o.step()

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.opts]}

    def load_state_dict(self, state: dict) -> None:
        states = state["optimizers"] if "optimizers" in state else [state]
        if len(states) != len(self.opts):
            raise ValueError(f"optimizer state holds {len(states)} optimizers, this run has {len(self.opts)}")
        for o, s in zip(self.opts, states):
            o.load_state_dict(s)


def make_optimizer(params: list, lr: float, kind: str = "adamw", matrices: list | None = None):
    """Fused AdamW over params; or kind 'muon': Muon over `matrices` (a subset of params) and AdamW over the rest."""
    adamw = lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.01, betas=(0.9, 0.99), fused=True) if ps else None
    if kind == "adamw":
        return Optimizers(adamw(params))
    if kind != "muon":
        raise ValueError(f"unknown optimizer {kind!r} (adamw or muon)")
    ids = {id(p) for p in matrices or ()}
    if not ids:
        raise ValueError("muon needs the weight matrices it should update (LDM training only)")
    return Optimizers(Muon([p for p in params if id(p) in ids], lr=lr), adamw([p for p in params if id(p) not in ids]))
