"""gym-aloha (ACT's bimanual tasks): env adapter shapes and seeding, the scripted experts, phase labels, and a
recording through the dataset layer."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("gym_aloha", reason="gym-aloha not installed (pip install 'robopolicy[sim]')")
pytest.importorskip("dm_control", reason="dm-control not installed (gym-aloha's simulator)")
os.environ.setdefault("MUJOCO_GL", "egl")

from robopolicy.data.dataset import open_dataset
from robopolicy.data.features import PHASE_KEY
from robopolicy.sim.aloha_collect import AlohaCollectConfig, collect, rollout
from robopolicy.sim.aloha_env import (
    ACTION_NAMES,
    ENV_STATE_KEY,
    ENV_STATE_NAMES,
    STATE_KEY,
    TASK_STRINGS,
    AlohaConfig,
    AlohaEnv,
    image_shape,
    make_aloha_env,
    parse_env_spec,
)
from robopolicy.sim.aloha_expert import (
    INSERTION_PHASES,
    TRANSFER_PHASES,
    AlohaExpert,
    AlohaExpertConfig,
    rot_x,
    rot_y,
    rotation_error,
    slerp_rot,
)
from robopolicy.sim.envs import EnvSpec
from robopolicy.sim.errors import EnvMismatchError

IMAGE_KEY = "observation.images.top"


@pytest.fixture(scope="module")
def transfer_env():
    return AlohaEnv(AlohaConfig(task="TransferCube"))


@pytest.fixture(scope="module")
def transfer_expert():
    return AlohaExpert(AlohaExpertConfig(task="TransferCube"))


def test_spec_parsing_and_env_spec():
    assert parse_env_spec("aloha:TransferCube") == "TransferCube"
    with pytest.raises(ValueError, match="supported"):
        parse_env_spec("aloha:Stack")
    spec = EnvSpec("aloha:Insertion")
    assert (spec.backend, spec.task, spec.fps, spec.max_episode_steps, spec.action_dim) == (
        "aloha",
        "Insertion",
        50.0,
        300,
        14,
    )
    assert image_shape(96) == (96, 128) and image_shape((64, 64)) == (64, 64)


def test_reset_step_shapes_and_camera():
    env = make_aloha_env("aloha:TransferCube", {STATE_KEY: (14,), IMAGE_KEY: (3, 48, 64)}, video_size=60)
    obs, info = env.reset(seed=0)
    assert set(obs) == {STATE_KEY, IMAGE_KEY} and info["is_success"] is False
    assert obs[STATE_KEY].shape == (14,) and obs[STATE_KEY].dtype == np.float32
    assert obs[IMAGE_KEY].shape == (48, 64, 3) and obs[IMAGE_KEY].dtype == np.uint8
    assert obs[IMAGE_KEY].std() > 0  # a rendered scene, not a blank frame
    obs, reward, terminated, truncated, info = env.step(obs[STATE_KEY])
    assert reward == 0.0 and not terminated and not truncated and info["is_success"] is False
    assert env.render().shape == (60, 80, 3)
    assert env.task_description == TASK_STRINGS["TransferCube"] and env.max_episode_steps == 300
    with pytest.raises(EnvMismatchError, match="cannot provide"):
        make_aloha_env("aloha:TransferCube", {"observation.velocity": (14,)})
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(7))


def test_seeded_reset_is_reproducible(transfer_env):
    env = transfer_env
    action = np.zeros(len(ACTION_NAMES), dtype=np.float32)
    runs = []
    for seed in (5, 5, 6):
        obs, _ = env.reset(seed=seed)
        states = [obs[ENV_STATE_KEY]]
        for _ in range(5):
            obs, *_ = env.step(action)
            states.append(np.concatenate([obs[STATE_KEY], obs[ENV_STATE_KEY]]))
        runs.append(states)
    assert runs[0][0].shape == (len(ENV_STATE_NAMES["TransferCube"]),)
    np.testing.assert_array_equal(np.concatenate(runs[0]), np.concatenate(runs[1]))
    assert not np.allclose(runs[0][0][:3], runs[2][0][:3])  # another seed, another cube position
    # gym-aloha's own sampler places the cube: x in [0, 0.2], y in [0.4, 0.6]
    x, y = runs[0][0][:2]
    assert 0.0 <= x <= 0.2 and 0.4 <= y <= 0.6


def test_rotation_helpers():
    a, b = rot_x(0.3), rot_y(-0.7) @ rot_x(0.1)
    np.testing.assert_allclose(rotation_error(a, a), 0.0, atol=1e-9)
    np.testing.assert_allclose(rotation_error(rot_x(0.5), rot_x(0.2)), [0.3, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(slerp_rot(a, b, 0.0), a, atol=1e-9)
    np.testing.assert_allclose(slerp_rot(a, b, 1.0), b, atol=1e-9)


@pytest.mark.parametrize("seed", [3, 41])
def test_transfer_expert_succeeds_with_phases_in_order(transfer_env, transfer_expert, seed):
    env, expert = transfer_env, transfer_expert
    obs, _ = env.reset(seed=seed)
    expert.reset()
    phases, rewards = [], []
    for _ in range(expert.length):
        obs, reward, _, _, _ = env.step(expert.act(obs))
        phases.append(expert.phase_index)
        rewards.append(reward)
    assert expert.done and expert.ik_error < 5e-3
    assert rewards[-1] == 4.0, f"seed {seed}: final reward {rewards[-1]}, max {max(rewards)}"
    # phases run through the whole vocabulary once, in order
    changes = [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
    assert changes == list(range(len(TRANSFER_PHASES)))
    assert expert.phase_names == TRANSFER_PHASES and expert.phase == "retreat"
    # the right arm lifts the cube (reward 2) before the left one takes it (reward 3/4), during the hand-over
    first2, first4 = rewards.index(2.0), next(i for i, r in enumerate(rewards) if r >= 3)
    assert first2 < first4 and TRANSFER_PHASES[phases[first4]] == "handover"


def test_insertion_expert_succeeds():
    env = AlohaEnv(AlohaConfig(task="Insertion"))
    expert = AlohaExpert(AlohaExpertConfig(task="Insertion"))
    result = rollout(env, expert, seed=7)
    assert result.success and result.first_success_step is not None
    assert expert.phase_names == INSERTION_PHASES and expert.phase == "insert"


def test_recording_has_phase_and_task(tmp_path):
    out = tmp_path / "aloha"
    config = AlohaCollectConfig(env="aloha:TransferCube", episodes=2, seed=0)
    result = collect(config, out, format="lerobot", progress=False)
    assert len(result.saved) == 2 and result.success_rate == 1.0
    ds = open_dataset(out)
    assert ds.num_episodes == 2 and ds.num_frames == 600 and ds.fps == 50
    assert ds.tasks == [TASK_STRINGS["TransferCube"]]
    assert ds.episode_success == [True, True]
    feat = ds.features[PHASE_KEY]
    assert (feat.dtype, tuple(feat.shape), feat.kind) == ("int64", (1,), "other")
    assert list(feat.names) == list(TRANSFER_PHASES)
    phase = ds.read_episode(PHASE_KEY, 1).ravel()
    assert phase.dtype == np.int64 and phase[0] == 0 and phase[-1] == len(TRANSFER_PHASES) - 1
    assert np.all(np.diff(phase) >= 0)
    assert ds.read_episode("next.reward", 0).ravel()[-1] == 4.0
    assert ds.read_episode("action", 0).shape == (300, 14)


@pytest.mark.slow  # 35-50 s here: CPU rendering runs at ~30 frames/s whatever the size, plus video encoding
def test_recording_with_camera(tmp_path):
    out = tmp_path / "aloha_cam"
    config = AlohaCollectConfig(env="aloha:TransferCube", episodes=2, seed=0, cameras=("top",), image_size=32)
    result = collect(config, out, format="lerobot", progress=False)
    assert len(result.saved) == 2
    ds = open_dataset(out)
    assert tuple(ds.features[IMAGE_KEY].shape) == (32, 42, 3)
    assert ds.read(IMAGE_KEY, [0, 599]).shape == (2, 3, 32, 42)
    assert PHASE_KEY in ds.features and ds.tasks == [TASK_STRINGS["TransferCube"]]


def test_expert_is_deterministic_given_the_seed(transfer_env, transfer_expert):
    runs = []
    for _ in range(2):
        obs, _ = transfer_env.reset(seed=12)
        transfer_expert.reset()
        actions = []
        for _ in range(200):  # past the re-plan at t_meet
            actions.append(transfer_expert.act(obs))
            obs, *_ = transfer_env.step(actions[-1])
        runs.append(np.stack(actions))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0].dtype == np.float32 and runs[0].shape == (200, 14)


def test_standalone_collect_command(tmp_path, capsys):
    from robopolicy.sim.aloha_collect import main

    out = tmp_path / "ins.zarr"
    assert main(["--env", "aloha:Insertion", "--episodes", "1", "--out", str(out), "--no-progress"]) == 0
    assert "expert success 1/1" in capsys.readouterr().out
    ds = open_dataset(out)
    assert ds.num_frames == 300 and list(ds.features[PHASE_KEY].names) == list(INSERTION_PHASES)
    assert ds.tasks == [TASK_STRINGS["Insertion"]]


def test_robopolicy_collect_records_aloha(tmp_path, capsys):
    from robopolicy.cli.main import main

    out = tmp_path / "transfer"
    assert main(["collect", "--env", "aloha:TransferCube", "--episodes", "1", "--out", str(out), "--no-progress"]) == 0
    ds = open_dataset(out)
    assert ds.num_episodes == 1 and ds.num_frames == 300 and ds.tasks == [TASK_STRINGS["TransferCube"]]
    assert list(ds.features[PHASE_KEY].names) == list(TRANSFER_PHASES)


class AlohaExpertPolicy:
    """The scripted AlohaExpert behind the chunk-policy protocol (T_o = 1, H = 1), fed the dataset features."""

    def __init__(self, task: str = "TransferCube"):
        from robopolicy.policies.base import FeatureSpec, PolicyConfig

        self.task = task
        self.config = PolicyConfig(
            input_features={
                STATE_KEY: FeatureSpec((14,), "state"),
                ENV_STATE_KEY: FeatureSpec((len(ENV_STATE_NAMES[task]),), "state"),
            },
            output_features={"action": FeatureSpec((14,), "action")},
            n_obs_steps=1,
            horizon=1,
            n_action_steps=1,
        )
        self.experts = None

    def reset(self):
        self.experts = None

    def predict_chunk(self, obs):
        import torch

        state = obs[STATE_KEY][:, -1].numpy()
        env_state = obs[ENV_STATE_KEY][:, -1].numpy()
        if self.experts is None:
            self.experts = [AlohaExpert(AlohaExpertConfig(task=self.task)) for _ in range(len(state))]
        actions = [e.act({STATE_KEY: s, ENV_STATE_KEY: es}) for e, s, es in zip(self.experts, state, env_state)]
        return torch.from_numpy(np.stack(actions))[:, None]


def test_evaluate_runs_the_expert_on_aloha():
    from robopolicy.sim.evaluate import evaluate

    result = evaluate(AlohaExpertPolicy(), "aloha:TransferCube", n_episodes=2, seed=100, progress=False)
    assert result.n_success == 2 and result.max_steps == 300
    assert all(e.max_reward == 4.0 and e.n_steps < 300 for e in result.episodes)  # terminated at the first success
