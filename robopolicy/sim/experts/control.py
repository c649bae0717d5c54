"""Control math shared by the scripted robosuite experts (Panda, default OSC_POSE controller).

Conventions: positions in m (world frame), quaternions xyzw, yaw in rad about the world z axis. The OSC_POSE
action is (dx, dy, dz, drx, dry, drz, gripper) in [-1, 1]; 1.0 of position action = 0.05 m per step, 1.0 of
rotation action = 0.5 rad per step, gripper -1 open / +1 close.
"""

from __future__ import annotations

import numpy as np

# The gripper site orientation "pointing straight down" (xyzw) with the yaw of the Panda's home pose. At this
# yaw the fingers close along the world y axis; `down_quat(yaw)` turns that closing axis to (-sin yaw, cos yaw).
DOWN_QUAT_XYZW = np.array([np.sqrt(0.5), np.sqrt(0.5), 0.0, 0.0])

GRIPPER_OPEN = -1.0
GRIPPER_CLOSE = 1.0


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of xyzw quaternions."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def orientation_error(target_xyzw: np.ndarray, current_xyzw: np.ndarray) -> np.ndarray:
    """Axis-angle vector (rad, world frame) rotating `current` onto `target`."""
    conj = np.array([-current_xyzw[0], -current_xyzw[1], -current_xyzw[2], current_xyzw[3]])
    q = quat_mul(target_xyzw, conj)
    if q[3] < 0:
        q = -q
    v = q[:3]
    s = np.linalg.norm(v)
    if s < 1e-9:
        return np.zeros(3)
    return v / s * 2.0 * np.arctan2(s, q[3])


def down_quat(yaw: float) -> np.ndarray:
    """Gripper pointing straight down, turned by `yaw` (rad) about world z from the home yaw (xyzw)."""
    half = 0.5 * yaw
    return quat_mul(np.array([0.0, 0.0, np.sin(half), np.cos(half)]), DOWN_QUAT_XYZW)


def yaw_of(quat_xyzw: np.ndarray) -> float:
    """Heading (rad) of a body's x axis in the world x/y plane (for upright objects: their yaw)."""
    x, y, z, w = quat_xyzw
    # first column of the rotation matrix: the body x axis in world coordinates
    return float(np.arctan2(2.0 * (x * y + z * w), 1.0 - 2.0 * (y * y + z * z)))


def wrap_symmetric(angle: float, period: float) -> float:
    """`angle` modulo `period`, in [-period / 2, period / 2) (e.g. period pi for a two-fold symmetric grasp)."""
    return float((angle + 0.5 * period) % period - 0.5 * period)


def saturated_p(error: np.ndarray, gain: float, max_norm: float) -> np.ndarray:
    """Proportional command gain * error with its vector norm capped at `max_norm` (direction kept)."""
    cmd = gain * np.asarray(error, dtype=np.float64)
    norm = float(np.linalg.norm(cmd))
    if norm > max_norm:
        cmd *= max_norm / norm
    return cmd


def pose_action(
    pos_cmd: np.ndarray,
    target_quat: np.ndarray,
    quat: np.ndarray,
    rot_gain: float,
    gripper: float,
    rot_max: float = 1.0,
) -> np.ndarray:
    """Assemble the 7-D float32 OSC_POSE action: position command (clipped to [-1, 1]), orientation P-law
    rot_gain * axis-angle error (each component clipped to +-rot_max), gripper."""
    rot = np.clip(rot_gain * orientation_error(target_quat, quat), -rot_max, rot_max)
    return np.concatenate([np.clip(pos_cmd, -1.0, 1.0), rot, [gripper]]).astype(np.float32)


class FingerSettle:
    """Counts the steps of a gripper command and reports when the fingers stopped moving.

    `update(fingers)` (finger joint positions, m) returns True once at least `min_steps` steps passed and no
    finger moved more than `tol` m in the last step, or once `max_steps` steps passed (a safety cap).
    """

    def __init__(self, min_steps: int, max_steps: int, tol: float):
        self.min_steps, self.max_steps, self.tol = min_steps, max_steps, tol
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self._last: np.ndarray | None = None

    def update(self, fingers: np.ndarray) -> bool:
        settled = self._last is not None and float(np.max(np.abs(fingers - self._last))) < self.tol
        self._last = np.asarray(fingers, dtype=np.float64).copy()
        done = (self.steps >= self.min_steps and settled) or self.steps >= self.max_steps
        self.steps += 1
        return done
