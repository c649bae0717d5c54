"""PushT (gym-pusht 0.1.x) with the observation keys of the real PushT datasets.

The policy names what it needs as {dataset key: shape} (images as (C, H, W)); the adapter provides:

| key | shape | what | dataset |
|---|---|---|---|
| `state` | (5,) | agent x, y, block x, y, angle in [0, 2*pi) (gym-pusht obs_type="state") | diffusion-policy zarr |
| `keypoint` | (9, 2) or (18,) | the zarr's 9 block keypoints, x, y each (see below) | diffusion-policy zarr |
| `img`, `image` | (3, H, W) | top-down render, uint8 (96 x 96 in the data) | diffusion-policy zarr |
| `observation.state` | (2,) | agent x, y (LeRobot lerobot/pusht) | LeRobot |
| `observation.state` | (5,) | as `state` (a zarr converted with `robopolicy convert`) | converted zarr |
| `observation.image` | (3, H, W) | as `img` | LeRobot |
| `observation.environment_state` | (16,) | gym-pusht's 8 T corners, x, y each | lerobot/pusht_keypoints |

Positions are pixels of the 512 x 512 workspace; the action is the agent's target position (x, y).

Keypoints: diffusion_policy's recorder placed 9 points on the block (sampled once, in the block's frame) and
stored their world positions, `keypoint = R(angle) @ p_local + block position`. `ZARR_KEYPOINTS_LOCAL` holds
those 9 points, recovered from pusht_cchi_v7_replay.zarr by inverting that transform on every frame: 92% of the
25,650 frames agree within 0.01 px (the median within 2e-5 px); the others are frames where the block is moving,
whose recorded state and keypoints were taken at slightly different moments (up to 2 px apart).

Resetting to a recorded state: gym-pusht's `options={"reset_to_state": s}` keeps the legacy order of setting the
block position and then its angle, which rotates the block about its centre of gravity (0, 45) in the block
frame, so the block does not land at s[2:4] (up to 90 px off). `reset(options={"exact_state": s})` compensates
so the block lands exactly at the recorded pose; then keypoints and the 96 x 96 image match the zarr's, and
replaying an episode's recorded actions reproduces its recorded states exactly (204 of the 206 episodes within
1e-3 px over the whole episode). Under gym-pusht's criterion the demonstrations themselves reach a mean max
coverage of 0.90 (mean max reward 0.947) and only 3.4% of them exceed 0.95 coverage before they end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from robopolicy.sim.errors import EnvMismatchError

PUSHT_FPS = 10
PUSHT_MAX_STEPS = 300
# the instruction LeRobot's PushT dataset stores as every episode's task
TASK_STRINGS = {"PushT": "Push the T-shaped block onto the T-shaped target."}
SUCCESS_COVERAGE = 0.95  # gym-pusht: success when coverage > 0.95 (reward = clip(coverage / 0.95, 0, 1))
ACTION_DIM = 2

# The block's centre of gravity in its own frame (gym-pusht: the mean of the two rectangles' centroids).
BLOCK_COG_LOCAL = np.array([0.0, 45.0])

# diffusion_policy's 9 block keypoints in the block frame (px), recovered from the zarr (module docstring).
ZARR_KEYPOINTS_LOCAL = np.array(
    [
        [9.2698, 90.0410],
        [-60.9835, -1.1867],
        [60.9128, -1.3933],
        [-0.2705, 25.5437],
        [-14.0650, 122.8159],
        [39.0027, 32.8574],
        [-39.9664, 32.7297],
        [-16.8243, 62.8632],
        [23.5415, -1.7003],
    ]
)

# gym-pusht's `environment_state`: the vertices of the T's two rectangles in pymunk's order (block frame, px).
TEE_CORNERS_LOCAL = np.array(
    [[-60, 0], [60, 0], [60, 30], [-60, 30], [-15, 30], [15, 30], [15, 120], [-15, 120]], dtype=np.float64
)

GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])  # gym-pusht's fixed goal: x, y (px), angle (rad)

STATE_KEYS = ("state",)
KEYPOINT_KEYS = ("keypoint",)
IMAGE_KEYS = ("img", "image", "observation.image")
LEROBOT_STATE_KEY = "observation.state"
LEROBOT_ENV_STATE_KEY = "observation.environment_state"


def _rotate(points: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate points (..., K, 2) by angle (...) radians (counter-clockwise in pymunk's frame)."""
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    x, y = points[..., 0], points[..., 1]
    return np.stack([c * x - s * y, s * x + c * y], axis=-1)


def block_points(block_pose: np.ndarray, local: np.ndarray) -> np.ndarray:
    """World positions (..., K, 2) of block-frame points `local` (K, 2) for poses (..., 3) = x, y, angle."""
    pose = np.asarray(block_pose, dtype=np.float64)
    return _rotate(np.broadcast_to(local, (*pose.shape[:-1], *local.shape)), pose[..., 2]) + pose[..., None, :2]


def zarr_keypoints(block_pose: np.ndarray) -> np.ndarray:
    """The zarr's 9 keypoints (..., 9, 2) for block poses (..., 3)."""
    return block_points(block_pose, ZARR_KEYPOINTS_LOCAL)


def block_coverage(block_pose: np.ndarray) -> np.ndarray:
    """gym-pusht's coverage (...,) in [0, 1]: area of the T at `block_pose` (..., 3) inside the goal T / goal area.

    The same polygons and the same shapely intersection as gym-pusht's `_get_coverage`, vectorised over poses;
    the union of each T's two rectangles is a sum because they share only an edge. Needs shapely (a gym-pusht
    dependency).
    """
    try:
        import shapely
    except ImportError as e:
        raise ImportError(f"PushT coverage needs shapely ({e}): `pip install 'robopolicy[sim]'`") from None
    pose = np.asarray(block_pose, dtype=np.float64)
    batch = pose.shape[:-1]
    block = block_points(pose.reshape(-1, 3), TEE_CORNERS_LOCAL).reshape(-1, 2, 4, 2)
    goal = block_points(GOAL_POSE, TEE_CORNERS_LOCAL).reshape(2, 4, 2)
    goal_rects = [shapely.polygons(g) for g in goal]
    inside = sum(
        shapely.area(shapely.intersection(shapely.polygons(block[:, r]), g)) for r in range(2) for g in goal_rects
    )
    return (inside / sum(shapely.area(g) for g in goal_rects)).reshape(batch)


def legacy_reset_state(state: np.ndarray) -> np.ndarray:
    """The gym-pusht `reset_to_state` argument that puts the block exactly at state[2:4] with angle state[4]."""
    state = np.asarray(state, dtype=np.float64).copy()
    angle = state[4]
    state[2:4] = state[2:4] - BLOCK_COG_LOCAL + _rotate(BLOCK_COG_LOCAL[None], np.asarray(angle))[0]
    return state


def _image_hw(key: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 3 or shape[0] != 3:
        raise EnvMismatchError(f"PushT image {key!r} must have shape (3, H, W), the policy expects {shape}")
    return int(shape[1]), int(shape[2])


def resolve_observation(key: str, shape: Sequence[int]) -> str:
    """Which observation the adapter computes for a requested (key, shape); raises with the supported list."""
    shape = tuple(int(s) for s in shape)
    table = {
        ("state", (5,)): "state",
        (LEROBOT_STATE_KEY, (5,)): "state",
        (LEROBOT_STATE_KEY, (2,)): "agent_pos",
        ("keypoint", (9, 2)): "keypoint",
        ("keypoint", (18,)): "keypoint_flat",
        (LEROBOT_ENV_STATE_KEY, (16,)): "tee_corners",
    }
    if (key, shape) in table:
        return table[(key, shape)]
    if key in IMAGE_KEYS:
        _image_hw(key, shape)
        return "image"
    supported = [f"{k} {s}" for k, s in table] + [f"{k} (3, H, W)" for k in IMAGE_KEYS]
    raise EnvMismatchError(
        f"PushT cannot provide observation {key!r} with shape {shape}; it provides: {', '.join(supported)}"
    )


class PushTEnv:
    """gym-pusht's PushT-v0 with dataset-keyed observations, gymnasium-style.

    obs_shapes: {dataset key: shape the policy expects} (see the module table); images (3, H, W), all images
    must share one size. video_size: side of the frames `render()` returns (the action is drawn as a cross).

    reset(seed=None, options=None) -> (obs, info); options {"exact_state": s (5,)} places agent and block
    exactly at a recorded zarr state, {"reset_to_state": s} is gym-pusht's legacy reset; {"video": True} is
    accepted (as by every eval env) and changes nothing.
    step(action (2,)) -> (obs, reward, terminated, truncated, info); reward = clip(coverage / 0.95, 0, 1),
    terminated = info["is_success"] = coverage > 0.95, info["coverage"]. Never truncates (the caller counts).
    obs values are numpy: states float32, keypoint float32, images uint8 (H, W, 3).
    """

    fps = PUSHT_FPS
    max_episode_steps = PUSHT_MAX_STEPS

    def __init__(self, obs_shapes: Mapping[str, Sequence[int]] | None = None, video_size: int = 384):
        try:
            from gym_pusht.envs.pusht import PushTEnv as GymPushT
        except ImportError as e:
            raise ImportError(
                f"PushT needs gym-pusht ({e}); install it with `pip install 'gym-pusht>=0.1.8,<0.2'`"
            ) from None
        from gymnasium import spaces

        obs_shapes = dict(obs_shapes) if obs_shapes is not None else {"state": (5,), "keypoint": (9, 2)}
        self.obs_shapes = {k: tuple(int(s) for s in v) for k, v in obs_shapes.items()}
        self._sources = {k: resolve_observation(k, s) for k, s in self.obs_shapes.items()}
        sizes = {_image_hw(k, s) for k, s in self.obs_shapes.items() if self._sources[k] == "image"}
        if len(sizes) > 1:
            raise EnvMismatchError(f"PushT renders one image size per env, the policy asks for {sorted(sizes)}")
        h, w = sizes.pop() if sizes else (96, 96)
        self._env = GymPushT(
            obs_type="state",
            render_mode="rgb_array",
            observation_width=w,
            observation_height=h,
            visualization_width=video_size,
            visualization_height=video_size,
        )
        self.action_space = self._env.action_space
        obs_spaces = {}
        for key, src in self._sources.items():
            if src == "image":
                obs_spaces[key] = spaces.Box(0, 255, (h, w, 3), np.uint8)
            else:
                obs_spaces[key] = spaces.Box(-np.inf, np.inf, self.obs_shapes[key], np.float32)
        self.observation_space = spaces.Dict(obs_spaces)

    @property
    def unwrapped(self):
        """The gym-pusht environment."""
        return self._env

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        options = dict(options or {})
        options.pop("video", None)  # rendering is always available (pygame, cheap)
        if "exact_state" in options:
            options["reset_to_state"] = legacy_reset_state(options.pop("exact_state"))
        state, info = self._env.reset(seed=seed, options=options or None)
        info = dict(info, is_success=False)
        return self._observe(state), info

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(f"PushT action must be 2 finite numbers (target x, y in px), got {action}")
        state, reward, terminated, truncated, info = self._env.step(action)
        return self._observe(state), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray:
        """An RGB frame (video_size, video_size, 3) uint8 with the last action marked."""
        return self._env.render()

    def close(self) -> None:
        self._env.close()

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        state = np.asarray(state, dtype=np.float64)
        out: dict[str, np.ndarray] = {}
        image = None
        for key, src in self._sources.items():
            if src == "state":
                value = state
            elif src == "agent_pos":
                value = state[:2]
            elif src in ("keypoint", "keypoint_flat"):
                value = zarr_keypoints(state[2:5])
                value = value.reshape(-1) if src == "keypoint_flat" else value
            elif src == "tee_corners":
                value = block_points(state[2:5], TEE_CORNERS_LOCAL).reshape(-1)
            else:
                if image is None:
                    # gym-pusht's observation render (no action marker), as obs_type="pixels" does.
                    image = np.ascontiguousarray(self._env._render(visualize=False), dtype=np.uint8)
                out[key] = image
                continue
            out[key] = np.asarray(value, dtype=np.float32)
        return out
