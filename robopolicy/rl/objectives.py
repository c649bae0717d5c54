"""Critic objectives: TD targets over action chunks, IQL's expectile loss and Cal-QL's calibrated regularizer.

Shapes: B transitions, h steps per chunk (h = 1 is ordinary one-step TD), E ensemble members, N candidate
actions per state. Rewards are per environment step; a chunk's reward is summed with gamma^i inside it.
"""

from __future__ import annotations

import torch


def chunk_targets(
    reward: torch.Tensor, terminal: torch.Tensor, exists: torch.Tensor, bootstrap: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets y (B, h) for every prefix of a chunk, and which of them are defined (B, h) bool.

    reward, terminal (B, h): per step t .. t+h-1 of the chunk; exists (B, h + 1): frame t + i is in the anchor's
    episode (exists[:, 0] is the anchor itself); bootstrap (B, h): the target critic's value at s_{t+j} for
    j = 1 .. h (entries whose frame does not exist are ignored).

    y_j = sum_{i<j} gamma^i r_{t+i} + gamma^j Q(s_{t+j}) with nothing bootstrapped once a terminal step has been
    reached (its reward counts, later ones do not). A prefix that runs past the episode end without a terminal
    step has no next state to bootstrap from: it is not defined (the dataset stores no observation after an
    episode's last frame), so it is masked out rather than truncated with a wrong discount.
    """
    b, h = reward.shape
    if terminal.shape != (b, h) or bootstrap.shape != (b, h) or exists.shape != (b, h + 1):
        raise ValueError(f"chunk_targets: reward {tuple(reward.shape)}, terminal {tuple(terminal.shape)}, bootstrap "
                         f"{tuple(bootstrap.shape)} must be (B, h) and exists {tuple(exists.shape)} (B, h + 1)")
    terminal = terminal.bool() & exists[:, :h]
    ended_before = torch.cumsum(terminal.int(), dim=1) - terminal.int() > 0  # a terminal step before step i
    alive = exists[:, :h] & ~ended_before  # step i happens and its reward counts
    discount = gamma ** torch.arange(h + 1, device=reward.device, dtype=torch.float32)
    partial = torch.cumsum(torch.where(alive, reward.float(), 0.0) * discount[:h], dim=1)  # sum over i <= j-1
    done = torch.cumsum(terminal.int(), dim=1) > 0  # a terminal step among 0 .. j-1
    y = partial + torch.where(done, 0.0, discount[1:] * bootstrap.float())
    all_exist = torch.cumprod(exists[:, 1:].int(), dim=1).bool()  # frames t+1 .. t+j all exist
    return y, done | all_exist


def td_loss_mask_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `loss` (..., B, h) over the defined entries of `mask` (B, h) (0 when none is)."""
    mask = mask.to(loss.dtype).expand_as(loss)
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def expectile_loss(diff: torch.Tensor, expectile: float = 0.7) -> torch.Tensor:
    """IQL's asymmetric squared loss |tau - 1(diff < 0)| * diff^2, elementwise; diff = Q(s, a) - V(s)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.pow(2)


def cal_ql_regularizer(
    q_policy: torch.Tensor, q_data: torch.Tensor, v_mu: torch.Tensor, reduce: str = "mean", temperature: float = 1.0
) -> torch.Tensor:
    """Cal-QL's conservative term per member and state (E, B).

    q_policy (E, B, N): Q at N actions from the policy being evaluated (PA-RL: the optimised candidates);
    q_data (E, B): Q at the dataset action; v_mu (B,): the data's Monte-Carlo return-to-go. Each policy value is
    calibrated to at least v_mu, max(Q(s, a_hat), V^mu(s)), so the critic is never pushed below the behaviour
    policy's return. reduce='mean' averages over the N actions (the formula of algorithms.md section 6);
    'logsumexp' is CQL's soft maximum, temperature * logsumexp(Q / temperature) - temperature * log N.
    """
    calibrated = torch.maximum(q_policy, v_mu.view(1, -1, 1).to(q_policy.dtype))
    if reduce == "mean":
        pushed_down = calibrated.mean(dim=-1)
    elif reduce == "logsumexp":
        n = calibrated.shape[-1]
        pushed_down = temperature * (torch.logsumexp(calibrated / temperature, dim=-1)
                                     - torch.log(torch.tensor(float(n), device=calibrated.device)))
    else:
        raise ValueError(f"reduce must be 'mean' or 'logsumexp', got {reduce!r}")
    return pushed_down - q_data
