"""PTR, posterior-transition reweighting (algorithms.md section 8), reward-free, for any head of the contract
(the paper's diffusion / flow heads; its per-sample loss is all it needs).

Each training window (o_t, a_{t:t+H}) is scored by how well it identifies its own future observation o_{t+D}
among mismatched ones; windows whose actions do not explain what happened next (corrupted, mislabelled, from
another episode) get weights below 1, consistent ones above 1, and the policy's loss is the self-normalised
weighted mean of its per-sample losses.

Through the contract (where the paper's VLA internals are not available, the choices made here):
  - target y+ = sg(normalize(P_ema(pool(encode_ema(o_{t+D}))))): an EMA copy (0.999) of the policy head, its
    `encode` of the future observation pooled per sample (robopolicy.rl.chunks.flatten_condition), through the
    EMA of the query's observation projection P (a low-dim state normalized as it is would make a poor target
    space; the paper's targets are 1024-D vision features);
  - query u_t = MLP([P(pool(encode(o_t))); MLP_a(a_{t:t+H})]) in the target's space: the action features come
    from a 2-layer MLP over the normalized chunk (the paper pools the action head's own tokens, which the
    contract does not expose); gradients reach the policy's encoder (one joint backward pass);
  - pool: the sample's own target, the other targets in the batch, and up to `queue_negatives` from a FIFO
    queue of past targets, of which a fraction (the controller's hard ratio) are the nearest to the own target;
  - the belief tokens carried across chunks are not implemented (they need the head to take extra context).
Losses: weighted act loss + lambda_id * identification NCE + lambda_rank * rank loss against permuted actions;
no reweighting (w = 1) for `warmup_steps`. The adaptive controller adjusts tau_score and beta from the EMA of
the identification accuracy and margin; its state and the queue are buffers, saved and restored exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.config_parsing import check
from robopolicy.policies.policy import Policy
from robopolicy.rl.chunks import NEXT, ChunkRule, flatten_condition, next_observation
from robopolicy.rl.ptr_weights import SCORE_CLAMP, posterior_weights
from robopolicy.train.config import TrainConfig
from robopolicy.train.update import POLICY, Learner, make_optimizer, polyak_update

SCORER, TARGET = "ptr", "ptr_target"


@dataclass(frozen=True)
class PTRConfig:
    offset: int | None = None  # D: frames to the future observation; null: the policy's n_action_steps
    hidden_dim: int = 256  # width of the query and action MLPs
    target_ema: float = 0.999  # EMA of the target encoder
    queue_size: int = 1024  # FIFO of past targets
    queue_negatives: int = 64  # at most this many queue targets per batch as extra negatives
    alpha: float = 1.0  # w = 1 + alpha * (clip(exp(T / beta), w_min, w_max) - 1)
    w_min: float = 0.25
    w_max: float = 4.0
    tau_init: float = 0.12  # tau_score and its bounds
    tau_min: float = 0.03
    tau_max: float = 0.20
    beta_init: float = 1.5  # beta and its bounds
    beta_min: float = 0.5
    beta_max: float = 3.0
    lambda_id: float = 0.05  # identification NCE weight
    lambda_rank: float = 0.25  # rank loss weight
    warmup_steps: int = 3000  # scorer-only warm-up: weights are 1 before this step
    controller_ema: float = 0.98

    def __post_init__(self):
        check(self.offset is None or self.offset >= 1, "offset", self.offset, ">= 1 or null")
        check(0.0 < self.target_ema < 1.0, "target_ema", self.target_ema, "in (0, 1)")
        check(self.queue_size >= 0, "queue_size", self.queue_size, ">= 0")
        check(0.0 < self.w_min <= 1.0 <= self.w_max, "w_max", self.w_max, f">= 1 >= w_min ({self.w_min}) > 0")
        check(0.0 < self.tau_min <= self.tau_init <= self.tau_max, "tau_init", self.tau_init,
              f"within [tau_min={self.tau_min}, tau_max={self.tau_max}]")
        check(0.0 < self.beta_min <= self.beta_init <= self.beta_max, "beta_init", self.beta_init,
              f"within [beta_min={self.beta_min}, beta_max={self.beta_max}]")
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))
    for layer in (net[0], net[2]):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return net


class PTRScorer(nn.Module):
    """The query network, the target queue and the controller state (buffers, saved with the checkpoint)."""

    def __init__(self, obs_dim: int, action_dim: int, config: PTRConfig):
        super().__init__()
        self.config = config
        h = config.hidden_dim
        self.obs_proj = _mlp(obs_dim, h, h)  # the observation embedding; its EMA embeds the future targets
        self.target_proj = copy.deepcopy(self.obs_proj).requires_grad_(False)
        self.action_mlp = _mlp(action_dim, h, h)
        self.query = _mlp(2 * h, h, h)
        self.register_buffer("queue", torch.zeros(config.queue_size, h))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("tau", torch.tensor(config.tau_init))
        self.register_buffer("beta", torch.tensor(config.beta_init))
        self.register_buffer("acc_ema", torch.zeros(()))
        self.register_buffer("margin_ema", torch.zeros(()))

    def forward(self, h: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Queries u (B, C) from pooled observations h (B, F) and normalized chunks (B, H, D)."""
        return self.query(torch.cat([self.obs_proj(h), self.action_mlp(actions.flatten(1))], dim=-1))

    @torch.no_grad()
    def embed_target(self, h_future: torch.Tensor) -> torch.Tensor:
        """Targets y+ (B, C), L2-normalized, from the pooled future observation (B, F) through the EMA projection."""
        return F.normalize(self.target_proj(h_future.to(self.queue.dtype)).float(), dim=-1)

    @property
    def hard_ratio(self) -> float:
        """Linear in the accuracy EMA over [0.10, 0.50] -> [0, 0.5]."""
        return float(((self.acc_ema - 0.10) / 0.40).clamp(0.0, 1.0)) * 0.5

    def negatives(self, targets: torch.Tensor) -> torch.Tensor:
        """(B, Q, F) queue negatives per sample: the hard share nearest to each own target, the rest the most
        recent entries (empty while the queue is)."""
        n = int(self.queue_len)
        k = min(self.config.queue_negatives, n)
        b = targets.shape[0]
        if k == 0:
            return targets.new_zeros(b, 0, targets.shape[1])
        stored = self.queue[:n].to(targets.dtype)
        hard = round(self.hard_ratio * k)
        recent_idx = (self.queue_ptr - 1 - torch.arange(k - hard, device=targets.device)) % max(n, 1)
        picks = [stored[recent_idx].unsqueeze(0).expand(b, -1, -1)]
        if hard:
            nearest = (targets @ stored.T).topk(hard, dim=1).indices  # (B, hard)
            picks.append(stored[nearest])
        return torch.cat(picks, dim=1)

    @torch.no_grad()
    def push(self, targets: torch.Tensor) -> None:
        size = self.config.queue_size
        if size == 0:
            return
        for row in targets[-size:].to(self.queue.dtype):
            self.queue[self.queue_ptr] = row
            self.queue_ptr.copy_((self.queue_ptr + 1) % size)
        self.queue_len.copy_(torch.clamp(self.queue_len + min(len(targets), size), max=size))

    @torch.no_grad()
    def control(self, accuracy: torch.Tensor, margin: torch.Tensor) -> None:
        c = self.config
        self.acc_ema.lerp_(accuracy.float(), 1 - c.controller_ema)
        self.margin_ema.lerp_(margin.float(), 1 - c.controller_ema)
        if self.acc_ema < 0.05:
            scale = 1.01
        elif self.acc_ema > 0.35 and self.margin_ema > 0.10:
            scale = 0.995
        else:
            return
        self.tau.copy_((self.tau * scale).clamp(c.tau_min, c.tau_max))
        self.beta.copy_((self.beta * scale).clamp(c.beta_min, c.beta_max))


class PTR(ChunkRule):
    """The PTR update rule (modules: policy, ptr scorer, ptr_target EMA head; optimizers: policy, ptr)."""

    rewarded = False  # reward-free

    def steps(self, policy: Policy) -> int:
        return self.config.offset or policy.config.n_action_steps

    def build(self, policy: Policy, cfg: TrainConfig) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
        self.check_built()
        pcfg = policy.config
        scorer = PTRScorer(self.obs_dim, pcfg.horizon * pcfg.action_dim, self.config).to(policy.head.device)
        target = copy.deepcopy(policy.head).requires_grad_(False)
        optimizers = {POLICY: make_optimizer(policy.head.parameter_groups(), cfg.optim),
                      SCORER: make_optimizer(scorer.parameters(), cfg.optim)}
        return {POLICY: policy, SCORER: scorer, TARGET: target}, optimizers

    def update(self, learner: Learner, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        c = self.config
        policy: Policy = learner.unwrap(POLICY)
        scorer: PTRScorer = learner.unwrap(SCORER)
        target_head = learner.modules[TARGET]
        obs = policy.prepare(batch)
        with learner.acc.autocast():
            loss_out = learner.modules[POLICY](batch)
            logits, valid, has_future, d_neg, targets = identification(
                policy, learner.modules[SCORER], scorer, target_head, batch, obs)
        log_p = torch.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=1)[:, 0]
        fut = has_future.float()
        n_fut = fut.sum().clamp(min=1.0)
        id_loss = -(log_p * fut).sum() / n_fut
        rank_loss = -(F.logsigmoid(logits[:, 0] - d_neg) * fut).sum() / n_fut
        tau = scorer.tau.float()

        w, score = posterior_weights(logits.detach(), valid, beta=float(scorer.beta), alpha=c.alpha, w_min=c.w_min,
                                     w_max=c.w_max, has_future=has_future)
        if step < c.warmup_steps:
            w = torch.ones_like(w)
        act_loss = loss_out.weighted(w / w.mean())
        total = act_loss + c.lambda_id * id_loss + c.lambda_rank * rank_loss

        learner.acc.backward(total)
        norms = {}
        for name in (POLICY, SCORER):
            norms[name] = learner.acc.clip_grad_norm_(learner.modules[name].parameters(), learner.grad_clip)
            learner.optimizers[name].step()
            learner.optimizers[name].zero_grad(set_to_none=True)
        polyak_update(target_head, policy.head, 1.0 - c.target_ema)
        polyak_update(scorer.target_proj, scorer.obs_proj, 1.0 - c.target_ema)
        with torch.no_grad():
            masked = logits.detach().masked_fill(~valid, float("-inf"))
            correct = (masked.argmax(dim=1) == 0).float()
            best_other = masked[:, 1:].max(dim=1).values if masked.shape[1] > 1 else masked[:, 0]
            margin = ((masked[:, 0] - best_other) * tau).clamp(-2.0, 2.0)  # in cosine units
            scorer.control((correct * fut).sum() / n_fut, (margin * fut).sum() / n_fut)
            scorer.push(targets[has_future])
        return {"loss": total.detach(), "act_loss": act_loss.detach(), "ptr/id_loss": id_loss.detach(),
                "ptr/rank_loss": rank_loss.detach(), "ptr/accuracy": scorer.acc_ema.clone(),
                "ptr/tau": scorer.tau.clone(), "ptr/beta": scorer.beta.clone(), "ptr/w_mean": w.mean(),
                "ptr/w_min": w.min(), "ptr/w_max": w.max(), "ptr/score": score.mean().detach(),
                "grad_norm": norms[POLICY].detach(), "ptr/grad_norm": norms[SCORER].detach()}


def identification(policy: Policy, scorer_fn: nn.Module, scorer: PTRScorer, target_head: nn.Module,
                   batch: dict[str, Any], obs: dict[str, Any]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identification logits (B, 1 + (B - 1) + Q) with the own future first, which are valid (B, M), which samples
    have a future observation (B,), the rank loss's negative logits (B,) (actions permuted in the batch) and the
    future targets (B, F). `scorer_fn` is the scorer as the trainer wraps it (called once)."""
    pcfg = policy.config
    future_pad = [v for k, v in batch.items() if k.startswith(NEXT) and k.endswith("_is_pad")]
    has_future = ~torch.stack([pad[:, -1] for pad in future_pad]).any(0).to(policy.head.device)
    with torch.no_grad():
        nxt = policy.prepare(next_observation(batch, pcfg))
        y = scorer.embed_target(flatten_condition(target_head.encode(nxt)))  # (B, C) future targets
    actions = obs[pcfg.action_key]
    b = len(y)
    h = flatten_condition(policy.head.encode(obs))
    perm = torch.randperm(b, device=actions.device)
    both = scorer_fn(h.repeat(2, 1), torch.cat([actions, actions[perm]]))  # queries, then permuted-action queries
    u, u_perm = F.normalize(both.float(), dim=-1).split(b)
    tau = scorer.tau.float()
    sim = u @ y.T  # (B, B): column j is sample j's target, the diagonal each sample's own
    off = ~torch.eye(b, dtype=torch.bool, device=y.device)
    queue = torch.einsum("bf,bqf->bq", u, scorer.negatives(y))
    logits = torch.cat([sim.diagonal().unsqueeze(1), sim.masked_select(off).view(b, b - 1), queue], dim=1)
    logits = (logits / tau).clamp(-SCORE_CLAMP, SCORE_CLAMP)
    valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=y.device),
                       has_future.unsqueeze(0).expand(b, b).masked_select(off).view(b, b - 1),
                       torch.ones_like(queue, dtype=torch.bool)], dim=1)
    d_neg = ((u_perm * y).sum(-1) / tau).clamp(-SCORE_CLAMP, SCORE_CLAMP)
    return logits, valid, has_future, d_neg, y


@torch.no_grad()
def window_weights(policy: Policy, scorer: PTRScorer, target_head: nn.Module, batch: dict[str, Any]
                   ) -> torch.Tensor:
    """The weights (B,) PTR gives a batch of windows now (in-batch and queue negatives, as in training)."""
    c = scorer.config
    logits, valid, has_future, _, _ = identification(policy, scorer, scorer, target_head, batch,
                                                     policy.prepare(batch))
    w, _ = posterior_weights(logits, valid, beta=float(scorer.beta), alpha=c.alpha, w_min=c.w_min, w_max=c.w_max,
                             has_future=has_future)
    return w
