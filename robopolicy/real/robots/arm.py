"""A generic arm: one MotorsBus of position-controlled servos (+ cameras), built from a RobotConfig.

Per tick the arm costs exactly one sync read (``get_observation``) and one sync write (``send_action``).
``send_action`` clamps on the host before anything reaches the bus:

1. joint limits (normalized units, from the YAML);
2. ``max_relative_target``: |goal - last commanded goal| <= cap per joint. The reference is the last *commanded*
   goal (hardware.md section 5), not a fresh Present_Position read as in LeRobot, which saves a bus round trip;
   after connect the reference is the position the arm held when torque came on;
3. the calibrated range and tick quantization (``unnormalize`` clamps in every mode, DEGREES included).

It returns the goals really sent (normalized values of the ticks written). Before torque is enabled the goal
registers are set to the present positions, so enabling torque never makes the arm jump to a stale goal.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.real.cameras import Camera, make_camera
from robopolicy.real.motors.bus import Motor, MotorsBus
from robopolicy.real.motors.calibration import (
    CalibrationError,
    MotorCalibration,
    calibrate_interactively,
    calibration_differs,
    calibration_dir,
    load_calibration,
    normalize,
    save_calibration,
    unnormalize,
)
from robopolicy.real.motors.errors import MotorBusError
from robopolicy.real.motors.tables import model_spec
from robopolicy.real.robots.base import DeviceAlreadyConnectedError, Robot
from robopolicy.real.robots.config import RobotConfig, resolve_config

logger = logging.getLogger(__name__)

CalibrationSource = str | os.PathLike | Mapping[str, MotorCalibration] | None


class Arm(Robot):
    """A robot (or, through ``teleop.LeaderArm``, a leader arm) described by a RobotConfig.

    ``calibration``: None (default) loads ``calibration_path`` if it exists, else runs the interactive calibration
    when ``connect(calibrate=True)``, else falls back to the YAML defaults; "defaults" always uses the YAML defaults
    (emulator); a path loads that LeRobot JSON file; a mapping is used as is. ``bus`` replaces the MotorsBus the
    arm would build (tests, shared ports). ``prompt`` is the interactive calibration's input function.
    """

    def __init__(
        self,
        config: RobotConfig | str | os.PathLike | Mapping,
        *,
        port: str | None = None,
        cameras: Mapping[str, Camera] | None = None,
        calibration: CalibrationSource = None,
        bus: MotorsBus | None = None,
        prompt: Callable[[str], Any] = input,
    ):
        self.config = resolve_config(config)
        cfg = self.config
        self.name = cfg.name
        if bus is None:
            port = port or cfg.port
            if not port:
                where = cfg.source or "the config"
                raise ValueError(f"{cfg.name}: no serial port; set `port` in {where} or pass port=")
            motors = {m.name: Motor(m.id, m.model, m.norm_mode) for m in cfg.motors}
            bus = MotorsBus(port, motors, baudrate=cfg.baudrate, timeout_ms=cfg.timeout_ms, num_retries=cfg.num_retries)
        self.bus = bus
        self.cameras: dict[str, Camera] = (
            dict(cameras) if cameras is not None else {c.name: make_camera(c) for c in cfg.cameras}
        )
        self._max_age_ms = {c.name: c.max_age_ms for c in cfg.cameras}
        self._calibration_source = calibration
        self._prompt = prompt
        self._joints = cfg.joint_names
        self._keys = [f"{j}.pos" for j in self._joints]
        self._index = {key: i for i, key in enumerate(self._keys)}
        self._lower = np.array([m.limits[0] for m in cfg.motors])
        self._upper = np.array([m.limits[1] for m in cfg.motors])
        self._caps = np.array([m.max_relative_target or math.inf for m in cfg.motors])
        self._resolution = [model_spec(m.model).resolution for m in cfg.motors]
        # Feetech inverts in software; Dynamixel in firmware (Drive_Mode register).
        self._soft_drive_mode = cfg.protocol == "feetech"
        self._last_commanded: np.ndarray | None = None
        self.last_clamped: dict[str, str] = {}  # joint -> "limit" | "step" of the last send_action

    # ------------------------------------------------------------------ features
    @property
    def action_features(self) -> dict[str, type]:
        return dict.fromkeys(self._keys, float)

    @property
    def observation_features(self) -> dict[str, type | tuple]:
        features: dict[str, type | tuple] = dict.fromkeys(self._keys, float)
        for name, cam in self.cameras.items():
            features[name] = cam.shape
        return features

    @property
    def calibration_path(self) -> Path:
        """LeRobot's location: $HF_LEROBOT_CALIBRATION/{robots|teleoperators}/<name>/<id>.json."""
        return calibration_dir(self.config.kind, self.config.name) / f"{self.config.id}.json"

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_connected(self) -> bool:
        return self.bus.is_connected

    @property
    def is_calibrated(self) -> bool:
        """The servos hold the calibration the host uses (homing offsets and limits)."""
        if not self.is_connected or not self.bus.calibration:
            return False
        servo = self.bus.read_calibration()
        return not calibration_differs(servo, self.bus.calibration, compare_drive_mode=not self._soft_drive_mode)

    def connect(self, calibrate: bool = True) -> None:
        """Open the bus (handshake: ids and models), apply the calibration, configure, open the cameras."""
        if self.is_connected:
            raise DeviceAlreadyConnectedError(f"{self.name} is already connected")
        self.bus.connect()
        try:
            calibration = self._resolve_calibration(calibrate)
            if calibration is None:
                self.calibrate()
            else:
                self.bus.calibration = dict(calibration)
                self._write_calibration_if_needed()
            self.configure()
            for cam in self.cameras.values():
                cam.connect()
        except BaseException:
            self._abort()
            raise
        logger.info("%s connected on %s", self.name, self.bus.port)

    def _abort(self) -> None:
        for cam in self.cameras.values():
            if cam.is_connected:
                try:
                    cam.disconnect()
                except Exception:
                    logger.exception("camera %s failed to disconnect", cam.name)
        try:
            self.bus.disconnect(disable_torque=self.config.disable_torque_on_disconnect)
        except Exception:
            logger.exception("%s: bus failed to disconnect after a connect error", self.name)

    def _resolve_calibration(self, calibrate: bool) -> dict[str, MotorCalibration] | None:
        source = self._calibration_source
        defaults = self.config.default_calibration()
        if isinstance(source, Mapping):
            return self._checked(dict(source), "the given calibration")
        if source == "defaults":
            if defaults is None:
                missing = [m.name for m in self.config.motors if m.calibration is None]
                raise CalibrationError(f"{self.config.source}: motors {missing} have no default calibration")
            return defaults
        if source is not None:
            return self._checked(load_calibration(source), f"calibration file {source}")
        path = self.calibration_path
        if path.is_file():
            return self._checked(load_calibration(path), f"calibration file {path}")
        if calibrate:
            return None  # interactive
        if defaults is not None:
            logger.warning("%s: no calibration file at %s; using the defaults of %s", self.name, path,
                           self.config.source)  # fmt: skip
            return defaults
        raise CalibrationError(
            f"{self.name}: no calibration file at {path} and no defaults in {self.config.source}; "
            "connect with calibrate=True to calibrate interactively"
        )

    def _checked(self, calibration: dict[str, MotorCalibration], source: str) -> dict[str, MotorCalibration]:
        if set(calibration) != set(self._joints):
            raise CalibrationError(
                f"{source} has motors {sorted(calibration)} but {self.config.source or self.name} declares "
                f"{sorted(self._joints)}"
            )
        for m in self.config.motors:
            if calibration[m.name].id != m.id:
                raise CalibrationError(
                    f"{source}: motor {m.name!r} has id {calibration[m.name].id}, the robot description says {m.id}"
                )
        return {j: calibration[j] for j in self._joints}

    def _write_calibration_if_needed(self) -> None:
        servo = self.bus.read_calibration()
        differ = calibration_differs(servo, self.bus.calibration, compare_drive_mode=not self._soft_drive_mode)
        if differ:
            logger.info("%s: writing calibration of %s to the servos", self.name, differ)
            calibration = dict(self.bus.calibration)
            self.bus.write_calibration(calibration)
            self.bus.calibration = calibration

    def calibrate(self) -> None:
        """Interactive calibration (LeRobot's procedure), written to the servos and to ``calibration_path``.

        Leaves torque off; ``connect`` runs ``configure`` afterwards (call it yourself after a standalone calibrate).
        """
        self._require_connected()
        cfg = self.config
        calibration = calibrate_interactively(
            self.bus,
            full_turn_motors=[m.name for m in cfg.motors if m.full_turn],
            drive_modes={m.name: m.drive_mode for m in cfg.motors},
            prompt=self._prompt,
            operating_mode=cfg.calibration_operating_mode,
        )
        self.bus.calibration = dict(calibration)
        save_calibration(self.calibration_path, calibration)
        logger.info("%s: calibration saved to %s", self.name, self.calibration_path)

    def configure(self) -> None:
        """Torque off, bus defaults (Return_Delay_Time 0, ...), the YAML's registers (written only when they
        differ: EEPROM wear), then torque on for the motors that hold it, goals first set to present positions."""
        self._require_connected()
        bus = self.bus
        bus.disable_torque()
        bus.configure()
        for m in self.config.motors:
            for register, value in m.registers:
                if bus.read(register, m.name) != value:
                    bus.write(register, m.name, value)
        torqued = [m for m in self.config.motors if m.torque]
        if torqued:
            present_raw = bus.sync_read("Present_Position", [m.name for m in torqued], normalize=False)
            bus.sync_write("Goal_Position", {m.name: present_raw[m.name] for m in torqued}, normalize=False)
            bus.enable_torque([m.name for m in torqued])
            # Configured goals (spring-back grippers) after torque on: some servos reset Goal to Present then.
            goals = {m.name: m.goal for m in torqued if m.goal is not None}
            if goals:
                bus.sync_write("Goal_Position", goals, normalize=True)
        present = bus.sync_read("Present_Position", self._joints, normalize=True)
        self._last_commanded = np.array(
            [m.goal if (m.torque and m.goal is not None) else float(present[m.name]) for m in self.config.motors]
        )

    def disconnect(self) -> None:
        """Close the cameras and the bus; torque off unless ``disable_torque_on_disconnect: false`` (hold)."""
        self._require_connected()
        failures = []
        for cam in self.cameras.values():
            if cam.is_connected:
                try:
                    cam.disconnect()
                except Exception as exc:
                    failures.append(exc)
        self.bus.disconnect(disable_torque=self.config.disable_torque_on_disconnect)
        self._last_commanded = None
        if failures:
            raise failures[0]

    # ------------------------------------------------------------------ e-stop (runtime.safety.Stoppable)
    def hold(self, torque_fraction: float | None = None) -> None:
        """Hold where the arm is: goal = present position for every torqued motor (one sync read + one sync
        write); `torque_fraction` (0..1) also lowers the torque limit (Feetech Torque_Limit, Dynamixel
        Goal_Current / Goal_PWM where the model has them) so the arm can be moved by hand safely."""
        self._require_connected()
        names = [m.name for m in self.config.motors if m.torque]
        try:
            present = self.bus.sync_read("Present_Position", names, normalize=False)
        except MotorBusError:  # a motor is down: hold every motor that still answers, then report the others
            present, silent = {}, []
            for name in names:
                try:
                    present[name] = self.bus.read("Present_Position", name)
                except MotorBusError:
                    silent.append(name)
            if present:
                self.bus.sync_write("Goal_Position", present, normalize=False)
            raise MotorBusError(f"{self.name}: held {sorted(present)} at their present positions; {silent} did not "
                                "answer and keep tracking their last goal", port=self.bus.port,
                                motor=", ".join(silent)) from None
        self.bus.sync_write("Goal_Position", present, normalize=False)
        calibration = self.bus.calibration
        self._last_commanded = np.array([
            normalize(present[m.name], calibration[m.name], m.norm_mode, res, apply_drive_mode=self._soft_drive_mode)
            if m.name in present else self._last_commanded[i]
            for i, (m, res) in enumerate(zip(self.config.motors, self._resolution))
        ])
        if torque_fraction is not None:
            fraction = min(1.0, max(0.0, float(torque_fraction)))
            for m in self.config.motors:
                if not m.torque:
                    continue
                registers = model_spec(m.model).registers
                register = next((r for r in ("Torque_Limit", "Goal_PWM") if r in registers), None)
                if register is not None:
                    full = 1000 if register == "Torque_Limit" else 885
                    self.bus.write(register, m.name, round(full * fraction))

    def torque_off(self) -> None:
        """Cut torque on every motor (the arm falls under gravity: prefer `hold`)."""
        self._require_connected()
        self.bus.disable_torque()

    # ------------------------------------------------------------------ per tick
    def read_positions(self) -> dict[str, float]:
        """``{"<joint>.pos": value}`` in normalized units, one sync read."""
        self._require_connected()
        present = self.bus.sync_read("Present_Position", self._joints, normalize=True)
        return {key: float(present[j]) for key, j in zip(self._keys, self._joints)}

    def get_observation(self) -> dict[str, Any]:
        """Joint positions (one sync read) + the newest camera frames (``read_latest``: never waits)."""
        obs: dict[str, Any] = self.read_positions()
        for name, cam in self.cameras.items():
            obs[name] = cam.read_latest(self._max_age_ms.get(name, 500.0))
        return obs

    @property
    def last_commanded(self) -> dict[str, float]:
        """The goals of the last send_action (after connect: the positions held when torque came on)."""
        self._require_connected()
        return dict(zip(self._keys, self._last_commanded.tolist()))

    def send_action(self, action: Mapping[str, float]) -> dict[str, float]:
        """Clamp (limits, step cap against the last commanded goal, calibrated range) and send every joint's goal
        in one sync write; joints missing from ``action`` keep their last goal. Returns the goals sent."""
        self._require_connected()
        target = self._last_commanded.copy()
        for key, value in action.items():
            index = self._index.get(key)
            if index is None:
                raise KeyError(f"{self.name}: unknown action key {key!r}; expected keys {self._keys}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{self.name}: action {key} is {value}; refusing to send a non-finite goal")
            target[index] = value
        limited = np.clip(target, self._lower, self._upper)
        last = self._last_commanded
        stepped = np.clip(limited, last - self._caps, last + self._caps)
        ticks: dict[str, int] = {}
        sent = np.empty_like(stepped)
        calibration = self.bus.calibration
        clamped: dict[str, str] = {}
        soft = self._soft_drive_mode
        # Tick rounding must not step outside the limits / step cap: the allowed interval per joint.
        low = np.maximum(self._lower, last - self._caps)
        high = np.minimum(self._upper, last + self._caps)
        for i, m in enumerate(self.config.motors):
            calib, res = calibration[m.name], self._resolution[i]
            raw = unnormalize(stepped[i], calib, m.norm_mode, res, apply_drive_mode=soft)
            value = normalize(raw, calib, m.norm_mode, res, apply_drive_mode=soft)
            if low[i] <= high[i] and not low[i] <= value <= high[i]:
                for neighbour in (raw - 1, raw + 1):
                    candidate = normalize(neighbour, calib, m.norm_mode, res, apply_drive_mode=soft)
                    if low[i] <= candidate <= high[i]:
                        raw, value = neighbour, candidate
                        break
            ticks[m.name] = raw
            sent[i] = value
            if limited[i] != target[i]:
                clamped[m.name] = "limit"
            elif stepped[i] != limited[i]:
                clamped[m.name] = "step"
        self.bus.sync_write("Goal_Position", ticks, normalize=False)
        self._last_commanded = sent
        self.last_clamped = clamped
        return dict(zip(self._keys, sent.tolist()))


def make_robot(
    path_or_config: RobotConfig | str | os.PathLike | Mapping,
    *,
    port: str | None = None,
    cameras: Mapping[str, Camera] | None = None,
    **kwargs: Any,
) -> Arm:
    """A robot from a description (YAML path, mapping or RobotConfig); see Arm for the keyword arguments."""
    config = resolve_config(path_or_config)
    if config.kind != "robot":
        raise ValueError(f"{config.source or config.name} describes a {config.kind}; use make_teleoperator for it")
    return Arm(config, port=port, cameras=cameras, **kwargs)
