"""A thin adapter around robosuite single-arm tasks with named, flat observation features.

Tasks (each with a scripted expert in robopolicy.sim.experts and a plain instruction in `TASK_STRINGS`): Lift,
Stack, PickPlaceCan, Door, NutAssemblyRound.

Observation features (what a policy sees; `observation_features(obs)` builds them from a robosuite obs dict,
and evaluation must use the same function):

- `observation.state` float32 (9,): robot proprioception, robomimic's low-dim set, the same for every task:
  end-effector position x, y, z (m, world frame) | end-effector quaternion qx, qy, qz, qw (world frame, sign
  fixed so that qx >= 0: the gripper points down, |qx| ~ 1, so the sign never flips mid-episode) |
  gripper finger joint positions (m, 2).
- `observation.environment_state` float32: robosuite's `object-state` of the task (its `use_object_obs`
  observables concatenated in robosuite's order; `TASK_OBJECT_STATE` lists them), in one of two layouts:
    native  the task's own length: Lift 10, Stack 23, PickPlaceCan 14, Door 14, NutAssemblyRound 14.
    padded  `PADDED_ENV_STATE_DIM` = 23 (the longest, Stack's) for every task: slots [0, n) hold the task's
            native object-state (n as above), slots [n, 23) are zero. So slots 0-9 of Lift are exactly its
            native 10-D state, Stack fills all 23, PickPlaceCan / Door / NutAssemblyRound fill slots 0-13.
            A slot means different things in different tasks (the task string says which task it is).
  `RobosuiteConfig.env_state` picks the layout; "auto" (the default) is native for Lift (the 10-D layout of
  single-task Lift datasets and policies) and padded for every other task. Multi-task collections use padded
  for every task, Lift included; an evaluation env takes the layout whose size the policy expects.
  Native layouts, slot by slot (m, xyzw quaternions, world frame unless said):
    Lift              cube_pos 0-2 | cube_quat 3-6 | gripper_to_cube_pos 7-9 (cube - eef)
    Stack             cubeA_pos 0-2 | cubeA_quat 3-6 | cubeB_pos 7-9 | cubeB_quat 10-13 |
                      cubeA_to_cubeB 14-16 | gripper_to_cubeA 17-19 | gripper_to_cubeB 20-22
    PickPlaceCan      Can_to_robot0_eef_pos 0-2 | Can_to_robot0_eef_quat 3-6 (the can in the eef frame) |
                      Can_pos 7-9 | Can_quat 10-13
    Door              door_pos 0-2 | handle_pos 3-5 | hinge_qpos 6 (rad) | door_to_eef_pos 7-9 |
                      handle_to_eef_pos 10-12 | handle_qpos 13 (rad)
    NutAssemblyRound  RoundNut_to_robot0_eef_pos 0-2 | RoundNut_to_robot0_eef_quat 3-6 | RoundNut_pos 7-9 |
                      RoundNut_quat 10-13
- `observation.images.<camera>` uint8 (H, W, 3), only when cameras are requested; upright (robosuite renders
  upside down in its default OpenGL convention, we flip it back).

Action `action` float32 (7,): the default Panda OSC_POSE controller input in [-1, 1]: end-effector position
delta dx, dy, dz (x 0.05 m) | orientation delta as axis-angle (x 0.5 rad), base frame | gripper (-1 open,
+1 close).

Seeding: robosuite samples the object sizes, poses and robot initial noise from numpy's global RNG;
`reset(seed)` seeds it for the duration of the reset (restoring the caller's RNG state afterwards), so one seed
is one reproducible initial state.

The env's instruction (what its recordings store as the episode's task) is `RobosuiteEnv.task_description`
(also `.task`), from `TASK_STRINGS`.
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

# robosuite 1.5's object-state of each task: (observable, length) in concatenation order (see the docstring).
TASK_OBJECT_STATE = {
    "Lift": (("cube_pos", 3), ("cube_quat", 4), ("gripper_to_cube_pos", 3)),
    "Stack": (
        ("cubeA_pos", 3), ("cubeA_quat", 4), ("cubeB_pos", 3), ("cubeB_quat", 4),
        ("cubeA_to_cubeB", 3), ("gripper_to_cubeA", 3), ("gripper_to_cubeB", 3),
    ),
    "PickPlaceCan": (("Can_to_robot0_eef_pos", 3), ("Can_to_robot0_eef_quat", 4), ("Can_pos", 3), ("Can_quat", 4)),
    "Door": (
        ("door_pos", 3), ("handle_pos", 3), ("hinge_qpos", 1), ("door_to_eef_pos", 3), ("handle_to_eef_pos", 3),
        ("handle_qpos", 1),
    ),
    "NutAssemblyRound": (
        ("RoundNut_to_robot0_eef_pos", 3), ("RoundNut_to_robot0_eef_quat", 4), ("RoundNut_pos", 3),
        ("RoundNut_quat", 4),
    ),
}  # fmt: skip
NATIVE_ENV_STATE_DIMS = {task: sum(n for _, n in parts) for task, parts in TASK_OBJECT_STATE.items()}
PADDED_ENV_STATE_DIM = max(NATIVE_ENV_STATE_DIMS.values())  # 23 (Stack)
PADDED_ENV_STATE_NAMES = tuple(f"env_state_{i}" for i in range(PADDED_ENV_STATE_DIM))
ENV_STATE_LAYOUTS = ("auto", "native", "padded")

# One plain-language instruction per supported robosuite task (stored as the episode's task; evaluate.py
# looks it up here).
TASK_STRINGS = {
    "Lift": "lift the red cube",
    "Stack": "stack the red cube on the green cube",
    "PickPlaceCan": "pick up the can and place it in its bin",
    "Door": "open the door",
    "NutAssemblyRound": "put the round nut on the round peg",
}


@dataclass(frozen=True)
class RobosuiteConfig:
    """How to build the environment.

    task: robosuite environment name (e.g. "Lift").
    robot: robosuite robot name; the features above assume a single arm with a parallel gripper.
    control_freq: control steps per second (Hz); also the recording fps.
    cameras: camera names to render (empty = low-dim only, no renderer at all).
    image_size: rendered image height = width (pixels).
    env_state: layout of observation.environment_state: "native", "padded" or "auto" (native for Lift,
    padded otherwise); see the module docstring.
    """

    task: str = "Lift"
    robot: str = "Panda"
    control_freq: int = 20
    cameras: tuple[str, ...] = ()
    image_size: int = 84
    env_state: str = "auto"

    def __post_init__(self):
        if self.env_state not in ENV_STATE_LAYOUTS:
            raise ValueError(f"env_state must be one of {ENV_STATE_LAYOUTS}, got {self.env_state!r}")

    @property
    def env_state_layout(self) -> str:
        """The layout "auto" resolves to for this task: "native" or "padded"."""
        return resolve_env_state_layout(self.task, self.env_state)

    @property
    def env_state_dim(self) -> int:
        return env_state_dim(self.task, self.env_state)


def resolve_env_state_layout(task: str, layout: str = "auto") -> str:
    """"auto" -> "native" for Lift (its 10-D single-task layout), "padded" for the other tasks."""
    if layout == "auto":
        return "native" if task == "Lift" else "padded"
    if layout not in ENV_STATE_LAYOUTS:
        raise ValueError(f"env_state must be one of {ENV_STATE_LAYOUTS}, got {layout!r}")
    return layout


def env_state_dim(task: str, layout: str = "auto") -> int:
    """Length of observation.environment_state for `task` in `layout`."""
    if resolve_env_state_layout(task, layout) == "padded":
        return PADDED_ENV_STATE_DIM
    return NATIVE_ENV_STATE_DIMS[task]


def env_state_names(task: str, layout: str = "auto") -> list[str]:
    """Per-slot names: the task's observables with x/y/z (qx/qy/qz/qw) suffixes, or env_state_<i> when padded."""
    if resolve_env_state_layout(task, layout) == "padded":
        return list(PADDED_ENV_STATE_NAMES)
    if task == "Lift":
        return list(LIFT_ENV_STATE_NAMES)
    suffixes = {1: ("",), 3: ("_x", "_y", "_z"), 4: ("_qx", "_qy", "_qz", "_qw")}
    return [f"{name}{sfx}" for name, n in TASK_OBJECT_STATE[task] for sfx in suffixes[n]]


def env_state_layout_for_shape(task: str, shape) -> str:
    """The layout whose observation.environment_state has `shape` (what a policy expects): "native" or
    "padded"; "auto" when `shape` is None or matches neither (the caller then reports the mismatch)."""
    if shape is None:
        return "auto"
    shape = tuple(int(s) for s in shape)
    if shape == (NATIVE_ENV_STATE_DIMS[task],):
        return "native"
    if shape == (PADDED_ENV_STATE_DIM,):
        return "padded"
    return "auto"


def parse_env_spec(spec: str) -> str:
    """Parse "robosuite:Lift" -> "Lift"; a ValueError for another backend or an unsupported task."""
    from robopolicy.sim.envs import backend_task

    return backend_task(spec, "robosuite", TASK_STRINGS, "Lift")


def parse_multi_env_spec(spec: str) -> list[str]:
    """Parse "robosuite:Lift,Stack,Door" -> ["Lift", "Stack", "Door"] (one task: a one-element list)."""
    backend, sep, tasks = spec.partition(":")
    names = [t.strip() for t in tasks.split(",")] if sep else []
    if backend != "robosuite" or not names or not all(names):
        raise ValueError(
            f"unknown env {spec!r}; expected 'robosuite:<Task>[,<Task>...]', e.g. 'robosuite:Lift,Stack'"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"env {spec!r} names a task twice")
    return [parse_env_spec(f"robosuite:{t}") for t in names]


def canonical_quat(q: np.ndarray) -> np.ndarray:
    """xyzw quaternion(s) (..., 4) with the sign chosen so that qx >= 0 (q and -q are the same rotation)."""
    q = np.asarray(q, dtype=np.float64)
    return np.where(q[..., :1] < 0, -q, q)


def observation_features(
    obs: Mapping[str, Any], cameras: tuple[str, ...] = (), env_state_dim: int | None = None
) -> dict[str, np.ndarray]:
    """Turn a robosuite observation dict into the recorded/policy features (see the module docstring).

    env_state_dim: zero-pad the object-state to this length (the padded layout); None = as robosuite gives it.
    """
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
    if env_state_dim is not None:
        if env_state.shape[0] > env_state_dim:
            raise ValueError(f"object-state has {env_state.shape[0]} values, more than the layout's {env_state_dim}")
        env_state = np.concatenate([env_state, np.zeros(env_state_dim - env_state.shape[0])])
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
    """The dataset features of a Lift recording (native 10-D env state): state, env state, action, cameras."""
    return robosuite_features("Lift", "native", cameras, image_size, video)


def robosuite_features(
    task: str,
    env_state: str = "auto",
    cameras: tuple[str, ...] = (),
    image_size: int = 84,
    video: bool = False,
) -> dict[str, Feature]:
    """The dataset features of a recording of `task` with env-state layout `env_state`: observation.state,
    observation.environment_state, action and the cameras' images (the padded layout's are the same for every
    task)."""
    names = env_state_names(task, env_state)
    feats = {
        STATE_KEY: Feature(STATE_KEY, "float32", (len(STATE_NAMES),), "state", names=list(STATE_NAMES)),
        ENV_STATE_KEY: Feature(ENV_STATE_KEY, "float32", (len(names),), "state", names=names),
        ACTION_KEY: Feature(ACTION_KEY, "float32", (len(ACTION_NAMES),), "action", names=list(ACTION_NAMES)),
    }
    kind = "video" if video else "image"
    for cam in cameras:
        key = IMAGE_PREFIX + cam
        feats[key] = Feature(key, kind, (image_size, image_size, 3), kind, names=["height", "width", "channels"])
    return feats


def make_env(
    spec: str = "robosuite:Lift", cameras: tuple[str, ...] = (), image_size: int = 84, env_state: str = "auto"
) -> RobosuiteEnv:
    """Build the environment named by an env spec such as "robosuite:Lift"."""
    config = RobosuiteConfig(
        task=parse_env_spec(spec), cameras=tuple(cameras), image_size=image_size, env_state=env_state
    )
    return RobosuiteEnv(config)


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
        self.task_description = TASK_STRINGS[config.task]  # the instruction (the episode's task when recorded)
        self.task = self.task_description
        self._env_state_dim = config.env_state_dim if config.env_state_layout == "padded" else None
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
        c = self.config
        return robosuite_features(c.task, c.env_state, c.cameras, c.image_size, video=video)

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
        return observation_features(obs, self.config.cameras, self._env_state_dim)

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
