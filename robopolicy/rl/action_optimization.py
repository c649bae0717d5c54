"""PA-RL's policy-agnostic action optimisation (algorithms.md section 6): global then local, in normalized space.

1. global: of N candidate chunks sampled from the base policy, keep the top k by Q (ensemble mean);
2. local: T steps of gradient ascent on Q, a <- clip(a + eta * grad_a Q(s, a), low, high), keeping for each
   candidate the iterate with the highest Q seen (the start included).
The result (B, k, H, D) with its Q (B, k) feeds the Bellman target, the distillation target and the actions
taken; `choose` picks one per state (argmax, or a sample from softmax(Q / temperature)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from robopolicy.config_parsing import check

# q_fn(obs (M, F), actions (M, H, D)) -> Q (M,): the reduced (mean or min) ensemble value, differentiable in actions
QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ActionOptimizationConfig:
    num_samples: int = 32  # N base-policy samples per state
    top_k: int = 10  # kept after the global step
    steps: int = 10  # T local gradient steps
    step_size: float = 3e-4  # eta
    low: float = -1.0  # clip range of normalized actions
    high: float = 1.0

    def __post_init__(self):
        check(self.num_samples >= 1, "num_samples", self.num_samples, ">= 1")
        check(1 <= self.top_k <= self.num_samples, "top_k", self.top_k, f"in [1, num_samples={self.num_samples}]")
        check(self.steps >= 0, "steps", self.steps, ">= 0")
        check(self.step_size >= 0, "step_size", self.step_size, ">= 0")
        check(self.high > self.low, "high", self.high, f"> low ({self.low})")


def _repeat(obs: torch.Tensor, n: int) -> torch.Tensor:
    return obs.repeat_interleave(n, dim=0)


def global_step(q_fn: QFunction, obs: torch.Tensor, candidates: torch.Tensor, top_k: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of candidates (B, N, H, D) by Q: (B, k, H, D), Q (B, k)."""
    b, n = candidates.shape[:2]
    with torch.no_grad():
        q = q_fn(_repeat(obs, n), candidates.flatten(0, 1)).view(b, n)
    q_top, idx = q.topk(top_k, dim=1)
    chosen = torch.gather(candidates, 1, idx.view(b, top_k, 1, 1).expand(-1, -1, *candidates.shape[2:]))
    return chosen, q_top


def local_step(q_fn: QFunction, obs: torch.Tensor, actions: torch.Tensor, steps: int, step_size: float,
               low: float = -1.0, high: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """T clipped gradient-ascent steps on Q from actions (B, k, H, D); the best iterate per candidate and its Q."""
    b, k = actions.shape[:2]
    flat_obs = _repeat(obs.detach(), k)
    a = actions.detach().flatten(0, 1).clone()
    with torch.no_grad():
        best_q = q_fn(flat_obs, a)
    best = a.clone()
    for _ in range(steps):
        a.requires_grad_(True)
        with torch.enable_grad():
            q = q_fn(flat_obs, a)
            (grad,) = torch.autograd.grad(q.sum(), a)
        with torch.no_grad():
            a = (a + step_size * grad).clamp(low, high)
            q_new = q_fn(flat_obs, a)
            better = q_new > best_q
            best = torch.where(better.view(-1, *([1] * (a.dim() - 1))), a, best)
            best_q = torch.where(better, q_new, best_q)
    return best.view(b, k, *actions.shape[2:]), best_q.view(b, k)


def optimize_actions(q_fn: QFunction, obs: torch.Tensor, candidates: torch.Tensor,
                     config: ActionOptimizationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Global then local optimisation of candidates (B, N, H, D) for states obs (B, F) -> (B, k, H, D), Q (B, k)."""
    top, _ = global_step(q_fn, obs, candidates.clamp(config.low, config.high), config.top_k)
    return local_step(q_fn, obs, top, config.steps, config.step_size, config.low, config.high)


def choose(actions: torch.Tensor, q: torch.Tensor, strategy: str = "softmax", temperature: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One chunk per state from optimised candidates (B, k, H, D) with Q (B, k): 'argmax' or 'softmax' (sampled
    from Categorical(softmax(Q / temperature)), PA-RL's default for the distillation target)."""
    if strategy == "argmax":
        idx = q.argmax(dim=1)
    elif strategy == "softmax":
        probs = torch.softmax(q.float() / temperature, dim=1)
        idx = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(q.device)
    else:
        raise ValueError(f"strategy must be 'argmax' or 'softmax', got {strategy!r}")
    return actions[torch.arange(actions.shape[0], device=actions.device), idx]
