"""Exponential moving average of weights with Diffusion Policy's warmup: decay = 1 - (1 + step)^-power."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copies of a module's state_dict. The shadows follow the module: an update after the module moved
    (`.to("cuda")`, accelerate's prepare) moves each shadow to its tensor's device first, so the average never
    mixes devices."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        self.power, self.max_decay = power, max_decay
        self.step = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay(self) -> float:
        return min(max(1.0 - (1.0 + self.step) ** -self.power, 0.0), self.max_decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.device != v.device:
                s = self.shadow[k] = s.to(v.device)
            if v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                s.copy_(v)
        self.step += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow
