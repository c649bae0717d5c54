"""FastDropout: nn.Dropout's distribution (keep 1 - p, scale 1 / (1 - p)), identity in eval, mask-shaped gradient."""

from __future__ import annotations

import torch
from torch import nn

from robopolicy.policies.common import kernels
from robopolicy.policies.common.dropout import FastDropout, dropout, use_fast_dropout


def test_keeps_one_minus_p_scaled_and_gradient_is_the_mask():
    torch.manual_seed(0)
    x = torch.ones(1_000_000, requires_grad=True)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002  # 6 sigma = 0.0018
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())
    assert dropout(x, 0.1, training=False) is x
    assert dropout(x, 1.0, training=True).abs().sum() == 0


def test_swap_replaces_every_dropout_and_keeps_the_state_dict():
    layer = nn.TransformerEncoderLayer(16, 2, 32, 0.3, batch_first=True)
    keys = list(layer.state_dict())
    use_fast_dropout(layer)
    drops = [m for m in layer.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(type(m) is FastDropout and m.p == 0.3 for m in drops)
    assert list(layer.state_dict()) == keys
    layer.eval()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(layer(x), layer(x))  # eval: deterministic


def test_switch_off_is_torch_dropout():
    x = torch.randn(1000, 50)
    with kernels.override(False):
        torch.manual_seed(3)
        ours = dropout(x, 0.2, training=True)
    torch.manual_seed(3)
    torch.testing.assert_close(ours, torch.nn.functional.dropout(x, 0.2, True), rtol=0, atol=0)
