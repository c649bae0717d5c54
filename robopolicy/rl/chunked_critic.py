"""The chunked critic of CO-RFT (algorithms.md section 7): Q values of every prefix of an action chunk.

Each of E members is a small causal transformer over [ctx(s_t), a_t, ..., a_{t+h-1}]; the output at the token of
a_{t+j-1} is Q_j(s_t, a_{t:t+j}), the value of executing the first j actions and then following the policy.
Causal attention makes Q_j blind to the actions after the j-th, which is what lets one network give the targets
of every prefix (robopolicy.rl.objectives.chunk_targets) and the full-chunk value Q_h the actor maximises.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from robopolicy.config_parsing import check
from robopolicy.train.update import polyak_update


@dataclass(frozen=True)
class ChunkedCriticConfig:
    ensemble_size: int = 2  # members; targets take their min (TD3's clipped double Q)
    dim: int = 128  # transformer width
    n_layers: int = 2
    n_heads: int = 4
    dim_feedforward: int = 256
    tau: float = 0.005  # Polyak rate of the target members

    def __post_init__(self):
        check(self.ensemble_size >= 1, "ensemble_size", self.ensemble_size, ">= 1")
        check(self.dim % self.n_heads == 0, "dim", self.dim, f"a multiple of n_heads ({self.n_heads})")
        check(self.n_layers >= 1, "n_layers", self.n_layers, ">= 1")
        check(0.0 < self.tau <= 1.0, "tau", self.tau, "in (0, 1]")


class _Member(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, horizon: int, c: ChunkedCriticConfig):
        super().__init__()
        self.obs_in = nn.Linear(obs_dim, c.dim)
        self.action_in = nn.Linear(action_dim, c.dim)
        self.pos = nn.Parameter(torch.zeros(horizon + 1, c.dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(c.dim, c.n_heads, c.dim_feedforward, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.dim)
        self.out = nn.Linear(c.dim, 1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        h = actions.shape[1]
        tokens = torch.cat([self.obs_in(obs).unsqueeze(1), self.action_in(actions)], dim=1) + self.pos[: h + 1]
        causal = torch.triu(torch.full((h + 1, h + 1), float("-inf"), device=obs.device, dtype=tokens.dtype), 1)
        x = self.blocks(tokens, mask=causal)
        return self.out(self.norm(x[:, 1:])).squeeze(-1)  # (B, h): after each action token


class ChunkedCritic(nn.Module):
    """forward(obs (B, F), actions (B, h, D)) -> Q (E, B, h) for the prefixes 1..h; target_full(obs, actions) ->
    (B,) the min over the target members of Q_h; update_target() moves the targets `tau` of the way."""

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, config: ChunkedCriticConfig):
        super().__init__()
        self.config, self.horizon = config, horizon
        self.members = nn.ModuleList(_Member(obs_dim, action_dim, horizon, config)
                                     for _ in range(config.ensemble_size))
        self.targets = copy.deepcopy(self.members).requires_grad_(False)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(obs, actions) for m in self.members])

    @torch.no_grad()
    def target_full(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(obs, actions)[:, -1] for m in self.targets]).min(dim=0).values

    def update_target(self) -> None:
        polyak_update(self.targets, self.members, self.config.tau)
