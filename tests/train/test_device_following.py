"""Device discipline on a CPU-only machine: every tensor of every registered head follows `.to()` (device and
dtype), and the EMA follows its model, so tensors created on the CPU behind the model's back (the class of bug
that only fails on a GPU) show up here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robopolicy.train.ema import EMA
from tests.policies.contract import HEADS, contract_policy


def _stray_tensors(model: nn.Module) -> list[str]:
    """Tensor attributes that are neither parameters nor buffers (`.to()` would leave them behind)."""
    return [f"{mod_name or type(model).__name__}.{attr}" for mod_name, mod in model.named_modules()
            for attr, value in vars(mod).items() if torch.is_tensor(value)]


@pytest.mark.parametrize("name", HEADS)
def test_every_tensor_follows_to_meta(name):
    policy = contract_policy(name)
    assert not _stray_tensors(policy), "tensors outside parameters/buffers do not follow .to()"
    policy.to("meta")
    left = [k for k, t in [*policy.named_parameters(), *policy.named_buffers()] if t.device.type != "meta"]
    assert not left, f"stayed behind on .to('meta'): {left}"
    assert policy.device.type == "meta"


@pytest.mark.parametrize("name", HEADS)
def test_float64_policy_samples_float64(name):
    """A head that builds its noise, time grid or masks without the input's device/dtype fails here."""
    policy = contract_policy(name).to(torch.float64)
    obs = policy.config.fake_obs(2, torch.Generator().manual_seed(0))
    head_obs = {k: v.double() if torch.is_tensor(v) and v.dtype.is_floating_point else v for k, v in obs.items()}
    chunk = policy.head.sample(head_obs, generator=torch.Generator().manual_seed(0))
    assert chunk.dtype == torch.float64 and torch.isfinite(chunk).all()
    batch = {k: v.double() if torch.is_tensor(v) and v.dtype.is_floating_point else v
             for k, v in policy.config.fake_batch(2, torch.Generator().manual_seed(0)).items()}
    assert policy.head.loss(batch).loss.dtype == torch.float64


def test_ema_follows_its_model_to_another_device():
    """EMA built before the model moved (accelerate's prepare, `.to("cuda")`): the update must not mix devices."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model)
    model.to("meta")
    ema.update(model)
    assert {t.device.type for t in ema.state_dict().values()} == {"meta"}


def test_ema_average_is_unchanged_by_following():
    model = nn.Linear(2, 2)
    ema = EMA(model, power=1.0)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # step 0: decay 0 -> the shadow becomes the live weights
    torch.testing.assert_close(ema.state_dict()["weight"], before["weight"] + 1.0)


def test_policy_commands_take_a_device():
    from robopolicy.cli.main import build_parser

    parser = build_parser()
    for command in ("eval", "serve", "deploy"):
        sub = parser._subparsers._group_actions[0].choices[command]
        assert "--device" in sub.format_help(), command
    args = parser.parse_args(["serve", "--checkpoint", "x", "--device", "cuda:1"])
    assert args.device == "cuda:1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_device_is_refused_with_a_reason():
    from robopolicy.cli.device import check_device
    from robopolicy.config_parsing import ConfigError

    assert check_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        check_device("cuda")
    with pytest.raises(ConfigError, match="--device 'gpu0'"):
        check_device("gpu0")


def test_deploy_refuses_a_device_for_a_remote_server(capsys):
    from robopolicy.cli.main import main

    rc = main(["deploy", "--checkpoint", "x", "--robot", "y.yaml", "--inference", "server", "--server", "h:1",
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "robopolicy deploy: error: " in err and "pass it to `robopolicy serve`" in err


def test_server_loads_the_checkpoint_onto_the_device(tmp_path):
    from robopolicy.runtime.policy_server import PolicyServer

    ckpt = contract_policy("flow").save(tmp_path / "ckpt")
    server = PolicyServer.from_checkpoint(ckpt, device="cpu")
    try:
        assert server.service.policy.device.type == "cpu"
    finally:
        server.stop()
