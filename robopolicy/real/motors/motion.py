"""Motion backends that move the emulated servos (robopolicy.real.motors.emulator).

Units: positions in *actual* encoder ticks (before the per-protocol homing offset / drive mode, which the emulator
applies), velocities in ticks/s, load as a signed fraction of the servo's maximum torque (-1..1).
The emulator calls `step(dt, commands)` from its motion thread (every ~2 ms) and writes the feedback into the
Present_* registers. A backend owns the joint state; it is called from that one thread but may be read by tests
from others, so implementations guard their state with a lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

TICKS_PER_REV = 4096
CENTER_TICKS = 2048


@dataclass(frozen=True)
class ServoCommand:
    """What the servo firmware is asked to do this step.

    goal: target position in actual ticks (already clamped to the servo's limits).
    torque: torque enabled; when False the joint is not held (it stays or falls, depending on the backend).
    max_speed: velocity limit in ticks/s from the profile/goal-velocity registers, None = the servo's own maximum.
    """

    goal: float
    torque: bool
    max_speed: float | None = None


@dataclass(frozen=True)
class ServoFeedback:
    """Measured state: position (actual ticks), velocity (ticks/s), load (fraction of max torque, -1..1)."""

    position: float
    velocity: float = 0.0
    load: float = 0.0


@runtime_checkable
class MotionBackend(Protocol):
    def step(self, dt: float, commands: Mapping[int, ServoCommand]) -> dict[int, ServoFeedback]:
        """Advance by dt seconds (dt may be 0: just report) and return feedback for every servo it simulates."""
        ...


class FirstOrderBackend:
    """Independent joints that approach their goal first-order (time constant tau_s), velocity-limited.

    Torque off: the joint stays where it is (a geared servo does not backdrive on its own). `load` is the
    normalized tracking error (error / saturation_ticks, clipped to +-1), a stand-in for the current a real
    servo draws while moving or holding against an obstacle. `initial` gives start positions (default 2048).
    """

    def __init__(
        self,
        tau_s: float = 0.05,
        max_speed_ticks_s: float = 4096.0,
        *,
        initial: Mapping[int, float] | None = None,
        saturation_ticks: float = 200.0,
    ) -> None:
        if tau_s < 0 or max_speed_ticks_s <= 0:
            raise ValueError(
                f"FirstOrderBackend needs tau_s >= 0 and max_speed_ticks_s > 0, got {tau_s}, {max_speed_ticks_s}"
            )
        self.tau_s = float(tau_s)
        self.max_speed_ticks_s = float(max_speed_ticks_s)
        self.saturation_ticks = float(saturation_ticks)
        self._lock = threading.Lock()
        self._position: dict[int, float] = {int(k): float(v) for k, v in (initial or {}).items()}
        self._velocity: dict[int, float] = {}
        self._load: dict[int, float] = {}

    def positions(self) -> dict[int, float]:
        with self._lock:
            return dict(self._position)

    def set_position(self, motor_id: int, ticks: float) -> None:
        """Move a joint by hand (e.g. an operator backdriving a leader arm with torque off)."""
        with self._lock:
            self._position[int(motor_id)] = float(ticks)
            self._velocity[int(motor_id)] = 0.0

    def step(self, dt: float, commands: Mapping[int, ServoCommand]) -> dict[int, ServoFeedback]:
        with self._lock:
            for motor_id, cmd in commands.items():
                pos = self._position.setdefault(motor_id, float(CENTER_TICKS))
                vel = 0.0
                load = 0.0
                if cmd.torque:
                    error = cmd.goal - pos
                    speed_cap = self.max_speed_ticks_s
                    if cmd.max_speed is not None and cmd.max_speed > 0:
                        speed_cap = min(speed_cap, cmd.max_speed)
                    if dt > 0:
                        # exact first-order decay over dt, then the velocity limit
                        alpha = 1.0 if self.tau_s == 0 else 1.0 - math.exp(-dt / self.tau_s)
                        move = error * alpha
                        limit = speed_cap * dt
                        move = max(-limit, min(limit, move))
                        pos += move
                        vel = move / dt
                    load = max(-1.0, min(1.0, (cmd.goal - pos) / self.saturation_ticks))
                self._position[motor_id] = pos
                self._velocity[motor_id] = vel
                self._load[motor_id] = load
            return {
                motor_id: ServoFeedback(pos, self._velocity.get(motor_id, 0.0), self._load.get(motor_id, 0.0))
                for motor_id, pos in self._position.items()
            }


def ticks_to_rad(ticks: float, sign: float = 1.0, center: float = CENTER_TICKS) -> float:
    """Servo ticks -> joint angle: rad = sign * (ticks - center) * 2 pi / 4096."""
    return sign * (ticks - center) * 2.0 * math.pi / TICKS_PER_REV


def rad_to_ticks(rad: float, sign: float = 1.0, center: float = CENTER_TICKS) -> float:
    """Joint angle -> servo ticks (inverse of ticks_to_rad)."""
    return center + sign * rad * TICKS_PER_REV / (2.0 * math.pi)
