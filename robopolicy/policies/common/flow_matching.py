"""Flow-matching math (openpi convention: t=1 is pure noise, t=0 is data)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def sample_time(n: int, a: float = 1.5, b: float = 1.0, device=None, generator: torch.Generator | None = None):
    """t = 0.999 * Beta(a, b) + 0.001, shape (n,). With a=1.5, b=1 the density grows like sqrt(t) (noisy end)."""
    # Beta(a, 1) has CDF t**a, so the inverse-CDF sample is u**(1/a); general b uses torch's Beta.
    if b == 1.0:
        u = torch.rand(n, device=device, generator=generator)
        beta = u.pow(1.0 / a)
    else:
        beta = torch.distributions.Beta(torch.tensor(a), torch.tensor(b)).sample((n,)).to(device)
    return 0.999 * beta + 0.001


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = t * noise + (1 - t) * actions and the target velocity u = noise - actions; t (B,)."""
    tt = t.view(-1, *([1] * (actions.dim() - 1)))
    return tt * noise + (1 - tt) * actions, noise - actions


def euler_integrate(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, steps: int):
    """Integrate dx/dt = v(x, t) from t=1 (noise) to t=0 (data) with `steps` Euler steps."""
    x, dt = noise, -1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), 1.0 + i * dt, device=x.device, dtype=x.dtype)
        x = x + dt * velocity(x, t)
    return x
