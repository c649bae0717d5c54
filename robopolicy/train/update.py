"""Update rules: what one training step does, so that a method plugs into the trainer without editing it.

An `UpdateRule` names its modules and optimizers (`build`) and runs one step on a raw batch (`update`). The trainer
moves and wraps them with accelerate, applies the learning-rate schedule to every optimizer, keeps the EMA of
the policy head, logs what `update` returns and saves every module and optimizer in the checkpoint (restored
exactly on resume). Behaviour cloning (one AdamW on the policy loss) is the default; an offline-RL method returns
e.g. {"policy", "critic", "critic_target"} with optimizers {"policy", "critic"} and updates its targets with
`polyak_update`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from robopolicy.data.dataset import Dataset
from robopolicy.data.sampler import WindowSampler
from robopolicy.policies.policy import Policy
from robopolicy.train.config import OptimConfig, TrainConfig

POLICY = "policy"  # the module name of the Policy in every rule's module dict


def make_optimizer(params, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over each tensor instead of a dozen; the same update, 2x faster on
    CPU for the paper-size UNet; fused CPU AdamW needs torch 2.4)."""
    return torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, fused=True)


class Learner:
    """What an update step works with: `modules` as accelerate prepared them (DDP-wrapped when distributed; call
    them for the forward pass), `optimizers`, and the accelerator (autocast, backward, gradient clipping)."""

    def __init__(self, acc: Accelerator, modules: Mapping[str, nn.Module],
                 optimizers: Mapping[str, torch.optim.Optimizer], grad_clip: float):
        self.acc, self.modules, self.optimizers, self.grad_clip = acc, dict(modules), dict(optimizers), grad_clip

    def unwrap(self, name: str) -> nn.Module:
        """The module itself (not its DDP wrapper), e.g. for `Policy.prepare` or a target network."""
        return self.acc.unwrap_model(self.modules[name])

    def step(self, optimizer: str, loss: torch.Tensor, module: str | None = None) -> torch.Tensor:
        """Backward `loss`, clip the gradients of `module` (default: the optimizer's name) to grad_clip, step and
        zero `optimizer`. Returns the gradient norm before clipping (a detached scalar tensor)."""
        opt = self.optimizers[optimizer]
        self.acc.backward(loss)
        norm = self.acc.clip_grad_norm_(self.modules[module or optimizer].parameters(), self.grad_clip)
        if hasattr(norm, "full_tensor"):  # the norm over FSDP-sharded gradients is a (replicated) DTensor
            norm = norm.full_tensor()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return norm.detach()


class UpdateRule(ABC):
    """A training method: the windows it reads, its modules, their optimizers, and one update step."""

    def sampler(self, dataset: Dataset, policy: Policy, episodes: Sequence[int] | None = None) -> WindowSampler:
        """The windows the rule trains on (called before `build`): the head's own by default; an offline-RL rule
        adds the observation after the chunk and looks up its rewards."""
        return WindowSampler(dataset, policy.config.delta_indices(), episodes=episodes)

    def window_weights(self, windows: WindowSampler, balance: str) -> np.ndarray | None:
        """How often each window is drawn (sum 1; None: uniformly): data.balance's by default; an RL rule may
        oversample, e.g. CO-RFT the chunks that reach a success."""
        return windows.window_weights(balance)

    def schedule_start(self, optimizer: str) -> int:
        """The update at which `optimizer`'s learning-rate schedule (warm-up, then cosine to 0 at train.steps)
        begins; before it the rule does not step that optimizer. 0 for all by default."""
        return 0

    @abstractmethod
    def build(self, policy: Policy, cfg: TrainConfig) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
        """Modules by name (POLICY -> `policy`, plus e.g. critics and target networks) and optimizers by name.
        Modules without trainable parameters (targets) are moved to the device but not wrapped for DDP."""

    @abstractmethod
    def update(self, learner: Learner, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """One step on a raw sampler batch; returns detached scalar tensors to log, "loss" among them (no host
        sync here: the trainer converts them to floats only on logging steps)."""


class BehaviourCloning(UpdateRule):
    """The policy's own loss, one AdamW over the head's trainable parameter groups."""

    def build(self, policy: Policy, cfg: TrainConfig) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
        return {POLICY: policy}, {POLICY: make_optimizer(policy.head.parameter_groups(), cfg.optim)}

    def update(self, learner: Learner, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        with learner.acc.autocast():
            out = learner.modules[POLICY](batch)
        grad_norm = learner.step(POLICY, out.loss)
        return {"loss": out.loss.detach(), "grad_norm": grad_norm, **out.log_values()}


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source for every floating-point parameter and buffer."""
    for t, s in zip(target.state_dict().values(), source.state_dict().values(), strict=True):
        if t.dtype.is_floating_point:
            t.lerp_(s.to(t.device), tau)
        else:
            t.copy_(s)
