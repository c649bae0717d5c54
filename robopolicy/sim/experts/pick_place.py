"""Pick-and-place experts: one phase machine, three robosuite tasks (Stack, PickPlaceCan, NutAssemblyRound).

Phases (names from `robopolicy.sim.experts.PHASES`), each switched by what the observation shows:

  reach    gripper open, move the grip site to the task's grasp point with the grasp yaw; while the x/y error
           is above `descend_xy_radius` (or the orientation error above `descend_rot_radius`) the target hovers
           `hover` m higher, then it drops linearly with the larger of the two relative errors (the gripper comes
           in from above in one smooth motion, already turned)
  grasp    within `grasp_tol_xy` / `grasp_tol_z` of the grasp point: hold there and close the gripper until the
           fingers stop moving (at least `min_grasp_steps`, at most `max_grasp_steps`)
  lift     gripper closed, raise until the held object's reference point is at `carry_z`
  move     carry it at `carry_z` until its x/y is within `move_tol_xy` of the goal, it has come to rest
           (`settle_speed`) and the hand has turned to its carrying yaw (see `carry_yaw`)
  place    lower it onto the goal (x/y corrected first: the descent stops while the x/y error exceeds twice
           `move_tol_xy`) until it is within `place_tol_z` above the goal height,
           or it has stopped descending for `stall_steps` steps while descent was commanded (it rests on
           something)
  release  hold still and open the gripper until the fingers stop moving
  retreat  gripper open, rise `retreat_height` m above where it let go

Every move is the saturated P-law of `control.saturated_p` on a position error: the grip site's during reach,
grasp and retreat, the held object's (goal - object, applied to the end effector) during lift, move and place;
the orientation is held pointing down at the grasp yaw. So the demonstrations are deterministic given the
initial state. Fixed scene parts that robosuite does not observe (bin and peg positions) are config defaults
equal to robosuite 1.5's; tests check them against the simulation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from robopolicy.sim.experts.control import (
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    FingerSettle,
    down_quat,
    orientation_error,
    pose_action,
    saturated_p,
    wrap_symmetric,
    yaw_of,
)


@dataclass(frozen=True)
class PickPlaceConfig:
    """Gains, tolerances and heights of the pick-and-place phase machine (m, rad, control steps)."""

    hover: float = 0.06  # height above the grasp point while still far from it in x/y
    descend_xy_radius: float = 0.015  # below this x/y error the hover height shrinks linearly to 0 ...
    descend_rot_radius: float = 0.1  # ... once the orientation error (rad) is below this too
    grasp_tol_xy: float = 0.006  # x/y error at which the gripper starts closing
    grasp_tol_z: float = 0.01  # z error at which the gripper starts closing
    grasp_tol_yaw: float = 0.15  # yaw error (rad) at which the gripper starts closing
    min_grasp_steps: int = 3  # close for at least this many steps ...
    finger_settle: float = 5e-4  # ... until no finger moved more than this (m) in one step ...
    max_grasp_steps: int = 15  # ... or at most this many steps (also bounds release)
    carry_z: float = 1.0  # height of the held object's reference point while moving (m, world)
    lift_tol: float = 0.01  # lift ends this close below carry_z
    move_tol_xy: float = 0.005  # move ends this close to the goal in x/y ...
    carry_tol_rot: float = 0.05  # ... with the hand this close (rad) to its carrying orientation ...
    settle_speed: float = 0.002  # ... and the object moving less than this in x/y (m per step)
    place_tol_z: float = 0.005  # place ends this close above the goal height ...
    stall_steps: int = 5  # ... or after this many steps without descending more than `stall_dz`
    stall_dz: float = 5e-4
    retreat_height: float = 0.1  # rise this far after letting go
    pos_gain: float = 12.0  # action per metre of position error
    max_action: float = 1.0  # cap on the xyz action norm (1.0 = 0.25 m/s at the default OSC scale)
    carry_max_action: float = 1.0  # cap on the xyz action norm while holding the object
    place_max_action: float = 0.5  # cap on the descent while lowering onto the goal
    rot_gain: float = 3.0  # action per radian of orientation error
    carry_rot_max: float = 0.3  # cap on each rotation action while holding the object (0.15 rad per step)


class PickPlaceExpert:
    """The phase machine above; a task subclass says where to grasp, what it carries and where it goes.

    `reset()` at the start of an episode, then `act(obs)` every step with the raw robosuite observation dict;
    returns a float32 (7,) OSC_POSE action in [-1, 1]. `phase` is the current phase name (after `act`: the phase
    that chose the returned action).
    """

    phases = ("reach", "grasp", "lift", "move", "place", "release", "retreat")

    def __init__(self, config: PickPlaceConfig):
        self.config = config
        self._settle = FingerSettle(config.min_grasp_steps, config.max_grasp_steps, config.finger_settle)
        self.reset()

    # ----- what a task defines --------------------------------------------------------------------------
    def grasp_pose(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, float]:
        """(grip-site position (3,) m, gripper yaw rad) to close the fingers at."""
        raise NotImplementedError

    def held_point(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The reference point (3,) of the grasped object that is carried to `goal`."""
        raise NotImplementedError

    def goal(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Where `held_point` is released (3,) m."""
        raise NotImplementedError

    def carry_yaw(self, obs: Mapping[str, Any], grasp_yaw: float) -> float:
        """Gripper yaw (rad) while carrying (lift, move, place), decided at the grasp; default: the grasp yaw."""
        return grasp_yaw

    def carry_height(self, obs: Mapping[str, Any]) -> float:
        """Height (m) of `held_point` during lift and move; `config.carry_z` unless the task says otherwise."""
        return self.config.carry_z

    # ----- the phase machine ----------------------------------------------------------------------------
    def reset(self) -> None:
        self.phase = "reach"
        self._anchor = np.zeros(3)  # grip-site position held in grasp / release, base of retreat
        self._yaw = 0.0  # gripper yaw held from the grasp on
        self._lowest = np.inf
        self._stalled = 0
        self._last_held: np.ndarray | None = None
        self._settle.reset()

    def _reach_target(self, eef: np.ndarray, grasp: np.ndarray, rot_error: float) -> np.ndarray:
        c = self.config
        xy_error = float(np.linalg.norm(grasp[:2] - eef[:2]))
        # stay up while either the x/y or the orientation error is large (a turning hand sweeps its fingers)
        up = max(xy_error / c.descend_xy_radius, rot_error / c.descend_rot_radius)
        return grasp + np.array([0.0, 0.0, c.hover * min(1.0, up)])

    def _switch(self, obs: Mapping[str, Any], eef: np.ndarray, quat: np.ndarray, fingers: np.ndarray) -> None:
        """Advance the phase as far as the observation allows (at most one switch per phase per step)."""
        c = self.config
        if self.phase == "reach":
            grasp, yaw = self.grasp_pose(obs)
            err = grasp - eef
            yaw_err = float(np.linalg.norm(orientation_error(down_quat(yaw), quat)))
            if np.linalg.norm(err[:2]) < c.grasp_tol_xy and abs(err[2]) < c.grasp_tol_z and yaw_err < c.grasp_tol_yaw:
                self.phase, self._anchor, self._yaw = "grasp", eef.copy(), yaw
                self._settle.reset()
        if self.phase == "grasp" and self._settle.update(fingers):
            self.phase, self._yaw = "lift", self.carry_yaw(obs, self._yaw)
        if self.phase == "lift" and self.held_point(obs)[2] > self.carry_height(obs) - c.lift_tol:
            self.phase = "move"
        held = self.held_point(obs)
        speed = np.inf if self._last_held is None else float(np.linalg.norm(held[:2] - self._last_held[:2]))
        self._last_held = held.copy()
        if (
            self.phase == "move"
            and np.linalg.norm(self.goal(obs)[:2] - held[:2]) < c.move_tol_xy
            and speed < c.settle_speed
            and np.linalg.norm(orientation_error(down_quat(self._yaw), quat)) < c.carry_tol_rot
        ):
            self.phase, self._lowest, self._stalled = "place", np.inf, 0
        if self.phase == "place":
            z = float(held[2])
            descending = np.linalg.norm(self.goal(obs)[:2] - held[:2]) < 2.0 * c.move_tol_xy
            if z < self._lowest - c.stall_dz or not descending:
                self._lowest, self._stalled = min(z, self._lowest), 0
            else:
                self._stalled += 1
            if z < self.goal(obs)[2] + c.place_tol_z or self._stalled >= c.stall_steps:
                self.phase, self._anchor = "release", eef.copy()
                self._settle.reset()
        if self.phase == "release" and self._settle.update(fingers):
            self.phase = "retreat"

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        c = self.config
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        quat = np.asarray(obs["robot0_eef_quat_site"], dtype=np.float64)
        fingers = np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64)
        self._switch(obs, eef, quat, fingers)

        yaw = self._yaw
        if self.phase == "reach":
            grasp, yaw = self.grasp_pose(obs)
            rot_error = float(np.linalg.norm(orientation_error(down_quat(yaw), quat)))
            target = self._reach_target(eef, grasp, rot_error)
            pos, gripper = saturated_p(target - eef, c.pos_gain, c.max_action), GRIPPER_OPEN
        elif self.phase == "grasp":
            pos, gripper = saturated_p(self._anchor - eef, c.pos_gain, c.max_action), GRIPPER_CLOSE
        elif self.phase in ("lift", "move", "place"):
            held, goal, carry_z = self.held_point(obs), self.goal(obs), self.carry_height(obs)
            if self.phase == "lift":
                err = np.array([0.0, 0.0, carry_z - held[2]])
            elif self.phase == "move":
                err = np.array([goal[0] - held[0], goal[1] - held[1], carry_z - held[2]])
            else:
                err = goal - held
            pos = saturated_p(err, c.pos_gain, c.carry_max_action)
            if self.phase == "place":
                # x/y first: the descent (at most place_max_action) slows to a stop as the x/y error grows
                # from move_tol_xy to twice that
                xy_err = float(np.linalg.norm(err[:2]))
                pos[:2] = saturated_p(err[:2], c.pos_gain, c.carry_max_action)
                slow = float(np.clip(2.0 - xy_err / c.move_tol_xy, 0.0, 1.0))
                pos[2] = slow * float(np.clip(c.pos_gain * err[2], -c.place_max_action, c.place_max_action))
            return pose_action(pos, down_quat(yaw), quat, c.rot_gain, GRIPPER_CLOSE, rot_max=c.carry_rot_max)
        elif self.phase == "release":
            pos, gripper = saturated_p(self._anchor - eef, c.pos_gain, c.max_action), GRIPPER_OPEN
        else:
            target = self._anchor + np.array([0.0, 0.0, c.retreat_height])
            pos, gripper = saturated_p(target - eef, c.pos_gain, c.max_action), GRIPPER_OPEN
        return pose_action(pos, down_quat(yaw), quat, c.rot_gain, gripper)


# ----- Stack ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackExpertConfig(PickPlaceConfig):
    """Stack: pick the red cube A (half size 0.02 m), put it on the green cube B (half size 0.025 m)."""

    grasp_z_offset: float = -0.01  # grip-site height relative to cube A's centre
    stack_clearance: float = 0.006  # cube A is released this far above resting on cube B
    carry_above: float = 0.08  # cube A's centre travels this far above cube B's top face
    cube_a_half: float = 0.02
    cube_b_half: float = 0.025
    # with cube B closer than this (m, centre to centre), grip cube A across the face pair whose closing axis is
    # most nearly perpendicular to the direction of cube B, so that no open finger lands on cube B
    crowded: float = 0.1


class StackExpert(PickPlaceExpert):
    """robosuite Stack; uses cubeA_pos, cubeA_quat, cubeB_pos. The cube is gripped across a face pair: its yaw
    modulo 90 degrees, the turn nearest the home yaw, or the other pair when cube B is near (`crowded`)."""

    def __init__(self, config: StackExpertConfig = StackExpertConfig()):
        super().__init__(config)

    def grasp_pose(self, obs):
        c = self.config
        cube = np.asarray(obs["cubeA_pos"], dtype=np.float64)
        yaw = wrap_symmetric(yaw_of(np.asarray(obs["cubeA_quat"])), np.pi / 2)  # in [-pi/4, pi/4)
        to_b = np.asarray(obs["cubeB_pos"], dtype=np.float64)[:2] - cube[:2]
        dist = float(np.linalg.norm(to_b))
        if dist < c.crowded:
            other = yaw - np.pi / 2 if yaw >= 0 else yaw + np.pi / 2  # in [-pi/2, pi/2)

            def along_b(y: float) -> float:  # |cos| between the closing axis (-sin y, cos y) and cube B
                return abs(-np.sin(y) * to_b[0] + np.cos(y) * to_b[1]) / dist

            if along_b(other) < along_b(yaw):
                yaw = other
        return cube + np.array([0.0, 0.0, c.grasp_z_offset]), yaw

    def held_point(self, obs):
        return np.asarray(obs["cubeA_pos"], dtype=np.float64)

    def goal(self, obs):
        c = self.config
        rest = c.cube_b_half + c.cube_a_half + c.stack_clearance
        return np.asarray(obs["cubeB_pos"], dtype=np.float64) + np.array([0.0, 0.0, rest])

    def carry_height(self, obs):
        c = self.config
        return float(obs["cubeB_pos"][2]) + c.cube_b_half + c.cube_a_half + c.carry_above


# ----- PickPlaceCan --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanExpertConfig(PickPlaceConfig):
    """PickPlaceCan: the can (radius 0.025 m, half height 0.041 m) from bin 1 into its quadrant of bin 2."""

    # inside the can's quadrant of bin 2 (x 0.1..0.3, y 0.28..0.53 m), towards the robot: the quadrant's
    # centre (0.1975, 0.4025) is at the edge of the Panda's workspace at carrying height
    target_xy: tuple[float, float] = (0.16, 0.35)
    release_z: float = 0.875  # can centre height to let go at (it rests at about 0.86 m)
    grasp_z_offset: float = 0.0  # grip-site height relative to the can's centre
    carry_z: float = 0.97  # can centre height while moving: its bottom 3 cm above the bin walls (0.9 m)


class CanExpert(PickPlaceExpert):
    """robosuite PickPlaceCan; uses Can_pos. The can is round, so the gripper keeps its home yaw."""

    def __init__(self, config: CanExpertConfig = CanExpertConfig()):
        super().__init__(config)

    def grasp_pose(self, obs):
        can = np.asarray(obs["Can_pos"], dtype=np.float64)
        return can + np.array([0.0, 0.0, self.config.grasp_z_offset]), 0.0

    def held_point(self, obs):
        return np.asarray(obs["Can_pos"], dtype=np.float64)

    def goal(self, obs):
        c = self.config
        return np.array([c.target_xy[0], c.target_xy[1], c.release_z])


# ----- NutAssemblyRound ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NutExpertConfig(PickPlaceConfig):
    """NutAssemblyRound: grip the round nut by its handle, drop its ring over the round peg."""

    peg_xy: tuple[float, float] = (0.23, -0.1)  # robosuite's peg2 (round peg) position
    # grip point along the nut's x axis from the ring centre (m): the handle spans 0.035-0.085 and is 3.2 cm
    # wide; nearer the ring than ~0.065 the 2 cm finger pads touch the ring's 4.5 cm wide block instead
    handle_offset: float = 0.07
    release_z: float = 0.86  # ring centre height to let go at (the peg top is at 0.95 m, the table at 0.82 m)
    carry_z: float = 1.03  # ring centre height while moving (7 cm above the peg top: a tilted ring must clear it)
    grasp_z_offset: float = 0.0
    # The Panda cannot reach the peg with the handle beyond the ring (the handle pointing away from the robot,
    # +x): while carrying, the wrist turns the nut so that the handle's heading is at least this far (rad) from +x.
    min_handle_heading: float = np.deg2rad(100.0)
    place_max_action: float = 0.3  # lower the ring slowly: a tilted ring jams on the peg
    carry_max_action: float = 0.5  # carry it slowly: the fingers hold only the top of the 2 cm thin handle


class NutExpert(PickPlaceExpert):
    """robosuite NutAssemblyRound; uses RoundNut_pos, RoundNut_quat. The fingers close across the handle
    (the nut's yaw modulo 180 degrees)."""

    def __init__(self, config: NutExpertConfig = NutExpertConfig()):
        super().__init__(config)

    def grasp_pose(self, obs):
        c = self.config
        nut = np.asarray(obs["RoundNut_pos"], dtype=np.float64)
        heading = yaw_of(np.asarray(obs["RoundNut_quat"]))
        handle = nut + c.handle_offset * np.array([np.cos(heading), np.sin(heading), 0.0])
        return handle + np.array([0.0, 0.0, c.grasp_z_offset]), wrap_symmetric(heading, np.pi)

    def held_point(self, obs):
        return np.asarray(obs["RoundNut_pos"], dtype=np.float64)

    def carry_yaw(self, obs, grasp_yaw):
        heading = wrap_symmetric(yaw_of(np.asarray(obs["RoundNut_quat"])), 2 * np.pi)
        limit = self.config.min_handle_heading
        if abs(heading) >= limit:
            return grasp_yaw
        return grasp_yaw + (np.copysign(limit, heading) - heading)

    def goal(self, obs):
        c = self.config
        return np.array([c.peg_xy[0], c.peg_xy[1], c.release_z])
