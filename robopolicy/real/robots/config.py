"""Robot descriptions: typed, frozen configs loaded from the YAML files under the top-level ``real/`` folder.

A description names the motors (id, model, joint name, normalization mode, joint limits in normalized units),
the calibration defaults used when no calibration file exists (e.g. against the emulator), the registers
``configure()`` writes, which motors hold torque, and the per-tick step cap (``max_relative_target``).
See ``real/so101_follower.yaml`` for a commented example. Errors name the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from robopolicy.real.motors.calibration import MotorCalibration, NormMode
from robopolicy.real.motors.tables import model_spec

KINDS = ("robot", "teleoperator")
CAMERA_TYPES = ("opencv", "sim")
# Normalized value bounds per mode: joint limits and goals must lie inside them.
MODE_BOUNDS = {
    NormMode.RANGE_M100_100: (-100.0, 100.0),
    NormMode.RANGE_0_100: (0.0, 100.0),
    NormMode.DEGREES: (-180.0, 180.0),
}

ROBOT_KEYS = {
    "name", "kind", "id", "port", "baudrate", "timeout_ms", "num_retries", "motors", "registers", "torque",
    "max_relative_target", "disable_torque_on_disconnect", "calibration", "cameras", "description",
}  # fmt: skip
MOTOR_KEYS = {
    "id", "model", "norm_mode", "limits", "drive_mode", "full_turn", "calibration", "registers", "torque", "goal",
    "max_relative_target",
}  # fmt: skip
CALIBRATION_KEYS = {"operating_mode"}
MOTOR_CALIBRATION_KEYS = {"homing_offset", "range_min", "range_max"}
CAMERA_KEYS = {"type", "source", "fps", "width", "height", "max_age_ms"}


class RobotConfigError(ValueError):
    """A robot description is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class MotorConfig:
    """One joint. ``limits`` are in normalized units (degrees, -100..100 or 0..100 by ``norm_mode``)."""

    name: str
    id: int
    model: str
    norm_mode: NormMode
    limits: tuple[float, float]
    drive_mode: int = 0  # 1 = inverted (Dynamixel: Drive_Mode register; Feetech: host side)
    full_turn: bool = False  # calibration gives this joint the whole turn 0..res-1 instead of a sweep
    calibration: MotorCalibration | None = None  # default record when no calibration file exists
    registers: tuple[tuple[str, int], ...] = ()  # raw register writes of configure(), torque off, in order
    torque: bool = True  # torque on after connect (leader arms: off, except a spring-back gripper)
    goal: float | None = None  # normalized goal written before torque on (Koch leader gripper: 50)
    max_relative_target: float | None = None  # per-tick cap of |goal - last commanded goal|, normalized units


@dataclass(frozen=True)
class CameraConfig:
    """A camera attached to the robot: ``source`` is a device index, /dev/video* path or video file."""

    name: str
    type: str = "opencv"
    source: int | str = 0
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    max_age_ms: float = 500.0  # read_latest staleness bound used by get_observation


@dataclass(frozen=True)
class RobotConfig:
    """A robot or teleoperator arm: one bus of motors (+ cameras). ``name`` is the device type (LeRobot's
    calibration directory, e.g. "so101_follower"); ``id`` names the calibration file ``<id>.json``."""

    name: str
    kind: str
    motors: tuple[MotorConfig, ...]
    port: str | None = None
    id: str = "default"
    baudrate: int = 1_000_000
    timeout_ms: float | None = None
    num_retries: int = 2
    calibration_operating_mode: int | None = None  # Operating_Mode during calibration (default per protocol)
    disable_torque_on_disconnect: bool = True
    cameras: tuple[CameraConfig, ...] = ()
    source: str | None = None  # the YAML file, for messages

    @property
    def joint_names(self) -> list[str]:
        return [m.name for m in self.motors]

    @property
    def protocol(self) -> str:
        return model_spec(self.motors[0].model).protocol

    def motor(self, name: str) -> MotorConfig:
        for m in self.motors:
            if m.name == name:
                return m
        raise KeyError(f"{self.name}: no motor {name!r}; motors are {self.joint_names}")

    def default_calibration(self) -> dict[str, MotorCalibration] | None:
        """The YAML's calibration defaults for every motor, or None when any motor has none."""
        if any(m.calibration is None for m in self.motors):
            return None
        return {m.name: m.calibration for m in self.motors}

    def replace(self, **changes: Any) -> RobotConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> RobotConfig:
        """Load and validate a description; RobotConfigError names the file and key on bad input."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"robot description {path} not found (see the real/ folder for examples)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RobotConfigError(f"{path}: invalid YAML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<robot config>") -> RobotConfig:
        return _Parser(source).robot(data)


class _Parser:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> RobotConfigError:
        return RobotConfigError(f"{self.source}: {key}: {message}")

    def mapping(self, value: Any, key: str, allowed: set[str] | None = None) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise self.fail(key, f"unknown keys {unknown}; allowed keys are {sorted(allowed)}")
        return value

    def integer(self, value: Any, key: str, lo: int | None = None, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(key, f"{value} is outside {lo}..{hi}")
        return value

    def number(self, value: Any, key: str, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"expected a number, got {value!r}")
        if positive and not value > 0:
            raise self.fail(key, f"must be > 0, got {value}")
        return float(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value or "/" in value or value.strip() != value:
            raise self.fail(key, f"expected a non-empty name without '/', got {value!r}")
        return value

    def robot(self, data: Any) -> RobotConfig:
        data = self.mapping(data, "top level", ROBOT_KEYS)
        for required in ("name", "kind", "motors"):
            if required not in data:
                raise self.fail(required, "missing (required)")
        name = self.name(data["name"], "name")
        kind = data["kind"]
        if kind not in KINDS:
            raise self.fail("kind", f"must be one of {KINDS}, got {kind!r}")
        port = data.get("port")
        if port is not None and not isinstance(port, str):
            raise self.fail("port", f"expected a string such as /dev/ttyACM0, got {port!r}")
        robot_id = self.name(str(data.get("id", "default")), "id")
        baudrate = self.integer(data.get("baudrate", 1_000_000), "baudrate", 1)
        timeout_ms = data.get("timeout_ms")
        timeout_ms = None if timeout_ms is None else self.number(timeout_ms, "timeout_ms", positive=True)
        num_retries = self.integer(data.get("num_retries", 2), "num_retries", 0, 100)
        torque = self.boolean(data.get("torque", kind == "robot"), "torque")
        hold = self.boolean(data.get("disable_torque_on_disconnect", True), "disable_torque_on_disconnect")
        calibration = self.mapping(data.get("calibration", {}) or {}, "calibration", CALIBRATION_KEYS)
        cal_mode = calibration.get("operating_mode")
        cal_mode = None if cal_mode is None else self.integer(cal_mode, "calibration.operating_mode", 0, 255)

        shared_registers = self.registers(data.get("registers") or {}, "registers")
        motors_data = self.mapping(data["motors"], "motors")
        if not motors_data:
            raise self.fail("motors", "at least one motor is required")
        cap = data.get("max_relative_target")
        if isinstance(cap, dict):
            self.mapping(cap, "max_relative_target", set(motors_data))
            caps = {m: self.cap(v, f"max_relative_target.{m}") for m, v in cap.items()}
        else:
            caps = dict.fromkeys(motors_data, self.cap(cap, "max_relative_target"))

        motors = tuple(
            self.motor(str(mname), mdata, shared_registers, torque, caps.get(mname))
            for mname, mdata in motors_data.items()
        )
        protocols = {model_spec(m.model).protocol for m in motors}
        if len(protocols) > 1:
            raise self.fail("motors", f"all motors on one bus must share a protocol, got {sorted(protocols)}")
        ids = [m.id for m in motors]
        if len(set(ids)) != len(ids):
            raise self.fail("motors", f"duplicate motor ids {ids}")
        cameras = tuple(
            self.camera(str(cname), cdata)
            for cname, cdata in self.mapping(data.get("cameras") or {}, "cameras").items()
        )
        clash = {c.name for c in cameras} & {f"{m.name}.pos" for m in motors}
        if clash:
            raise self.fail("cameras", f"camera names {sorted(clash)} clash with joint keys")
        return RobotConfig(
            name=name, kind=kind, motors=motors, port=port, id=robot_id, baudrate=baudrate, timeout_ms=timeout_ms,
            num_retries=num_retries, calibration_operating_mode=cal_mode, disable_torque_on_disconnect=hold,
            cameras=cameras, source=self.source,
        )  # fmt: skip

    def cap(self, value: Any, key: str) -> float | None:
        return None if value is None else self.number(value, key, positive=True)

    def registers(self, value: Any, key: str) -> tuple[tuple[str, int], ...]:
        value = self.mapping(value, key)
        return tuple((str(reg), self.integer(v, f"{key}.{reg}")) for reg, v in value.items())

    def motor(
        self, name: str, data: Any, shared: tuple[tuple[str, int], ...], torque: bool, cap: float | None
    ) -> MotorConfig:
        key = f"motors.{name}"
        self.name(name, key)
        data = self.mapping(data, key, MOTOR_KEYS)
        for required in ("id", "model"):
            if required not in data:
                raise self.fail(f"{key}.{required}", "missing (required)")
        motor_id = self.integer(data["id"], f"{key}.id", 0, 252)
        try:
            spec = model_spec(str(data["model"]))
        except KeyError as exc:
            raise self.fail(f"{key}.model", str(exc.args[0])) from None
        try:
            mode = NormMode(data.get("norm_mode", NormMode.RANGE_M100_100.value))
        except ValueError:
            raise self.fail(f"{key}.norm_mode", f"must be one of {[m.value for m in NormMode]}") from None
        lo_bound, hi_bound = MODE_BOUNDS[mode]
        limits = data.get("limits", [lo_bound, hi_bound])
        if not isinstance(limits, (list, tuple)) or len(limits) != 2:
            raise self.fail(f"{key}.limits", f"expected [min, max], got {limits!r}")
        lo, hi = (self.number(v, f"{key}.limits") for v in limits)
        if not lo_bound <= lo < hi <= hi_bound:
            raise self.fail(
                f"{key}.limits", f"need {lo_bound} <= min < max <= {hi_bound} in {mode.value}, got {limits}"
            )
        drive_mode = self.integer(data.get("drive_mode", 0), f"{key}.drive_mode", 0, 1)
        calibration = None
        if data.get("calibration") is not None:
            cal = self.mapping(data["calibration"], f"{key}.calibration", MOTOR_CALIBRATION_KEYS)
            missing = sorted(MOTOR_CALIBRATION_KEYS - set(cal))
            if missing:
                raise self.fail(f"{key}.calibration", f"missing keys {missing}")
            vals = {k: self.integer(cal[k], f"{key}.calibration.{k}") for k in MOTOR_CALIBRATION_KEYS}
            if not 0 <= vals["range_min"] < vals["range_max"] <= spec.resolution - 1:
                raise self.fail(
                    f"{key}.calibration", f"need 0 <= range_min < range_max <= {spec.resolution - 1}, got {vals}"
                )
            homing = spec.registers.get("Homing_Offset")
            if homing is not None and not homing.min_value <= vals["homing_offset"] <= homing.max_value:
                raise self.fail(f"{key}.calibration.homing_offset", f"outside {homing.min_value}..{homing.max_value}")
            calibration = MotorCalibration(id=motor_id, drive_mode=drive_mode, **vals)
        registers = dict(shared)
        registers.update(self.registers(data.get("registers") or {}, f"{key}.registers"))
        for reg, value in registers.items():
            try:
                register = spec.register(reg)
            except KeyError as exc:
                raise self.fail(f"{key}.registers.{reg}", str(exc.args[0])) from None
            if register.access != "rw":
                raise self.fail(f"{key}.registers.{reg}", "register is read-only")
            if not register.min_value <= value <= register.max_value:
                raise self.fail(
                    f"{key}.registers.{reg}", f"{value} outside {register.min_value}..{register.max_value}"
                )
        goal = data.get("goal")
        if goal is not None:
            goal = self.number(goal, f"{key}.goal")
            if not lo <= goal <= hi:
                raise self.fail(f"{key}.goal", f"{goal} outside the joint limits [{lo}, {hi}]")
        motor_cap = self.cap(data["max_relative_target"], f"{key}.max_relative_target") if (
            "max_relative_target" in data
        ) else cap
        return MotorConfig(
            name=name, id=motor_id, model=spec.name, norm_mode=mode, limits=(lo, hi), drive_mode=drive_mode,
            full_turn=self.boolean(data.get("full_turn", False), f"{key}.full_turn"), calibration=calibration,
            registers=tuple(registers.items()), torque=self.boolean(data.get("torque", torque), f"{key}.torque"),
            goal=goal, max_relative_target=motor_cap,
        )  # fmt: skip

    def camera(self, name: str, data: Any) -> CameraConfig:
        key = f"cameras.{name}"
        self.name(name, key)
        data = self.mapping(data, key, CAMERA_KEYS)
        ctype = data.get("type", "opencv")
        if ctype not in CAMERA_TYPES:
            raise self.fail(f"{key}.type", f"must be one of {CAMERA_TYPES}, got {ctype!r}")
        source = data.get("source", 0)
        if isinstance(source, bool) or not isinstance(source, (int, str)):
            raise self.fail(f"{key}.source", f"expected a device index or a path, got {source!r}")
        fps = data.get("fps")
        width, height = data.get("width"), data.get("height")
        return CameraConfig(
            name=name,
            type=ctype,
            source=source,
            fps=None if fps is None else self.number(fps, f"{key}.fps", positive=True),
            width=None if width is None else self.integer(width, f"{key}.width", 1),
            height=None if height is None else self.integer(height, f"{key}.height", 1),
            max_age_ms=self.number(data.get("max_age_ms", 500.0), f"{key}.max_age_ms", positive=True),
        )


def resolve_config(path_or_config: str | os.PathLike | RobotConfig | Mapping) -> RobotConfig:
    """A RobotConfig from a YAML path, a mapping or a config (returned as is)."""
    if isinstance(path_or_config, RobotConfig):
        return path_or_config
    if isinstance(path_or_config, Mapping):
        return RobotConfig.from_dict(dict(path_or_config))
    return RobotConfig.from_yaml(path_or_config)
