"""PTR's posterior-transition weights (algorithms.md section 8): how well a chunk identifies its own future.

For each sample the scorer compares its query u_t with a candidate pool whose column 0 is the sample's own
future target and the rest are mismatched targets: d = cos(u, y) / tau_score, clamped at 20. The identification
posterior p_hat = softmax(d)_0 gives the score T = log p_hat + log |Y| (0 when the posterior is uniform) and the
weight w = 1 + alpha * (clip(exp(T / beta), w_min, w_max) - 1). With alpha = 1 the weights lie in
[w_min, w_max], so the reweighted data distribution q ~ w * p_D has KL(q || p_D) <= log(w_max / w_min).
Samples without a future observation get w = 1. The self-normalised weighted regression
sum_t w_t l_t / sum_t w_t is `LossOutput.weighted(w / w.mean())`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCORE_CLAMP = 20.0


def identification_logits(query: torch.Tensor, candidates: torch.Tensor, tau: float) -> torch.Tensor:
    """d (B, M) = cos(query (B, C), candidates (B, M, C)) / tau, clamped at +-20."""
    cos = torch.einsum("bc,bmc->bm", F.normalize(query, dim=-1), F.normalize(candidates, dim=-1))
    return (cos / tau).clamp(-SCORE_CLAMP, SCORE_CLAMP)


def posterior_weights(
    logits: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    beta: float = 1.5,
    alpha: float = 1.0,
    w_min: float = 0.25,
    w_max: float = 4.0,
    has_future: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights w (B,) and scores T (B,) from identification logits (B, M), column 0 the positive.

    valid (B, M): which candidates exist for each sample (pools may differ in size; column 0 must be valid);
    has_future (B,): False where a sample has no future observation (w = 1, T = 0). Weights are detached.
    """
    if valid is None:
        valid = torch.ones_like(logits, dtype=torch.bool)
    masked = logits.float().masked_fill(~valid, float("-inf"))
    log_p = torch.log_softmax(masked, dim=1)[:, 0]
    score = log_p + torch.log(valid.sum(dim=1).float())
    w = 1.0 + alpha * (torch.exp(score / beta).clamp(w_min, w_max) - 1.0)
    if has_future is not None:
        w = torch.where(has_future, w, torch.ones_like(w))
        score = torch.where(has_future, score, torch.zeros_like(score))
    return w.detach(), score


def kl_bound(w_min: float, w_max: float) -> float:
    """The KL(q || p_D) bound in nats that clipped weights guarantee (log 16 = 2.77 for the defaults)."""
    return math.log(w_max / w_min)
