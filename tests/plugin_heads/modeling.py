"""A test-only guidable flow head with its own conventions: time tau = 0 noise -> 1 data, the network predicts the
clean chunk A (not a velocity), Euler steps with u = (A_hat - x) / (1 - tau)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.policies.base import GUIDANCE, LANGUAGE, DenoisingStep, LossOutput, PolicyHead
from tests.plugin_heads.configuration import MLPFlowConfig


class MLPFlowHead(PolicyHead):
    config_class = MLPFlowConfig
    capabilities = frozenset({GUIDANCE, LANGUAGE})

    def __init__(self, config: MLPFlowConfig):
        super().__init__(config)
        c = config
        self.state_keys = sorted(k for k, f in c.input_features.items() if f.kind == "state")
        state_dim = sum(c.input_features[k].shape[-1] for k in self.state_keys) * c.n_obs_steps
        self.task_keys = c.language_keys
        self.task_embed = nn.Embedding(c.num_tasks, 8) if self.task_keys else None
        cond_dim = state_dim + (8 if self.task_keys else 0)
        chunk = c.horizon * c.action_dim
        self.net = nn.Sequential(nn.Linear(chunk + cond_dim + 1, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden),
                                 nn.SiLU(), nn.Linear(c.hidden, chunk))

    def encode(self, obs):
        parts = [obs[k].flatten(1) for k in self.state_keys]
        if self.task_keys:
            parts.append(self.task_embed(obs[f"{self.task_keys[0]}.index"]))
        return torch.cat(parts, dim=-1)

    def _clean(self, x, tau, cond):
        """Predicted clean chunk, skip-connected (as EDM's preconditioning): tau * x + net(x, cond, tau)."""
        b = x.shape[0]
        inp = torch.cat([x.flatten(1), cond, tau.view(b, 1).to(x.dtype)], dim=-1)
        return tau.view(b, 1, 1).to(x.dtype) * x + self.net(inp).view_as(x)

    def loss(self, batch):
        c = self.config
        a = batch[c.action_key]
        cond = self.encode(batch)
        tau = torch.rand(a.shape[0], device=a.device)
        noise = torch.randn_like(a)
        x = tau.view(-1, 1, 1) * a + (1 - tau.view(-1, 1, 1)) * noise  # tau = 1 is data
        per_step = F.mse_loss(self._clean(x, tau, cond), a, reduction="none").mean(-1)
        pad = batch.get(f"{c.action_key}_is_pad")
        if pad is not None:
            per_step = per_step * (~pad).to(per_step.dtype)
        aux = {"out_l2": 1e-6 * self.net[-1].weight.pow(2).sum()}  # a batch-level term, as a MoE balance loss is
        return LossOutput(per_step, valid=None if pad is None else ~pad, aux=aux,
                          metrics={"mse": per_step.detach().mean()})

    @torch.no_grad()
    def sample_from_condition(self, cond, *, generator=None, guide=None):
        c = self.config
        x = torch.randn((cond.shape[0], c.horizon, c.action_dim), generator=generator, device=cond.device,
                        dtype=cond.dtype)
        dt = 1.0 / c.steps
        for i in range(c.steps):
            tau = i * dt
            taus = torch.full((x.shape[0],), tau, device=x.device)

            def clean(x_, taus=taus):
                return self._clean(x_, taus, cond)

            if guide is None:
                a_hat = clean(x)
            else:  # the network's output is the clean chunk itself
                a_hat = guide(clean, x, DenoisingStep(tau=tau, noise_std=1.0 - tau, to_x0=lambda x_, out: out,
                                                      x0_per_out=1.0))
            x = x + dt * (a_hat - x) / (1.0 - tau)
        return x
