"""ALOHA bimanual tasks from gym-aloha 0.1.5 (ACT's transfer-cube and insertion) with flat dataset features.

gym-aloha ships the MuJoCo scene (two ViperX 300s arms, 50 Hz joint-position control) and the dm_control tasks
that score it; this adapter reuses both (`gym_aloha.tasks.sim.TransferCubeTask` / `InsertionTask`, their
initial-state sampler `gym_aloha.utils` and reward) but not `gym_aloha.env.AlohaEnv`, whose tasks render three
480x640 cameras at every step (about 8 steps/s on CPU). Here only the requested cameras are rendered, at the
requested size.

Observation features (what `features()` returns and datasets record):

- `observation.state` float32 (14,): gym-aloha's qpos, `STATE_NAMES`: per arm (left, then right) 6 joint
  positions (rad: waist, shoulder, elbow, forearm_roll, wrist_angle, wrist_rotate) and the normalised gripper
  opening (0 = closed, 1 = open; finger position mapped from [0.01844, 0.05800] m).
- `observation.environment_state` float32, privileged object poses (MuJoCo free-joint qpos: position in m,
  world frame, then quaternion w, x, y, z): transfer-cube (7,) the cube; insertion (14,) the peg, then the
  socket. Names in `ENV_STATE_NAMES[task]`.
- `observation.images.<camera>` uint8 (H, W, 3), only for requested cameras (gym-aloha exposes "top"). The
  default size is 120 x 160 (H x W): a quarter of gym-aloha's 480 x 640 in each dimension, the same 4:3 field
  of view, because CPU rendering is slow. A square size crops the sides of the 4:3 view (fovy is vertical).

Action `action` float32 (14,), exactly what gym-aloha takes (`ACTION_NAMES`): per arm 6 absolute joint
position targets (rad) and the normalised gripper target (0 = closed, 1 = open).

Reward: gym-aloha's per-step stage value 0..4 (transfer: 1 right gripper touches the cube, 2 lifted, 3 left
gripper touches it, 4 left gripper holds it off the table; insertion: 1 both grippers touch peg and socket, 2
both lifted, 3 peg touches socket in the air, 4 peg touches the pin). Success = reward 4 (gym-aloha's
`is_success`); an episode terminates at the first success. Time limit `max_episode_steps` = 300 steps (6 s),
gym-aloha's registered limit (ACT itself rolls out 400).

Seeding: `reset(seed=s)` places the objects with gym-aloha's own sampler seeded with s
(`sample_box_pose(s)` / `sample_insertion_pose(s)`), so seed s gives the same initial state as
`gym.make("gym_aloha/AlohaTransferCube-v0").reset(seed=s)`. The simulation is deterministic given the seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robopolicy.data.features import Feature

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."

_ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
STATE_NAMES = tuple(f"{arm}_arm_{j}" for arm in ("left", "right") for j in _ARM_JOINTS)  # gym_aloha JOINTS
ACTION_NAMES = STATE_NAMES  # absolute joint targets, same order (gym_aloha ACTIONS)


def _pose_names(obj: str) -> tuple[str, ...]:
    return tuple(f"{obj}_{c}" for c in ("x", "y", "z", "qw", "qx", "qy", "qz"))


ENV_STATE_NAMES = {"TransferCube": _pose_names("cube"), "Insertion": _pose_names("peg") + _pose_names("socket")}

# One plain-language instruction per task (stored as the episode's task; evaluate.py looks it up here).
TASK_STRINGS = {"TransferCube": "transfer the cube to the other arm", "Insertion": "insert the peg into the socket"}
GYM_IDS = {"TransferCube": "gym_aloha/AlohaTransferCube-v0", "Insertion": "gym_aloha/AlohaInsertion-v0"}
_XML = {"TransferCube": "bimanual_viperx_transfer_cube.xml", "Insertion": "bimanual_viperx_insertion.xml"}

ALOHA_FPS = 50  # gym_aloha.constants.FPS (DT = 0.02 s)
ALOHA_MAX_STEPS = 300  # gym-aloha's registered TimeLimit
SUCCESS_REWARD = 4.0
DEFAULT_IMAGE_SIZE = (120, 160)  # (H, W); gym-aloha renders 480 x 640
DEFAULT_VIDEO_HEIGHT = 240  # render(): 240 x 320 unless told otherwise
CAMERAS = ("top", "angle", "front_close", "left_pillar", "right_pillar", "left_wrist", "right_wrist")
INSTALL_HINT = "gym-aloha is not installed: pip install 'robopolicy[sim]' (or gym-aloha==0.1.5 'mujoco<3.4')"


def parse_env_spec(spec: str) -> str:
    """Parse "aloha:TransferCube" -> "TransferCube"; a ValueError for another backend or an unsupported task."""
    from robopolicy.sim.envs import backend_task

    return backend_task(spec, "aloha", TASK_STRINGS, "TransferCube")


def image_shape(image_size: int | Sequence[int] | None) -> tuple[int, int]:
    """(H, W) from an image size: an int H keeps the camera's 4:3 view (W = 4H/3, rounded to even); a pair as is."""
    if image_size is None:
        return DEFAULT_IMAGE_SIZE
    if isinstance(image_size, (int, np.integer)):
        h = int(image_size)
        return h, 2 * round(h * 2 / 3)
    h, w = (int(s) for s in image_size)
    return h, w


@dataclass(frozen=True)
class AlohaConfig:
    """How to build the environment.

    task: "TransferCube" or "Insertion".
    cameras: cameras to render into observations (gym-aloha exposes "top"); empty = low-dim only.
    image_height / image_width: camera image size (px), default 120 x 160 (gym-aloha: 480 x 640).
    video_height / video_width: size of `render()` frames (px), default 240 x 320.
    max_episode_steps: time limit in control steps at 50 Hz (gym-aloha: 300; ACT rolls out 400).
    """

    task: str = "TransferCube"
    cameras: tuple[str, ...] = ()
    image_height: int = DEFAULT_IMAGE_SIZE[0]
    image_width: int = DEFAULT_IMAGE_SIZE[1]
    video_height: int = DEFAULT_VIDEO_HEIGHT
    video_width: int = DEFAULT_VIDEO_HEIGHT * 4 // 3
    max_episode_steps: int = ALOHA_MAX_STEPS

    def __post_init__(self):
        if self.task not in TASK_STRINGS:
            raise ValueError(f"unknown gym-aloha task {self.task!r}; supported: {sorted(TASK_STRINGS)}")
        object.__setattr__(self, "cameras", tuple(self.cameras))
        unknown = [c for c in self.cameras if c not in CAMERAS]
        if unknown:
            raise ValueError(f"unknown ALOHA camera(s) {unknown}; the scene has {list(CAMERAS)}")
        for name in ("image_height", "image_width", "video_height", "video_width"):
            if getattr(self, name) < 8:
                raise ValueError(f"{name} must be >= 8 pixels, got {getattr(self, name)}")
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")


def dataset_features(config: AlohaConfig, video: bool = False) -> dict[str, Feature]:
    """The recorded features: state, environment state, action and the configured cameras (H, W, 3)."""
    env_names = ENV_STATE_NAMES[config.task]
    feats = {
        STATE_KEY: Feature(STATE_KEY, "float32", (len(STATE_NAMES),), "state", names=list(STATE_NAMES)),
        ENV_STATE_KEY: Feature(ENV_STATE_KEY, "float32", (len(env_names),), "state", names=list(env_names)),
        ACTION_KEY: Feature(ACTION_KEY, "float32", (len(ACTION_NAMES),), "action", names=list(ACTION_NAMES)),
    }
    kind = "video" if video else "image"
    for cam in config.cameras:
        key = IMAGE_PREFIX + cam
        shape = (config.image_height, config.image_width, 3)
        feats[key] = Feature(key, kind, shape, kind, names=["height", "width", "channels"])
    return feats


def _import_gym_aloha():
    try:
        from gym_aloha import constants, utils
        from gym_aloha.tasks import sim
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return constants, utils, sim


def _quiet_task_class(task: str):
    """gym-aloha's task class for `task` with an observation of qpos and object poses only (no rendering)."""
    _, _, sim = _import_gym_aloha()
    base = sim.TransferCubeTask if task == "TransferCube" else sim.InsertionTask

    class _Task(base):
        def get_observation(self, physics):
            return {"qpos": self.get_qpos(physics), "env_state": self.get_env_state(physics)}

    _Task.__name__ = f"Quiet{base.__name__}"
    return _Task


class AlohaEnv:
    """One gym-aloha task with the gymnasium-style interface of robopolicy.sim.envs (numpy in, numpy out).

    reset(seed=..., options=...) -> (obs, info); step(action (14,)) -> (obs, reward, terminated, truncated, info)
    with info["is_success"] (reward == 4) and info["reward"]; render() -> uint8 (video_height, video_width, 3)
    from the "top" camera. obs = {dataset key: array} (see the module docstring). truncated is True at
    `max_episode_steps`; stepping further is allowed (the recorder does, to finish a scripted demonstration).
    """

    def __init__(self, config: AlohaConfig = AlohaConfig(), keys: Sequence[str] | None = None):
        if config.cameras:
            os.environ.setdefault("MUJOCO_GL", "egl")  # headless; before mujoco's GL is first used
        constants, utils, sim = _import_gym_aloha()
        from dm_control import mujoco as dm_mujoco
        from dm_control.rl import control

        self.config = config
        self.task_name = config.task
        self.task_description = TASK_STRINGS[config.task]
        self.task = self.task_description  # what recordings store as the episode's task
        self.fps = float(ALOHA_FPS)
        self.max_episode_steps = config.max_episode_steps
        self._sim_module = sim
        self._sample = utils.sample_box_pose if config.task == "TransferCube" else utils.sample_insertion_pose
        physics = dm_mujoco.Physics.from_xml_path(str(constants.ASSETS_DIR / _XML[config.task]))
        self._env = control.Environment(
            physics,
            _quiet_task_class(config.task)(),
            float("inf"),
            control_timestep=constants.DT,
            n_sub_steps=None,
            flat_observation=False,
        )
        self._keys = tuple(keys) if keys is not None else tuple(dataset_features(config))
        self._keys = tuple(k for k in self._keys if k != ACTION_KEY)
        self._rng = np.random.RandomState()
        self._t = 0
        self._raw: Mapping[str, Any] = {}

    @property
    def raw(self):
        """The dm_control `control.Environment` (its `.physics` is the MuJoCo model and data)."""
        return self._env

    @property
    def physics(self):
        return self._env.physics

    def dataset_features(self, video: bool = False) -> dict[str, Feature]:
        return dataset_features(self.config, video=video)

    def initial_poses(self, seed: int) -> np.ndarray:
        """gym-aloha's object pose(s) for `seed`: (7,) cube or (14,) peg then socket (xyz, quat wxyz)."""
        poses = self._sample(seed)
        return np.concatenate(poses) if isinstance(poses, tuple) else np.asarray(poses)

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.RandomState(seed)
        else:
            seed = int(self._rng.randint(2**31 - 1))
        self._sim_module.BOX_POSE[0] = self.initial_poses(seed)  # gym-aloha reads it in initialize_episode
        ts = self._env.reset()
        self._t = 0
        self._raw = ts.observation
        return self._observe(), {"is_success": False, "reward": 0.0, "seed": seed}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (len(ACTION_NAMES),):
            raise ValueError(f"ALOHA action must have shape ({len(ACTION_NAMES)},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"ALOHA action must be finite, got {action}")
        ts = self._env.step(action)
        self._t += 1
        self._raw = ts.observation
        reward = float(ts.reward)
        success = reward >= SUCCESS_REWARD
        truncated = self._t >= self.max_episode_steps and not success
        return self._observe(), reward, success, truncated, {"is_success": success, "reward": reward}

    def render(self) -> np.ndarray:
        c = self.config
        return self.physics.render(height=c.video_height, width=c.video_width, camera_id="top")

    def render_camera(self, camera: str, height: int | None = None, width: int | None = None) -> np.ndarray:
        """One camera's uint8 (H, W, 3) frame (default: the configured image size)."""
        h = height or self.config.image_height
        w = width or self.config.image_width
        return self.physics.render(height=h, width=w, camera_id=camera)

    def features(self) -> dict[str, np.ndarray]:
        """All configured features of the current state (state, environment state, cameras)."""
        out = {
            STATE_KEY: np.asarray(self._raw["qpos"], dtype=np.float32),
            ENV_STATE_KEY: np.asarray(self._raw["env_state"], dtype=np.float32),
        }
        for cam in self.config.cameras:
            out[IMAGE_PREFIX + cam] = np.ascontiguousarray(self.render_camera(cam), dtype=np.uint8)
        return out

    def _observe(self) -> dict[str, np.ndarray]:
        out = {
            STATE_KEY: np.asarray(self._raw["qpos"], dtype=np.float32),
            ENV_STATE_KEY: np.asarray(self._raw["env_state"], dtype=np.float32),
        }
        for key in self._keys:
            if key.startswith(IMAGE_PREFIX):
                out[key] = np.ascontiguousarray(self.render_camera(key[len(IMAGE_PREFIX) :]), dtype=np.uint8)
        return {k: out[k] for k in self._keys}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_aloha_env(
    spec: str | None = None,
    obs_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    task: str | None = None,
    video_size: int = 0,
):
    """An AlohaEnv providing a policy's observations: {key: shape} with images (3, H, W) (all cameras one size).

    `spec` "aloha:<Task>" or `task`; empty obs_shapes = low-dim (state + environment state).
    video_size: height of render() frames (width 4:3), 0 = default 240.
    """
    from robopolicy.sim.errors import EnvMismatchError

    task = parse_env_spec(spec) if spec is not None else (task or "TransferCube")
    shapes = {k: tuple(int(s) for s in v) for k, v in (obs_shapes or {}).items()}
    expected = {STATE_KEY: (len(STATE_NAMES),), ENV_STATE_KEY: (len(ENV_STATE_NAMES[task]),)}
    cameras, sizes = [], set()
    for key, shape in shapes.items():
        if key.startswith(IMAGE_PREFIX):
            if len(shape) != 3 or shape[0] != 3:
                raise EnvMismatchError(f"ALOHA camera {key!r} must be (3, H, W), the policy expects {shape}")
            cam = key[len(IMAGE_PREFIX) :]
            if cam not in CAMERAS:
                raise EnvMismatchError(f"ALOHA has no camera {cam!r} (policy key {key!r}); cameras: {list(CAMERAS)}")
            cameras.append(cam)
            sizes.add(shape[1:])
        elif key in expected:
            if shape != expected[key]:
                raise EnvMismatchError(f"ALOHA {task}: {key!r} has shape {expected[key]}, the policy expects {shape}")
        else:
            raise EnvMismatchError(
                f"ALOHA {task} cannot provide observation {key!r}; it provides {sorted(expected)} and "
                f"{IMAGE_PREFIX}<camera>"
            )
    if len(sizes) > 1:
        raise EnvMismatchError(f"AlohaEnv renders all cameras at one size; the policy asks for {sorted(sizes)}")
    h, w = sizes.pop() if sizes else DEFAULT_IMAGE_SIZE
    vh = int(video_size) or DEFAULT_VIDEO_HEIGHT
    config = AlohaConfig(
        task=task,
        cameras=tuple(cameras),
        image_height=h,
        image_width=w,
        video_height=vh,
        video_width=2 * round(vh * 2 / 3),
    )
    return AlohaEnv(config, keys=list(shapes) or None)
