"""Simulation environments for evaluation, built from a spec string: "pusht", "robosuite:<Task>", "aloha:<Task>"
or "ogbench:<task>".

Every environment has the same gymnasium-style interface (numpy in, numpy out):
  reset(seed=..., options=...) -> (obs, info)
  step(action) -> (obs, reward, terminated, truncated, info) with info["is_success"]
  render() -> uint8 RGB frame (H, W, 3); close(); attributes fps and max_episode_steps.
Observations are {dataset key: array} with images (H, W, 3) uint8, exactly as the datasets record them.
An episode terminates at the first success.

`EnvSpec` is a small picklable description that worker processes turn into an environment with `make()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robopolicy.sim.errors import EnvMismatchError

ENV_HELP = (
    "'pusht' (gym-pusht PushT-v0), 'robosuite:<Task>' (e.g. 'robosuite:Lift') or 'aloha:<Task>' "
    "(gym-aloha: 'aloha:TransferCube', 'aloha:Insertion') or 'ogbench:<task>' (OGBench single-task, e.g. "
    "'ogbench:cube-single-task2')"
)
ROBOSUITE_MAX_STEPS = 400  # robomimic / Diffusion Policy rollout length for Lift, Can and Square
ROBOSUITE_VIDEO_CAMERA = "agentview"


def backend_task(spec: str, backend: str, tasks: Mapping[str, str], example: str) -> str:
    """The task of a "<backend>:<Task>" spec, checked against `tasks` (e.g. a backend's TASK_STRINGS); a
    ValueError naming the spec, the expected form and the supported tasks otherwise."""
    name, sep, task = spec.partition(":")
    if name != backend or not sep or not task:
        raise ValueError(f"unknown env {spec!r}; expected '{backend}:<Task>', e.g. '{backend}:{example}'")
    if task not in tasks:
        raise ValueError(f"env {spec!r}: unsupported {backend} task {task!r}; supported: {sorted(tasks)}")
    return task


def parse_env_spec(spec: str) -> tuple[str, str]:
    """Split an env spec: "pusht" -> ("pusht", "PushT"), "robosuite:Lift" -> ("robosuite", "Lift"); else an error."""
    if spec == "pusht":
        return "pusht", "PushT"
    backend, sep, task = spec.partition(":")
    if backend == "robosuite" and sep and task:
        from robopolicy.sim.robosuite_env import parse_env_spec as parse_robosuite

        return "robosuite", parse_robosuite(spec)
    if backend == "aloha" and sep and task:
        from robopolicy.sim.aloha_env import parse_env_spec as parse_aloha

        return "aloha", parse_aloha(spec)
    if backend == "ogbench" and sep and task:
        from robopolicy.sim.ogbench_env import parse_env_spec as parse_ogbench

        return "ogbench", parse_ogbench(spec)
    raise ValueError(f"unknown env {spec!r}; expected {ENV_HELP}")


@dataclass(frozen=True)
class EnvSpec:
    """What to build.

    name: "pusht", "robosuite:<Task>", "aloha:<Task>" (see robopolicy.sim.aloha_env) or "ogbench:<task>"
    (robopolicy.sim.ogbench_env).
    obs_shapes: {dataset key: shape} the policy needs (images (C, H, W)); empty = the env's default features.
    video_size: side (px) of frames from `render()` (robosuite: rendered only in episodes reset with
    options={"video": True}, since an offscreen renderer costs about 1 s per reset on CPU).
    """

    name: str
    obs_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    video_size: int = 0

    def __post_init__(self):
        parse_env_spec(self.name)
        object.__setattr__(self, "obs_shapes", {k: tuple(int(s) for s in v) for k, v in self.obs_shapes.items()})

    @property
    def backend(self) -> str:
        return parse_env_spec(self.name)[0]

    @property
    def task(self) -> str:
        return parse_env_spec(self.name)[1]

    @property
    def fps(self) -> float:
        if self.backend == "pusht":
            from robopolicy.sim.pusht_env import PUSHT_FPS

            return float(PUSHT_FPS)
        if self.backend == "aloha":
            from robopolicy.sim.aloha_env import ALOHA_FPS

            return float(ALOHA_FPS)
        if self.backend == "ogbench":
            from robopolicy.sim.ogbench_env import OGBENCH_FPS

            return float(OGBENCH_FPS)
        from robopolicy.sim.robosuite_env import RobosuiteConfig

        return float(RobosuiteConfig().control_freq)

    @property
    def max_episode_steps(self) -> int:
        if self.backend == "pusht":
            from robopolicy.sim.pusht_env import PUSHT_MAX_STEPS

            return PUSHT_MAX_STEPS
        if self.backend == "aloha":
            from robopolicy.sim.aloha_env import ALOHA_MAX_STEPS

            return ALOHA_MAX_STEPS
        if self.backend == "ogbench":
            from robopolicy.sim.ogbench_env import FAMILIES, task_parts

            return FAMILIES[task_parts(self.task)[0]][0]
        return ROBOSUITE_MAX_STEPS

    @property
    def action_dim(self) -> int:
        if self.backend == "pusht":
            from robopolicy.sim.pusht_env import ACTION_DIM

            return ACTION_DIM
        if self.backend == "aloha":
            from robopolicy.sim.aloha_env import ACTION_NAMES as ALOHA_ACTION_NAMES

            return len(ALOHA_ACTION_NAMES)
        if self.backend == "ogbench":
            from robopolicy.sim.ogbench_env import ACTION_DIM as OGBENCH_ACTION_DIM

            return OGBENCH_ACTION_DIM
        from robopolicy.sim.robosuite_env import ACTION_NAMES

        return len(ACTION_NAMES)

    def make(self):
        if self.backend == "pusht":
            from robopolicy.sim.pusht_env import PushTEnv

            return PushTEnv(self.obs_shapes or None, video_size=self.video_size or 384)
        if self.backend == "aloha":
            from robopolicy.sim.aloha_env import make_aloha_env

            return make_aloha_env(self.name, self.obs_shapes, video_size=self.video_size)
        if self.backend == "ogbench":
            from robopolicy.sim.ogbench_env import OGBenchEnv

            return OGBenchEnv(self.task, self.obs_shapes, video_size=self.video_size)
        return RobosuiteGymEnv(self.task, self.obs_shapes, video_size=self.video_size)


def env_spec_for_policy(name: str, input_features: Mapping[str, Any], video_size: int = 0) -> EnvSpec:
    """The EnvSpec that provides a policy's inputs: {key: spec with .shape} from `policy.config.input_features`."""
    return EnvSpec(name, {k: tuple(f.shape) for k, f in input_features.items()}, video_size)


class RobosuiteGymEnv:
    """A robosuite task (see robopolicy.sim.robosuite_env) with the gymnasium-style interface above.

    obs_shapes: the policy's keys: observation.state (9,), observation.environment_state (the task's native
    size, e.g. Lift's (10,), or the padded multi-task (23,); see robopolicy.sim.robosuite_env) and
    observation.images.<camera> (3, S, S), which turns on that camera at S x S. Reward: robosuite's sparse
    task reward (1.0 when solved); terminated = info["is_success"] = solved.
    video_size > 0: reset(options={"video": True}) builds an offscreen renderer for that episode and `render()`
    returns the `agentview` camera at video_size x video_size (MUJOCO_GL=egl unless already set).
    """

    def __init__(self, task: str = "Lift", obs_shapes: Mapping[str, Sequence[int]] | None = None, video_size: int = 0):
        from robopolicy.sim.robosuite_env import (
            ENV_STATE_KEY,
            IMAGE_PREFIX,
            STATE_KEY,
            STATE_NAMES,
            RobosuiteConfig,
            RobosuiteEnv,
            env_state_dim,
            env_state_layout_for_shape,
        )

        obs_shapes = {k: tuple(int(s) for s in v) for k, v in (obs_shapes or {}).items()}
        layout = env_state_layout_for_shape(task, obs_shapes.get(ENV_STATE_KEY))  # native or padded, by size
        expected = {STATE_KEY: (len(STATE_NAMES),), ENV_STATE_KEY: (env_state_dim(task, layout),)}
        cameras, sizes = [], set()
        for key, shape in obs_shapes.items():
            if key.startswith(IMAGE_PREFIX):
                if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
                    raise EnvMismatchError(
                        f"robosuite camera {key!r} must be square (3, S, S), the policy expects {shape}"
                    )
                cameras.append(key[len(IMAGE_PREFIX) :])
                sizes.add(shape[1])
            elif key in expected:
                if shape != expected[key]:
                    raise EnvMismatchError(
                        f"robosuite {task}: {key!r} has shape {expected[key]}, the policy expects {shape}"
                    )
            else:
                raise EnvMismatchError(
                    f"robosuite {task} cannot provide observation {key!r}; it provides {sorted(expected)} and "
                    f"{IMAGE_PREFIX}<camera>"
                )
        if len(sizes) > 1:
            raise EnvMismatchError(f"robosuite renders all cameras at one size; the policy asks for {sorted(sizes)}")
        if cameras or video_size:
            os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is first imported
        self._keys = list(obs_shapes) or [STATE_KEY, ENV_STATE_KEY]
        self.video_size = int(video_size)
        size = sizes.pop() if sizes else 84
        self._env = RobosuiteEnv(RobosuiteConfig(task=task, cameras=tuple(cameras), image_size=size, env_state=layout))
        self.fps = self._env.fps
        self.task_description = self._env.task_description  # the task's instruction
        self.max_episode_steps = ROBOSUITE_MAX_STEPS
        self._video = False
        self._has_cameras = bool(cameras)

    @property
    def raw(self):
        return self._env

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        video = bool((options or {}).get("video", False))
        if video and not self.video_size:
            raise ValueError("reset(options={'video': True}) needs RobosuiteGymEnv(video_size=...) > 0")
        # An offscreen renderer is (re)built at every hard reset when requested; only video episodes pay for it.
        self._env.raw.has_offscreen_renderer = self._has_cameras or video
        self._video = video
        obs = self._env.reset(seed)
        return self._observe(obs), {"is_success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"robosuite action must be finite, got {action}")
        obs, reward, success = self._env.step(action)
        return self._observe(obs), reward, success, False, {"is_success": success}

    def render(self) -> np.ndarray:
        if not self._video:
            raise RuntimeError("render() is only available in an episode reset with options={'video': True}")
        frame = self._env.raw.sim.render(
            width=self.video_size, height=self.video_size, camera_name=ROBOSUITE_VIDEO_CAMERA
        )
        from robopolicy.sim.robosuite_env import _images_upside_down

        return np.ascontiguousarray(frame[::-1] if _images_upside_down() else frame)

    def close(self) -> None:
        self._env.close()

    def _observe(self, obs) -> dict[str, np.ndarray]:
        features = self._env.features(obs)
        return {k: features[k] for k in self._keys}
