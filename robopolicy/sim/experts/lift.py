"""Scripted experts that drive robosuite tasks from privileged observations.

`LiftExpert` (robosuite Lift, Panda, default OSC_POSE controller) goes through three phases:

  reach  gripper open, move towards the grasp point (cube centre, 1 cm lower); while the x/y error is above
         `descend_xy_radius` the target hovers `hover` m higher, then it drops linearly with the x/y error,
         so the gripper comes in from above in one smooth motion
  grasp  once within `grasp_tol_xy` / `grasp_tol_z` of the grasp point: hold that position and close the
         gripper until the fingers stop moving (at least `min_grasp_steps`, at most `max_grasp_steps`)
  lift   gripper closed, raise the end effector `lift_height` m above where it grasped

The position command is a saturated proportional law, a = gain * error with the xyz vector's norm capped at
`max_action` (straight-line, constant-speed moves that slow down smoothly near the target); orientation is
held at "gripper pointing straight down" by the same kind of law on the axis-angle error. Phase switches
depend only on what the observation shows (positions, finger motion; `max_grasp_steps` is only a safety cap), so the
demonstrations are deterministic given the initial state and unimodal: one way of doing the task, with the
action a function of the recent observations, which is what makes them easy to imitate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from robopolicy.sim.experts.control import DOWN_QUAT_XYZW, pose_action, saturated_p


@dataclass(frozen=True)
class LiftExpertConfig:
    """Gains and waypoints of the Lift expert (distances in m, gains in action units per m or per rad)."""

    hover: float = 0.06  # height above the grasp point while still far from the cube in x/y
    descend_xy_radius: float = 0.015  # below this x/y error the hover height shrinks linearly to 0
    grasp_z_offset: float = -0.01  # grip-site height relative to the cube centre when closing
    grasp_tol_xy: float = 0.008  # x/y error at which the gripper starts closing
    grasp_tol_z: float = 0.01  # z error at which the gripper starts closing
    min_grasp_steps: int = 3  # close for at least this many steps ...
    finger_settle: float = 5e-4  # ... until no finger moved more than this (m) in one step ...
    max_grasp_steps: int = 15  # ... or at most this many steps
    lift_height: float = 0.12  # how far to raise the end effector after grasping
    pos_gain: float = 12.0  # action per metre of position error
    max_action: float = 1.0  # cap on the xyz action norm (1.0 = 0.25 m/s at the default OSC scale)
    rot_gain: float = 3.0  # action per radian of orientation error


class LiftExpert:
    """Scripted Lift policy: call `reset()` at the start of an episode, then `act(obs)` every step; `phase` is
    the phase ("reach", "grasp", "lift") that chose the last action.

    obs: the raw robosuite observation dict (uses robot0_eef_pos, robot0_eef_quat_site, robot0_gripper_qpos,
    cube_pos). Returns a float32 (7,) action in [-1, 1]: OSC_POSE deltas (dx, dy, dz, drx, dry, drz) and the
    gripper command (-1 open, +1 close).
    """

    phases = ("reach", "grasp", "lift")

    def __init__(self, config: LiftExpertConfig = LiftExpertConfig()):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.phase = "reach"
        self._grasp_count = 0
        self._hold = np.zeros(3)
        self._last_fingers: np.ndarray | None = None

    def _move(self, eef: np.ndarray, target: np.ndarray) -> np.ndarray:
        return saturated_p(target - eef, self.config.pos_gain, self.config.max_action)

    def reach_target(self, eef: np.ndarray, cube: np.ndarray) -> np.ndarray:
        """Where to move while reaching: `hover` above the grasp point, lowered as the x/y error shrinks."""
        c = self.config
        xy_error = float(np.linalg.norm(cube[:2] - eef[:2]))
        above = c.hover * min(1.0, xy_error / c.descend_xy_radius)
        return cube + np.array([0.0, 0.0, c.grasp_z_offset + above])

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        c = self.config
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        cube = np.asarray(obs["cube_pos"], dtype=np.float64)
        fingers = np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64)

        if self.phase == "reach":
            err = cube + np.array([0.0, 0.0, c.grasp_z_offset]) - eef
            if np.linalg.norm(err[:2]) < c.grasp_tol_xy and abs(err[2]) < c.grasp_tol_z:
                self.phase = "grasp"
                self._hold = eef.copy()
        if self.phase == "grasp":
            settled = (
                self._last_fingers is not None and float(np.max(np.abs(fingers - self._last_fingers))) < c.finger_settle
            )
            if (self._grasp_count >= c.min_grasp_steps and settled) or self._grasp_count >= c.max_grasp_steps:
                self.phase = "lift"
        self._last_fingers = fingers

        if self.phase == "reach":
            pos, gripper = self._move(eef, self.reach_target(eef, cube)), -1.0
        elif self.phase == "grasp":
            self._grasp_count += 1
            pos, gripper = self._move(eef, self._hold), 1.0
        else:
            pos, gripper = self._move(eef, self._hold + np.array([0.0, 0.0, c.lift_height])), 1.0

        quat = np.asarray(obs["robot0_eef_quat_site"], dtype=np.float64)
        return pose_action(pos, DOWN_QUAT_XYZW, quat, c.rot_gain, gripper)
