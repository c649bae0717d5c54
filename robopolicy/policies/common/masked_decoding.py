"""Masked-token training masks and parallel decoding (Discrete Diffusion VLA, docs/algorithms.md section 5).

Training: per sample a mask ratio gamma = cos(pi r / 2), r ~ U[0, 1), masks ceil(gamma L) of the L action
positions (at least one), so the ratios seen in training cover every ratio the decoder visits.

Decoding, T rounds (NFE = T), starting from L [MASK] tokens. Round t (1..T):
1. one forward pass gives per-position posteriors p (the [MASK] token is never predicted);
2. a token is drawn at every position by tempered Gumbel-max, argmax(log p + tau_t G), tau_t decaying linearly
   from 1 (round 1) to 0 (round T: argmax);
3. committed tokens stay fixed, except that secondary re-masking sends back to [MASK] a committed token whose
   current probability fell below eta_t (an increasing threshold) or dropped by more than delta since it was
   committed (residual drop);
4. the masked positions compete by confidence (max probability, or the gap between the two best) for the
   places left so that L - floor(L cos(pi t / 2T)) positions are committed after round t: easy tokens first.
After round T every position is committed (the schedule reaches L and re-masking cannot leave a gap).

variant="maskgit" is the authors' reference decoder instead (parallel_decode.py, MaskGIT-style): multinomial
samples at masked positions, confidence log p(sample) + (1 - r) G with r = t / T, committed tokens ranked by
(1 - r) log p(token) (remask=True) or kept (+inf), and the floor(L cos(pi t / 2T)) lowest (at least 1 before the
last round) masked again.

variant="left_to_right" is the autoregressive-order baseline of the same model: L passes (NFE = L), pass i
commits position i by argmax given the positions before it ([MASK] after it).

`logits_fn` returns (batch, length, V) scores: V = mask_token (a head whose output never includes [MASK]) or
V > mask_token (the [MASK] column is ignored).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from robopolicy.config_parsing import check


def cosine_mask_ratio(r: torch.Tensor) -> torch.Tensor:
    """gamma = cos(pi r / 2): r in [0, 1) -> gamma in (0, 1]."""
    return torch.cos(0.5 * math.pi * r)


def sample_training_mask(
    batch: int, length: int, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """(batch, length) bool, True = masked: ceil(gamma L) random positions per row, gamma from the cosine schedule."""
    r = torch.rand(batch, device=device, generator=generator)
    counts = torch.ceil(cosine_mask_ratio(r) * length).clamp(1, length).long()
    order = torch.rand(batch, length, device=device, generator=generator).argsort(dim=1)
    ranks = order.argsort(dim=1)  # rank of each position in a random permutation
    return ranks < counts[:, None]


def committed_after(length: int, rounds: int) -> list[int]:
    """Positions committed after each decoding round: L - floor(L cos(pi t / 2T)), ending at L."""
    counts = [length - math.floor(length * math.cos(0.5 * math.pi * t / rounds)) for t in range(1, rounds)]
    return [min(length, max(c, 0)) for c in counts] + [length]


@dataclass(frozen=True)
class DecodeConfig:
    """How a chunk of [MASK] tokens is decoded (see the module docstring)."""

    rounds: int = 12  # T = forward passes per chunk (NFE); the paper's default 12
    order: Literal["max_confidence", "confidence_gap"] = "max_confidence"  # which masked positions commit first
    remask_threshold: tuple[float, float] | None = None  # (eta at round 1, eta at round T), linear; null: off
    residual_drop: float | None = None  # re-mask a token whose probability fell by more than this; null: off
    variant: Literal["adaptive", "maskgit", "left_to_right"] = "adaptive"  # the paper's, the authors' code, or AR order
    maskgit_remask: bool = True  # maskgit variant: committed tokens compete again (scaled by 1 - t / T)

    def __post_init__(self):
        check(self.rounds >= 1, "rounds", self.rounds, ">= 1")
        check(self.order in ("max_confidence", "confidence_gap"), "order", self.order,
              "'max_confidence' or 'confidence_gap'")
        check(self.variant in ("adaptive", "maskgit", "left_to_right"), "variant", self.variant,
              "'adaptive', 'maskgit' or 'left_to_right'")
        check(self.remask_threshold is None or len(self.remask_threshold) == 2, "remask_threshold",
              self.remask_threshold, "[eta_first, eta_last] or null")
        check(self.residual_drop is None or self.residual_drop >= 0, "residual_drop", self.residual_drop,
              ">= 0 or null")

    def nfe(self, length: int) -> int:
        """Forward passes to decode `length` tokens."""
        return length if self.variant == "left_to_right" else self.rounds


def decode(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    batch: int,
    length: int,
    mask_token: int,
    config: DecodeConfig = DecodeConfig(),
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    on_round: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Decode (batch, length) tokens with `config.rounds` calls of `logits_fn(tokens) -> (batch, length, V)`.

    `on_round(t, tokens)` sees the tokens after each round (tests, visualisation). Returns long tokens with no
    [MASK] left (variant "left_to_right": `length` calls, one committed position each)."""
    if config.variant == "maskgit":
        return _decode_maskgit(logits_fn, batch, length, mask_token, config, device, generator, on_round)
    if config.variant == "left_to_right":
        return _decode_left_to_right(logits_fn, batch, length, mask_token, device, on_round)
    rounds = config.rounds
    tokens = torch.full((batch, length), mask_token, dtype=torch.long, device=device)
    commit_conf = torch.zeros(batch, length, device=device)
    targets = committed_after(length, rounds)
    for t in range(1, rounds + 1):
        logp = _log_probs(logits_fn(tokens), mask_token)
        tau = 1.0 - (t - 1) / (rounds - 1) if rounds > 1 else 0.0
        sampled = (logp + tau * _gumbel(logp.shape, device, generator)).argmax(dim=-1)
        probs = logp.exp()
        top2 = probs.topk(2, dim=-1).values
        confidence = top2[..., 0] - top2[..., 1] if config.order == "confidence_gap" else top2[..., 0]

        committed = tokens != mask_token
        current = probs.gather(-1, tokens.clamp(max=probs.shape[-1] - 1)[..., None])[..., 0]
        if config.remask_threshold is not None:
            lo, hi = config.remask_threshold
            eta = lo + (hi - lo) * ((t - 1) / (rounds - 1) if rounds > 1 else 1.0)
            committed &= current >= eta
        if config.residual_drop is not None:
            committed &= commit_conf - current <= config.residual_drop

        # committed tokens first (+inf), then the masked positions by confidence
        score = torch.where(committed, torch.full_like(confidence, float("inf")), confidence)
        keep = score.topk(targets[t - 1], dim=1).indices
        chosen = torch.zeros_like(committed).scatter_(1, keep, True)
        new = chosen & ~committed
        tokens = torch.where(committed & chosen, tokens, torch.where(new, sampled, mask_token))
        commit_conf = torch.where(new, probs.gather(-1, sampled[..., None])[..., 0], commit_conf)
        if on_round is not None:
            on_round(t, tokens)
    return tokens


def _log_probs(logits: torch.Tensor, mask_token: int) -> torch.Tensor:
    """float32 log-probabilities over the tokens < mask_token ([MASK] gets -inf where the logits have a column)."""
    logits = logits.float()
    if logits.shape[-1] > mask_token:
        logits = logits.clone()
        logits[..., mask_token:] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def _decode_left_to_right(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    batch: int,
    length: int,
    mask_token: int,
    device: torch.device | str,
    on_round: Callable[[int, torch.Tensor], None] | None,
) -> torch.Tensor:
    tokens = torch.full((batch, length), mask_token, dtype=torch.long, device=device)
    for i in range(length):
        tokens[:, i] = _log_probs(logits_fn(tokens)[:, i], mask_token).argmax(dim=-1)
        if on_round is not None:
            on_round(i + 1, tokens)
    return tokens


def _gumbel(shape: torch.Size, device: torch.device | str, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, device=device, generator=generator).clamp(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def _masked_after_maskgit(length: int, rounds: int, t: int) -> int:
    if t == rounds:
        return 0
    return min(max(math.floor(length * math.cos(0.5 * math.pi * t / rounds)), 1), length - 1)


def _decode_maskgit(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    batch: int,
    length: int,
    mask_token: int,
    config: DecodeConfig,
    device: torch.device | str,
    generator: torch.Generator | None,
    on_round: Callable[[int, torch.Tensor], None] | None,
) -> torch.Tensor:
    rounds = config.rounds
    tokens = torch.full((batch, length), mask_token, dtype=torch.long, device=device)
    for t in range(1, rounds + 1):
        logp = _log_probs(logits_fn(tokens), mask_token)
        masked = tokens == mask_token
        sampled = torch.multinomial(logp.exp().flatten(0, 1), 1, generator=generator).view(batch, length)
        tokens = torch.where(masked, sampled, tokens)
        r = t / rounds
        chosen_logp = logp.gather(-1, tokens[..., None])[..., 0]
        confidence = chosen_logp + (1.0 - r) * _gumbel(chosen_logp.shape, device, generator)
        if config.maskgit_remask:
            confidence = torch.where(masked, confidence, (1.0 - r) * chosen_logp)
        else:
            confidence = torch.where(masked, confidence, torch.full_like(confidence, float("inf")))
        n_mask = _masked_after_maskgit(length, rounds, t)
        if n_mask:
            lowest = confidence.topk(n_mask, dim=1, largest=False).indices
            tokens = tokens.scatter(1, lowest, mask_token)
        if on_round is not None:
            on_round(t, tokens)
    return tokens
