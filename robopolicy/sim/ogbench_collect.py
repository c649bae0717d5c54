"""Regenerate OGBench manipulation data with OGBench's own oracles, relabelled for one task (single-task RL).

The loop is the one OGBench's data_gen_scripts/generate_manipspace.py describes (the script is not in the wheel):
the environment in `mode="data_collection"` without termination at the goal, episodes of `episode_steps`
(1001 in OGBench's datasets), and
  play   CubePlanOracle(noise, noise_smoothing=0.5): open-loop plans to random targets, smoothed noise;
  noisy  CubeMarkovOracle(min_norm=0.4): closed loop, Gaussian action noise sigma = [x, x, x, 3x, 10x] with
         x ~ U(0, noise) per episode, and a uniformly random action with probability p_random_action (0.1);
when the oracle reaches its target a new random target is set (`set_new_target(p_stack=0)`), so the data is
task-agnostic. Rewards then come from the chosen task exactly as OGBench's `relabel_dataset` computes them: a
cube is at its goal when its position (qpos[14 + 7 i : 17 + 7 i]) is within 0.04 m of the task's target
(`mocap_pos` of the single-task environment after reset); reward = #cubes at goal - #cubes.

Recorded per frame t: observation.state at t, action a_t, next.reward = the reward of the state after a_t,
next.success = every cube at its goal after a_t (a terminal: offline RL does not bootstrap past it),
next.done on the episode's last frame. OGBench's own arrays hold the reward of the state *before* the action
(its 'pre' timing); here the same labels sit one frame earlier, the LeRobot `next.*` convention.
Episode k of a collection started at `seed` resets the environment with seed + k and seeds NumPy's global
generator (the oracles' noise and the random actions) with seed + k: the same command writes the same dataset.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robopolicy.data.features import Feature
from robopolicy.data.writer import create_writer
from robopolicy.rl.rewards import DONE_KEY, REWARD_KEY, SUCCESS_KEY
from robopolicy.sim.collect import CollectResult, EpisodeResult
from robopolicy.sim.ogbench_env import (
    ACTION_DIM,
    ACTION_KEY,
    FAMILIES,
    OGBENCH_FPS,
    STATE_KEY,
    TASK_STRINGS,
    _import_ogbench,
    gym_id,
    parse_env_spec,
    task_parts,
)

QPOS_CUBE_START, QPOS_CUBE_LENGTH = 14, 7  # OGBench's layout of the cubes' free joints in qpos
GOAL_TOLERANCE = 0.04  # m


@dataclass(frozen=True)
class OGBenchCollectConfig:
    """env: "ogbench:<family>-task<n>" (the task the rewards are relabelled for); expert: "play" or "noisy";
    noise: play's noise scale / noisy's upper bound of x (OGBench: 0.1); p_random_action: noisy only (0.1)."""

    env: str = "ogbench:cube-single-task2"
    episodes: int = 100
    seed: int = 0
    expert: str = "play"
    episode_steps: int = 1001
    noise: float = 0.1
    p_random_action: float = 0.1

    def __post_init__(self):
        parse_env_spec(self.env)
        if self.expert not in ("play", "noisy"):
            raise ValueError(f"expert must be 'play' or 'noisy' (OGBench's dataset types), got {self.expert!r}")
        if self.episodes < 1 or self.episode_steps < 2:
            raise ValueError(f"episodes >= 1 and episode_steps >= 2, got {self.episodes} and {self.episode_steps}")
        if not (self.noise >= 0.0 and 0.0 <= self.p_random_action <= 1.0):
            raise ValueError(f"noise >= 0 and p_random_action in [0, 1], got {self.noise}, {self.p_random_action}")

    @property
    def task(self) -> str:
        return parse_env_spec(self.env)


def task_goal(task: str) -> np.ndarray:
    """The task's cube targets (num_cubes, 3), as OGBench's relabel_dataset reads them: a reset single-task env."""
    gymnasium = _import_ogbench()
    env = gymnasium.make(gym_id(task))
    try:
        env.reset(seed=0)
        return np.array(env.unwrapped._data.mocap_pos, dtype=np.float64).reshape(-1, 3)
    finally:
        env.close()


def cube_successes(qpos: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """(T, num_cubes) bool: each cube within GOAL_TOLERANCE of its goal, from qpos (T, nq)."""
    cubes = np.stack([qpos[:, QPOS_CUBE_START + i * QPOS_CUBE_LENGTH: QPOS_CUBE_START + i * QPOS_CUBE_LENGTH + 3]
                      for i in range(len(goal))], axis=1)
    return np.linalg.norm(goal[None] - cubes, axis=-1) <= GOAL_TOLERANCE


def _oracle(env, config: OGBenchCollectConfig):
    if config.expert == "play":
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

        return CubePlanOracle(env=env, noise=config.noise, noise_smoothing=0.5)
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

    return CubeMarkovOracle(env=env, min_norm=0.4)


def features(task: str) -> dict[str, Feature]:
    state_dim = FAMILIES[task_parts(task)[0]][1]
    return {STATE_KEY: Feature(STATE_KEY, "float32", (state_dim,), "state"),
            ACTION_KEY: Feature(ACTION_KEY, "float32", (ACTION_DIM,), "action"),
            REWARD_KEY: Feature(REWARD_KEY, "float32", (1,), "reward"),
            SUCCESS_KEY: Feature(SUCCESS_KEY, "bool", (1,), "done"),
            DONE_KEY: Feature(DONE_KEY, "bool", (1,), "done")}


def rollout(env, oracle, config: OGBenchCollectConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One data-collection episode: states (T, S), actions (T, 5), qpos after each action (T, nq)."""
    np.random.seed(seed)  # the oracles' noise uses NumPy's global generator, and so do the random actions here
    ob, info = env.reset(seed=seed)
    xi = np.random.uniform(0, config.noise) if config.expert == "noisy" else 0.0
    oracle.reset(ob, info)
    states, actions, qpos = [], [], []
    for _ in range(config.episode_steps):
        if config.expert == "noisy" and np.random.rand() < config.p_random_action:
            action = np.random.uniform(-1.0, 1.0, ACTION_DIM)  # env.action_space is rebuilt per access: unseedable
        else:
            action = np.asarray(oracle.select_action(ob, info), dtype=np.float64)
            if config.expert == "noisy":
                action = action + np.random.normal(0, [xi, xi, xi, 3 * xi, 10 * xi], action.shape)
        action = np.clip(action, -1, 1)
        next_ob, _, _, _, info = env.step(action)
        if oracle.done:
            agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=0.0)
            oracle.reset(agent_ob, agent_info)
        states.append(np.asarray(ob, np.float32))
        actions.append(action.astype(np.float32))
        qpos.append(np.asarray(info["qpos"], np.float64))
        ob = next_ob
    return np.stack(states), np.stack(actions), np.stack(qpos)


def collect(config: OGBenchCollectConfig, out: str | Path, *, format: str = "zarr", overwrite: bool = False,
            append: bool = False, progress: bool = True) -> CollectResult:
    """Write `config.episodes` oracle episodes relabelled for `config.task` to `out`."""
    gymnasium = _import_ogbench()
    task = config.task
    goal = task_goal(task)
    family = task_parts(task)[0]
    env = gymnasium.make(f"{family}-v0", terminate_at_goal=False, mode="data_collection",
                         max_episode_steps=config.episode_steps)
    oracle = _oracle(env, config)
    result = CollectResult(Path(out), format)
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.episodes, desc=f"ogbench {task} ({config.expert})", unit="ep", file=sys.stderr)
    try:
        with create_writer(out, features(task), float(OGBENCH_FPS), format=format, overwrite=overwrite,
                           append=append) as writer:
            for k in range(config.episodes):
                seed = config.seed + k
                states, actions, qpos = rollout(env, oracle, config, seed)
                at_goal = cube_successes(qpos, goal)
                success = at_goal.all(axis=1)
                reward = at_goal.sum(axis=1).astype(np.float32) - at_goal.shape[1]
                last = len(states) - 1
                for t in range(len(states)):
                    writer.add_frame({STATE_KEY: states[t], ACTION_KEY: actions[t],
                                      REWARD_KEY: np.array([reward[t]], np.float32),
                                      SUCCESS_KEY: np.array([success[t]]), DONE_KEY: np.array([t == last])},
                                     task=TASK_STRINGS[task])
                index = writer.save_episode(task=TASK_STRINGS[task], success=bool(success.any()))
                first = int(np.argmax(success)) if success.any() else None
                result.rollouts.append(EpisodeResult(task, seed, len(states), bool(success.any()), first, index))
                if bar is not None:
                    bar.update(1)
    finally:
        env.close()
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - start
    return result
