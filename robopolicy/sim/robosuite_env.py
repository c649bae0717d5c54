"""A thin adapter around robosuite single-arm tasks (Lift first) with named, flat observation features.

Observation features (what a policy sees; `observation_features(obs)` builds them from a robosuite obs dict,
and evaluation must use the same function):

- `observation.state` float32 (9,): robot proprioception, robomimic's low-dim Lift set:
  end-effector position x, y, z (m, world frame) | end-effector quaternion qx, qy, qz, qw (world frame, sign
  fixed so that qx >= 0: the gripper points down, |qx| ~ 1, so the sign never flips mid-episode) |
  gripper finger joint positions (m, 2).
- `observation.environment_state` float32 (10,): robosuite's `object-state` for Lift: cube position (m, 3),
  cube quaternion xyzw (4), vector from the end effector to the cube = cube - eef position (m, 3).
- `observation.images.<camera>` uint8 (H, W, 3), only when cameras are requested; upright (robosuite renders
  upside down in its default OpenGL convention, we flip it back).

Action `action` float32 (7,): the default Panda OSC_POSE controller input in [-1, 1]: end-effector position
delta dx, dy, dz (x 0.05 m) | orientation delta as axis-angle (x 0.5 rad), base frame | gripper (-1 open,
+1 close).

Seeding: robosuite samples the cube size, pose and robot initial noise from numpy's global RNG; `reset(seed)`
seeds it for the duration of the reset (restoring the caller's RNG state afterwards), so one seed is one
reproducible initial state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from robopolicy.data.features import Feature

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."

STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_qx", "eef_qy", "eef_qz", "eef_qw", "gripper_q0", "gripper_q1")
LIFT_ENV_STATE_NAMES = (
    "cube_x", "cube_y", "cube_z", "cube_qx", "cube_qy", "cube_qz", "cube_qw",
    "eef_to_cube_x", "eef_to_cube_y", "eef_to_cube_z",
)  # fmt: skip
ACTION_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")

# One plain-language task string per supported robosuite task (stored as the episode's task).
TASK_STRINGS = {"Lift": "lift the red cube"}


@dataclass(frozen=True)
class RobosuiteConfig:
    """How to build the environment.

    task: robosuite environment name (e.g. "Lift").
    robot: robosuite robot name; the features above assume a single arm with a parallel gripper.
    control_freq: control steps per second (Hz); also the recording fps.
    cameras: camera names to render (empty = low-dim only, no renderer at all).
    image_size: rendered image height = width (pixels).
    """

    task: str = "Lift"
    robot: str = "Panda"
    control_freq: int = 20
    cameras: tuple[str, ...] = ()
    image_size: int = 84


def parse_env_spec(spec: str) -> str:
    """Parse "robosuite:Lift" -> "Lift"; raises ValueError for any other backend or an unsupported task."""
    backend, sep, task = spec.partition(":")
    if backend != "robosuite" or not sep or not task:
        raise ValueError(f"unknown env {spec!r}; expected 'robosuite:<Task>', e.g. 'robosuite:Lift'")
    if task not in TASK_STRINGS:
        raise ValueError(f"env {spec!r}: unsupported robosuite task {task!r}; supported: {sorted(TASK_STRINGS)}")
    return task


def canonical_quat(q: np.ndarray) -> np.ndarray:
    """xyzw quaternion(s) (..., 4) with the sign chosen so that qx >= 0 (q and -q are the same rotation)."""
    q = np.asarray(q, dtype=np.float64)
    return np.where(q[..., :1] < 0, -q, q)


def observation_features(obs: Mapping[str, Any], cameras: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Turn a robosuite observation dict into the recorded/policy features (see the module docstring)."""
    try:
        state = np.concatenate(
            [obs["robot0_eef_pos"], canonical_quat(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
        )
        env_state = np.asarray(obs["object-state"])
    except KeyError as e:
        raise KeyError(
            f"robosuite observation has no {e.args[0]!r}; build the env with use_object_obs=True "
            f"(available: {sorted(obs)})"
        ) from None
    out = {STATE_KEY: state.astype(np.float32), ENV_STATE_KEY: env_state.astype(np.float32)}
    flip = _images_upside_down()
    for cam in cameras:
        key = f"{cam}_image"
        if key not in obs:
            raise KeyError(f"robosuite observation has no {key!r}: build the env with cameras=({cam!r},)")
        img = np.asarray(obs[key])
        out[IMAGE_PREFIX + cam] = np.ascontiguousarray(img[::-1] if flip else img, dtype=np.uint8)
    return out


def _images_upside_down() -> bool:
    from robosuite import macros

    return macros.IMAGE_CONVENTION == "opengl"


def lift_features(cameras: tuple[str, ...] = (), image_size: int = 84, video: bool = False) -> dict[str, Feature]:
    """The dataset features of a Lift recording: state, environment state, action, optional cameras."""
    feats = {
        STATE_KEY: Feature(STATE_KEY, "float32", (len(STATE_NAMES),), "state", names=list(STATE_NAMES)),
        ENV_STATE_KEY: Feature(
            ENV_STATE_KEY, "float32", (len(LIFT_ENV_STATE_NAMES),), "state", names=list(LIFT_ENV_STATE_NAMES)
        ),
        ACTION_KEY: Feature(ACTION_KEY, "float32", (len(ACTION_NAMES),), "action", names=list(ACTION_NAMES)),
    }
    kind = "video" if video else "image"
    for cam in cameras:
        key = IMAGE_PREFIX + cam
        feats[key] = Feature(key, kind, (image_size, image_size, 3), kind, names=["height", "width", "channels"])
    return feats


def make_env(spec: str = "robosuite:Lift", cameras: tuple[str, ...] = (), image_size: int = 84) -> RobosuiteEnv:
    """Build the environment named by an env spec such as "robosuite:Lift"."""
    return RobosuiteEnv(RobosuiteConfig(task=parse_env_spec(spec), cameras=tuple(cameras), image_size=image_size))


class RobosuiteEnv:
    """One robosuite task with seeded resets, flat features and a success check.

    `reset(seed)` and `step(action)` return the raw robosuite obs dict; `features(obs)` flattens it.
    Episode length is the caller's business (robosuite's own horizon is disabled).
    """

    def __init__(self, config: RobosuiteConfig = RobosuiteConfig()):
        if config.task not in TASK_STRINGS:
            raise ValueError(f"unsupported robosuite task {config.task!r}; supported: {sorted(TASK_STRINGS)}")
        if config.cameras:
            # Headless rendering needs a GL backend chosen before mujoco is imported; EGL works on CPU (Mesa).
            os.environ.setdefault("MUJOCO_GL", "egl")
        robosuite = _import_robosuite()
        self.config = config
        self.task = TASK_STRINGS[config.task]
        self.fps = float(config.control_freq)
        with _quiet_robosuite():
            self._env = robosuite.make(
                config.task,
                robots=config.robot,
                controller_configs=robosuite.load_composite_controller_config(robot=config.robot),
                has_renderer=False,
                has_offscreen_renderer=bool(config.cameras),
                use_camera_obs=bool(config.cameras),
                use_object_obs=True,
                camera_names=list(config.cameras) or "agentview",
                camera_heights=config.image_size,
                camera_widths=config.image_size,
                control_freq=config.control_freq,
                horizon=10**9,
                ignore_done=True,
                reward_shaping=False,
            )
        low, _ = self._env.action_spec
        if low.shape != (len(ACTION_NAMES),):
            raise ValueError(
                f"robosuite {config.task} with robot {config.robot!r} has a {low.shape[0]}-D action; "
                f"the adapter expects {len(ACTION_NAMES)} (OSC_POSE arm + gripper)"
            )

    @property
    def raw(self):
        """The wrapped robosuite environment."""
        return self._env

    def dataset_features(self, video: bool = False) -> dict[str, Feature]:
        return lift_features(self.config.cameras, self.config.image_size, video=video)

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        if seed is None:
            with _quiet_robosuite():
                return self._env.reset()
        saved = np.random.get_state()
        try:
            np.random.seed(seed)
            self._env.rng = np.random.default_rng(seed)
            with _quiet_robosuite():
                return self._env.reset()
        finally:
            np.random.set_state(saved)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool]:
        """Apply one 7-D action; returns (obs, reward, success)."""
        obs, reward, _, _ = self._env.step(np.asarray(action, dtype=np.float64))
        return obs, float(reward), self.is_success()

    def is_success(self) -> bool:
        return bool(self._env._check_success())

    def features(self, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return observation_features(obs, self.config.cameras)

    def close(self) -> None:
        self._env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _import_robosuite():
    """Import robosuite without its import-time warnings (missing private macro file, optional robots)."""
    import logging

    logging.disable(logging.WARNING)
    try:
        import robosuite
    finally:
        logging.disable(logging.NOTSET)
    return robosuite


class _quiet_robosuite:
    """Silence robosuite's INFO logging (it logs the controller file on every hard reset)."""

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("robosuite_logs")
        self._level = self._logger.level
        self._logger.setLevel(logging.WARNING)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
