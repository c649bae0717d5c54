"""The CPU-kernel switch: one setting, plain torch when it is off, off a CPU or without the private oneDNN ops, and
the same losses, gradients and samples either way."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import tests.plugin_heads.configuration  # noqa: F401  (registers the plugin head: every head is checked)
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.common import kernels, prepacked
from robopolicy.policies.common.dropout import FastDropout
from robopolicy.policies.common.unet1d import GemmConv1d, GemmConvTranspose1d
from robopolicy.policies.registry import available_policies, get_config_class, make_head

HEADS = available_policies()
STATE = {"observation.state": FeatureSpec((5,), "state")}
IMAGE = {**STATE, "observation.image": FeatureSpec((3, 32, 32), "image")}
ACTION = {"action": FeatureSpec((2,), "action")}


def test_setting_comes_from_the_environment_and_override_wins(monkeypatch):
    monkeypatch.delenv(kernels.ENV, raising=False)
    assert kernels.mode() == "auto"
    monkeypatch.setenv(kernels.ENV, "OFF")
    assert kernels.mode() == "off"
    with kernels.override(True):
        assert kernels.mode() == "on"
        with kernels.override("auto"):
            assert kernels.mode() == "auto"
        assert kernels.mode() == "on"
    assert kernels.mode() == "off"
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(ValueError, match="ROBOPOLICY_CPU_KERNELS='fast'"):
        kernels.mode()
    with pytest.raises(ValueError, match="expected a bool"), kernels.override("fast"):
        pass


def test_enabled_only_on_cpu_and_only_with_the_ops_in_auto(monkeypatch):
    monkeypatch.delenv(kernels.ENV, raising=False)
    assert kernels.enabled(torch.zeros(1)) == kernels.onednn_available()
    for setting in kernels.MODES:
        with kernels.override(setting):
            assert not kernels.enabled(torch.empty(1, device="meta")) and not kernels.enabled("cuda")
    with kernels.override(False):
        assert not kernels.enabled("cpu") and not kernels.onednn("cpu")
    monkeypatch.setattr(kernels, "onednn_available", lambda: False)  # another torch version, ARM
    assert not kernels.enabled("cpu")
    with kernels.override(True):  # forced on: the pure-torch kernels run, the oneDNN ones cannot
        assert kernels.enabled("cpu") and not kernels.onednn("cpu")


def test_probe_falls_back_with_a_warning_when_ops_are_missing_or_raise():
    with pytest.warns(UserWarning, match="lacks"):
        assert not kernels.probe(types.SimpleNamespace())

    def broken(*args):
        raise RuntimeError("no kernel for this CPU")

    with pytest.warns(UserWarning, match="no kernel for this CPU"):
        assert not kernels.probe(types.SimpleNamespace(**{name: broken for name in kernels.ONEDNN_OPS}))
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        assert kernels.probe()


def test_prepacked_linear_without_the_ops_is_f_linear(monkeypatch):
    w, x = torch.randn(2048, 512), torch.randn(3, 512)  # 4 MB: packed when the ops are there
    monkeypatch.setattr(kernels, "onednn_available", lambda: False)
    with torch.no_grad(), kernels.override(True):
        torch.testing.assert_close(prepacked.linear(x, w, relu=True), F.relu(F.linear(x, w)), rtol=0, atol=0)
    assert id(w) not in prepacked._cache


def _head(name: str):
    features = STATE if name == "mlp_flow_plugin" else IMAGE
    torch.manual_seed(0)
    return make_head(get_config_class(name).for_tests(features, ACTION))


def _run(head, batch: dict, obs: dict) -> tuple[torch.Tensor, list, torch.Tensor]:
    """(loss, gradients, sample) with fixed seeds; the same head on every call."""
    head.train()
    torch.manual_seed(1)
    loss = head.loss(batch).loss
    grads = torch.autograd.grad(loss, list(head.parameters()), allow_unused=True)
    head.eval()
    chunk = head.sample(obs, generator=torch.Generator().manual_seed(2))
    return loss.detach(), grads, chunk


@pytest.mark.parametrize("fallback", ["off", "ops missing", "on without ops"])
@pytest.mark.parametrize("name", HEADS)
def test_every_head_gives_the_same_loss_gradients_and_sample_on_the_fallback(name, fallback, monkeypatch):
    monkeypatch.delenv(kernels.ENV, raising=False)
    head = _head(name)
    cfg = head.config
    batch = cfg.fake_batch(3, torch.Generator().manual_seed(0))
    pad = batch[f"{cfg.action_key}_is_pad"]
    pad[1, cfg.horizon // 2:] = True  # an episode's end: ACT's fast path skips these steps
    pad[2, 2:] = True
    obs = {k: batch[k] for k in cfg.input_features}
    with kernels.override(True):
        fast = _run(head, batch, obs)
    if fallback == "off":
        with kernels.override(False):
            plain = _run(head, batch, obs)
    else:
        monkeypatch.setattr(kernels, "onednn_available", lambda: False)
        with kernels.override("auto" if fallback == "ops missing" else "on"):
            plain = _run(head, batch, obs)
    torch.testing.assert_close(plain[0], fast[0], rtol=1e-5, atol=1e-5)
    for (pname, _), g, r in zip(head.named_parameters(), plain[1], fast[1]):
        if g is None or r is None:  # unused by one path (e.g. ACT's posterior reads only its CLS token)
            assert all(t is None or t.abs().max() == 0 for t in (g, r)), pname
        else:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=pname)
    torch.testing.assert_close(plain[2], fast[2], rtol=1e-4, atol=1e-4)


def test_act_fallback_runs_torch_transformer_modules(monkeypatch):
    """Switch off: ACT's training and eval paths call no ragged or prepacked transformer code."""
    from robopolicy.policies.common import ragged

    head = _head("act")
    for module, fn in [(ragged, "encoder_layer"), (ragged, "decoder_cross_and_ff"), (ragged, "self_attention_block"),
                       (prepacked, "attention"), (prepacked, "encoder_layer"), (prepacked, "feed_forward")]:
        monkeypatch.setattr(module, fn, lambda *a, **k: pytest.fail("a CPU kernel ran with the switch off"))
    batch = head.config.fake_batch(2, torch.Generator().manual_seed(0))
    with kernels.override(False):
        head.train().loss(batch).loss.backward()
        head.eval().sample({k: batch[k] for k in head.config.input_features})


def test_non_cpu_tensors_take_torch_modules(monkeypatch):
    """What a CUDA tensor gets: no packing, no GEMM rewrite, torch's dropout (shown on the meta device)."""
    monkeypatch.setattr(prepacked, "_packed", lambda *a: pytest.fail("packed a non-CPU weight"))
    monkeypatch.setattr(torch, "rand_like", lambda *a, **k: pytest.fail("fast dropout on a non-CPU tensor"))
    meta = torch.device("meta")
    cases = [(GemmConv1d(8, 4, 3, padding=1, device=meta), (2, 8, 6), (2, 4, 6)),
             (GemmConvTranspose1d(8, 4, 4, stride=2, padding=1, device=meta), (2, 8, 3), (2, 4, 6)),
             (prepacked.PrepackedLinear(2048, 512, device=meta), (3, 2048), (3, 512)),
             (prepacked.PrepackedConv2d(8, 4, 3, padding=1, device=meta), (1, 8, 5, 5), (1, 4, 5, 5)),
             (FastDropout(0.5), (4, 3), (4, 3))]
    with torch.no_grad(), kernels.override(True):
        for module, shape, out in cases:
            assert module(torch.empty(shape, device=meta)).shape == out, type(module).__name__


def test_act_trains_and_samples_off_the_cpu():
    head = make_head(get_config_class("act").for_tests(STATE, ACTION)).to("meta")
    batch = {k: v.to("meta") for k, v in head.config.fake_batch(2).items()}
    with kernels.override(True):  # ragged packing would need the data (nonzero): the plain path must run
        out = head.train().loss(batch)
        assert out.per_sample.device.type == "meta"
        chunk = head.eval().sample({k: batch[k] for k in head.config.input_features})
    assert chunk.shape == (2, head.config.horizon, 2)
