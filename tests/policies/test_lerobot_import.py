"""LeRobot checkpoints in robopolicy: LeRobot 0.4.4's own actions reproduced, both checkpoint layouts, errors.

The fixtures in tests/policies/fixtures/lerobot044_* are LeRobot 0.4.4 checkpoints trained with `lerobot-train`
for 5 steps on a small PushT-layout dataset (state (2,), environment_state (16,)), with reference.safetensors
holding 8 raw observation windows and LeRobot's actions for them (Diffusion: global seed 0 before sampling).
They were written by `benchmarks/bench_lerobot_import.py --write-fixtures tests/policies/fixtures`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from robopolicy.cli.main import main
from robopolicy.config_parsing import ConfigError
from robopolicy.policies.lerobot_import import find_lerobot_checkpoint, import_lerobot, load_lerobot_policy
from robopolicy.policies.policy import CheckpointError, Policy

FIXTURES = Path(__file__).parent / "fixtures"
CASES = ["act_env", "diffusion_env"]


def reference(case: str) -> tuple[Path, dict[str, torch.Tensor], torch.Tensor]:
    directory = FIXTURES / f"lerobot044_{case}"
    ref = load_file(str(directory / "reference.safetensors"))
    obs = {k.removeprefix("obs."): v for k, v in ref.items() if k.startswith("obs.")}
    return directory, obs, ref["actions"]


def actions(policy: Policy, obs: dict[str, torch.Tensor], seed: int = 0) -> torch.Tensor:
    """What LeRobot's select_action queue holds after one query: n_action_steps from the current step."""
    torch.manual_seed(seed)
    chunk = policy.predict_chunk(obs)
    start = policy.config.action_delta_indices.index(0)
    return chunk[:, start : start + policy.config.n_action_steps]


@pytest.mark.parametrize("case", CASES)
def test_lerobot_checkpoint_gives_lerobots_actions(case):
    directory, obs, expected = reference(case)
    policy = Policy.load(directory)
    assert policy.config.name == {"act_env": "lerobot_act", "diffusion_env": "lerobot_diffusion"}[case]
    got = actions(policy, obs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)  # actions are ~100-400 px: float32 rounding
    if case == "diffusion_env":  # the noise matters: another seed gives other actions
        assert (actions(policy, obs, seed=1) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("case", CASES)
def test_import_writes_a_checkpoint_with_the_same_actions(case, tmp_path, capsys):
    directory, obs, expected = reference(case)
    out = tmp_path / "imported"
    assert main(["import-lerobot", str(directory), str(out)]) == 0
    assert "imported" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "lerobot_source.json", "model.safetensors",
                                                     "stats.json"]
    assert not list(tmp_path.glob(".*partial"))
    source = json.loads((out / "lerobot_source.json").read_text())
    assert source["stats_from"].startswith("processor files") and source["lerobot_type"] in ("act", "diffusion")
    torch.testing.assert_close(actions(Policy.load(out), obs), expected, rtol=0, atol=1e-3)
    # never over an existing directory
    assert main(["import-lerobot", str(directory), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("case", CASES)
def test_pre_0_4_layout_with_normalization_buffers_in_the_model(case, tmp_path):
    """LeRobot < 0.4 kept the stats as normalize_inputs / normalize_targets / unnormalize_outputs buffers."""
    directory, obs, expected = reference(case)
    old = tmp_path / "old"
    old.mkdir()
    config = json.loads((directory / "config.json").read_text())
    (old / "config.json").write_text(json.dumps(config))
    stats = load_file(str(directory / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    weights = load_file(str(directory / "model.safetensors"))
    for name, value in stats.items():
        key, _, stat = name.rpartition(".")
        if stat not in ("mean", "std", "min", "max"):
            continue
        flat = key.replace(".", "_")
        if key in config["input_features"]:
            weights[f"normalize_inputs.buffer_{flat}.{stat}"] = value
        if key in config["output_features"]:
            weights[f"normalize_targets.buffer_{flat}.{stat}"] = value
            weights[f"unnormalize_outputs.buffer_{flat}.{stat}"] = value.clone()
    save_file(weights, str(old / "model.safetensors"))
    torch.testing.assert_close(actions(load_lerobot_policy(old), obs), expected, rtol=0, atol=1e-3)
    out = import_lerobot(old, tmp_path / "rp")
    assert "LeRobot < 0.4" in json.loads((out / "lerobot_source.json").read_text())["stats_from"]


def test_lerobot_run_and_step_directories_resolve(tmp_path):
    """lerobot-train's layout: <run>/checkpoints/<step>/pretrained_model, checkpoints/last -> the latest step."""
    directory, obs, expected = reference("act_env")
    run = tmp_path / "run"
    shutil.copytree(directory, run / "checkpoints" / "000005" / "pretrained_model")
    os.symlink("000005", run / "checkpoints" / "last")
    for path in (run, run / "checkpoints" / "000005", run / "checkpoints" / "last" / "pretrained_model"):
        assert find_lerobot_checkpoint(path) is not None
        torch.testing.assert_close(actions(Policy.load(path), obs), expected, rtol=0, atol=1e-3)
    assert find_lerobot_checkpoint(tmp_path) is None


def test_hf_uri_is_downloaded_then_imported(tmp_path, monkeypatch):
    from robopolicy import hub

    directory, obs, expected = reference("diffusion_env")
    seen = []
    monkeypatch.setattr(hub, "download_checkpoint", lambda uri: seen.append(uri) or directory)
    out = import_lerobot("hf://lerobot/tiny-diffusion@main", tmp_path / "rp")
    assert seen == ["hf://lerobot/tiny-diffusion@main"]
    assert json.loads((out / "lerobot_source.json").read_text())["source"] == "hf://lerobot/tiny-diffusion@main"
    torch.testing.assert_close(actions(Policy.load(out), obs), expected, rtol=0, atol=1e-3)


def _copy(tmp_path: Path, case: str) -> Path:
    directory, _, _ = reference(case)
    dest = tmp_path / case
    shutil.copytree(directory, dest)
    return dest


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_bad_lerobot_checkpoints_are_clear_errors(tmp_path, capsys):
    bad = _copy(tmp_path, "act_env")
    _edit_config(bad, type="pi0")
    with pytest.raises(ConfigError, match=r"config.json: field 'type' is 'pi0'.*\['act', 'diffusion'\]"):
        Policy.load(bad)

    bad = _copy(tmp_path / "b", "act_env")
    _edit_config(bad, future_field=3)
    with pytest.raises(ConfigError, match=r"\['future_field'\] are not understood"):
        Policy.load(bad)

    bad = _copy(tmp_path / "c", "act_env")
    _edit_config(bad, dim_model=48)  # the weights are for 32
    with pytest.raises(CheckpointError, match=r"model.safetensors does not fit"):
        Policy.load(bad)

    bad = _copy(tmp_path / "d", "diffusion_env")
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt or truncated"):
        Policy.load(bad)

    bad = _copy(tmp_path / "e", "diffusion_env")
    post = load_file(str(bad / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
    post["action.max"] = post["action.max"] + 10
    save_file(post, str(bad / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
    with pytest.raises(CheckpointError, match=r"unnormalizer's action.max differs"):
        Policy.load(bad)

    bad = _copy(tmp_path / "g", "act_env")
    (bad / "config.json").write_text((bad / "config.json").read_text()[:40])
    assert main(["import-lerobot", str(bad), str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "not a LeRobot checkpoint" not in err and "Traceback" not in err

    bad = _copy(tmp_path / "f", "diffusion_env")
    _edit_config(bad, normalization_mapping={"STATE": "QUANTILE10", "ACTION": "MIN_MAX"})
    assert main(["import-lerobot", str(bad), str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "normalization_mapping.STATE is 'QUANTILE10'" in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_imported_diffusion_takes_real_time_chunking_guidance():
    """A LeRobot Diffusion Policy gets robopolicy's guided sampling (what RTC needs) without retraining."""
    directory, obs, _ = reference("diffusion_env")
    policy = Policy.load(directory)
    target = torch.full((policy.config.horizon, policy.config.action_dim), 0.5)

    def guide(denoise, x, step):  # move the predicted clean chunk onto the target at every step
        out = denoise(x)
        return out + (target - step.to_x0(x, out)) / step.x0_per_out

    torch.manual_seed(0)
    guided = policy.head.sample(policy.prepare(obs), guide=guide)
    torch.manual_seed(0)
    free = policy.head.sample(policy.prepare(obs))
    assert (guided - target).abs().mean() < (free - target).abs().mean()


@pytest.mark.skipif(importlib.util.find_spec("gym_pusht") is None, reason="gym-pusht is not installed")
def test_lerobot_checkpoint_runs_in_the_pusht_harness(tmp_path):
    directory, _, _ = reference("diffusion_env")
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(directory), "--env", "pusht", "--episodes", "2", "--max-steps", "8",
                 "--videos", "0", "--out", str(out), "--no-progress"]) == 0
    info = json.loads((out / "eval_info.json").read_text())
    assert info["aggregated"]["n_episodes"] == 2 and all(e["n_steps"] == 8 for e in info["per_episode"])


@pytest.mark.timeout(120)
def test_lerobot_checkpoint_behind_the_policy_server_with_rtc():
    """Asynchronous inference and real-time chunking on a LeRobot Diffusion Policy: the server's chunks equal the
    local ones, with and without RTC."""
    import numpy as np

    from robopolicy.runtime.async_inference import RemotePolicyClient
    from robopolicy.runtime.policy_server import PolicyServer, PolicyService
    from robopolicy.runtime.rtc import RTCConfig, rtc_sample

    directory, obs, _ = reference("diffusion_env")
    policy = Policy.load(directory)
    obs = {k: v[:2] for k, v in obs.items()}
    local = policy.predict_chunk(obs, torch.Generator().manual_seed(7))
    prev = local[:, :8].numpy().astype(np.float32)
    rtc = RTCConfig(execution_horizon=6)
    local_rtc = rtc_sample(policy, obs, torch.from_numpy(prev), 2, rtc, torch.Generator().manual_seed(7))
    service = PolicyService(policy)
    service.warmup()
    with PolicyServer(service) as server, RemotePolicyClient(*server.address) as client:
        assert "guidance" in client.info["capabilities"]
        np_obs = {k: v.numpy() for k, v in obs.items()}
        np.testing.assert_allclose(client.predict_chunk(np_obs, seed=7), local.numpy(), rtol=0, atol=1e-4)
        remote_rtc = client.predict_chunk(np_obs, seed=7, prev_actions=prev, delay=2, rtc=rtc)
        np.testing.assert_allclose(remote_rtc, local_rtc.numpy(), rtol=0, atol=1e-4)


def _lerobot_layout_act(directory: Path, center) -> Path:
    """An SO-101-shaped ACT checkpoint written in LeRobot 0.4's layout (random weights; stats centre the actions on
    `center`): config.json, model.safetensors, and the processor files of the act_env fixture with these stats."""
    from robopolicy.policies.base import FeatureSpec
    from robopolicy.policies.lerobot_act.configuration import LeRobotACTConfig
    from robopolicy.policies.lerobot_act.modeling import LeRobotACTHead

    fixture, _, _ = reference("act_env")
    shutil.copytree(fixture, directory, ignore=shutil.ignore_patterns("reference.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    config["input_features"] = {"observation.state": {"type": "STATE", "shape": [6]}}
    config["output_features"] = {"action": {"type": "ACTION", "shape": [6]}}
    (directory / "config.json").write_text(json.dumps(config))
    cfg = LeRobotACTConfig.for_tests({"observation.state": FeatureSpec((6,), "state")},
                                     {"action": FeatureSpec((6,), "action")}, horizon=config["chunk_size"],
                                     n_action_steps=config["n_action_steps"], dim_model=config["dim_model"],
                                     n_heads=config["n_heads"], dim_feedforward=config["dim_feedforward"],
                                     n_encoder_layers=config["n_encoder_layers"],
                                     n_vae_encoder_layers=config["n_vae_encoder_layers"],
                                     latent_dim=config["latent_dim"])
    torch.manual_seed(0)
    weights = {k: v for k, v in LeRobotACTHead(cfg).state_dict().items() if not k.startswith("image_norm.")}
    save_file(weights, str(directory / "model.safetensors"))
    center = torch.as_tensor(center, dtype=torch.float32)
    stats = {f"{key}.{stat}": value.clone() for key in ("observation.state", "action") for stat, value in
             (("mean", center), ("std", torch.full((6,), 0.5)), ("min", center - 2), ("max", center + 2))}
    for name in ("policy_preprocessor_step_3_normalizer_processor.safetensors",
                 "policy_postprocessor_step_0_unnormalizer_processor.safetensors"):
        save_file(stats, str(directory / name))
    return directory


@pytest.mark.timeout(120)
def test_lerobot_policy_deploys_on_the_emulated_arm_with_safety_limits(tmp_path, capsys):
    """deploy takes a LeRobot checkpoint as it is: the emulated SO-101, robopolicy's safety limits and loop."""
    repo = Path(__file__).resolve().parents[2]
    checkpoint = _lerobot_layout_act(tmp_path / "lerobot_act", [0.0, 0.0, 0.0, 0.0, 0.0, 10.0])
    rc = main(["deploy", "--checkpoint", str(checkpoint), "--robot", str(repo / "real" / "so101_follower.yaml"),
               "--emulate", "--episodes", "1", "--episode-time", "1", "--reset-time", "0.5", "--watchdog", "30",
               "--out", str(tmp_path / "report.json")])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["episodes"] == 1 and not report["summary"]["stopped"]
    assert report["episodes"][0]["ticks"] + report["episodes"][0]["bus_faults"] == 30
