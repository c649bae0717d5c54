"""Door expert: robosuite Door (Panda, default OSC_POSE controller, latched door with a lever handle).

Geometry (robosuite 1.5's door_lock.xml): the door panel turns about a vertical hinge (positive hinge_qpos
opens it towards the robot); a horizontal lever 0.10 m in front of the panel turns about the door normal
through the latch (positive handle_qpos pushes its free end down), and the door only opens once the lever is
down far enough to free the latch. robosuite observes door_pos (the door body), handle_pos (a site near the
lever's free end), hinge_qpos and handle_qpos (rad). At the first observation of an episode (door shut, lever
at rest) the expert gets the door's yaw from door_pos and handle_pos, hence the hinge and latch axes.

The hand grips the lever from the front: pointing horizontally at the door (along minus the door normal),
fingers closing vertically across the lever's 4 cm height (pointing down, the hand's 20 cm width along the
door normal would hit the panel). Phases (names from `robopolicy.sim.experts.PHASES`):

  reach    gripper open, turn to that orientation and move to the grip point; while the error across the
           normal is above `approach_radius` the target stands `standoff` m off the lever along the normal,
           then it closes in linearly with that error (the fingers come straight at the lever)
  grasp    within tolerance: hold and close the gripper until the fingers stop moving
  unlatch  move the grip point along the lever's circle about the latch axis (the hand rolling with the
           lever), pushing it down, until handle_qpos exceeds `unlatch_angle`
  open     keep the lever at `hold_lever` and pull the grip point along the door's circle about the hinge, the
           hand turning with the door, until the episode ends (robosuite: success once hinge_qpos > 0.3)

Each move is the saturated P-law towards a point `lead` rad ahead on the current circle (of the observed
angle), so the grip point follows the arc whatever the door and lever do; the switches depend on the
observed positions and angles only, so a demonstration is deterministic given the initial state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from robopolicy.sim.experts.control import (
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    FingerSettle,
    orientation_error,
    pose_action,
    saturated_p,
)

# door_lock.xml, in the door body's frame (m): the latch joint, the handle site relative to it, the hinge.
LATCH_IN_DOOR = np.array([-0.175, 0.0, -0.025])
HANDLE_IN_LATCH = np.array([0.125, -0.10, 0.0])
HINGE_IN_DOOR = np.array([0.255, 0.0, 0.0])


@dataclass(frozen=True)
class DoorExpertConfig:
    """Gains, tolerances and angles of the Door expert (m, rad, control steps)."""

    standoff: float = 0.08  # distance in front of the lever (along the door normal) while still off to the side
    approach_radius: float = 0.015  # below this error across the normal the standoff shrinks linearly to 0
    grip_inset: float = 0.02  # grip this far along the lever from the handle site towards the latch (m)
    grip_depth: float = 0.0  # grip-site offset along the door normal from the lever's axis (m, + = towards robot)
    grasp_tol: float = 0.008  # position error at which the gripper starts closing (m)
    grasp_tol_rot: float = 0.15  # orientation error at which the gripper starts closing (rad)
    min_grasp_steps: int = 3
    finger_settle: float = 5e-4
    max_grasp_steps: int = 15
    unlatch_angle: float = 1.3  # lever angle (rad) past which the expert pulls (the latch clears the frame at ~1.25)
    hold_lever: float = 1.4  # lever angle (rad) held while pulling (its range ends at 1.57)
    lead: float = 0.2  # the P-law target is this far (rad) ahead on the current circle
    pos_gain: float = 12.0
    max_action: float = 1.0
    arc_max_action: float = 0.6  # slower along the lever / door circles
    rot_gain: float = 3.0


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _scalar(x) -> float:
    return float(np.asarray(x, dtype=np.float64).reshape(-1)[0])


class DoorExpert:
    """The phase machine above. `reset()`, then `act(obs)` with the raw robosuite Door observation dict;
    returns a float32 (7,) OSC_POSE action in [-1, 1]; `phase` is the phase that chose it."""

    phases = ("reach", "grasp", "unlatch", "open")

    def __init__(self, config: DoorExpertConfig = DoorExpertConfig()):
        self.config = config
        self._settle = FingerSettle(config.min_grasp_steps, config.max_grasp_steps, config.finger_settle)
        self.reset()

    def reset(self) -> None:
        self.phase = "reach"
        self._door_yaw: float | None = None
        self._hinge = np.zeros(3)
        self._latch = np.zeros(3)
        self._anchor = np.zeros(3)
        self._settle.reset()

    # ----- geometry -------------------------------------------------------------------------------------
    def _learn_geometry(self, obs: Mapping[str, Any]) -> None:
        """Door yaw, hinge and latch axis points (world) from the shut door's door_pos and handle_pos."""
        door = np.asarray(obs["door_pos"], dtype=np.float64)
        d = np.asarray(obs["handle_pos"], dtype=np.float64) - door
        local = LATCH_IN_DOOR + HANDLE_IN_LATCH  # the handle site in the door frame, lever at rest
        self._door_yaw = float(np.arctan2(d[1], d[0]) - np.arctan2(local[1], local[0]))
        rot = _rot_z(self._door_yaw)
        self._hinge = door + rot @ HINGE_IN_DOOR
        self._latch = door + rot @ LATCH_IN_DOOR

    def _door_rot(self, hinge: float) -> np.ndarray:
        """The door body's rotation (world) with the door turned `hinge` rad."""
        return _rot_z(self._door_yaw + hinge)

    def lever_point(self, hinge: float, lever: float) -> np.ndarray:
        """The grip point (world, m) with the door at `hinge` and the lever at `lever` rad."""
        c = self.config
        latch = self._hinge + _rot_z(hinge) @ (self._latch - self._hinge)
        radius = float(HANDLE_IN_LATCH[0]) - c.grip_inset
        local = np.array([radius * np.cos(lever), float(HANDLE_IN_LATCH[1]) - c.grip_depth, -radius * np.sin(lever)])
        return latch + self._door_rot(hinge) @ local

    def grip_quat(self, hinge: float, lever: float) -> np.ndarray:
        """Hand orientation (xyzw): pointing at the door, fingers closing vertically, rolled with the lever."""
        rot = self._door_rot(hinge)
        approach = rot @ np.array([0.0, 1.0, 0.0])  # minus the door normal: from the robot side into the panel
        closing = np.array([0.0, 0.0, -1.0])
        frame = np.stack([closing, np.cross(approach, closing), approach], axis=1)  # site x, y, z columns
        # the lever turns about the door body's +y axis (= the approach axis) by `lever`
        roll = Rotation.from_rotvec(approach * lever)
        return (roll * Rotation.from_matrix(frame)).as_quat()

    # ----- control --------------------------------------------------------------------------------------
    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        c = self.config
        if self._door_yaw is None:
            self._learn_geometry(obs)
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        quat = np.asarray(obs["robot0_eef_quat_site"], dtype=np.float64)
        fingers = np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64)
        hinge, lever = _scalar(obs["hinge_qpos"]), _scalar(obs["handle_qpos"])

        if self.phase == "reach":
            err = self.lever_point(hinge, lever) - eef
            rot_err = float(np.linalg.norm(orientation_error(self.grip_quat(hinge, lever), quat)))
            if np.linalg.norm(err) < c.grasp_tol and rot_err < c.grasp_tol_rot:
                self.phase, self._anchor = "grasp", eef.copy()
                self._settle.reset()
        if self.phase == "grasp" and self._settle.update(fingers):
            self.phase = "unlatch"
        if self.phase == "unlatch" and lever > c.unlatch_angle:
            self.phase = "open"

        target_quat = self.grip_quat(hinge, lever)
        if self.phase == "reach":
            grip = self.lever_point(hinge, lever)
            normal = -(self._door_rot(hinge) @ np.array([0.0, 1.0, 0.0]))
            err = grip - eef
            across = float(np.linalg.norm(err - np.dot(err, normal) * normal))
            target = grip + normal * c.standoff * min(1.0, across / c.approach_radius)
            pos, gripper = saturated_p(target - eef, c.pos_gain, c.max_action), GRIPPER_OPEN
        elif self.phase == "grasp":
            pos, gripper = saturated_p(self._anchor - eef, c.pos_gain, c.max_action), GRIPPER_CLOSE
        elif self.phase == "unlatch":
            target = self.lever_point(hinge, lever + c.lead)
            target_quat = self.grip_quat(hinge, lever + c.lead)
            pos, gripper = saturated_p(target - eef, c.pos_gain, c.arc_max_action), GRIPPER_CLOSE
        else:
            held = max(lever, c.hold_lever)
            target = self.lever_point(hinge + c.lead, c.hold_lever)
            target_quat = self.grip_quat(hinge + c.lead, held)
            pos, gripper = saturated_p(target - eef, c.pos_gain, c.arc_max_action), GRIPPER_CLOSE
        return pose_action(pos, target_quat, quat, c.rot_gain, gripper)
