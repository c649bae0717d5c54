"""Host-side safety for deployment: target clamping, a heartbeat watchdog, a bus-fault counter and an e-stop.

All positions are in the robot's normalized joint units (what `Robot.send_action` takes: -100..100, 0..100 or
degrees per joint), velocities in those units per second.

    guard = SafetyGuard(config, robot)            # robot: anything with hold() and torque_off()
    every tick:
        sent, report = guard.filter(target, last_commanded, dt)
        try: robot.send_action(sent); guard.bus_ok()
        except MotorBusError as exc: guard.bus_fault(exc, motor=exc.motor)   # trips the e-stop after N in a row
        guard.watchdog.heartbeat()                 # from whatever must stay alive (policy, teleop)
        guard.check()                              # trips the e-stop when the heartbeat stops

The e-stop holds position (goal = present, optionally with a reduced torque limit) unless configured to turn
torque off: an arm without torque falls under gravity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

ESTOP_MODES = ("hold", "torque_off")


def _per_joint(value, n: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"SafetyConfig.{name} has {arr.size} values, expected one or one per joint ({n})")
    if not np.all(arr > 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"SafetyConfig.{name} must be finite and > 0, got {value}")
    return arr


@dataclass(frozen=True)
class SafetyConfig:
    """joint_min / joint_max: per-joint limits (normalized units); joint_names: for messages (default joint<i>).
    max_step: largest change per tick against the last commanded target (one value or one per joint; None = off).
    max_velocity: units/s, applied as max_velocity * dt per tick (None = off).
    watchdog_s: heartbeat timeout; estop_mode: "hold" (goal = present) or "torque_off";
    hold_torque_fraction: with "hold", ask the robot to cap torque at this fraction (None = leave it);
    max_consecutive_faults: bus faults in a row that trip the e-stop."""

    joint_min: tuple[float, ...]
    joint_max: tuple[float, ...]
    joint_names: tuple[str, ...] = ()
    max_step: float | tuple[float, ...] | None = None
    max_velocity: float | tuple[float, ...] | None = None
    watchdog_s: float = 0.5
    estop_mode: str = "hold"
    hold_torque_fraction: float | None = None
    max_consecutive_faults: int = 3

    def __post_init__(self):
        n = len(self.joint_min)
        if n == 0 or len(self.joint_max) != n:
            raise ValueError(f"SafetyConfig: joint_min ({n}) and joint_max ({len(self.joint_max)}) need one value "
                             "per joint")
        lo, hi = np.asarray(self.joint_min, float), np.asarray(self.joint_max, float)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or np.any(lo > hi):
            raise ValueError(f"SafetyConfig: joint limits must be finite with min <= max, got {self.joint_min} / "
                             f"{self.joint_max}")
        if self.joint_names and len(self.joint_names) != n:
            raise ValueError(f"SafetyConfig: {len(self.joint_names)} joint_names for {n} joints")
        _per_joint(self.max_step, n, "max_step")
        _per_joint(self.max_velocity, n, "max_velocity")
        if not self.watchdog_s > 0:
            raise ValueError(f"SafetyConfig.watchdog_s must be > 0, got {self.watchdog_s}")
        if self.estop_mode not in ESTOP_MODES:
            raise ValueError(f"SafetyConfig.estop_mode must be one of {ESTOP_MODES}, got {self.estop_mode!r}")
        if self.hold_torque_fraction is not None and not 0 < self.hold_torque_fraction <= 1:
            raise ValueError(f"SafetyConfig.hold_torque_fraction must be in (0, 1], got {self.hold_torque_fraction}")
        if self.max_consecutive_faults < 1:
            raise ValueError(f"SafetyConfig.max_consecutive_faults must be >= 1, got {self.max_consecutive_faults}")

    @classmethod
    def from_limits(cls, limits: Mapping[str, tuple[float, float]], **kwargs) -> SafetyConfig:
        """Build from {joint name: (min, max)}, in the robot's action order."""
        names = tuple(limits)
        return cls(tuple(float(limits[k][0]) for k in names), tuple(float(limits[k][1]) for k in names),
                   joint_names=names, **kwargs)

    @property
    def n_joints(self) -> int:
        return len(self.joint_min)

    @property
    def names(self) -> tuple[str, ...]:
        return self.joint_names or tuple(f"joint{i}" for i in range(self.n_joints))


class SafetyFilter:
    """Clamp a target: non-finite -> hold, then joint limits, then the per-tick step / velocity cap.

    The step cap acts on the limited target relative to `last_commanded`, so a last command outside the limits
    (e.g. the arm's start pose) walks into them at the capped rate instead of jumping."""

    def __init__(self, config: SafetyConfig):
        self.config = config
        n = config.n_joints
        self.lo = np.asarray(config.joint_min, dtype=np.float64)
        self.hi = np.asarray(config.joint_max, dtype=np.float64)
        self.max_step = _per_joint(config.max_step, n, "max_step")
        self.max_velocity = _per_joint(config.max_velocity, n, "max_velocity")

    def _check(self, x, what: str) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.shape != (self.config.n_joints,):
            raise ValueError(f"SafetyFilter: {what} has shape {arr.shape}, expected ({self.config.n_joints},) for "
                             f"joints {list(self.config.names)}")
        return arr

    def apply(self, target, last_commanded, dt: float) -> tuple[np.ndarray, dict]:
        """target, last_commanded: (J,) normalized positions; dt: seconds since the last command.

        Returns (sent (J,), report) where report = {"nonfinite": [joint names], "limit" / "step" / "velocity":
        {joint: requested - sent by that stage}, "held": bool, "clamped": bool}."""
        target = self._check(target, "target")
        last = self._check(last_commanded, "last_commanded")
        names = self.config.names
        if not np.all(np.isfinite(last)):
            raise ValueError(f"SafetyFilter: last_commanded is not finite for joints "
                             f"{[names[i] for i in np.flatnonzero(~np.isfinite(last))]}")
        report = {"nonfinite": [], "limit": {}, "step": {}, "velocity": {}, "held": False, "clamped": False}
        bad = ~np.isfinite(target)
        if bad.any():  # a policy that emits NaN is broken everywhere: hold every joint, not just the bad ones
            report.update(nonfinite=[names[i] for i in np.flatnonzero(bad)], held=True, clamped=True)
            return last.copy(), report

        limited = np.clip(target, self.lo, self.hi)
        for i in np.flatnonzero(limited != target):
            report["limit"][names[i]] = float(target[i] - limited[i])

        cap, by_velocity = self._rate_cap(dt)
        sent = limited
        if cap is not None:
            delta = limited - last
            clipped = np.clip(delta, -cap, cap)
            sent = last + clipped
            for i in np.flatnonzero(clipped != delta):
                report["velocity" if by_velocity[i] else "step"][names[i]] = float(delta[i] - clipped[i])
        report["clamped"] = bool(report["limit"] or report["step"] or report["velocity"])
        return sent, report

    def _rate_cap(self, dt: float) -> tuple[np.ndarray | None, np.ndarray]:
        """Per-joint |delta| cap for this tick and whether the velocity limit (not max_step) sets it."""
        n = self.config.n_joints
        if self.max_velocity is None:
            return self.max_step, np.zeros(n, dtype=bool)
        if not dt > 0:
            raise ValueError(f"SafetyFilter: dt must be > 0 s with max_velocity set, got {dt}")
        vel_cap = self.max_velocity * dt
        if self.max_step is None:
            return vel_cap, np.ones(n, dtype=bool)
        return np.minimum(self.max_step, vel_cap), vel_cap < self.max_step

    def apply_mapping(self, target: Mapping[str, float], last_commanded: Mapping[str, float], dt: float,
                      key_suffix: str = ".pos") -> tuple[dict[str, float], dict]:
        """Same on {"<joint>.pos": value} dicts (the Robot action format); keys must cover every joint."""
        keys = [f"{n}{key_suffix}" for n in self.config.names]
        missing = [k for k in keys if k not in target or k not in last_commanded]
        if missing:
            raise KeyError(f"SafetyFilter: action lacks {missing}; the safety config covers {keys}")
        sent, report = self.apply([target[k] for k in keys], [last_commanded[k] for k in keys], dt)
        return {k: float(v) for k, v in zip(keys, sent)}, report


class Watchdog:
    """Expires when no heartbeat() arrived for timeout_s (clock seconds). Armed from construction / reset()."""

    def __init__(self, timeout_s: float, *, clock: Callable[[], float] = time.monotonic):
        if not timeout_s > 0:
            raise ValueError(f"Watchdog timeout must be > 0 s, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self._last = self.clock()

    def heartbeat(self) -> None:
        self._last = self.clock()

    @property
    def age_s(self) -> float:
        return self.clock() - self._last

    @property
    def expired(self) -> bool:
        return self.age_s > self.timeout_s


class FaultCounter:
    """Counts consecutive bus faults; `tripped` once max_consecutive happen in a row (a success resets the run)."""

    def __init__(self, max_consecutive: int):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0
        self.tripped = False
        self.last_error: BaseException | None = None
        self.last_motor: str | None = None

    def ok(self) -> None:
        self.consecutive = 0

    def fault(self, error: BaseException, motor: str | None = None) -> bool:
        """Record a fault (motor: which one failed, when known); returns whether the counter has now tripped."""
        self.consecutive += 1
        self.total += 1
        self.last_error, self.last_motor = error, motor
        if self.consecutive >= self.max_consecutive:
            self.tripped = True
        return self.tripped

    @property
    def message(self) -> str:
        where = f"motor {self.last_motor!r}" if self.last_motor else "the bus"
        return (f"{self.consecutive} consecutive bus faults (limit {self.max_consecutive}) on {where}; last error: "
                f"{self.last_error}")


class Stoppable(Protocol):
    """What the e-stop needs from a robot: hold the present position (goal = present; torque_fraction caps the
    torque limit, None = unchanged) or cut torque."""

    def hold(self, torque_fraction: float | None = None) -> None: ...

    def torque_off(self) -> None: ...


class SafetyStop(RuntimeError):
    """The control loop must stop: the e-stop was triggered (the message says why and which motor)."""


class EStop:
    """Trigger once: mode "hold" -> robot.hold(torque_fraction), "torque_off" -> robot.torque_off().

    A failing hold (e.g. the bus is down) is recorded in `.error`, never turned into torque off: the servos keep
    tracking their last goal, which is safer than letting the arm fall."""

    def __init__(self, robot: Stoppable, mode: str = "hold", torque_fraction: float | None = None):
        if mode not in ESTOP_MODES:
            raise ValueError(f"e-stop mode must be one of {ESTOP_MODES}, got {mode!r}")
        self.robot = robot
        self.mode = mode
        self.torque_fraction = torque_fraction
        self.triggered = False
        self.reason: str | None = None
        self.error: BaseException | None = None

    def trigger(self, reason: str) -> bool:
        """Stop the robot (first call only). Returns whether the stop action itself succeeded."""
        if self.triggered:
            return self.error is None
        self.triggered, self.reason = True, reason
        try:
            if self.mode == "hold":
                self.robot.hold(self.torque_fraction)
            else:
                self.robot.torque_off()
        except Exception as exc:  # the stop must never raise in the middle of a shutdown
            self.error = exc
            return False
        return True


class SafetyGuard:
    """The four pieces wired together for a control loop (see the module docstring)."""

    def __init__(self, config: SafetyConfig, robot: Stoppable, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clamp = SafetyFilter(config)
        self.watchdog = Watchdog(config.watchdog_s, clock=clock)
        self.faults = FaultCounter(config.max_consecutive_faults)
        self.estop = EStop(robot, config.estop_mode, config.hold_torque_fraction)

    def filter(self, target, last_commanded, dt: float) -> tuple[np.ndarray, dict]:
        return self.clamp.apply(target, last_commanded, dt)

    def bus_ok(self) -> None:
        self.faults.ok()

    def bus_fault(self, error: BaseException, motor: str | None = None) -> None:
        """Count a fault; on the Nth in a row trigger the e-stop and raise SafetyStop naming the motor."""
        if self.faults.fault(error, motor):
            self.stop(self.faults.message)

    def check(self) -> None:
        """Trigger the e-stop and raise SafetyStop if the watchdog expired."""
        if self.watchdog.expired:
            self.stop(f"watchdog: no heartbeat for {self.watchdog.age_s:.3f} s (limit {self.config.watchdog_s} s)")

    def stop(self, reason: str) -> None:
        ok = self.estop.trigger(reason)
        action = "holding position" if self.estop.mode == "hold" else "torque off"
        detail = "" if ok else f"; the e-stop did not reach every motor ({self.estop.error})"
        raise SafetyStop(f"e-stop ({action}): {reason}{detail}")

