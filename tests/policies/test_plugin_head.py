"""A head from a package robopolicy has never heard of (tests/plugin_heads, advertised through the
`robopolicy.policies` entry-point group of a distribution made here): the `robopolicy train` command trains it,
a fresh process loads the checkpoint by its type name alone, samples N candidates per observation, and real-time
chunking guides it with no change to the runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.policy import Policy, make_normalizer
from robopolicy.runtime.rtc import RTCConfig, rtc_sample
from tests.runtime.policy_fixtures import tiny_policy

REPO = Path(__file__).resolve().parents[2]


def _plugin_distribution(root: Path) -> Path:
    """A minimal installed distribution whose entry point registers the plugin head's config."""
    info = root / "robopolicy_plugin_example-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: robopolicy-plugin-example\nVersion: 0.1\n")
    entry = "[robopolicy.policies]\nmlp_flow_plugin = tests.plugin_heads.configuration\n"
    (info / "entry_points.txt").write_text(entry)
    return root


def _run(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.timeout(300)
def test_plugin_head_trains_loads_samples_and_is_guided_in_fresh_processes(tmp_path, lerobot_pusht):
    """On LeRobot's real PushT (agent xy state + the task string as a language input)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_plugin_distribution(tmp_path / "site")), str(REPO)])}
    run_dir = tmp_path / "run"
    train = (
        "import sys; from robopolicy.cli.main import main; sys.exit(main(['train', "
        f"'--data.uri={lerobot_pusht}', '--data.input_keys=[observation.state,task]', '--data.episodes=[0,1,2,3]', "
        "'--policy.type=mlp_flow_plugin', '--policy.horizon=8', '--policy.n_action_steps=4', "
        "'--train.steps=30', '--train.batch_size=16', '--train.save_every=30', '--train.progress=false', "
        f"'--train.tensorboard=false', '--optim.warmup_steps=5', '--optim.lr=0.001', '--train.output_dir={run_dir}']))"
    )
    _run(train, env)
    assert json.loads((run_dir / "checkpoints" / "step_000030" / "config.json").read_text())["type"] == \
        "mlp_flow_plugin"
    check = f"""
import torch
from robopolicy.policies.policy import load_policy
from robopolicy.policies.registry import available_policies
from robopolicy.runtime.rtc import RTCConfig, rtc_sample
assert "mlp_flow_plugin" in available_policies()
policy = load_policy({str(run_dir)!r})
assert type(policy.head).__module__ == "tests.plugin_heads.modeling"
assert policy.processor.steps[0].tasks == ["Push the T-shaped block onto the T-shaped target."]
obs = {{"observation.state": torch.rand(3, 1, 2) * 500, "task": policy.processor.steps[0].tasks[0]}}
chunks = policy.predict_chunk(obs, torch.Generator().manual_seed(0), num_samples=6)
assert chunks.shape == (3, 6, 8, 2), chunks.shape
assert (chunks[:, 0] - chunks[:, 1]).abs().mean() > 1.0  # independent draws
prev = torch.linspace(100, 400, 8).view(1, 8, 1).expand(3, 8, 2).contiguous()
guided = rtc_sample(policy, obs, prev, 3, RTCConfig(execution_horizon=6), torch.Generator().manual_seed(1))
plain = policy.predict_chunk(obs, torch.Generator().manual_seed(1))
err_g = (guided[:, :3] - prev[:, :3]).abs().mean().item()
err_u = (plain[:, :3] - prev[:, :3]).abs().mean().item()
print(err_g, err_u)
assert err_g < 0.2 * err_u, (err_g, err_u)
"""
    print(_run(check, env))


@pytest.mark.timeout(60)
def test_rtc_guides_the_plugin_head_in_process():
    """The plugin's own parameterization (clean-chunk prediction, tau = 0 noise) through the generic guide."""
    import tests.plugin_heads.configuration  # noqa: F401

    reference = tiny_policy("flow")  # only for its normalizer stats
    from robopolicy.policies.registry import get_config_class

    cfg = get_config_class("mlp_flow_plugin").for_tests({"observation.state": FeatureSpec((5,), "state")},
                                                        {"action": FeatureSpec((2,), "action")}, horizon=12)
    policy = Policy(cfg, make_normalizer(cfg, reference.normalizer.stats)).eval()
    obs = {"observation.state": torch.rand(2, 1, 5) * 512}
    prev = torch.linspace(100, 400, 12).view(1, 12, 1).expand(2, 12, 2).contiguous()
    guided = rtc_sample(policy, obs, prev, 4, RTCConfig(execution_horizon=8), torch.Generator().manual_seed(1))
    plain = policy.predict_chunk(obs, torch.Generator().manual_seed(1))
    err_g = (guided[:, :4] - prev[:, :4]).abs().mean().item()
    err_u = (plain[:, :4] - prev[:, :4]).abs().mean().item()
    assert err_u > 20.0 and err_g < 0.15 * err_u, (err_g, err_u)
