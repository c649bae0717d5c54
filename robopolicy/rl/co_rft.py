"""CO-RFT (algorithms.md section 7, a reconstruction from the abstract and surveys): chunked offline RL with a
prefix critic and a TD3+BC-style chunk actor; the head keeps its own inference (no critic at deploy time).

One update on chunk transitions (s_t, a_{t:t+k}, r_{t:t+k}), k = the executed actions:
  critic  the chunked critic's prefix values Q_j(s_t, a_{t:t+j}) regress
          y_j = sum_{i<j} gamma^i r_{t+i} + gamma^j min_targets Q_k(s_{t+j}, pi(s_{t+j}) + smoothing noise),
          nothing bootstrapped past a terminal step, prefixes running past the episode end masked out
          (chunk_targets), plus alpha * Cal-QL's term on Q_k with `cql_samples` policy chunks at s_t and the
          Monte-Carlo return as floor; Polyak targets;
  actor   every `actor_every` updates after `critic_warmup_steps`:
          L = -lambda * Q_k(s, pi(s)) / mean|Q| + ||pi(s) - a_D||_1 over the valid steps (bc_term "l1"), or +
          the head's own loss on the data (bc_term "head_loss", Diffusion-QL's form), with pi(s) the head's
          reparameterised chunk (DIFFERENTIABLE_SAMPLING: flow, diffusion, ACT, MoE-ACT). A head without it
          (dd_vla's discrete tokens) takes the same critic direction another way:
          its own chunk is moved by `fallback_steps` clipped ascent steps on Q_k and distilled through its own
          loss (re-tokenised): small steps from the policy's chunk keep it near the data as the BC term does.
  data    chunks that reach a success are drawn `success_oversample` times as often.
Choices the sources leave open (the reconstruction's [R]): the critic sees the policy's pooled, detached
`encode`; targets use the policy's fresh chunk at every prefix end (k policy samples per transition); the BC term
is the chunk's L1 norm (summed over its steps and dimensions, as the reconstruction writes it; TD3+BC's mean over
a 6-D action would weaken it against the Q term as the chunk grows); lambda = 2.5 as in TD3+BC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from robopolicy.config_parsing import check
from robopolicy.data.sampler import WindowSampler
from robopolicy.policies.base import DIFFERENTIABLE_SAMPLING
from robopolicy.policies.policy import Policy
from robopolicy.rl.action_optimization import local_step
from robopolicy.rl.chunked_critic import ChunkedCritic, ChunkedCriticConfig
from robopolicy.rl.chunks import (
    ChunkRule,
    eval_mode,
    executed_slice,
    flatten_condition,
    next_observation,
    next_prefix,
    with_actions,
)
from robopolicy.rl.objectives import cal_ql_regularizer, chunk_targets, td_loss_mask_mean
from robopolicy.rl.rewards import REWARD_KEY
from robopolicy.rl.sample_cache import SampleCache, take_rows
from robopolicy.train.config import TrainConfig
from robopolicy.train.update import POLICY, Learner, make_optimizer

CRITIC = "critic"
SAMPLES = "samples"  # the frozen policy's chunks per frame during the critic warm-up (warmup_sample_cache)


def chunk_l1(chunk: torch.Tensor, data: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
    """TD3+BC's behaviour term for chunks: ||chunk - data||_1 over each sample's valid steps, averaged over the
    batch. chunk, data: (B, H, D); is_pad: (B, H) or None. A mean over the H x D elements instead would shrink
    the term's pull against the Q term by H x D."""
    valid = (~is_pad).to(chunk.dtype).unsqueeze(-1) if is_pad is not None else torch.ones_like(chunk[..., :1])
    return ((chunk - data).abs() * valid).sum() / chunk.shape[0]


@dataclass(frozen=True)
class CORFTConfig:
    gamma: float = 0.99  # discount per environment step
    reward: str = REWARD_KEY  # a reward column, 'episode_success' or 'pusht_coverage' (relabelled)
    return_tail: Literal["zero", "repeat"] = "zero"
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    chunk_steps: int | None = None  # executed actions per transition; null: the policy's n_action_steps
    critic: ChunkedCriticConfig = field(default_factory=ChunkedCriticConfig)
    critic_lr: float = 3e-4
    cql_alpha: float = 0.005  # Cal-QL weight on the full-chunk value
    cql_samples: int = 4  # policy chunks per state for the Cal-QL term
    bc_lambda: float = 2.5  # TD3+BC's lambda (the Q term's weight after normalising by mean |Q|)
    # the actor's behaviour term: "l1", the L1 norm of the sampled chunk's distance to the data; "head_loss", the
    # head's own training loss on the data batch (Diffusion-QL's form: it keeps the whole generative model on the
    # data, not only the sampled paths)
    bc_term: Literal["l1", "head_loss"] = "l1"
    actor_every: int = 2  # delayed actor updates
    critic_warmup_steps: int = 0  # critic-only updates before the actor starts (an untrained Q misleads it)
    # during the warm-up the policy is frozen: its chunks per dataset frame (cql_samples of them; the first is the
    # bootstrap action where the frame is a prefix end) are drawn once and reused (robopolicy.rl.sample_cache)
    warmup_sample_cache: bool = True
    target_noise: float = 0.2  # target policy smoothing: N(0, noise) clipped at noise_clip, normalized units
    noise_clip: float = 0.5
    success_oversample: float = 4.0  # draw chunks that reach a success this many times as often (1: off)
    fallback_steps: int = 5  # heads without differentiable sampling: ascent steps on Q for the distilled chunk
    fallback_step_size: float = 0.05

    def __post_init__(self):
        check(0.0 <= self.gamma < 1.0, "gamma", self.gamma, "in [0, 1)")
        check(self.chunk_steps is None or self.chunk_steps >= 1, "chunk_steps", self.chunk_steps, ">= 1 or null")
        check(self.cql_samples >= 1, "cql_samples", self.cql_samples, ">= 1")
        check(self.actor_every >= 1, "actor_every", self.actor_every, ">= 1")
        check(self.bc_term in ("l1", "head_loss"), "bc_term", self.bc_term, "'l1' or 'head_loss'")
        check(self.critic_warmup_steps >= 0, "critic_warmup_steps", self.critic_warmup_steps, ">= 0")
        check(self.success_oversample >= 1.0, "success_oversample", self.success_oversample, ">= 1")
        check(self.target_noise >= 0 and self.noise_clip >= 0, "target_noise", self.target_noise, ">= 0")


class CORFT(ChunkRule):
    """The CO-RFT update rule (modules: policy, critic; optimizers: policy, critic)."""

    every_step = True  # targets for every chunk prefix need the observation at each prefix end

    def window_weights(self, windows: WindowSampler, balance: str) -> np.ndarray | None:
        base = windows.window_weights(balance)
        if self.config.success_oversample == 1.0:
            return base
        _, terminal, exists, _ = self.rewards.chunk(torch.from_numpy(windows.anchors), self.k)
        reaches = (terminal & exists[:, : self.k]).any(dim=1).numpy()
        w = (np.full(len(windows), 1.0 / len(windows)) if base is None else base) * np.where(
            reaches, self.config.success_oversample, 1.0)
        return w / w.sum()

    def build(self, policy: Policy, cfg: TrainConfig) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
        self.check_built()
        critic = ChunkedCritic(self.obs_dim, policy.config.action_dim, self.k, self.config.critic)
        critic.to(device=policy.head.device)
        optimizers = {POLICY: make_optimizer(policy.head.parameter_groups(), cfg.optim),
                      CRITIC: torch.optim.Adam(critic.members.parameters(), lr=self.config.critic_lr)}
        modules: dict[str, nn.Module] = {POLICY: policy, CRITIC: critic}
        if self.config.critic_warmup_steps > 0 and self.config.warmup_sample_cache:
            modules[SAMPLES] = SampleCache(len(self.rewards.stop), self.config.cql_samples, self.k,
                                           policy.config.action_dim).to(device=policy.head.device)
        return modules, optimizers

    def schedule_start(self, optimizer: str) -> int:
        """The policy's learning-rate schedule runs over the updates after the critic warm-up."""
        return self.config.critic_warmup_steps if optimizer == POLICY else 0

    def update(self, learner: Learner, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        policy: Policy = learner.unwrap(POLICY)
        critic: ChunkedCritic = learner.unwrap(CRITIC)
        head, pcfg, k = policy.head, policy.config, self.k
        sl = executed_slice(pcfg, k)
        device = head.device
        reward, terminal, exists, v_mu = (x.to(device) for x in self.rewards.chunk(batch["index"], k))

        cached = step < cfg.critic_warmup_steps and SAMPLES in learner.modules
        frames = batch["index"].cpu().long()

        def chunks(o: dict[str, Any], at: torch.Tensor) -> torch.Tensor:
            """cql_samples policy chunks (B, N, k, D) at the prepared observations o, of dataset frames `at`."""
            def draw(rows: torch.Tensor | None = None) -> torch.Tensor:
                sub = o if rows is None else take_rows(o, rows, len(at))
                return head.sample(sub, num_samples=cfg.cql_samples)[:, :, sl].float()
            if not cached:
                return draw()
            return learner.unwrap(SAMPLES).get(at, draw).to(device)

        with torch.no_grad(), eval_mode(policy):
            obs = policy.prepare(batch)
            feat = flatten_condition(head.encode(obs))
            # the policy's chunk at every prefix end s_{t+j}, j = 1..k, smoothed (TD3), for the bootstraps
            boot = []
            for j in range(1, k + 1):
                nxt = policy.prepare(next_observation(batch, pcfg, next_prefix(j, k)))
                if cached:  # frame t + j; none past the episode's end (that prefix is masked)
                    a = chunks(nxt, torch.where(frames + j < self.rewards.stop[frames], frames + j, -1))[:, 0]
                else:
                    a = head.sample(nxt)[:, sl].float()
                noise = (torch.randn_like(a) * cfg.target_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
                boot.append(critic.target_full(flatten_condition(head.encode(nxt)), (a + noise).clamp(-1, 1)))
            boot = torch.stack(boot, dim=1)  # (B, k)
            policy_chunks = chunks(obs, frames)  # (B, N, k, D)
        y, defined = chunk_targets(reward, terminal, exists, boot, cfg.gamma)

        b, n = policy_chunks.shape[:2]
        data_chunk = obs[pcfg.action_key][:, sl].float()
        q_all = learner.modules[CRITIC](torch.cat([feat, feat.repeat_interleave(n, 0)]),
                                        torch.cat([data_chunk, policy_chunks.flatten(0, 1)]))  # (E, B + B*N, k)
        q_data = q_all[:, :b]
        td = td_loss_mask_mean((q_data - y.unsqueeze(0)).pow(2), defined)
        q_policy = q_all[:, b:, -1].unflatten(1, (b, n))
        cql = cal_ql_regularizer(q_policy, q_data[..., -1], v_mu).mean()
        critic_grad = learner.step(CRITIC, td + cfg.cql_alpha * cql)
        critic.update_target()
        values = {"loss": td.detach(), "critic/td_loss": td.detach(), "critic/cql": cql.detach(),
                  "critic/q_data": q_data[..., -1].mean().detach(), "critic/target": y[defined].mean().detach(),
                  "critic/grad_norm": critic_grad}
        if cached:
            values["candidates/cached_frames"] = learner.unwrap(SAMPLES).filled.float().mean()
        if step < cfg.critic_warmup_steps or (step + 1) % cfg.actor_every:
            return values
        values.update(self._actor(learner, policy, critic, batch, obs, feat, sl))
        return values

    def _actor(self, learner: Learner, policy: Policy, critic: ChunkedCritic, batch: dict, obs: dict,
               feat: torch.Tensor, sl: slice) -> dict[str, torch.Tensor]:
        cfg, pcfg = self.config, policy.config
        critic.requires_grad_(False)  # the actor's loss moves the actions only
        try:
            if policy.head.supports(DIFFERENTIABLE_SAMPLING):
                with learner.acc.autocast():
                    chunk = learner.modules[POLICY](batch, sample=True).float()  # (B, H, D) with gradients
                q = critic(feat, chunk[:, sl]).min(dim=0).values[:, -1]
                bc = chunk_l1(chunk, obs[pcfg.action_key].float(), obs.get(f"{pcfg.action_key}_is_pad"))
                values = {"actor/bc_l1": bc.detach()}
                if cfg.bc_term == "head_loss":
                    with learner.acc.autocast():
                        bc = learner.modules[POLICY](batch).loss
                    values["actor/bc_head_loss"] = bc.detach()
                q_term = -cfg.bc_lambda * q.mean() / q.abs().mean().detach().clamp(min=1e-6)
                loss = q_term + bc
                grad = learner.step(POLICY, loss)
                return {**values, "actor/loss": loss.detach(), "actor/q": q.mean().detach(), "actor/grad_norm": grad}
            # no differentiable sampling: ascend Q from the head's own chunk, distil through its loss
            with torch.no_grad(), eval_mode(policy):
                start = policy.head.sample(obs).float()
            target, q = local_step(lambda f, a: critic(f, a[:, sl]).min(dim=0).values[:, -1], feat,
                                   start.unsqueeze(1), cfg.fallback_steps, cfg.fallback_step_size)
            distill = with_actions(batch, policy, target[:, 0])
            with learner.acc.autocast():
                out = learner.modules[POLICY](distill)
            grad = learner.step(POLICY, out.loss)
            return {"actor/loss": out.loss.detach(), "actor/q": q.mean().detach(), "actor/grad_norm": grad}
        finally:
            critic.requires_grad_(True)
            critic.targets.requires_grad_(False)
