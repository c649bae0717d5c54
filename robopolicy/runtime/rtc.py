"""Real-Time Chunking (Black et al. 2025, arXiv 2506.07339): inpaint the next chunk onto the previous one.

While a chunk is being computed the robot keeps executing the previous chunk, so the first d = ceil(latency /
dt) actions of the new chunk are already decided. RTC freezes them and guides the rest toward the previous
chunk with a soft mask W (1 for i < d, decaying to 0 at `end`), using PiGDM guidance at every denoising step.
No retraining: it only changes sampling.

The runtime names no head: a head that declares the GUIDANCE capability describes each denoising step as a
`DenoisingStep` (flow-time noise level tau, 0 = noise -> 1 = data; the noise std in x; its map to the predicted
clean chunk x0 and d x0 / d out), and `pigdm_guide` does the rest:

    g        = J^T [W * (Y - x0(x))],  J = dx0/dx        (one vector-Jacobian product, torch.autograd)
    w(tau)   = min(beta, (1 - tau) / tau * (tau^2 + (1 - tau)^2) / (1 - tau)^2)
    x0      += noise_std * w(tau) * g,   i.e.   out += noise_std * w(tau) * g / (d x0 / d out)

Flow heads (x_t = t * eps + (1 - t) * A, v = eps - A, tau = 1 - t, x0 = x_t - t v): this is the paper's
v_paper + w * g with v_paper = -v. VP diffusion (x_k = sqrt(abar) A + sqrt(1 - abar) eps): noise_std =
sqrt(1 - abar), tau = a / (a + s), the flow time at the same noise-to-signal ratio; for epsilon prediction this
is PiGDM's score correction eps -= sqrt(1 - abar) * c * g with c = 1 / (1 - abar), clipped like the flow weight.
With clip_sample on, the head's x0 is clipped as its scheduler clips it, so clipped entries get no guidance.

Chunk alignment: `prev_actions` (B, R, D) are the previous chunk's actions for the steps starting at the new
observation's step (offset 0, index `now` of the new chunk); R is how many are left. Indices before `now` (past
steps of a T_o > 1 diffusion window) are not guided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from robopolicy.policies.base import GUIDANCE, DenoisingStep, Guide
from robopolicy.runtime.action_queue import ActionQueue
from robopolicy.runtime.executors import ChunkExecutor, _check_chunk

SCHEDULES = ("exp", "linear", "ones", "zeros")


@dataclass(frozen=True)
class RTCConfig:
    """execution_horizon: end of the guided region, in steps from the observation step (lerobot: 10);
    max_guidance_weight: beta (10 suits ~10 flow steps); schedule: soft-mask decay between d and the end
    ("exp", "linear", "ones" = 1 up to the end, "zeros" = hard prefix of d steps only)."""

    execution_horizon: int = 10
    max_guidance_weight: float = 10.0
    schedule: str = "exp"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"RTCConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.execution_horizon < 1:
            raise ValueError(f"RTCConfig.execution_horizon must be >= 1, got {self.execution_horizon}")
        if not self.max_guidance_weight >= 0:
            raise ValueError(f"RTCConfig.max_guidance_weight must be >= 0, got {self.max_guidance_weight}")


def prefix_weights(delay: int, end: int, length: int, schedule: str = "exp") -> torch.Tensor:
    """Soft mask W (length,): 1 for i < delay, decaying to 0 at `end`, 0 for i >= end.

    linear: w_i = clip((d - 1 - i) / (end - d + 1) + 1, 0, 1); exp: w * (e^w - 1) / (e - 1) of that;
    ones: 1 for i < end; zeros: 1 for i < d only. delay is capped at end."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown prefix schedule {schedule!r}; choose one of {SCHEDULES}")
    if delay < 0 or end < 0:
        raise ValueError(f"delay ({delay}) and end ({end}) must be >= 0")
    d = min(delay, end)
    i = torch.arange(length, dtype=torch.float64)
    if schedule == "ones":
        w = torch.ones(length, dtype=torch.float64)
    elif schedule == "zeros":
        w = (i < d).double()
    else:
        w = ((d - 1 - i) / (end - d + 1) + 1).clamp(0.0, 1.0)
        if schedule == "exp":
            w = w * torch.expm1(w) / (math.e - 1)
    return torch.where(i >= end, torch.zeros_like(w), w)


def guidance_weight(tau: float, beta: float) -> float:
    """min(beta, (1 - tau) / tau * (tau^2 + (1 - tau)^2) / (1 - tau)^2), tau in [0, 1] with 0 = noise, 1 = data
    (the unclipped weight is infinite at both ends)."""
    if tau <= 0.0 or tau >= 1.0:
        return float(beta)
    return float(min(beta, (tau**2 + (1 - tau) ** 2) / (tau * (1 - tau))))


def pigdm_guide(target: torch.Tensor, weights: torch.Tensor, beta: float) -> Guide:
    """The PiGDM guide for any head with the GUIDANCE capability.

    target Y (B, H, D) normalized, weights W broadcastable to Y (e.g. (1, H, 1)); both follow x's device and dtype.
    At each step: x0 = step.to_x0(x, out), g = J^T [W * (Y - x0)] with J = dx0/dx (one vector-Jacobian product),
    x0 moves by noise_std * w(tau) * g, which the head's affine output map turns into out + that / x0_per_out.
    With num_samples > 1 the B targets are repeated over each observation's samples."""

    placed: dict = {}  # (device, dtype, batch) -> (Y, W) there: moved and repeated once, not at every step

    def guide(denoise, x: torch.Tensor, step: DenoisingStep) -> torch.Tensor:
        where = (x.device, x.dtype, x.shape[0])
        if where not in placed:
            y = target.to(device=x.device, dtype=x.dtype)
            placed[where] = (y.repeat_interleave(x.shape[0] // y.shape[0], 0) if y.shape[0] != x.shape[0] else y,
                             weights.to(device=x.device, dtype=x.dtype))
        y, w = placed[where]
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            out = denoise(x_)
            x0 = step.to_x0(x_, out)
            (g,) = torch.autograd.grad(x0, x_, grad_outputs=w * (y - x0.detach()))
        lam = step.noise_std * guidance_weight(step.tau, beta)
        return out.detach() + (lam / step.x0_per_out) * g

    return guide


def make_guide(policy, prev_actions, delay: int, cfg: RTCConfig) -> Guide | None:
    """The guide for `policy.predict_chunk(obs, guide=...)`, or None when there is nothing to inpaint.

    prev_actions: unnormalized (B, R, D) actions of the previous chunk for steps obs_step, obs_step + 1, ...;
    delay: d, how many of them execute before the new chunk can take over."""
    from robopolicy.runtime.executors import now_index

    head, config = policy.head, policy.config
    if not head.supports(GUIDANCE):
        raise TypeError(f"real-time chunking needs a head with guided sampling; {type(head).__name__} offers "
                        f"{sorted(head.capabilities) or 'none'}: use a receding-horizon or temporal-ensembling "
                        "executor instead")
    if prev_actions is None:
        return None
    prev = torch.as_tensor(prev_actions)
    if prev.ndim != 3 or prev.shape[-1] != config.action_dim:
        raise ValueError(f"prev_actions must be (B, R, {config.action_dim}), got {tuple(prev.shape)}")
    now = now_index(config.action_delta_indices)
    span = min(prev.shape[1], config.horizon - now)
    if span == 0:
        return None
    y = torch.zeros(prev.shape[0], config.horizon, config.action_dim, dtype=torch.float32)
    y[:, now : now + span] = policy.normalizer.normalize(config.action_key, prev[:, :span].float().cpu())
    w = torch.zeros(config.horizon, dtype=torch.float64)
    w[now : now + span] = prefix_weights(delay, min(cfg.execution_horizon, span), span, cfg.schedule)
    return pigdm_guide(y, w.to(torch.float32).view(1, -1, 1), cfg.max_guidance_weight)


def rtc_sample(policy, obs, prev_actions, delay: int, cfg: RTCConfig = RTCConfig(),
               generator: torch.Generator | None = None) -> torch.Tensor:
    """An unnormalized chunk (B, H, D) inpainted onto `prev_actions` (see `make_guide`); plain sampling when
    prev_actions is None or empty."""
    guide = make_guide(policy, prev_actions, delay, cfg)
    return policy.predict_chunk(obs, generator, guide=guide)


class RTCExecutor(ChunkExecutor):
    """Chunk execution with a simulated inference delay (for evaluation in simulation, in lockstep).

    A chunk pushed at step t (predicted from the observation of step t) only takes over at step t + delay; until
    then the previous chunk keeps running, exactly as on a robot with asynchronous inference. From t + delay on
    the queue is new[now + delay:] (ActionQueue.merge). A new chunk is requested once `replan_every` actions
    ran since the last request and none is pending. `prefix()` returns what to freeze for `rtc_sample`.
    """

    def __init__(self, delay: int, replan_every: int, now: int = 0, horizon: int | None = None):
        if delay < 0 or replan_every < 1:
            raise ValueError(f"need delay >= 0 and replan_every >= 1, got {delay} and {replan_every}")
        if horizon is not None and now + delay + replan_every > horizon:
            raise ValueError(f"delay {delay} + replan_every {replan_every} from index {now} exceed the chunk "
                             f"length {horizon}: the queue would run dry before the next chunk lands")
        self.delay, self.replan_every, self.now = delay, replan_every, now
        self.reset()

    def reset(self) -> None:
        self.queue = ActionQueue()
        self._t = 0
        self._requested_at: int | None = None
        self._pending: tuple[int, np.ndarray] | None = None  # (query step, chunk)

    def needs_chunk(self) -> bool:
        if self._pending is not None:
            return False
        return self._requested_at is None or self._t - self._requested_at >= self.replan_every

    def prefix(self) -> torch.Tensor | None:
        """The queued (B, R, D) actions from the current step on: the frozen prefix for rtc_sample."""
        actions = self.queue.actions_from(self._t)
        return None if actions is None else torch.from_numpy(actions.copy())

    def push(self, chunk: torch.Tensor) -> None:
        chunk = _check_chunk(chunk, self.now + 1, None)
        self._requested_at = self._t
        self._pending = (self._t, chunk.detach().cpu().numpy())
        if self.queue.remaining(self._t) == 0:  # nothing to execute meanwhile (start): the robot waits once
            self._land()

    def _land(self) -> None:
        query, chunk = self._pending
        self.queue.merge(chunk, query - self.now, self._t)
        self._pending = None

    def pop(self) -> torch.Tensor:
        if self._pending is not None and self._t >= self._pending[0] + self.delay:
            self._land()
        action = self.queue.pop(self._t)
        if action is None:
            raise RuntimeError(f"RTCExecutor.pop(): no action queued for step {self._t}; push a chunk first")
        self._t += 1
        return torch.from_numpy(action)

    def describe(self) -> dict:
        return {"type": "rtc", "delay": self.delay, "replan_every": self.replan_every, "now_index": self.now}
