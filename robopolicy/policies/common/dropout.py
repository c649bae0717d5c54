"""Dropout with a uniform-threshold mask: the same distribution as nn.Dropout at two thirds of its CPU cost.

torch's CPU dropout draws a Bernoulli tensor, divides it and multiplies (14.0 ms forward + backward on a 600 x 3200
activation here); drawing uniforms and thresholding them into the scaled mask in place takes 9.0 ms
(benchmarks/bench_kernels.py). Each element is
kept with probability 1 - p (up to float32's 2^-24 granularity) and scaled by 1 / (1 - p), like nn.Dropout.
Where the CPU kernels are off (kernels.py: switch off, or not a CPU tensor) it is torch's F.dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.policies.common import kernels


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """x * mask / (1 - p) with mask ~ Bernoulli(1 - p) per element when training; x unchanged otherwise."""
    if not training or p == 0.0:
        return x
    if not kernels.enabled(x):
        return F.dropout(x, p, training)
    if p >= 1.0:
        return torch.zeros_like(x)
    mask = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))
    return x * mask


class FastDropout(nn.Dropout):
    """nn.Dropout computed by `dropout` above (no parameters; drop-in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def use_fast_dropout(module: nn.Module) -> nn.Module:
    """Swap every plain nn.Dropout inside `module` for a FastDropout with the same p (in place)."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Dropout:
            setattr(module, name, FastDropout(child.p))
        else:
            use_fast_dropout(child)
    return module
