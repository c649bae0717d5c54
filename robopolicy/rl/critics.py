"""Ensemble Q critics (MLP with LayerNorm, scalar or distributional) with Polyak targets, and a state-value net.

Inputs are flat: the observation features `obs` (B, F) (a head's `encode` output flattened, or normalized state
vectors) and the normalized action chunk flattened to (B, H*D). An ensemble of E members is one module whose
linear layers hold E weight matrices (one batched matmul per layer), so E = 10 costs about one wide MLP.

Distributional members (`num_bins` > 0) output logits over `num_bins` fixed atoms evenly spaced on
[q_min, q_max] (PA-RL: 128 bins on [-100, 0]); Q is the expectation of the atoms, and a scalar TD target is
trained with cross entropy against its two-hot projection onto the two nearest atoms (the target clipped to
the range), an exact, mean-preserving encoding. Scalar members are trained with squared TD error.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from robopolicy.config_parsing import check
from robopolicy.train.update import polyak_update


@dataclass(frozen=True)
class CriticConfig:
    ensemble_size: int = 10  # E critics (PA-RL: 10)
    subsample: int = 2  # targets take the min over this many members drawn at random (REDQ / PA-RL: 2 of 10)
    hidden_dims: tuple[int, ...] = (256, 256)  # MLP widths
    layer_norm: bool = True  # LayerNorm after every hidden linear layer
    num_bins: int = 0  # > 0: distributional critic over this many atoms (PA-RL: 128); 0: scalar Q
    q_min: float = -100.0  # distributional support (the returns' range)
    q_max: float = 0.0
    tau: float = 0.005  # Polyak rate of the target networks

    def __post_init__(self):
        check(self.ensemble_size >= 1, "ensemble_size", self.ensemble_size, ">= 1")
        check(1 <= self.subsample <= self.ensemble_size, "subsample", self.subsample,
              f"between 1 and ensemble_size ({self.ensemble_size})")
        check(len(self.hidden_dims) > 0 and all(d > 0 for d in self.hidden_dims), "hidden_dims", self.hidden_dims,
              "one or more positive widths")
        check(self.num_bins == 0 or self.num_bins >= 2, "num_bins", self.num_bins, "0 (scalar) or >= 2")
        check(self.q_max > self.q_min, "q_max", self.q_max, f"> q_min ({self.q_min})")
        check(0.0 < self.tau <= 1.0, "tau", self.tau, "in (0, 1]")


class EnsembleLinear(nn.Module):
    """E independent linear layers: x (E, B, in) -> (E, B, out); each member initialised like nn.Linear."""

    def __init__(self, ensemble_size: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with one scale and shift per member: x (E, B, d) -> (E, B, d)."""

    def __init__(self, ensemble_size: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, dim))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class EnsembleMLP(nn.Module):
    """E MLPs: x (B, in) or (E, B, in) -> (E, B, out); LayerNorm (per member) and ReLU between layers."""

    def __init__(self, ensemble_size: int, in_features: int, hidden_dims: tuple[int, ...], out_features: int,
                 layer_norm: bool = True):
        super().__init__()
        self.ensemble_size = ensemble_size
        dims = (in_features, *hidden_dims)
        self.layers = nn.ModuleList(EnsembleLinear(ensemble_size, a, b) for a, b in itertools.pairwise(dims))
        self.norms = nn.ModuleList(EnsembleLayerNorm(ensemble_size, d) if layer_norm else nn.Identity()
                                   for d in hidden_dims)
        self.out = EnsembleLinear(ensemble_size, dims[-1], out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.ensemble_size, -1, -1)
        for layer, norm in zip(self.layers, self.norms):
            x = torch.relu(norm(layer(x)))
        return self.out(x)


class EnsembleQ(nn.Module):
    """Q(s, a) ensemble with a Polyak target copy.

    forward(obs (B, F), action (B, ...)) -> the members' raw outputs (E, B, K) (K = num_bins, or 1), what a
    DistributedDataParallel wrapper calls; values(out) -> Q (E, B) (distributional: the atoms' expectation);
    td_loss(out, y (B,)) -> (E, B) per-member loss against detached targets; q(obs, action) = values(forward);
    target(obs, action, generator) -> (B,): the min over `subsample` members of the target networks drawn at
    random (one draw per call); update_target() moves the target networks `tau` of the way.
    """

    def __init__(self, obs_dim: int, action_dim: int, config: CriticConfig):
        super().__init__()
        self.config = config
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.net = EnsembleMLP(config.ensemble_size, obs_dim + action_dim, config.hidden_dims,
                               config.num_bins or 1, config.layer_norm)
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        if config.num_bins:
            self.register_buffer("atoms", torch.linspace(config.q_min, config.q_max, config.num_bins))

    @property
    def distributional(self) -> bool:
        return self.config.num_bins > 0

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action.flatten(1)], dim=-1))

    def values(self, out: torch.Tensor) -> torch.Tensor:
        if not self.distributional:
            return out.squeeze(-1)
        return torch.softmax(out.float(), dim=-1) @ self.atoms.float()

    def q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.values(self(obs, action))

    def td_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-member TD loss (E, B) of raw outputs `out` (E, B, K) against targets y (B,) (detached here)."""
        y = y.detach()
        if not self.distributional:
            return (self.values(out) - y.unsqueeze(0)).pow(2)
        logp = torch.log_softmax(out.float(), dim=-1)
        return -(logp * two_hot(y, self.atoms).unsqueeze(0)).sum(-1)

    @torch.no_grad()
    def target(self, obs: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        q = self.values(self.target_net(torch.cat([obs, action.flatten(1)], dim=-1)))
        e, k = self.config.ensemble_size, self.config.subsample
        members = torch.randperm(e, generator=generator, device="cpu")[:k].to(q.device)
        return q[members].min(dim=0).values

    def update_target(self) -> None:
        polyak_update(self.target_net, self.net, self.config.tau)


def two_hot(y: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """Targets y (B,) as probabilities (B, K) on two neighbouring atoms whose mean is y (clipped to the range)."""
    atoms = atoms.to(torch.float32)
    y = y.to(torch.float32).clamp(atoms[0], atoms[-1])
    k = atoms.numel()
    pos = (y - atoms[0]) / (atoms[-1] - atoms[0]) * (k - 1)
    lo = pos.floor().clamp(0, k - 2)
    frac = pos - lo
    out = torch.zeros(*y.shape, k, device=y.device)
    out.scatter_(-1, lo.long().unsqueeze(-1), (1 - frac).unsqueeze(-1))
    out.scatter_add_(-1, (lo.long() + 1).unsqueeze(-1), frac.unsqueeze(-1))
    return out


class ValueNet(nn.Module):
    """V(s) for IQL: obs (B, F) -> (B,), one MLP with LayerNorm."""

    def __init__(self, obs_dim: int, hidden_dims: tuple[int, ...] = (256, 256), layer_norm: bool = True):
        super().__init__()
        self.net = EnsembleMLP(1, obs_dim, hidden_dims, 1, layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)[0, :, 0]
