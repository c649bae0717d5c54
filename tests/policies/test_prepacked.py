"""Prepacked (oneDNN) inference: the same numbers as torch's layers, refreshed when weights change, off in training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.policies.act.configuration import ACTConfig
from robopolicy.policies.act.modeling import ACTHead
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.common import kernels, prepacked
from robopolicy.policies.common.encoders import EncoderConfig, image_trunk

pytestmark = pytest.mark.skipif(not kernels.onednn_available(), reason="this torch has no usable oneDNN (mkldnn) ops")


@pytest.mark.parametrize("shape", [(1, 512), (11, 512), (2, 7, 512)])
@pytest.mark.parametrize(("relu", "rows"), [(False, None), (True, None), (False, (512, 1536))])
def test_linear_matches_f_linear(shape, relu, rows):
    torch.manual_seed(0)
    w, b, x = torch.randn(2048, 512), torch.randn(2048), torch.randn(*shape)  # 4 MB: packed even for one row
    r0, r1 = rows or (0, 2048)
    ref = F.linear(x, w[r0:r1], b[r0:r1])
    ref = F.relu(ref) if relu else ref
    with torch.no_grad():
        out = prepacked.linear(x, w, b, relu=relu, rows=rows)
    assert id(w) in prepacked._cache  # the oneDNN path ran
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)


def test_small_weights_stay_on_torch_linear():
    w, x = torch.randn(64, 48), torch.randn(4, 48)
    with torch.no_grad():
        torch.testing.assert_close(prepacked.linear(x, w), F.linear(x, w), rtol=0, atol=0)
    assert id(w) not in prepacked._cache


@pytest.mark.parametrize(("rows", "transposed"), [(None, False), ((256, 768), False), (None, True)])
def test_training_linear_runs_onednn_with_f_linear_gradients(rows, transposed, monkeypatch):
    torch.manual_seed(0)
    w = torch.randn(1024, 512, requires_grad=True)
    b = torch.randn(512 if transposed else 1024, requires_grad=True)
    x = torch.randn(37, 1024 if transposed else 512, requires_grad=True)
    matrix = w.t() if transposed else w if rows is None else w[rows[0]:rows[1]]
    bias = b if rows is None else b[rows[0]:rows[1]]
    ref = F.relu(F.linear(x, matrix, bias))
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (x, w, b), g)
    calls = []
    monkeypatch.setattr(prepacked, "_matmul", lambda *a: calls.append(1) or torch.ops.mkldnn._linear_pointwise(
        *a, *([None] if len(a) == 2 else []), "none", [], ""))
    out = prepacked.linear(x, w, b, relu=True, rows=rows, transposed=transposed)
    grads = torch.autograd.grad(out, (x, w, b), g)
    assert len(calls) == 3  # forward, input and weight gradients by oneDNN
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)


def test_packed_weight_follows_in_place_updates_and_grad_mode_uses_autograd():
    torch.manual_seed(0)
    lin = nn.Linear(512, 1024)
    x = torch.randn(4, 512)
    with torch.no_grad():
        first = prepacked.linear(x, lin.weight, lin.bias)
        lin.weight.mul_(2.0)  # what an optimizer step or load_state_dict does
        second = prepacked.linear(x, lin.weight, lin.bias)
    torch.testing.assert_close(second, lin(x).detach(), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(first, second)
    out = prepacked.linear(x, lin.weight, lin.bias)  # grad enabled: plain F.linear, differentiable
    out.sum().backward()
    torch.testing.assert_close(lin.weight.grad, x.sum(0).expand(1024, -1))


def test_prepacked_resnet_trunk_keeps_timm_state_dict_and_outputs():
    import timm

    torch.manual_seed(0)
    ours = image_trunk(EncoderConfig()).eval()
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="",
                            norm_layer=lambda c, **_: nn.GroupNorm(max(1, c // 16), c)).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    assert any(isinstance(m, prepacked.PrepackedConv2d) for m in ours.modules())
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
    ours.train()
    ours(x).sum().backward()  # training path: torch's conv, gradients reach the shared parameters
    assert ours.conv1.weight.grad is not None and ours.conv1.weight.grad.abs().sum() > 0


def _act(image: bool) -> ACTHead:
    inputs = {"state": FeatureSpec((5,), "state")}
    if image:
        inputs["image"] = FeatureSpec((3, 64, 64), "image")
    cfg = ACTConfig(input_features=inputs, output_features={"action": FeatureSpec((2,), "action")}, horizon=12,
                    n_action_steps=12, dim_model=32, n_heads=4, dim_feedforward=64, n_encoder_layers=2,
                    n_decoder_layers=2, latent_dim=8)
    return ACTHead(cfg)


@pytest.mark.parametrize("image", [False, True])
def test_act_inference_path_equals_torch_modules_and_tracks_training(image):
    torch.manual_seed(0)
    head = _act(image)
    obs = {"state": torch.randn(3, 1, 5)}
    if image:
        obs["image"] = torch.rand(3, 1, 3, 64, 64)
    z = torch.zeros(3, 8)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        head.eval()
        fast = head.sample(obs)  # no-grad: prepacked weights + cached query constants
        with torch.no_grad():  # torch's encoder/decoder modules
            ref = head.action_out(head.decoder(head.queries.expand(3, -1, -1), head.encoder(head._tokens(obs, z))))
        return fast, ref

    fast, ref = both()
    assert fast.shape == (3, 12, 2)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
    # one optimizer step changes the queries and the decoder: the cached constants must follow
    head.train()
    batch = {**obs, "action": torch.randn(3, 12, 2)}
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    head.loss(batch).loss.mean().backward()
    opt.step()
    fast2, ref2 = both()
    torch.testing.assert_close(fast2, ref2, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fast, fast2)


def test_unet_convs_and_linears_run_prepacked_at_inference_with_the_same_outputs():
    from robopolicy.policies.common.unet1d import ConditionalUnet1D, GemmConv1d, GemmConvTranspose1d

    torch.manual_seed(0)
    for ours, ref, shape in [(GemmConv1d(512, 256, 5, padding=2), nn.Conv1d(512, 256, 5, padding=2), (2, 512, 16)),
                             (GemmConvTranspose1d(512, 512, 4, stride=2, padding=1),
                              nn.ConvTranspose1d(512, 512, 4, stride=2, padding=1), (1, 512, 4))]:
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
        assert id(ours.weight) in prepacked._cache  # the oneDNN path ran
    unet = ConditionalUnet1D(2, 10, down_dims=(64, 512))
    assert any(isinstance(m, prepacked.PrepackedLinear) for m in unet.modules())
    x, t, cond = torch.randn(1, 8, 2), torch.tensor([3]), torch.randn(1, 10)
    with torch.no_grad():
        fast = unet(x, t, cond)
    assert any(id(p) in prepacked._cache for p in unet.parameters())
    with torch.enable_grad():
        ref = unet(x, t, cond).detach()  # torch's ops (the prepacked path is no-grad only)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_release_drops_the_packed_copies_and_packing_resumes():
    lin = prepacked.PrepackedLinear(512, 1024)
    x = torch.randn(2, 512)
    with torch.no_grad():
        first = lin(x)
    assert id(lin.weight) in prepacked._cache
    prepacked.release(lin)
    assert id(lin.weight) not in prepacked._cache
    with torch.no_grad():
        torch.testing.assert_close(lin(x), first)
    assert id(lin.weight) in prepacked._cache
    del lin
    import gc

    gc.collect()
    assert all(hit[0]() is not None for hit in prepacked._cache.values())  # dead weights leave the cache


def test_results_do_not_depend_on_the_batch_size_that_packed_the_weight():
    torch.manual_seed(0)
    w, x = torch.randn(2048, 600), torch.randn(1, 600)
    with torch.no_grad():
        prepacked.linear(torch.randn(37, 600), w)  # first call packs with 37 rows
        after_other = prepacked.linear(x, w)
        prepacked.release(nn.Module())  # no-op on a module without parameters
    w2 = w.clone()
    with torch.no_grad():
        fresh = prepacked.linear(x, w2)  # first call packs with 1 row
    assert torch.equal(after_other, fresh)


def test_pre_norm_layers_are_refused_by_name():
    from robopolicy.policies.common import ragged

    pre = nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True, norm_first=True).eval()
    x = torch.randn(1, 3, 16)
    layout = ragged.Ragged.from_valid(torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="post-norm"), torch.no_grad():
        prepacked.encoder_layer(pre, x)
    with pytest.raises(ValueError, match="post-norm"):
        ragged.encoder_layer(pre, layout.pack(x), layout)


def test_feature_map_probe_leaves_no_packed_weights_behind():
    trunk = image_trunk(EncoderConfig())
    from robopolicy.policies.common.encoders import feature_map_shape

    assert feature_map_shape(trunk, (3, 96, 96)) == (512, 3, 3)
    assert not any(id(p) in prepacked._cache for p in trunk.parameters())
