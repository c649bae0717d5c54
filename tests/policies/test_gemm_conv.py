"""GEMM-based Conv1d / ConvTranspose1d used by the UNet: the same outputs and gradients as torch's layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robopolicy.policies.common import kernels
from robopolicy.policies.common.unet1d import ConditionalUnet1D, GemmConv1d, GemmConvTranspose1d


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "padding", "length"),
    [(7, 5, 5, 1, 2, 16), (6, 4, 3, 2, 1, 8), (3, 9, 1, 1, 0, 4), (4, 4, 5, 1, 2, 3),
     (512, 256, 5, 1, 2, 16)],  # 2.6 MB of weights: the GEMMs run on oneDNN (prepacked._OneDNNLinear)
)
def test_gemm_conv1d_matches_conv1d_forward_and_backward(c_in, c_out, kernel, stride, padding, length):
    torch.manual_seed(0)
    ours = GemmConv1d(c_in, c_out, kernel, stride=stride, padding=padding)
    ref = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=padding)
    ref.load_state_dict(ours.state_dict())  # same parameters, same state-dict keys
    x = torch.randn(3, c_in, length, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = ours(x), ref(x_ref)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "padding", "length"),
                         [(8, 8, 4, 2, 1, 4), (5, 3, 4, 2, 1, 1), (4, 6, 3, 1, 1, 7), (512, 512, 4, 2, 1, 4)])
def test_gemm_conv_transpose1d_matches_conv_transpose1d(c_in, c_out, kernel, stride, padding, length):
    torch.manual_seed(1)
    ours = GemmConvTranspose1d(c_in, c_out, kernel, stride=stride, padding=padding)
    ref = nn.ConvTranspose1d(c_in, c_out, kernel, stride=stride, padding=padding)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, c_in, length, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = ours(x), ref(x_ref)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)


def test_unet_with_gemm_layers_equals_the_same_unet_with_torch_layers(monkeypatch):
    """With the CPU kernels off every GEMM layer runs torch's forward: the same chunk (batch 2, training mode)."""
    torch.manual_seed(2)
    net = ConditionalUnet1D(2, 12, (16, 32, 64), kernel_size=5, n_groups=8, step_embed_dim=16)
    x, t, cond = torch.randn(2, 16, 2), torch.tensor([3, 70]), torch.randn(2, 12)
    calls = []
    conv = nn.Conv1d._conv_forward
    monkeypatch.setattr(nn.Conv1d, "_conv_forward", lambda m, *a: calls.append(m) or conv(m, *a))
    with kernels.override(True):
        y = net(x, t, cond)
    assert not calls  # every conv ran as a GEMM
    with kernels.override(False):
        y_ref = net(x, t, cond)
    assert len(calls) == sum(type(m) is GemmConv1d for m in net.modules())  # torch's conv ran for each
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
