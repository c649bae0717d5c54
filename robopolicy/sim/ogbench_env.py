"""OGBench manipulation, single-task (ogbench 1.2.2 on PyPI): "ogbench:cube-single-task2", "ogbench:cube-double-task1".

The environment is OGBench's own `<family>-singletask-task<n>-v0` (a UR5e with a Robotiq gripper, MuJoCo, 0.05 s
control step = 20 Hz; 200 steps for cube-single, 500 for cube-double), built through gymnasium as OGBench's
`make_env_and_datasets` builds it. Its conventions are kept: reward = #cubes at their goal - #cubes (0 at the
goal, -1 before), success and reward describe the state *before* the action (success_timing 'pre'), the episode
terminates at the goal; a cube is at its goal within 0.04 m.

Observation {"observation.state": (28,) float32 for cube-single} = OGBench's state vector (joint positions and
velocities, scaled effector xyz, effector yaw cos/sin, gripper opening and contact, then per cube scaled xyz,
quaternion and yaw cos/sin). Action (5,) in [-1, 1]: effector dx, dy, dz, dyaw and gripper, which OGBench scales
to 0.05 m, 0.05 m, 0.05 m, 0.3 rad and 1.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from robopolicy.sim.errors import EnvMismatchError

STATE_KEY = "observation.state"
ACTION_KEY = "action"
ACTION_DIM = 5
OGBENCH_FPS = 20  # 1 / control_timestep (0.05 s)
FAMILIES = {"cube-single": (200, 28), "cube-double": (500, 37)}  # max episode steps, state size
NUM_TASKS = 5
TASK_STRINGS = {  # the instruction stored with every episode of a task (OGBench's task names, spelled out)
    f"{family}-task{n}": f"move the cube{'s' if family == 'cube-double' else ''} to the goal ({name})"
    for family in FAMILIES
    for n, name in enumerate(("horizontal", "vertical 1", "vertical 2", "diagonal 1", "diagonal 2"), start=1)
}
_TASK = re.compile(r"^(?P<family>[a-z-]+)-task(?P<n>\d+)$")


def parse_env_spec(spec: str) -> str:
    """"ogbench:cube-single-task2" -> "cube-single-task2"; a ValueError naming the supported tasks otherwise."""
    from robopolicy.sim.envs import backend_task

    return backend_task(spec, "ogbench", TASK_STRINGS, "cube-single-task2")


def task_parts(task: str) -> tuple[str, int]:
    """"cube-single-task2" -> ("cube-single", 2)."""
    m = _TASK.match(task)
    if m is None or m["family"] not in FAMILIES or not 1 <= int(m["n"]) <= NUM_TASKS:
        raise ValueError(f"unknown OGBench task {task!r}; supported: {sorted(TASK_STRINGS)}")
    return m["family"], int(m["n"])


def gym_id(task: str) -> str:
    """OGBench's gymnasium id of a task: "cube-single-task2" -> "cube-single-singletask-task2-v0"."""
    family, n = task_parts(task)
    return f"{family}-singletask-task{n}-v0"


def _import_ogbench():
    os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is first imported (videos render offscreen)
    try:
        import gymnasium
        import ogbench.manipspace  # noqa: F401  (registers the environments)
    except ImportError as e:
        raise ImportError(f"OGBench environments need `pip install ogbench` (robopolicy[sim]): {e}") from e
    return gymnasium


class OGBenchEnv:
    """One OGBench single-task environment with robopolicy's gymnasium-style interface (robopolicy.sim.envs).

    obs_shapes: the policy's keys ({"observation.state": (28,)}); empty = that one. video_size > 0: `render()`
    returns OGBench's front camera at video_size x video_size.
    """

    def __init__(self, task: str = "cube-single-task2", obs_shapes: Mapping[str, Sequence[int]] | None = None,
                 video_size: int = 0):
        family, _ = task_parts(task)
        self.task = task
        self.max_episode_steps, state_dim = FAMILIES[family]
        for key, shape in (obs_shapes or {}).items():
            if key != STATE_KEY:
                raise EnvMismatchError(f"OGBench {task} cannot provide observation {key!r}; it provides {STATE_KEY!r}")
            if tuple(int(s) for s in shape) != (state_dim,):
                raise EnvMismatchError(f"OGBench {task}: {STATE_KEY!r} has shape ({state_dim},), the policy "
                                       f"expects {tuple(shape)}")
        gymnasium = _import_ogbench()
        size = int(video_size) or 200
        self._env = gymnasium.make(gym_id(task), width=size, height=size)
        self.fps = float(OGBENCH_FPS)
        self.task_description = TASK_STRINGS[task]
        self.video_size = int(video_size)

    @property
    def raw(self):
        """OGBench's environment (the gymnasium TimeLimit wrapper's inner env is `raw.unwrapped`)."""
        return self._env

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        ob, info = self._env.reset(seed=seed)
        return self._observe(ob), {"is_success": bool(info.get("success", False))}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(f"OGBench action must be {ACTION_DIM} finite values, got {action}")
        ob, reward, terminated, truncated, info = self._env.step(np.clip(action, -1.0, 1.0))
        success = bool(info["success"])
        return self._observe(ob), float(reward), bool(terminated), bool(truncated), {"is_success": success}

    def render(self) -> np.ndarray:
        return np.ascontiguousarray(self._env.unwrapped.render())

    def close(self) -> None:
        renderer = getattr(self._env.unwrapped, "_renderer", None)
        if renderer is not None:  # OGBench leaves its offscreen renderer to the garbage collector (EGL noise)
            renderer.close()
            self._env.unwrapped._renderer = None
        self._env.close()

    @staticmethod
    def _observe(ob) -> dict[str, np.ndarray]:
        return {STATE_KEY: np.asarray(ob, dtype=np.float32)}
