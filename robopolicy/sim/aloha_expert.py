"""Scripted bimanual experts for the gym-aloha tasks, with per-frame phase labels.

The approach follows ACT's scripted data (Zhao et al. 2023): at the first step the expert reads the object
pose(s) and lays out timed end-effector waypoints for both arms (position, orientation, gripper), which it
interpolates. ACT turns such waypoints into joint trajectories by driving mocap bodies in a separate
end-effector simulation; here they become joint targets through inverse kinematics on a kinematic copy of the
same MuJoCo model (`ArmIK`: position + orientation error, Jacobian from `mj_jac`, damped least squares),
warm-started from the previous step, so no second simulation runs. The joint-position actuators track the
targets within a few mrad at the speeds used. Unlike ACT's purely open-loop script, the second half looks at
the objects once more (`replan_step` = t_meet): transfer-cube re-aims the left gripper at where the cube
actually hangs in the right gripper; insertion re-plans the peg's path from how the peg and socket are
actually held, then keeps the peg on the socket's axis with a small integral feedback. The demonstration
stays a deterministic function of the initial state (the seed).

End-effector frame: the "grasp point" `GRASP_OFFSET` in the `gripper_link` body frame (x points from the wrist
along the fingers, the fingers close along y). Positions in m (world frame: x from the left arm to the right
arm, z up, table top at z = 0), orientations as 3x3 world rotation matrices.

Transfer-cube (`TRANSFER_PHASES`): the right arm comes down on the cube pitched 60 degrees (fingers closing
along world y), grasps, lifts and carries it to the meeting point; meanwhile the left arm, rolled 90 degrees
so that its fingers close along world z, waits beside it, then moves in and closes on the cube's top and bottom
faces; the right gripper opens and the right arm retreats. Insertion (`INSERTION_PHASES`): the right arm
picks up the peg and the left the socket (both pitched down, fingers across the long axis), both lift and
meet in the air facing each other, then the right arm pushes the peg into the socket along x.

Per-frame phase labels: `expert.phase_index` (int, index into `expert.phase_names`) and `expert.phase` (its
name) describe the step whose action `act()` just returned; recordings store them as the feature `phase`
int64 (1,) with `names` = the phase vocabulary (`phase_feature`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robopolicy.data.features import Feature, phase_label_feature
from robopolicy.sim.aloha_env import ENV_STATE_KEY, STATE_KEY, _import_gym_aloha

TRANSFER_PHASES = ("approach", "grasp", "lift", "meet", "handover", "release", "retreat")
INSERTION_PHASES = ("approach", "grasp", "lift", "meet", "insert")
PHASES = {"TransferCube": TRANSFER_PHASES, "Insertion": INSERTION_PHASES}

GRASP_OFFSET = np.array([0.125, 0.0, 0.0])  # grasp point in the gripper_link frame (m): between the fingertips
_ARM_DOFS = {"left": slice(0, 6), "right": slice(8, 14)}  # qpos / dof indices of each arm's 6 joints
_ACTION_ARM = {"left": slice(0, 6), "right": slice(7, 13)}
_ACTION_GRIPPER = {"left": 6, "right": 13}
CUBE_REST_Z = 0.02  # the cube's centre once it rests on the table (half-size 2 cm); reset places it at 0.05


def phase_feature(task: str = "TransferCube") -> Feature:
    """The per-frame phase label feature of `task`: int64 (1,), value i means PHASES[task][i]."""
    return phase_label_feature(PHASES[task])


def _v(x: float, y: float, z: float) -> np.ndarray:
    """A 3-vector (m) as an array, so that `pos + _v(...)` adds element-wise."""
    return np.array([x, y, z], dtype=np.float64)


# ----- rotations ----------------------------------------------------------------------------------------------
def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _mat_to_quat(r: np.ndarray) -> np.ndarray:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(r, dtype=np.float64).reshape(9))
    return q


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    import mujoco

    r = np.zeros(9)
    mujoco.mju_quat2Mat(r, np.asarray(q, dtype=np.float64))
    return r.reshape(3, 3)


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (rad, world frame) that rotates `current` onto `target` (3x3 matrices)."""
    q = _mat_to_quat(target @ current.T)  # w, x, y, z
    if q[0] < 0:
        q = -q
    v = q[1:]
    s = np.linalg.norm(v)
    if s < 1e-12:
        return np.zeros(3)
    return v / s * 2.0 * np.arctan2(s, q[0])


def slerp_rot(a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
    """Rotation matrix a fraction u in [0, 1] of the way from a to b (shortest arc)."""
    qa, qb = _mat_to_quat(a), _mat_to_quat(b)
    dot = float(qa @ qb)
    if dot < 0:
        qb, dot = -qb, -dot
    if dot > 0.9995:
        q = qa + u * (qb - qa)
    else:
        theta = np.arccos(dot)
        q = (np.sin((1 - u) * theta) * qa + np.sin(u * theta) * qb) / np.sin(theta)
    return _quat_to_mat(q / np.linalg.norm(q))


# ----- inverse kinematics -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IKConfig:
    """Damped least squares: dq = J^T (J J^T + damping^2 I)^-1 [e_pos; rot_weight * e_rot], iterated."""

    damping: float = 0.02
    rot_weight: float = 0.3  # m per rad: 1 rad of orientation error weighs like 0.3 m of position error
    max_iters: int = 60
    pos_tol: float = 1e-4  # m
    rot_tol: float = 1e-3  # rad
    max_step: float = 0.2  # rad, cap on one iteration's joint change


class ArmIK:
    """Inverse kinematics of both ViperX arms on a kinematic copy of gym-aloha's model (no dynamics)."""

    def __init__(self, task: str = "TransferCube", config: IKConfig = IKConfig()):
        import mujoco

        from robopolicy.sim.aloha_env import _XML

        constants, _, _ = _import_gym_aloha()
        self.config = config
        self.model = mujoco.MjModel.from_xml_path(str(constants.ASSETS_DIR / _XML[task]))
        self.data = mujoco.MjData(self.model)
        self.start_qpos = np.asarray(constants.START_ARM_POSE, dtype=np.float64)
        self.data.qpos[:16] = self.start_qpos
        self._body = {arm: self.model.body(f"vx300s_{arm}/gripper_link").id for arm in ("left", "right")}
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))

    def _fk(self):
        import mujoco

        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)

    def pose(self, arm: str, q: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(grasp-point position (3,), gripper_link rotation (3, 3)) of `arm` at joints q (default: start pose)."""
        self.data.qpos[_ARM_DOFS[arm]] = self.start_qpos[_ARM_DOFS[arm]] if q is None else q
        self._fk()
        b = self._body[arm]
        rot = self.data.xmat[b].reshape(3, 3).copy()
        return self.data.xpos[b] + rot @ GRASP_OFFSET, rot

    def solve(self, arm: str, pos: np.ndarray, rot: np.ndarray, q0: np.ndarray) -> tuple[np.ndarray, float]:
        """Joint positions (6,) putting `arm`'s grasp point at `pos` with orientation `rot`, from guess q0.

        Returns (q, residual position error in m)."""
        import mujoco

        c = self.config
        dofs = _ARM_DOFS[arm]
        lo, hi = self.model.jnt_range[dofs, 0], self.model.jnt_range[dofs, 1]
        q = np.clip(np.asarray(q0, dtype=np.float64).copy(), lo, hi)
        b = self._body[arm]
        err_p = np.inf
        for _ in range(c.max_iters):
            self.data.qpos[dofs] = q
            self._fk()
            r = self.data.xmat[b].reshape(3, 3)
            p = self.data.xpos[b] + r @ GRASP_OFFSET
            e_p = pos - p
            e_r = rotation_error(rot, r)
            err_p = float(np.linalg.norm(e_p))
            if err_p < c.pos_tol and np.linalg.norm(e_r) < c.rot_tol:
                break
            mujoco.mj_jac(self.model, self.data, self._jacp, self._jacr, p, b)
            jac = np.vstack([self._jacp[:, dofs], c.rot_weight * self._jacr[:, dofs]])
            e = np.concatenate([e_p, c.rot_weight * e_r])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + c.damping**2 * np.eye(6), e)
            n = np.max(np.abs(dq))
            if n > c.max_step:
                dq *= c.max_step / n
            q = np.clip(q + dq, lo, hi)
        return q, err_p


# ----- waypoint plans -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Waypoint:
    """Where one arm is at control step t: grasp-point position (m), rotation (3x3), gripper (0 closed..1 open)."""

    t: int
    pos: np.ndarray
    rot: np.ndarray
    gripper: float


def _smooth(u: float) -> float:
    return u * u * (3.0 - 2.0 * u)  # zero velocity at both ends of a segment


def interpolate(waypoints: Sequence[Waypoint], t: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The arm's (pos, rot, gripper) at step t: smoothstep in time between consecutive waypoints (position
    linear, rotation slerp, gripper linear); held at the first / last waypoint outside their span."""
    if t <= waypoints[0].t:
        w = waypoints[0]
        return w.pos, w.rot, w.gripper
    for a, b in itertools.pairwise(waypoints):
        if t <= b.t:
            u = _smooth((t - a.t) / max(b.t - a.t, 1))
            return a.pos + u * (b.pos - a.pos), slerp_rot(a.rot, b.rot, u), a.gripper + u * (b.gripper - a.gripper)
    w = waypoints[-1]
    return w.pos, w.rot, w.gripper


@dataclass(frozen=True)
class TransferCubePlan:
    """Timing (control steps at 50 Hz) and geometry of the transfer-cube demonstration (300 steps = 6 s).

    Phase boundaries: approach [0, t_above..t_down), grasp [t_down, t_grasped), lift [t_grasped, t_lifted),
    meet [t_lifted, t_meet), handover [t_meet, t_left_closed), release [t_left_closed, t_released),
    retreat [t_released, end).
    """

    t_above: int = 55  # right grasp point `hover` above the cube
    t_down: int = 85  # right grasp point at the cube
    t_grasped: int = 110  # right gripper closed
    t_lifted: int = 135  # cube `lift_height` above the table
    t_meet: int = 175  # cube at the meeting point, left gripper open beside it
    t_left_in: int = 200  # left grasp point on the cube
    t_left_closed: int = 220  # left gripper closed
    t_released: int = 240  # right gripper open
    t_retreated: int = 275  # right arm moved away
    length: int = 300  # total steps
    hover: float = 0.08  # m above the cube before descending
    grasp_z: float = 0.0  # m, right grasp point height relative to the cube centre
    lift_height: float = 0.12  # m
    pick_pitch_deg: float = 60.0  # right gripper pitched down from horizontal
    meet: tuple[float, float, float] = (0.0, 0.5, 0.25)  # m, cube centre at the hand-over
    left_standoff: float = 0.12  # m, left grasp point this far (-x) from the cube before moving in
    left_grasp_dx: float = -0.01  # m, left grasp point relative to the cube centre along x when closing
    left_roll_deg: float = 90.0  # left gripper rolled so that its fingers close along world z
    retreat: tuple[float, float, float] = (0.10, 0.0, 0.05)  # m, right arm moves this far after releasing
    left_back: float = 0.05  # m, the left arm draws the cube back (-x) while the right retreats

    def phase_bounds(self) -> tuple[int, ...]:
        """Start step of each phase of TRANSFER_PHASES."""
        return (0, self.t_down, self.t_grasped, self.t_lifted, self.t_meet, self.t_left_closed, self.t_released)


def transfer_cube_waypoints(
    plan: TransferCubePlan, cube_xyz: np.ndarray, start: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, list[Waypoint]]:
    """Both arms' waypoints for a cube at `cube_xyz` (m); start = {arm: (pos, rot)} of the start pose."""
    p = plan
    cube = np.array([cube_xyz[0], cube_xyz[1], CUBE_REST_Z])
    pick = rot_z(np.pi) @ rot_y(np.deg2rad(p.pick_pitch_deg))  # right arm: fingers along -x, pitched down
    meet = np.asarray(p.meet, dtype=np.float64)
    grasp = cube + _v(0.0, 0.0, p.grasp_z)
    right_hold = meet + _v(0.0, 0.0, p.grasp_z)  # right grasp point keeps its offset to the cube centre
    right = [
        Waypoint(0, *start["right"], 0.0),
        Waypoint(p.t_above, grasp + _v(0.0, 0.0, p.hover), pick, 1.0),
        Waypoint(p.t_down, grasp, pick, 1.0),
        Waypoint(p.t_grasped, grasp, pick, 0.0),
        Waypoint(p.t_lifted, grasp + _v(0.0, 0.0, p.lift_height), pick, 0.0),
        Waypoint(p.t_meet, right_hold, pick, 0.0),
        Waypoint(p.t_left_closed, right_hold, pick, 0.0),
        Waypoint(p.t_released, right_hold, pick, 1.0),
        Waypoint(p.t_retreated, right_hold + np.asarray(p.retreat), pick, 1.0),
        Waypoint(p.length, right_hold + np.asarray(p.retreat), pick, 1.0),
    ]
    side = rot_x(np.deg2rad(p.left_roll_deg))
    left_out = meet - _v(p.left_standoff, 0.0, 0.0)
    left = [
        Waypoint(0, *start["left"], 0.0),
        Waypoint(p.t_lifted, left_out, side, 1.0),
        Waypoint(p.t_meet, left_out, side, 1.0),
    ]
    return {"left": left + _left_handover(plan, meet), "right": right}


def _left_handover(plan: TransferCubePlan, cube: np.ndarray) -> list[Waypoint]:
    """The left arm's waypoints after t_meet for a cube centred at `cube` (m): move in, close, draw back."""
    p = plan
    side = rot_x(np.deg2rad(p.left_roll_deg))
    left_in = np.asarray(cube, dtype=np.float64) + _v(p.left_grasp_dx, 0.0, 0.0)
    back = left_in - _v(p.left_back, 0.0, 0.0)
    return [
        Waypoint(p.t_left_in, left_in, side, 1.0),
        Waypoint(p.t_left_closed, left_in, side, 0.0),
        Waypoint(p.t_released, left_in, side, 0.0),
        Waypoint(p.t_retreated, back, side, 0.0),
        Waypoint(p.length, back, side, 0.0),
    ]


def retarget_left_to_cube(plan: TransferCubePlan, left: list[Waypoint], cube_xyz: np.ndarray) -> list[Waypoint]:
    """Replace the left arm's hand-over waypoints (after t_meet) by ones aimed at the observed cube centre."""
    return [w for w in left if w.t <= plan.t_meet] + _left_handover(plan, cube_xyz)


@dataclass(frozen=True)
class InsertionPlan:
    """Timing (steps at 50 Hz) and geometry of the insertion demonstration (300 steps).

    Phases: approach [0, t_down), grasp [t_down, t_grasped), lift [t_grasped, t_lifted), meet [t_lifted, t_meet),
    insert [t_meet, end).
    """

    t_above: int = 60
    t_down: int = 90
    t_grasped: int = 115
    t_lifted: int = 140
    t_meet: int = 185  # peg tip `peg_gap` outside the socket opening (as planned from the initial poses)
    t_align: int = 210  # the same, corrected for how the peg and socket are actually held
    t_inserted: int = 260  # peg tip `insert_depth` inside the socket opening
    length: int = 300
    hover: float = 0.08
    peg_grasp_z: float = 0.02  # m, grasp point above the peg's centre (keeps the fingertips off the table)
    socket_grasp_z: float = 0.02  # m, grasp point above the socket's centre
    pitch_deg: float = 90.0  # both grippers point straight down
    lift_height: float = 0.1
    meet: tuple[float, float, float] = (0.0, 0.5, 0.2)  # m, socket opening / peg tip meeting point
    socket_back: float = 0.1  # m, socket centre this far -x of the meeting point
    peg_gap: float = 0.03  # m, peg tip this far +x of the socket opening at t_meet
    insert_depth: float = 0.035  # m, peg tip this far past the socket opening at the end
    lateral_gain: float = 0.2  # per step: integral feedback moving the peg's axis onto the socket's (after t_meet)


OBJ_REST_Z = {"peg": 0.01, "socket": 0.022}  # centre height at rest (peg 2 cm thick, socket 4 cm outer)
PEG_HALF, SOCKET_HALF = 0.06, 0.06  # half-lengths along x (m)


def insertion_waypoints(
    plan: InsertionPlan, peg_xyz: np.ndarray, socket_xyz: np.ndarray, start: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, list[Waypoint]]:
    """Waypoints for the peg (right arm) and socket (left arm) at the given centres (m)."""
    p = plan
    peg = np.array([peg_xyz[0], peg_xyz[1], OBJ_REST_Z["peg"] + p.peg_grasp_z])
    sock = np.array([socket_xyz[0], socket_xyz[1], OBJ_REST_Z["socket"] + p.socket_grasp_z])
    pitch = np.deg2rad(p.pitch_deg)
    right_rot = rot_z(np.pi) @ rot_y(pitch)
    left_rot = rot_y(pitch)
    meet = np.asarray(p.meet, dtype=np.float64)
    sock_meet = meet - _v(p.socket_back, 0.0, 0.0)
    opening_x = sock_meet[0] + SOCKET_HALF  # the socket's +x opening at the meeting

    def peg_at(tip_x: float) -> np.ndarray:  # right grasp point with the peg's -x tip at tip_x
        return np.array([tip_x + PEG_HALF, meet[1], meet[2] + p.peg_grasp_z])

    up = np.array([0.0, 0.0, p.lift_height])
    right = [
        Waypoint(0, *start["right"], 0.0),
        Waypoint(p.t_above, peg + _v(0, 0, p.hover), right_rot, 1.0),
        Waypoint(p.t_down, peg, right_rot, 1.0),
        Waypoint(p.t_grasped, peg, right_rot, 0.0),
        Waypoint(p.t_lifted, peg + up, right_rot, 0.0),
        Waypoint(p.t_meet, peg_at(opening_x + p.peg_gap), right_rot, 0.0),
        Waypoint(p.t_inserted, peg_at(opening_x - p.insert_depth), right_rot, 0.0),
        Waypoint(p.length, peg_at(opening_x - p.insert_depth), right_rot, 0.0),
    ]
    left = [
        Waypoint(0, *start["left"], 0.0),
        Waypoint(p.t_above, sock + _v(0, 0, p.hover), left_rot, 1.0),
        Waypoint(p.t_down, sock, left_rot, 1.0),
        Waypoint(p.t_grasped, sock, left_rot, 0.0),
        Waypoint(p.t_lifted, sock + up, left_rot, 0.0),
        Waypoint(p.t_meet, sock_meet + _v(0, 0, p.socket_grasp_z), left_rot, 0.0),
        Waypoint(p.length, sock_meet + _v(0, 0, p.socket_grasp_z), left_rot, 0.0),
    ]
    return {"left": left, "right": right}


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (3x3) taking unit vector a onto unit vector b."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(a @ b)
    if s < 1e-9:
        return np.eye(3)  # (anti-parallel axes never occur here: callers orient them alike first)
    k = axis / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * kx @ kx


def align_peg_with_socket(
    plan: InsertionPlan, right: list[Waypoint], env_state: np.ndarray, grasp: np.ndarray, rot: np.ndarray
) -> list[Waypoint]:
    """Right-arm waypoints after t_meet that make the peg, as it is actually held, coaxial with the socket (as it
    is actually held) and push it in. env_state: observed peg and socket poses (14,); grasp / rot: the right
    grasp point (m) and gripper rotation measured at the same time."""
    p = plan
    peg_c, sock_c = env_state[:3], env_state[7:10]
    sock_axis = _socket_axis(env_state)
    peg_axis = _quat_to_mat(env_state[3:7])[:, 0]
    peg_axis = peg_axis if peg_axis @ sock_axis > 0 else -peg_axis
    align = rotation_between(peg_axis, sock_axis)
    new_rot = align @ rot
    offset = align @ (peg_c - grasp)  # peg centre relative to the grasp point once re-oriented
    opening = sock_c + SOCKET_HALF * sock_axis

    def grasp_for(depth: float) -> np.ndarray:  # peg tip `depth` m inside the opening (negative: outside)
        return opening + (PEG_HALF - depth) * sock_axis - offset

    inserted = grasp_for(p.insert_depth)
    return [w for w in right if w.t <= p.t_meet] + [
        Waypoint(p.t_align, grasp_for(-p.peg_gap), new_rot, 0.0),
        Waypoint(p.t_inserted, inserted, new_rot, 0.0),
        Waypoint(p.length, inserted, new_rot, 0.0),
    ]


def _socket_axis(env_state: np.ndarray) -> np.ndarray:
    axis = _quat_to_mat(env_state[10:14])[:, 0]
    return axis if axis[0] > 0 else -axis  # points from the socket towards the peg (+x)


def peg_lateral_error(env_state: np.ndarray) -> np.ndarray:
    """How far (m, world) the peg's centre must move, across the socket's axis, to lie on that axis."""
    s = np.asarray(env_state, dtype=np.float64)
    axis = _socket_axis(s)
    e = s[7:10] - s[:3]
    return e - (e @ axis) * axis


# ----- the expert ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlohaExpertConfig:
    """task: "TransferCube" or "Insertion"; plan: that task's plan (None = defaults); ik: solver settings."""

    task: str = "TransferCube"
    plan: TransferCubePlan | InsertionPlan | None = None
    ik: IKConfig = field(default_factory=IKConfig)

    def resolved_plan(self) -> TransferCubePlan | InsertionPlan:
        if self.plan is not None:
            return self.plan
        return TransferCubePlan() if self.task == "TransferCube" else InsertionPlan()


class AlohaExpert:
    """Scripted ALOHA policy: `reset()` at the start of an episode, then `act(obs)` every step.

    obs: the env's flat features (`observation.environment_state`, `observation.state`). The waypoints come from
    the object pose(s) at the first step; at one later step (`replan_step`) the second arm's waypoints are
    corrected from the observed object pose (transfer: the left gripper goes to where the cube hangs in the
    right gripper; insertion: the peg is aligned with the socket as they are actually held), so the
    demonstration is a deterministic function of the initial state. Returns a float32 (14,) action (gym-aloha's
    absolute joint targets + normalised grippers). After each `act`, `phase_index` / `phase` label that step;
    past `length` steps the last targets are held.
    """

    def __init__(self, config: AlohaExpertConfig = AlohaExpertConfig()):
        self.config = config
        self.task = config.task
        self.phase_names: tuple[str, ...] = PHASES[config.task]
        self.plan = config.resolved_plan()
        self.length = self.plan.length
        self.replan_step = self.plan.t_meet
        self._ik = ArmIK(config.task, config.ik)
        self._start = {arm: self._ik.pose(arm) for arm in ("left", "right")}
        self._labels = self.phase_labels()
        self.reset()

    def reset(self) -> None:
        self._t = 0
        self._wps: dict[str, list[Waypoint]] | None = None
        self._q = {arm: self._ik.start_qpos[_ARM_DOFS[arm]].copy() for arm in ("left", "right")}
        self.phase_index = 0
        self.phase = self.phase_names[0]
        self.ik_error = 0.0  # largest IK position residual (m) so far in the episode
        self._correction = np.zeros(3)  # insertion: integrated lateral correction of the right grasp point (m)

    @property
    def done(self) -> bool:
        """True once the whole scripted demonstration has been played."""
        return self._t >= self.length

    def waypoints(self, env_state: np.ndarray) -> dict[str, list[Waypoint]]:
        """Both arms' waypoints from the initial object pose(s) (the env's observation.environment_state)."""
        s = np.asarray(env_state, dtype=np.float64)
        if self.task == "TransferCube":
            return transfer_cube_waypoints(self.plan, s[:3], self._start)
        return insertion_waypoints(self.plan, s[:3], s[7:10], self._start)

    def phase_labels(self) -> np.ndarray:
        """(length,) int64 phase index of every step."""
        if self.task == "TransferCube":
            bounds = self.plan.phase_bounds()
        else:
            p = self.plan
            bounds = (0, p.t_down, p.t_grasped, p.t_lifted, p.t_meet)
        t = np.arange(self.length)
        return (np.searchsorted(np.asarray(bounds), t, side="right") - 1).astype(np.int64)

    def _replan(self, obs: Mapping[str, Any]) -> None:
        env_state = np.asarray(obs[ENV_STATE_KEY], dtype=np.float64)
        if self.task == "TransferCube":
            self._wps["left"] = retarget_left_to_cube(self.plan, self._wps["left"], env_state[:3])
        else:
            state = np.asarray(obs[STATE_KEY], dtype=np.float64)
            grasp, rot = self._ik.pose("right", state[_ACTION_ARM["right"]])
            self._wps["right"] = align_peg_with_socket(self.plan, self._wps["right"], env_state, grasp, rot)

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        if self._wps is None:
            self._wps = self.waypoints(np.asarray(obs[ENV_STATE_KEY]))
        if self._t == self.replan_step:
            self._replan(obs)
        if self.task == "Insertion" and self._t > self.replan_step:
            self._correction += self.plan.lateral_gain * peg_lateral_error(np.asarray(obs[ENV_STATE_KEY]))
        t = min(self._t, self.length - 1)
        action = np.zeros(14, dtype=np.float64)
        for arm in ("left", "right"):
            pos, rot, grip = interpolate(self._wps[arm], t + 1)  # the target to reach at the next step
            if arm == "right":
                pos = pos + self._correction
            self._q[arm], err = self._ik.solve(arm, pos, rot, self._q[arm])
            self.ik_error = max(self.ik_error, err)
            action[_ACTION_ARM[arm]] = self._q[arm]
            action[_ACTION_GRIPPER[arm]] = grip
        self.phase_index = int(self._labels[t])
        self.phase = self.phase_names[self.phase_index]
        self._t += 1
        return action.astype(np.float32)


def make_aloha_expert(task: str = "TransferCube", **plan_overrides) -> AlohaExpert:
    """The scripted expert for a gym-aloha task name ("TransferCube" or "Insertion")."""
    if task not in PHASES:
        raise ValueError(f"no scripted expert for gym-aloha task {task!r}; available: {sorted(PHASES)}")
    plan = (TransferCubePlan if task == "TransferCube" else InsertionPlan)(**plan_overrides)
    return AlohaExpert(AlohaExpertConfig(task=task, plan=plan))
