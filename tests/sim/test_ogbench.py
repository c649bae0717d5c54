"""OGBench single-task environments and data regenerated with OGBench's oracles: the spec, OGBench's reward and
termination conventions, and rewards relabelled exactly as OGBench's own relabel_dataset computes them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ogbench", reason="ogbench not installed (pip install 'robopolicy[sim]')")

from robopolicy.data.dataset import open_dataset
from robopolicy.sim.envs import EnvSpec, parse_env_spec
from robopolicy.sim.errors import EnvMismatchError
from robopolicy.sim.ogbench_collect import (
    OGBenchCollectConfig,
    _oracle,
    collect,
    cube_successes,
    rollout,
    task_goal,
)
from robopolicy.sim.ogbench_env import STATE_KEY, OGBenchEnv, gym_id


def test_spec_names_the_task_and_its_limits():
    spec = EnvSpec("ogbench:cube-single-task2")
    assert (spec.backend, spec.task, spec.fps, spec.max_episode_steps, spec.action_dim) == (
        "ogbench", "cube-single-task2", 20.0, 200, 5)
    assert EnvSpec("ogbench:cube-double-task5").max_episode_steps == 500
    with pytest.raises(ValueError, match="cube-single-task1"):
        parse_env_spec("ogbench:cube-single-task9")
    with pytest.raises(EnvMismatchError, match=r"\(28,\)"):
        OGBenchEnv("cube-single-task2", {STATE_KEY: (30,)})


def test_env_keeps_ogbench_conventions():
    env = OGBenchEnv("cube-single-task2", video_size=32)
    try:
        obs, info = env.reset(seed=5)
        again, _ = env.reset(seed=5)
        assert obs[STATE_KEY].shape == (28,) and obs[STATE_KEY].dtype == np.float32 and not info["is_success"]
        np.testing.assert_array_equal(obs[STATE_KEY], again[STATE_KEY])
        _, reward, terminated, _, info = env.step(np.zeros(5))
        assert (reward, terminated, info["is_success"]) == (-1.0, False, False)
        import mujoco  # after the env: it chose the GL backend (EGL)

        # put the cube on the task's goal: success (the state before the action, OGBench's 'pre' timing) ends it
        inner = env.raw.unwrapped
        inner._data.qpos[14:17] = inner._data.mocap_pos[0]
        mujoco.mj_forward(inner._model, inner._data)
        steps = [env.step(np.zeros(5)) for _ in range(2)]
        _, reward, terminated, _, info = steps[-1]
        assert (reward, terminated, info["is_success"]) == (0.0, True, True)
        assert env.render().shape == (32, 32, 3)
    finally:
        env.close()


@pytest.mark.parametrize("expert", ["play", "noisy"])
def test_rollouts_are_seeded_and_relabelled_as_ogbench_does(expert):
    import gymnasium
    from ogbench.relabel_utils import relabel_dataset

    config = OGBenchCollectConfig(episodes=1, episode_steps=40, expert=expert)
    env = gymnasium.make("cube-single-v0", terminate_at_goal=False, mode="data_collection", max_episode_steps=40)
    single = gymnasium.make(gym_id("cube-single-task3"))
    try:
        oracle = _oracle(env, config)
        first, second = rollout(env, oracle, config, 7), rollout(env, oracle, config, 7)
        for a, b in zip(first, second, strict=True):
            np.testing.assert_array_equal(a, b)
        states, actions, qpos = first
        assert states.shape == (40, 28) and actions.shape == (40, 5) and np.abs(actions).max() <= 1.0
        ours = cube_successes(qpos, task_goal("cube-single-task3"))
        data = {"qpos": qpos.astype(np.float32)}
        relabel_dataset(gym_id("cube-single-task3"), single, data)
        np.testing.assert_array_equal(data["rewards"], ours.sum(1) - ours.shape[1])
        np.testing.assert_array_equal(data["masks"], 1.0 - ours.all(1))
    finally:
        env.close()
        single.close()


def test_collect_writes_rewards_success_and_done(tmp_path):
    # task 3 starts where task 2's goal is: with task 2's rewards some frames are at the goal
    out = tmp_path / "cube.zarr"
    config = OGBenchCollectConfig(env="ogbench:cube-single-task2", episodes=2, episode_steps=30, seed=3)
    result = collect(config, out, progress=False)
    ds = open_dataset(out)
    assert ds.num_episodes == 2 and ds.num_frames == 60 and ds.fps == 20
    frames = np.arange(60)
    reward, success = ds.read("next.reward", frames)[:, 0], ds.read("next.success", frames)[:, 0]
    done = ds.read("next.done", frames)[:, 0]
    assert set(np.unique(reward)) <= {-1.0, 0.0}
    np.testing.assert_array_equal(success, reward == 0.0)
    assert done.sum() == 2 and done[29] and done[59]
    assert ds.episode_success == [r.success for r in result.rollouts]
    assert [r.seed for r in result.rollouts] == [3, 4]


def test_collect_command_regenerates_ogbench_data(tmp_path, capsys):
    from robopolicy.cli.main import main

    out = tmp_path / "noisy.zarr"
    rc = main(["collect", "--env", "ogbench:cube-single-task1", "--expert", "noisy", "--episodes", "1",
               "--max-steps", "12", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "wrote 1 episodes (12 frames)" in capsys.readouterr().out
    assert main(["collect", "--env", "ogbench:cube-single-task9", "--episodes", "1", "--out", str(out)]) == 2
    assert "cube-single-task1" in capsys.readouterr().err
