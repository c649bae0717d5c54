"""MuJoCo model of a 6-DoF SO-101-like arm behind the servo emulator, plus a reach task.

`MujocoArmBackend` implements robopolicy.real.motors.motion.MotionBackend: the emulator's motion thread calls
`step(dt, commands)` with goals in actual servo ticks; they become position-actuator targets
(rad = sign * (ticks - center) * 2 pi / 4096), physics advances by dt of simulated time (2 ms steps, remainder
carried over) and the feedback (ticks, ticks/s, load = actuator force / force limit) goes back into the
Present_* registers. Torque off disables that joint's actuator (its own actuator group), so the arm sags under
gravity against joint damping and friction.

The model lives in the top-level sim/so101_arm/arm.xml (written for robopolicy). Rendering is lazy: the first
`render()` creates a mujoco.Renderer (headless: MUJOCO_GL=egl, set here unless a display or a value exists).
Every public method takes the backend's lock, so tests and cameras can read while the emulator thread steps.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"  # must happen before mujoco is first imported

import mujoco

from robopolicy.real.motors.motion import CENTER_TICKS, TICKS_PER_REV, ServoCommand, ServoFeedback

DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[2] / "sim" / "so101_arm" / "arm.xml"
JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
DEFAULT_JOINT_IDS: dict[int, str] = {i + 1: name for i, name in enumerate(JOINT_NAMES)}
EE_SITE = "ee"
RAD_PER_TICK = 2.0 * math.pi / TICKS_PER_REV


class MujocoArmBackend:
    """Servo ids -> joints of the MJCF arm. Positions in actual ticks, velocities ticks/s, load -1..1.

    model_path: MJCF file (default sim/so101_arm/arm.xml); joints: {servo id: joint name} (default ids 1..6 in
    JOINT_NAMES order; each joint needs a position actuator of the same name); signs: {id: +1/-1} direction of
    the servo relative to the joint; centers: {id: ticks at joint angle 0} (default 2048; other values emulate a
    servo horn mounted at an arbitrary angle, which calibration must absorb); keyframe: initial pose.
    max_catchup_s: at most this much simulated time per step() call (a stalled caller is not replayed in a burst).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        joints: Mapping[int, str] | None = None,
        *,
        signs: Mapping[int, float] | None = None,
        centers: Mapping[int, float] | None = None,
        keyframe: str | None = "home",
        max_catchup_s: float = 0.05,
    ) -> None:
        path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
        if not path.is_file():
            raise FileNotFoundError(f"MJCF model {path} not found (the arm model ships in sim/so101_arm/ "
                                    f"at the repository root)")
        self.model_path = path
        self.model = mujoco.MjModel.from_xml_path(str(path))
        self.data = mujoco.MjData(self.model)
        self.joints = dict(joints) if joints is not None else dict(DEFAULT_JOINT_IDS)
        self.signs = {i: float((signs or {}).get(i, 1.0)) for i in self.joints}
        self.centers = {i: float((centers or {}).get(i, CENTER_TICKS)) for i in self.joints}
        self.max_catchup_s = float(max_catchup_s)
        self._lock = threading.RLock()
        self._render_lock = threading.Lock()
        self._renderers: dict[tuple[int, int, int], mujoco.Renderer] = {}
        self._render_data: mujoco.MjData | None = None
        self._debt = 0.0
        self.sim_time_s = 0.0
        self.dropped_time_s = 0.0

        self._qadr: dict[int, int] = {}
        self._dadr: dict[int, int] = {}
        self._act: dict[int, int] = {}
        self._force_limit: dict[int, float] = {}
        for motor_id, name in self.joints.items():
            jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)
            aid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_ACTUATOR, name)
            if jid < 0 or aid < 0:
                raise ValueError(f"{path}: servo id {motor_id} maps to joint {name!r}, which needs a joint and a "
                                 f"position actuator of that name")
            self._qadr[motor_id] = int(self.model.jnt_qposadr[jid])
            self._dadr[motor_id] = int(self.model.jnt_dofadr[jid])
            self._act[motor_id] = aid
            limit = float(np.max(np.abs(self.model.actuator_forcerange[aid])))
            self._force_limit[motor_id] = limit if limit > 0 else 1.0
        self._setpoint = {i: 0.0 for i in self.joints}   # current (rate-limited) actuator target, rad
        self._site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, EE_SITE)
        self._target_mocap = -1
        target_body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "target")
        if target_body >= 0:
            self._target_mocap = int(self.model.body_mocapid[target_body])
        self.reset(keyframe=keyframe)

    # ----------------------------------------------------------------- conversions
    def ticks_to_rad(self, motor_id: int, ticks: float) -> float:
        return self.signs[motor_id] * (ticks - self.centers[motor_id]) * RAD_PER_TICK

    def rad_to_ticks(self, motor_id: int, rad: float) -> float:
        return self.centers[motor_id] + self.signs[motor_id] * rad / RAD_PER_TICK

    def qpos_to_ticks(self, qpos: Sequence[float]) -> dict[int, float]:
        """Joint vector (rad, in `self.joints` order) -> {servo id: actual ticks}."""
        return {i: self.rad_to_ticks(i, float(q)) for i, q in zip(self.joints, qpos, strict=True)}

    # ----------------------------------------------------------------- MotionBackend
    def step(self, dt: float, commands: Mapping[int, ServoCommand]) -> dict[int, ServoFeedback]:
        """Apply commands, advance physics by dt seconds of simulated time, return feedback per servo id."""
        with self._lock:
            timestep = float(self.model.opt.timestep)
            disabled = int(self.model.opt.disableactuator)
            for motor_id, cmd in commands.items():
                if motor_id not in self.joints:
                    continue
                aid = self._act[motor_id]
                bit = 1 << int(self.model.actuator_group[aid])
                q = float(self.data.qpos[self._qadr[motor_id]])
                if cmd.torque:
                    if disabled & bit:  # torque just came on: start from where the joint is
                        self._setpoint[motor_id] = q
                    disabled &= ~bit
                    goal = self.ticks_to_rad(motor_id, cmd.goal)
                    if cmd.max_speed is not None and cmd.max_speed > 0 and dt > 0:
                        limit = cmd.max_speed * RAD_PER_TICK * dt
                        sp = self._setpoint[motor_id]
                        goal = sp + max(-limit, min(limit, goal - sp))
                    self._setpoint[motor_id] = goal
                    self.data.ctrl[aid] = goal
                else:
                    disabled |= bit
                    self._setpoint[motor_id] = q
                    self.data.ctrl[aid] = q
            self.model.opt.disableactuator = disabled
            self._debt += max(0.0, float(dt))
            if self._debt > self.max_catchup_s:
                self.dropped_time_s += self._debt - self.max_catchup_s
                self._debt = self.max_catchup_s
            n = int(self._debt / timestep + 1e-9)
            if n > 0:
                mujoco.mj_step(self.model, self.data, nstep=n)
                self._debt -= n * timestep
                self.sim_time_s += n * timestep
            return self._feedback()

    def _feedback(self) -> dict[int, ServoFeedback]:
        out = {}
        for motor_id in self.joints:
            sign = self.signs[motor_id]
            q = float(self.data.qpos[self._qadr[motor_id]])
            v = float(self.data.qvel[self._dadr[motor_id]])
            force = float(self.data.actuator_force[self._act[motor_id]])
            out[motor_id] = ServoFeedback(
                position=self.rad_to_ticks(motor_id, q),
                velocity=sign * v / RAD_PER_TICK,
                load=max(-1.0, min(1.0, sign * force / self._force_limit[motor_id])),
            )
        return out

    # ----------------------------------------------------------------- state access
    @property
    def qpos(self) -> np.ndarray:
        """Joint angles (rad), shape (n_joints,), in `self.joints` order."""
        with self._lock:
            return np.array([self.data.qpos[self._qadr[i]] for i in self.joints])

    @property
    def qvel(self) -> np.ndarray:
        with self._lock:
            return np.array([self.data.qvel[self._dadr[i]] for i in self.joints])

    def feedback(self) -> dict[int, ServoFeedback]:
        with self._lock:
            return self._feedback()

    def end_effector_pos(self) -> np.ndarray:
        """World position (m) of the gripper-tip site, shape (3,)."""
        with self._lock:
            return self.data.site_xpos[self._site].copy()

    def reset(self, qpos: Sequence[float] | None = None, *, keyframe: str | None = "home") -> None:
        """Set joint angles (rad, `self.joints` order; default the keyframe, else zeros), zero velocity, hold there."""
        with self._lock:
            mujoco.mj_resetData(self.model, self.data)
            if qpos is None and keyframe is not None:
                kid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_KEY, keyframe)
                if kid < 0:
                    raise ValueError(f"{self.model_path}: no keyframe {keyframe!r}")
                mujoco.mj_resetDataKeyframe(self.model, self.data, kid)
            elif qpos is not None:
                values = np.asarray(qpos, dtype=float).reshape(-1)
                if values.shape[0] != len(self.joints):
                    raise ValueError(f"reset expects {len(self.joints)} joint angles, got {values.shape[0]}")
                for motor_id, q in zip(self.joints, values):
                    self.data.qpos[self._qadr[motor_id]] = q
            for motor_id in self.joints:
                q = float(self.data.qpos[self._qadr[motor_id]])
                self._setpoint[motor_id] = q
                self.data.ctrl[self._act[motor_id]] = q
            self._debt = 0.0
            mujoco.mj_forward(self.model, self.data)

    def set_position(self, motor_id: int, ticks: float) -> None:
        """Put one joint at `ticks` (actual) with zero velocity: an operator moving the arm by hand, e.g. while
        calibrating with torque off (same call as FirstOrderBackend.set_position)."""
        with self._lock:
            q = self.ticks_to_rad(motor_id, ticks)
            self.data.qpos[self._qadr[motor_id]] = q
            self.data.qvel[self._dadr[motor_id]] = 0.0
            self._setpoint[motor_id] = q
            mujoco.mj_forward(self.model, self.data)

    def set_target_marker(self, pos: Sequence[float]) -> None:
        """Move the red target sphere (rendering only; it has no collision)."""
        with self._lock:
            if self._target_mocap >= 0:
                self.data.mocap_pos[self._target_mocap] = np.asarray(pos, dtype=float)

    # ----------------------------------------------------------------- kinematics
    def forward_kinematics(self, qpos: Sequence[float]) -> np.ndarray:
        """Tip position (m, shape (3,)) for joint angles (rad, `self.joints` order), without touching the sim."""
        data = mujoco.MjData(self.model)
        for motor_id, q in zip(self.joints, np.asarray(qpos, dtype=float)):
            data.qpos[self._qadr[motor_id]] = q
        mujoco.mj_kinematics(self.model, data)
        return data.site_xpos[self._site].copy()

    def joint_range(self, motor_id: int) -> tuple[float, float]:
        jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, self.joints[motor_id])
        lo, hi = self.model.jnt_range[jid]
        return float(lo), float(hi)

    def inverse_kinematics(
        self,
        target: Sequence[float],
        q_init: Sequence[float] | None = None,
        *,
        active: Sequence[int] = (1, 2, 3, 4),
        iterations: int = 200,
        damping: float = 0.02,
        tolerance_m: float = 1e-3,
    ) -> tuple[np.ndarray, float]:
        """Damped least squares on the tip position (mj_jacSite) moving only the `active` servo ids.

        Returns (joint angles in `self.joints` order, rad, clipped to the joint ranges; residual distance in m).
        Works on a private MjData, so it is safe while the emulator steps the arm.
        """
        goal = np.asarray(target, dtype=float).reshape(3)
        data = mujoco.MjData(self.model)
        q0 = self.qpos if q_init is None else np.asarray(q_init, dtype=float)
        ids = list(self.joints)
        for motor_id, q in zip(ids, q0):
            data.qpos[self._qadr[motor_id]] = q
        cols = [self._dadr[i] for i in active]
        qadr = [self._qadr[i] for i in active]
        ranges = np.array([self.joint_range(i) for i in active])
        jacp = np.zeros((3, self.model.nv))
        err = np.zeros(3)
        for _ in range(iterations):
            mujoco.mj_kinematics(self.model, data)
            mujoco.mj_comPos(self.model, data)
            err = goal - data.site_xpos[self._site]
            if np.linalg.norm(err) < tolerance_m:
                break
            mujoco.mj_jacSite(self.model, data, jacp, None, self._site)
            jac = jacp[:, cols]
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * np.eye(3), err)
            dq = np.clip(dq, -0.2, 0.2)
            data.qpos[qadr] = np.clip(data.qpos[qadr] + dq, ranges[:, 0], ranges[:, 1])
        mujoco.mj_kinematics(self.model, data)
        residual = float(np.linalg.norm(goal - data.site_xpos[self._site]))
        return np.array([data.qpos[self._qadr[i]] for i in ids]), residual

    # ----------------------------------------------------------------- rendering
    def render(self, width: int = 640, height: int = 480, camera: str | int = "front") -> np.ndarray:
        """RGB frame (height, width, 3) uint8 of the current state from a named MJCF camera."""
        with self._lock:
            if self._render_data is None:
                self._render_data = mujoco.MjData(self.model)
            rd = self._render_data
            rd.qpos[:] = self.data.qpos
            rd.qvel[:] = self.data.qvel
            rd.mocap_pos[:] = self.data.mocap_pos
            rd.mocap_quat[:] = self.data.mocap_quat
        with self._render_lock:
            mujoco.mj_forward(self.model, rd)
            key = (threading.get_ident(), int(width), int(height))  # a GL context is current in one thread
            renderer = self._renderers.get(key)
            if renderer is None:
                self._ensure_framebuffer(width, height)
                try:
                    renderer = mujoco.Renderer(self.model, height=height, width=width)
                except Exception as exc:
                    raise RuntimeError(
                        f"MuJoCo could not create an offscreen GL context (MUJOCO_GL="
                        f"{os.environ.get('MUJOCO_GL')!r}): {exc}. Headless machines need MUJOCO_GL=egl (or osmesa) "
                        f"set before mujoco is first imported (robopolicy.real.sim_arm sets it if imported first)."
                    ) from exc
                self._renderers[key] = renderer
            renderer.update_scene(rd, camera=camera)
            return renderer.render().copy()

    def _ensure_framebuffer(self, width: int, height: int) -> None:
        vis = self.model.vis.global_
        vis.offwidth = max(int(vis.offwidth), int(width))
        vis.offheight = max(int(vis.offheight), int(height))

    def close(self) -> None:
        """Free the renderers (call from the thread that rendered; EGL frees contexts per thread)."""
        with self._render_lock:
            for renderer in self._renderers.values():
                renderer.close()
            self._renderers.clear()


@dataclass(frozen=True)
class ReachSampling:
    """Joint box (rad) the reach targets are drawn from (tip = FK of a random pose), plus workspace filters (m)."""

    shoulder_pan: tuple[float, float] = (-1.0, 1.0)
    shoulder_lift: tuple[float, float] = (-0.2, 1.0)
    elbow_flex: tuple[float, float] = (-0.3, 1.2)
    wrist_flex: tuple[float, float] = (-0.3, 1.2)
    min_height: float = 0.03
    max_height: float = 0.25
    min_radius: float = 0.12


class ReachTask:
    """Move the gripper tip to within `tolerance_m` of a target sampled per episode from (seed, episode).

    Targets are forward kinematics of random in-range poses, so every target is reachable. `solve()` returns a
    joint configuration reaching the target (damped least squares IK), for scripted operators / leader arms.
    """

    def __init__(
        self,
        arm: MujocoArmBackend,
        *,
        tolerance_m: float = 0.02,
        seed: int = 0,
        sampling: ReachSampling = ReachSampling(),
    ) -> None:
        self.arm = arm
        self.tolerance_m = float(tolerance_m)
        self.seed = int(seed)
        self.sampling = sampling
        self.episode = -1
        self.target = arm.end_effector_pos()

    def sample_target(self, episode: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(episode)])
        s = self.sampling
        boxes = {"shoulder_pan": s.shoulder_pan, "shoulder_lift": s.shoulder_lift, "elbow_flex": s.elbow_flex,
                 "wrist_flex": s.wrist_flex}
        for _ in range(1000):
            q = np.zeros(len(self.arm.joints))
            for k, name in enumerate(self.arm.joints.values()):
                if name in boxes:
                    q[k] = rng.uniform(*boxes[name])
            tip = self.arm.forward_kinematics(q)
            if s.min_height <= tip[2] <= s.max_height and math.hypot(tip[0], tip[1]) >= s.min_radius:
                return tip
        raise RuntimeError(f"ReachTask could not sample a target inside {s} (seed {self.seed}, episode {episode})")

    def reset(self, episode: int | None = None) -> np.ndarray:
        """Start an episode (default: the next one): pick its target, show it in renders, return it (m, (3,))."""
        self.episode = self.episode + 1 if episode is None else int(episode)
        self.target = self.sample_target(self.episode)
        self.arm.set_target_marker(self.target)
        return self.target

    def distance(self) -> float:
        return float(np.linalg.norm(self.arm.end_effector_pos() - self.target))

    def success(self) -> bool:
        return self.distance() <= self.tolerance_m

    def solve(self, q_init: Sequence[float] | None = None) -> np.ndarray:
        """Joint angles (rad, arm.joints order) whose tip is within tolerance/4 of the target."""
        best_q, best_res = None, math.inf
        starts = [q_init] if q_init is not None else [None]
        starts.append(np.zeros(len(self.arm.joints)))
        starts.append(np.array([0.0, 0.5, 0.5, 0.5, 0.0, 0.0][: len(self.arm.joints)]))
        for start in starts:
            q, residual = self.arm.inverse_kinematics(self.target, start)
            if residual < best_res:
                best_q, best_res = q, residual
            if residual <= self.tolerance_m / 4:
                break
        if best_res > self.tolerance_m / 4:
            raise RuntimeError(f"IK did not reach target {np.round(self.target, 4)} (residual {best_res:.4f} m)")
        return best_q


def min_jerk(q_start: Sequence[float], q_goal: Sequence[float], num: int) -> np.ndarray:
    """Minimum-jerk interpolation, shape (num, n_joints), from q_start (excluded) to q_goal (last row)."""
    a, b = np.asarray(q_start, dtype=float), np.asarray(q_goal, dtype=float)
    s = np.arange(1, num + 1) / num
    blend = 10 * s**3 - 15 * s**4 + 6 * s**5
    return a + (b - a) * blend[:, None]
