"""Chunk executors: turn the action chunks a policy predicts into one action per control step.

Shared by simulation evaluation and hardware deployment. All executors are batched over B environments that
advance in lockstep, and have the same four-call interface, used once per control step as

    executor.reset()
    every step:  if executor.needs_chunk(): executor.push(policy.predict_chunk(obs))   # (B, H, D)
                 action = executor.pop()                                                 # (B, D)

A chunk's index j is the action for time offset `action_delta_indices[j]` relative to the step at which it
was predicted; `now` is the index of offset 0 (diffusion policy with T_o=2: 1; ACT: 0). Indices before `now`
refer to past steps and are never executed.

- `RecedingHorizon`: execute `n_action_steps` actions from `now` open loop, then ask for a new chunk
  (Diffusion Policy's T_a; ACT without ensembling uses n_action_steps = chunk size).
- `TemporalEnsembler`: ask for a chunk every step; the action at step t is the weighted mean of every stored
  prediction for t, with weights w_i = exp(-m * i), i = 0 for the OLDEST prediction (ACT, m = 0.01). Which
  predictions exist is tracked in a boolean buffer, so an action that is exactly zero is still a prediction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

DEFAULT_ENSEMBLE_COEFF = 0.01  # ACT's m


def now_index(action_delta_indices: Sequence[int]) -> int:
    """Index of the chunk entry for the current step (offset 0)."""
    indices = list(action_delta_indices)
    if 0 not in indices:
        raise ValueError(f"action_delta_indices {indices} has no entry for the current step (offset 0)")
    if indices != list(range(indices[0], indices[0] + len(indices))):
        raise ValueError(f"action_delta_indices must be consecutive steps, got {indices}")
    return indices.index(0)


def _check_chunk(chunk: torch.Tensor, min_length: int, batch_size: int | None) -> torch.Tensor:
    chunk = torch.as_tensor(chunk)
    if chunk.ndim != 3:
        raise ValueError(f"an action chunk must be (B, H, D), got shape {tuple(chunk.shape)}")
    if chunk.shape[1] < min_length:
        raise ValueError(f"action chunk has {chunk.shape[1]} steps, the executor needs at least {min_length}")
    if batch_size is not None and chunk.shape[0] != batch_size:
        raise ValueError(f"action chunk has batch size {chunk.shape[0]}, expected {batch_size} (as in earlier chunks)")
    return chunk


class ChunkExecutor(ABC):
    """Base of the executors: reset / needs_chunk / push / pop, batched over environments."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every stored chunk (start of an episode); the batch size is set by the next push."""

    @abstractmethod
    def needs_chunk(self) -> bool:
        """Whether `push` must be called before the next `pop`."""

    @abstractmethod
    def push(self, chunk: torch.Tensor) -> None:
        """Store a chunk (B, H, D) predicted at the current step."""

    @abstractmethod
    def pop(self) -> torch.Tensor:
        """The action (B, D) for the current step; advances time by one step."""

    def describe(self) -> dict:
        """A JSON-able summary (for eval_info.json)."""
        return {"type": type(self).__name__}


class RecedingHorizon(ChunkExecutor):
    """Execute chunk[:, now : now + n_action_steps] open loop, then replan.

    Pushing while actions are still queued replaces the queue (replanning early).
    """

    def __init__(self, n_action_steps: int, now: int = 0):
        if n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
        if now < 0:
            raise ValueError(f"now must be >= 0, got {now}")
        self.n_action_steps = n_action_steps
        self.now = now
        self.reset()

    def reset(self) -> None:
        self._queue: torch.Tensor | None = None  # (B, n_action_steps, D)
        self._next = 0

    def needs_chunk(self) -> bool:
        return self._queue is None or self._next >= self.n_action_steps

    def push(self, chunk: torch.Tensor) -> None:
        chunk = _check_chunk(chunk, self.now + self.n_action_steps, None)
        self._queue = chunk[:, self.now : self.now + self.n_action_steps].clone()
        self._next = 0

    def pop(self) -> torch.Tensor:
        if self.needs_chunk():
            raise RuntimeError("RecedingHorizon.pop(): no queued action left; push a new chunk first")
        action = self._queue[:, self._next]
        self._next += 1
        return action

    def describe(self) -> dict:
        return {"type": "receding_horizon", "n_action_steps": self.n_action_steps, "now_index": self.now}


class TemporalEnsembler(ChunkExecutor):
    """ACT temporal ensembling over chunks predicted every step.

    horizon: chunk length H; now: index of offset 0, so each chunk covers steps t .. t + (H - now) - 1.
    coeff: m in w_i = exp(-m * i), where i ranks the predictions for a step from the oldest (i = 0); m > 0
    favours older predictions, m < 0 newer ones, m = 0 averages.

    Storage is a ring of S = H - now chunk slots (a slot older than S steps no longer covers the present):
    values (B, S, S, D) [env, slot, offset from the slot's query step], the query step of each slot, and a
    boolean `populated` (B, S).
    """

    def __init__(self, horizon: int, coeff: float = DEFAULT_ENSEMBLE_COEFF, now: int = 0):
        if not 0 <= now < horizon:
            raise ValueError(f"now index {now} must be in [0, horizon={horizon})")
        self.horizon = horizon
        self.now = now
        self.span = horizon - now
        self.coeff = float(coeff)
        self.reset()

    def reset(self) -> None:
        self._values: torch.Tensor | None = None
        self._populated: torch.Tensor | None = None
        self._query_step = torch.full((self.span,), -1, dtype=torch.long)
        self._t = 0
        self._pushed_at = -1

    def needs_chunk(self) -> bool:
        return self._pushed_at != self._t

    def push(self, chunk: torch.Tensor) -> None:
        batch = None if self._values is None else self._values.shape[0]
        chunk = _check_chunk(chunk, self.horizon, batch)
        future = chunk[:, self.now : self.now + self.span]
        if self._values is None:
            b, _, d = future.shape
            self._values = torch.zeros(b, self.span, self.span, d, dtype=future.dtype, device=future.device)
            self._populated = torch.zeros(b, self.span, dtype=torch.bool, device=future.device)
        slot = self._t % self.span
        self._values[:, slot] = future
        self._populated[:, slot] = True
        self._query_step[slot] = self._t
        self._pushed_at = self._t

    def pop(self) -> torch.Tensor:
        if self._values is None:
            raise RuntimeError("TemporalEnsembler.pop(): no chunk pushed yet")
        age = self._t - self._query_step  # (S,)
        covers = (self._query_step >= 0) & (age >= 0) & (age < self.span)
        order = torch.argsort(torch.where(covers, self._query_step, self._t + 1), stable=True)  # oldest first
        valid = (self._populated & covers.to(self._populated.device))[:, order]  # (B, S)
        if not bool(valid.any(dim=1).all()):
            raise RuntimeError(f"TemporalEnsembler.pop(): no stored prediction covers step {self._t}; push a chunk")
        offsets = age.clamp(0, self.span - 1)[order].to(self._values.device)  # (S,)
        preds = self._values[:, order, offsets]  # (B, S, D): each slot's prediction for step t
        rank = valid.long().cumsum(dim=1) - 1  # i = 0 for the oldest valid prediction of each env
        weights = torch.exp(-self.coeff * rank.to(preds.dtype)) * valid.to(preds.dtype)
        action = (weights.unsqueeze(-1) * preds).sum(dim=1) / weights.sum(dim=1, keepdim=True)
        self._t += 1
        return action

    def describe(self) -> dict:
        return {"type": "temporal_ensembling", "coeff": self.coeff, "horizon": self.horizon, "now_index": self.now}


EXECUTOR_KINDS = ("auto", "receding_horizon", "temporal_ensembling")


def make_executor(
    config, kind: str = "auto", *, n_action_steps: int | None = None, coeff: float | None = None
) -> ChunkExecutor:
    """The executor for a policy config (see `robopolicy.runtime.protocol.PolicyConfigLike`).

    kind "auto": temporal ensembling when the config sets `temporal_ensemble_coeff` (ACT), else receding
    horizon with the config's n_action_steps. `n_action_steps` / `coeff` override the config's values.
    """
    if kind not in EXECUTOR_KINDS:
        raise ValueError(f"unknown executor {kind!r}; choose one of {EXECUTOR_KINDS}")
    now = now_index(config.action_delta_indices)
    config_coeff = getattr(config, "temporal_ensemble_coeff", None)
    if kind == "auto":
        kind = "temporal_ensembling" if (coeff is not None or config_coeff is not None) else "receding_horizon"
    if kind == "temporal_ensembling":
        m = coeff if coeff is not None else (config_coeff if config_coeff is not None else DEFAULT_ENSEMBLE_COEFF)
        return TemporalEnsembler(config.horizon, m, now)
    steps = n_action_steps if n_action_steps is not None else config.n_action_steps
    if now + steps > config.horizon:
        raise ValueError(
            f"n_action_steps={steps} from the current-step index {now} exceeds the chunk length "
            f"horizon={config.horizon}; use n_action_steps <= {config.horizon - now}"
        )
    return RecedingHorizon(steps, now)
