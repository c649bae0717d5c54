"""evaluate() end to end with scripted policies that implement the chunk-policy protocol, and `robopolicy eval`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from robopolicy.data.dataset import open_dataset
from robopolicy.policies.base import FeatureSpec, PolicyConfig
from robopolicy.runtime.protocol import ChunkPolicy
from robopolicy.sim.evaluate import evaluate

av = pytest.importorskip("av")
needs_pusht = pytest.mark.skipif(
    importlib.util.find_spec("gym_pusht") is None, reason="gym-pusht is not installed (pip install gym-pusht)"
)
needs_robosuite = pytest.mark.skipif(importlib.util.find_spec("robosuite") is None, reason="robosuite is not installed")


def count_frames(path: str | Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


class ConstantPushTPolicy:
    """Always targets one point (diffusion-style windows: T_o=2, H=16, n_action_steps=8); records its inputs."""

    def __init__(self, target=(256.0, 256.0), n_obs_steps: int = 2, horizon: int = 16, **extra):
        self.config = PolicyConfig(
            input_features={
                "state": FeatureSpec((5,), "state"),
                "keypoint": FeatureSpec((9, 2), "state"),
                "img": FeatureSpec((3, 96, 96), "image"),
            },
            output_features={"action": FeatureSpec((2,), "action")},
            n_obs_steps=n_obs_steps,
            horizon=horizon,
            n_action_steps=8,
        )
        self.target = torch.tensor(target)
        self.windows: list[dict[str, torch.Tensor]] = []
        self.resets = 0

    def reset(self):
        self.resets += 1

    def predict_chunk(self, obs):
        self.windows.append({k: v.clone() for k, v in obs.items()})
        b = obs["state"].shape[0]
        return self.target.expand(b, self.config.horizon, len(self.target)).clone()


class LiftExpertPolicy:
    """The scripted LiftExpert behind the protocol, fed only the dataset features.

    T_o=2, H=2 with action_delta_indices [-1, 0]: index 0 (the previous step) is NaN, so executing it would fail.
    """

    # robot0_eef_quat_site = robot0_eef_quat * Q_SITE (xyzw), a fixed offset of the Panda's grip site
    Q_SITE = np.array([0.0, 0.0, -np.sqrt(0.5), np.sqrt(0.5)])

    def __init__(self):
        self.config = PolicyConfig(
            input_features={
                "observation.state": FeatureSpec((9,), "state"),
                "observation.environment_state": FeatureSpec((10,), "state"),
            },
            output_features={"action": FeatureSpec((7,), "action")},
            n_obs_steps=2,
            horizon=2,
            n_action_steps=1,
        )
        self.experts = None

    def reset(self):
        self.experts = None

    def predict_chunk(self, obs):
        from robopolicy.sim.experts import LiftExpert, _quat_mul

        state = obs["observation.state"][:, -1].double().numpy()
        env_state = obs["observation.environment_state"][:, -1].double().numpy()
        if self.experts is None:
            self.experts = [LiftExpert() for _ in range(len(state))]
        chunk = torch.full((len(state), 2, 7), float("nan"))
        for i, expert in enumerate(self.experts):
            raw = {
                "robot0_eef_pos": state[i, :3],
                "robot0_eef_quat_site": _quat_mul(state[i, 3:7], self.Q_SITE),
                "robot0_gripper_qpos": state[i, 7:9],
                "cube_pos": env_state[i, :3],
            }
            chunk[i, 1] = torch.from_numpy(expert.act(raw))
        return chunk


def test_policies_satisfy_the_protocol():
    assert isinstance(ConstantPushTPolicy(), ChunkPolicy)
    assert isinstance(LiftExpertPolicy(), ChunkPolicy)


@needs_pusht
def test_pusht_end_to_end(tmp_path, capsys):
    policy = ConstantPushTPolicy()
    out = tmp_path / "eval"
    result = evaluate(policy, "pusht", n_episodes=3, seed=5, out_dir=out, max_steps=20, video_episodes=1)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == "success rate: 0.0% (0/3)"

    info = json.loads((out / "eval_info.json").read_text())
    assert info["env"] == "pusht" and info["max_steps"] == 20 and info["seed"] == 5
    assert info["executor"] == {"type": "receding_horizon", "n_action_steps": 8, "now_index": 1}
    eps = info["per_episode"]
    assert [e["episode_ix"] for e in eps] == [0, 1, 2] and [e["seed"] for e in eps] == [5, 6, 7]
    for e in eps:
        assert e["n_steps"] == 20 and e["success"] is False
        assert e["max_reward"] == pytest.approx(min(1.0, e["max_coverage"] / 0.95))
        assert 0.0 <= e["max_reward"] <= e["sum_reward"] + 1e-12 <= 20.0
    agg = info["aggregated"]
    assert agg["pc_success"] == 0.0 and agg["n_episodes"] == 3
    assert agg["avg_max_reward"] == pytest.approx(np.mean([e["max_reward"] for e in eps]))
    assert agg["avg_max_coverage"] == pytest.approx(np.mean([e["max_coverage"] for e in eps]))
    assert agg["eval_ep_s"] == pytest.approx(agg["eval_s"] / 3)
    assert info["video_paths"] == [str(out / "videos" / "eval_episode_0.mp4")] == [eps[0]["video"]]
    assert count_frames(eps[0]["video"]) == 21  # the reset frame + one per step
    assert result.summary_line() == printed[-1]

    # policy inputs: one query per 8 steps, windows (B, T_o, ...) with the reset frame repeated at first
    assert len(policy.windows) == 3 * 3 and policy.resets == 3
    w = policy.windows[0]
    assert w["state"].shape == (1, 2, 5) and w["keypoint"].shape == (1, 2, 9, 2)
    assert w["img"].shape == (1, 2, 3, 96, 96) and w["img"].dtype == torch.uint8
    assert torch.equal(w["state"][:, 0], w["state"][:, 1]) and torch.equal(w["img"][:, 0], w["img"][:, 1])
    later = policy.windows[1]["state"][0]
    assert not torch.equal(later[0], later[1])  # the agent moved between the two observed steps

    with pytest.raises(FileExistsError, match="eval_info.json"):
        evaluate(policy, "pusht", n_episodes=1, out_dir=out, max_steps=2, progress=False, verbose=False)


@needs_pusht
def test_pusht_results_do_not_depend_on_n_envs_and_ensembling_queries_every_step():
    kwargs = dict(n_episodes=3, seed=40, max_steps=12, progress=False, verbose=False)
    one = evaluate(ConstantPushTPolicy(target=(300.0, 200.0)), "pusht", n_envs=1, **kwargs)
    two = evaluate(ConstantPushTPolicy(target=(300.0, 200.0)), "pusht", n_envs=2, **kwargs)
    assert [(e.seed, e.sum_reward, e.max_coverage) for e in one.episodes] == [
        (e.seed, e.sum_reward, e.max_coverage) for e in two.episodes
    ]
    policy = ConstantPushTPolicy(target=(300.0, 200.0), n_obs_steps=1, horizon=10)
    ens = evaluate(policy, "pusht", executor="temporal_ensembling", **kwargs)
    assert ens.executor["type"] == "temporal_ensembling" and len(policy.windows) == 3 * 12
    assert [e.sum_reward for e in ens.episodes] == pytest.approx([e.sum_reward for e in one.episodes])


@needs_pusht
def test_bad_policy_outputs_and_inputs_are_clear_errors():
    policy = ConstantPushTPolicy()
    policy.target = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"D=2"):
        evaluate(policy, "pusht", n_episodes=1, max_steps=2, progress=False, verbose=False)
    policy = ConstantPushTPolicy(target=(float("nan"), 0.0))
    with pytest.raises(ValueError, match="non-finite action at step 0 of episode"):
        evaluate(policy, "pusht", n_episodes=1, max_steps=2, progress=False, verbose=False)
    policy = ConstantPushTPolicy()
    policy.config = PolicyConfig(
        input_features={"observation.environment_state": FeatureSpec((18,), "state")},
        output_features={"action": FeatureSpec((2,), "action")},
    )
    with pytest.raises(KeyError, match="PushT cannot provide"):
        evaluate(policy, "pusht", n_episodes=1, max_steps=2, progress=False, verbose=False)
    with pytest.raises(ValueError, match="unknown env"):
        evaluate(ConstantPushTPolicy(), "mujoco:Ant", n_episodes=1, progress=False, verbose=False)


@needs_robosuite
def test_lift_expert_succeeds_in_worker_processes(tmp_path, capsys):
    out = tmp_path / "lift"
    result = evaluate(
        LiftExpertPolicy(),
        "robosuite:Lift",
        n_episodes=4,
        seed=11,
        out_dir=out,
        n_envs=2,
        max_steps=200,
        video_episodes=1,
        video_size=64,
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == "success rate: 100.0% (4/4)"
    info = json.loads((out / "eval_info.json").read_text())
    assert info["n_envs"] == 2 and info["aggregated"]["pc_success"] == 100.0
    for e in info["per_episode"]:
        assert e["success"] and e["n_steps"] < 200 and e["max_reward"] == 1.0 and "max_coverage" not in e
    first = info["per_episode"][0]
    assert count_frames(first["video"]) == first["n_steps"] + 1
    assert result.n_success == 4


@needs_pusht
def test_cli_eval(tmp_path, monkeypatch, capsys):
    import robopolicy.policies.policy as policy_module
    from robopolicy.cli.main import main

    loaded = []

    def fake_load_policy(directory, map_location="cpu"):
        loaded.append((Path(directory), map_location))
        return ConstantPushTPolicy()

    monkeypatch.setattr(policy_module, "load_policy", fake_load_policy)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    out = tmp_path / "out"
    argv = ["eval", "--checkpoint", str(ckpt), "--env", "pusht", "--episodes", "2", "--seed", "3"]
    argv += ["--max-steps", "5", "--out", str(out), "--videos", "1", "--no-progress"]
    assert main(argv) == 0
    assert loaded == [(ckpt, "cpu")]
    assert capsys.readouterr().out.strip().splitlines()[-1] == "success rate: 0.0% (0/2)"
    info = json.loads((out / "eval_info.json").read_text())
    assert [e["seed"] for e in info["per_episode"]] == [3, 4]
    assert count_frames(out / "videos" / "eval_episode_0.mp4") == 6
    assert main(argv) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(ckpt), "--env", "gym:Foo"]) == 2


@needs_robosuite
@pytest.mark.slow
def test_lift_expert_on_the_eval_protocol_seeds():
    """20 episodes from seed 100000 (the default eval seeds), robomimic's 400-step limit, 2 worker processes."""
    result = evaluate(LiftExpertPolicy(), "robosuite:Lift", n_episodes=20, n_envs=2, progress=False, verbose=False)
    assert result.max_steps == 400 and [e.seed for e in result.episodes] == list(range(100_000, 100_020))
    assert result.n_success == 20, [e for e in result.episodes if not e.success]


class InstructedPushTPolicy(ConstantPushTPolicy):
    """Targets a point chosen by the instruction it is given (a language input "task")."""

    TARGETS: ClassVar[dict] = {"Push the T-shaped block onto the T-shaped target.": (256.0, 256.0),
                               "go left": (50.0, 256.0)}

    def __init__(self):
        super().__init__()
        self.config = self.config.replace(input_features={**self.config.input_features,
                                                          "task": FeatureSpec((), "language")})
        self.tasks: list = []

    def predict_chunk(self, obs):
        self.tasks.append(obs["task"])
        self.target = torch.tensor(self.TARGETS[obs["task"]])
        return super().predict_chunk({k: v for k, v in obs.items() if k != "task"})


@needs_pusht
def test_a_language_policy_gets_the_env_task_or_the_given_instruction(tmp_path):
    from robopolicy.sim.envs import EnvSpec
    from robopolicy.sim.errors import EnvMismatchError
    from robopolicy.sim.evaluate import env_instruction

    assert env_instruction(EnvSpec("pusht")) == "Push the T-shaped block onto the T-shaped target."
    assert env_instruction(EnvSpec("robosuite:Lift")) == "lift the red cube"
    kwargs = dict(n_episodes=1, seed=3, max_steps=16, progress=False, verbose=False)
    own, other = InstructedPushTPolicy(), InstructedPushTPolicy()
    a = evaluate(own, "pusht", out_dir=tmp_path / "own", **kwargs)
    b = evaluate(other, "pusht", task="go left", **kwargs)
    assert set(own.tasks) == {"Push the T-shaped block onto the T-shaped target."} and set(other.tasks) == {"go left"}
    assert "state" in own.windows[0] and "task" not in own.windows[0]  # the instruction is not an env observation
    assert a.episodes[0].sum_reward != b.episodes[0].sum_reward  # the words changed what it did
    info = json.loads((tmp_path / "own" / "eval_info.json").read_text())
    assert info["task"] == "Push the T-shaped block onto the T-shaped target."
    with pytest.raises(KeyError):
        evaluate(InstructedPushTPolicy(), "pusht", task="an instruction it does not know", **kwargs)
    with pytest.raises(EnvMismatchError, match="takes no instruction.*drop --task"):  # never silently ignored
        evaluate(ConstantPushTPolicy(), "pusht", task="go left", **kwargs)


@needs_pusht
@pytest.mark.parametrize("fmt", ["zarr", "lerobot"])
def test_recorded_rollouts_are_a_dataset_with_their_rewards(tmp_path, fmt):
    """eval --record: every episode with the observations the policy saw, the executed actions and the env's
    rewards; the same whatever n_envs; a second evaluation appends."""
    from robopolicy.rl.rewards import column_rewards

    root = tmp_path / ("rollouts.zarr" if fmt == "zarr" else "rollouts")
    kwargs = dict(n_episodes=3, seed=40, max_steps=12, progress=False, verbose=False)
    result = evaluate(ConstantPushTPolicy(target=(300.0, 200.0)), "pusht", n_envs=2, record=root, **kwargs)
    ds = open_dataset(root)
    assert ds.num_episodes == 3 and [ep.length for ep in ds.episodes] == [e.n_steps for e in result.episodes]
    assert ds.episode_success == [e.success for e in result.episodes]
    assert ds.episodes[0].tasks == ("Push the T-shaped block onto the T-shaped target.",)
    frames = np.arange(ds.num_frames)
    np.testing.assert_allclose(ds.read("action", frames), np.tile([300.0, 200.0], (ds.num_frames, 1)))
    rewards = column_rewards(ds)
    for ep, e in zip(ds.episodes, result.episodes):
        assert rewards.reward[ep.start:ep.stop].sum() == pytest.approx(e.sum_reward, rel=1e-5)
        assert ds.read("next.done", np.arange(ep.start, ep.stop))[:, 0].tolist() == [False] * (ep.length - 1) + [True]
    assert ds.read("img", [0]).shape == (1, 3, 96, 96)
    # the first recorded frame is the reset observation, the one the policy saw first
    first = ConstantPushTPolicy(target=(300.0, 200.0))
    evaluate(first, "pusht", n_envs=1, record=tmp_path / ("again.zarr" if fmt == "zarr" else "again"), **kwargs)
    np.testing.assert_allclose(ds.read("state", [0])[0], first.windows[0]["state"][0, -1].numpy(), atol=1e-5)
    again = open_dataset(tmp_path / ("again.zarr" if fmt == "zarr" else "again"))  # n_envs=1: the same dataset
    np.testing.assert_array_equal(column_rewards(again).reward, rewards.reward)
    np.testing.assert_array_equal(again.read("state", frames), ds.read("state", frames))
    evaluate(ConstantPushTPolicy(target=(300.0, 200.0)), "pusht", record=root, **{**kwargs, "n_episodes": 1})
    assert open_dataset(root).num_episodes == 4
