"""Servo calibration: records, normalization, LeRobot-compatible JSON files and the interactive procedure.

A calibration record holds what LeRobot stores per motor: ``id``, ``drive_mode`` (0 normal, 1 inverted),
``homing_offset`` (raw ticks, written to the servo's Homing_Offset register) and ``range_min`` / ``range_max``
(raw Present_Position ticks, after the homing offset, swept by the user).

Normalization maps raw ticks to the units policies see (formulas as in LeRobot's ``MotorsBus._normalize``):

==================  =====================================================
``RANGE_M100_100``  (v - min) / (max - min) * 200 - 100
``RANGE_0_100``     (v - min) / (max - min) * 100            (grippers)
``DEGREES``         (v - mid) * 360 / (resolution - 1), mid = (min + max) / 2
==================  =====================================================

``drive_mode == 1`` negates the result (``100 - x`` in ``RANGE_0_100``).

Difference from LeRobot: the host clamps in **every** mode. LeRobot clamps raw values into [min, max] only in the
range modes and never clamps ``DEGREES`` (neither when reading nor when writing goals), so a bad degrees target
reaches the servo unchanged; here ``unnormalize`` clamps the resulting ticks into [range_min, range_max] in every
mode, and ``normalize`` clamps the raw reading the same way, so the two stay inverse to each other.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_KEYS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")
KINDS = ("robots", "teleoperators")


class CalibrationError(ValueError):
    """A calibration record, file or procedure is invalid; the message names the file and/or motor."""


class NormMode(str, Enum):
    """How raw ticks map to the values policies see."""

    RANGE_M100_100 = "range_m100_100"
    RANGE_0_100 = "range_0_100"
    DEGREES = "degrees"


@dataclass(frozen=True)
class MotorCalibration:
    """One motor's calibration (LeRobot's record). Ticks are raw register units (4096 per revolution)."""

    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int

    def __post_init__(self) -> None:
        for key in CALIBRATION_KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise CalibrationError(f"calibration {key} must be an integer, got {value!r}")
            object.__setattr__(self, key, int(value))
        if self.drive_mode not in (0, 1):
            raise CalibrationError(f"drive_mode of motor id {self.id} must be 0 or 1, got {self.drive_mode}")

    def to_dict(self) -> dict[str, int]:
        """The record as LeRobot writes it (keys in LeRobot's order)."""
        return asdict(self)


def _check_range(calib: MotorCalibration) -> tuple[int, int]:
    if calib.range_max <= calib.range_min:
        raise CalibrationError(
            f"invalid calibration for motor id {calib.id}: range_min {calib.range_min} must be below range_max "
            f"{calib.range_max}; recalibrate the arm (move each joint through its full range)"
        )
    return calib.range_min, calib.range_max


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) or np.ndim(value) == 0


def _clip(value, lo: float, hi: float):
    """Clip a Python float (fast path: this runs per motor per tick) or an array."""
    if isinstance(value, float):
        return lo if value < lo else hi if value > hi else value
    return np.clip(value, lo, hi)


def _mode(mode: NormMode | str) -> NormMode:
    return mode if isinstance(mode, NormMode) else NormMode(mode)


def normalize(
    raw: np.ndarray | int,
    calib: MotorCalibration,
    mode: NormMode | str,
    resolution: int = 4096,
    *,
    apply_drive_mode: bool = True,
) -> float | np.ndarray:
    """Raw ticks -> normalized units (float, or float64 array of the same shape).

    The raw value is first clamped into [range_min, range_max] in every mode (DEGREES included, unlike LeRobot).
    ``apply_drive_mode=False`` is for buses whose servos invert in firmware (Dynamixel Drive_Mode register);
    Feetech inverts in software, so its bus keeps the default.
    """
    mode = _mode(mode)
    lo, hi = _check_range(calib)
    scalar = _is_scalar(raw)
    value = _clip(float(raw) if scalar else np.asarray(raw, dtype=np.float64), lo, hi)
    invert = apply_drive_mode and calib.drive_mode == 1
    if mode is NormMode.RANGE_M100_100:
        out = (value - lo) / (hi - lo) * 200.0 - 100.0
        out = -out if invert else out
    elif mode is NormMode.RANGE_0_100:
        out = (value - lo) / (hi - lo) * 100.0
        out = 100.0 - out if invert else out
    else:
        mid = (lo + hi) / 2.0
        out = (value - mid) * 360.0 / (resolution - 1)
        out = -out if invert else out
    return float(out) if scalar else out


def unnormalize(
    value: np.ndarray | float,
    calib: MotorCalibration,
    mode: NormMode | str,
    resolution: int = 4096,
    *,
    apply_drive_mode: bool = True,
) -> int | np.ndarray:
    """Normalized units -> raw ticks (int, or int64 array), rounded to the nearest tick (half to even).

    Clamps in every mode: range modes clamp the value to [-100, 100] / [0, 100] first, and the resulting ticks are
    clamped into [range_min, range_max] (for DEGREES this is the only clamp; LeRobot does not clamp DEGREES).
    NaN raises: a NaN goal must never reach a servo.
    """
    mode = _mode(mode)
    lo, hi = _check_range(calib)
    scalar = _is_scalar(value)
    target = float(value) if scalar else np.asarray(value, dtype=np.float64)
    if (math.isnan(target) if scalar else np.isnan(target).any()):
        raise ValueError(f"cannot send NaN to motor id {calib.id} ({mode.value} mode)")
    invert = apply_drive_mode and calib.drive_mode == 1
    if mode is NormMode.RANGE_M100_100:
        target = _clip(target, -100.0, 100.0)
        target = -target if invert else target
        ticks = (target + 100.0) / 200.0 * (hi - lo) + lo
    elif mode is NormMode.RANGE_0_100:
        target = _clip(target, 0.0, 100.0)
        target = 100.0 - target if invert else target
        ticks = target / 100.0 * (hi - lo) + lo
    else:
        target = -target if invert else target
        # Clip before rounding so that +-inf maps to the range ends instead of overflowing the int cast.
        ticks = _clip(target * (resolution - 1) / 360.0 + (lo + hi) / 2.0, float(lo), float(hi))
    if scalar:
        return min(max(round(ticks), lo), hi)  # round() is half-to-even like np.rint
    return np.clip(np.rint(ticks), lo, hi).astype(np.int64)


# ----------------------------------------------------------------------------------------------- files


def calibration_root() -> Path:
    """Root of LeRobot's calibration cache: $HF_LEROBOT_CALIBRATION, else $HF_LEROBOT_HOME/calibration,
    else $HF_HOME/lerobot/calibration, else ~/.cache/huggingface/lerobot/calibration."""
    if os.environ.get("HF_LEROBOT_CALIBRATION"):
        return Path(os.environ["HF_LEROBOT_CALIBRATION"]).expanduser()
    if os.environ.get("HF_LEROBOT_HOME"):
        return Path(os.environ["HF_LEROBOT_HOME"]).expanduser() / "calibration"
    if os.environ.get("HF_HOME"):
        hf_home = Path(os.environ["HF_HOME"]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        hf_home = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "huggingface"
    else:
        hf_home = Path.home() / ".cache" / "huggingface"
    return hf_home / "lerobot" / "calibration"


def calibration_dir(kind: str, name: str) -> Path:
    """Directory LeRobot uses for a device type: ``<root>/{robots|teleoperators}/<name>`` (see calibration_root).

    ``kind`` is "robots" or "teleoperators" (singular forms accepted); files inside are ``<robot id>.json``.
    """
    plural = kind if kind.endswith("s") else kind + "s"
    if plural not in KINDS:
        raise ValueError(f"calibration kind must be one of {KINDS}, got {kind!r}")
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid device name for a calibration directory: {name!r}")
    return calibration_root() / plural / name


def calibration_from_dict(data: Any, source: str = "calibration") -> dict[str, MotorCalibration]:
    """Parse LeRobot's ``{motor: {id, drive_mode, homing_offset, range_min, range_max}}`` mapping."""
    if not isinstance(data, dict) or not data:
        raise CalibrationError(f"{source}: expected a non-empty JSON object of motors, got {type(data).__name__}")
    out: dict[str, MotorCalibration] = {}
    for motor, entry in data.items():
        if not isinstance(entry, dict):
            raise CalibrationError(f"{source}: motor {motor!r}: expected an object, got {type(entry).__name__}")
        missing = [key for key in CALIBRATION_KEYS if key not in entry]
        extra = sorted(set(entry) - set(CALIBRATION_KEYS))
        if missing or extra:
            raise CalibrationError(
                f"{source}: motor {motor!r}: missing keys {missing} / unknown keys {extra}; "
                f"expected exactly {list(CALIBRATION_KEYS)}"
            )
        try:
            calib = MotorCalibration(**{key: entry[key] for key in CALIBRATION_KEYS})
        except CalibrationError as exc:
            raise CalibrationError(f"{source}: motor {motor!r}: {exc}") from None
        if calib.range_max <= calib.range_min:
            raise CalibrationError(
                f"{source}: motor {motor!r}: range_min {calib.range_min} must be below range_max {calib.range_max}; "
                "recalibrate this arm"
            )
        out[str(motor)] = calib
    ids = [c.id for c in out.values()]
    if len(set(ids)) != len(ids):
        raise CalibrationError(f"{source}: duplicate motor ids {sorted(ids)}")
    return out


def load_calibration(path: str | os.PathLike) -> dict[str, MotorCalibration]:
    """Read a LeRobot calibration JSON file; errors name the file and the motor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {path} not found; run the calibration (connect(calibrate=True))")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"calibration file {path} is not valid JSON: {exc}") from None
    return calibration_from_dict(data, source=f"calibration file {path}")


def save_calibration(path: str | os.PathLike, calibration: Mapping[str, MotorCalibration]) -> Path:
    """Write LeRobot's JSON (indent 4, motors in the given order) atomically: temp file + fsync + os.replace."""
    path = Path(path)
    if not calibration:
        raise CalibrationError(f"refusing to write an empty calibration to {path}")
    payload = {str(motor): MotorCalibration(**asdict(c)).to_dict() for motor, c in calibration.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=4)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------------------ procedure

# Operating modes used during calibration: Feetech position (0), Dynamixel extended position (4).
CALIBRATION_OPERATING_MODE = {"feetech": 0, "dynamixel": 4}


def half_turn_homing_offset(actual: int, protocol: str, resolution: int = 4096) -> int:
    """Homing offset that makes Present_Position read ``resolution // 2 - 1`` (2047) at raw position ``actual``.

    Dynamixel: Present = Actual + Homing_Offset. Feetech: Present = Actual - Homing_Offset (opposite sign).
    """
    centre = (resolution - 1) // 2
    if protocol == "dynamixel":
        return centre - int(actual)
    if protocol == "feetech":
        return int(actual) - centre
    raise ValueError(f"unknown protocol {protocol!r}")


def _model_resolution(bus: Any, motor: str) -> int:
    from robopolicy.real.motors.tables import model_spec

    return model_spec(bus.motors[motor].model).resolution


def _homing_register_limit(bus: Any, motor: str) -> tuple[int, int] | None:
    from robopolicy.real.motors.tables import model_spec

    spec = model_spec(bus.motors[motor].model)
    reg = spec.registers.get("Homing_Offset")
    return (reg.min_value, reg.max_value) if reg is not None else None


def _sweep(
    sample: Callable[[], Mapping[str, int]],
    motors: list[str],
    done: threading.Event,
    period_s: float,
    on_sample: Callable[[Mapping[str, int], Mapping[str, int], Mapping[str, int]], None] | None,
) -> tuple[dict[str, int], dict[str, int]]:
    first = sample()
    mins = {m: int(first[m]) for m in motors}
    maxes = dict(mins)
    while True:
        finished = done.is_set()  # read before sampling so the last movement before Enter is still recorded
        positions = sample()
        for m in motors:
            mins[m] = min(mins[m], int(positions[m]))
            maxes[m] = max(maxes[m], int(positions[m]))
        if on_sample is not None:
            on_sample(positions, mins, maxes)
        if finished:
            return mins, maxes
        done.wait(period_s)


def calibrate_interactively(
    bus: Any,
    *,
    full_turn_motors: Iterable[str] = (),
    drive_modes: Mapping[str, int] | None = None,
    prompt: Callable[[str], Any] = input,
    sample_positions: Callable[[], Mapping[str, int]] | None = None,
    on_sample: Callable[[Mapping[str, int], Mapping[str, int], Mapping[str, int]], None] | None = None,
    operating_mode: int | None = None,
    sample_period_s: float = 0.02,
    write: bool = True,
) -> dict[str, MotorCalibration]:
    """LeRobot's calibration procedure on a connected ``MotorsBus``; returns ``{motor: MotorCalibration}``.

    1. Torque off; Operating_Mode = ``operating_mode`` (default: Feetech 0 position, Dynamixel 4 extended position);
       Dynamixel motors with ``drive_modes[m] == 1`` get Drive_Mode bit 0 set (firmware inversion).
    2. ``prompt`` asks the user to centre the arm. Half-turn homing: Homing_Offset 0 and limits 0..res-1 are written,
       raw positions read, and offsets written so that Present_Position reads res/2 - 1 (2047).
    3. ``prompt`` asks the user to sweep every joint; it runs in a helper thread while this thread samples positions
       (``sample_positions``, default one raw sync_read) every ``sample_period_s`` until the prompt returns.
       ``full_turn_motors`` get 0..res-1. A joint that never moved raises CalibrationError naming it.
    4. With ``write``, offsets, limits (and Dynamixel drive mode) are written to EEPROM via ``bus.write_calibration``.

    The bus must already be connected; the bus thread (this one) is the only one touching the serial port.
    """
    motors = list(bus.motors)
    full_turn = set(full_turn_motors)
    drive_modes = dict(drive_modes or {})
    unknown = (full_turn | set(drive_modes)) - set(motors)
    if unknown:
        raise CalibrationError(f"calibration names unknown motors {sorted(unknown)}; bus motors are {motors}")
    protocol = bus.protocol
    if operating_mode is None:
        operating_mode = CALIBRATION_OPERATING_MODE[protocol]
    if sample_positions is None:

        def sample_positions() -> Mapping[str, int]:
            return bus.sync_read("Present_Position", motors, normalize=False)

    bus.disable_torque()
    for motor in motors:
        bus.write("Operating_Mode", motor, operating_mode)
        if protocol == "dynamixel":  # bit 0 = reverse; keep the other bits (profile / torque-on-goal options)
            current = int(bus.read("Drive_Mode", motor))
            bus.write("Drive_Mode", motor, (current & ~1) | int(drive_modes.get(motor, 0)))

    prompt("Move the arm to the middle of its range of motion (every joint centred) and press Enter...")
    resolutions = {m: _model_resolution(bus, m) for m in motors}
    for motor in motors:
        bus.write("Homing_Offset", motor, 0)
        bus.write("Min_Position_Limit", motor, 0)
        bus.write("Max_Position_Limit", motor, resolutions[motor] - 1)
    actual = bus.sync_read("Present_Position", motors, normalize=False)
    offsets: dict[str, int] = {}
    for motor in motors:
        offset = half_turn_homing_offset(actual[motor], protocol, resolutions[motor])
        limit = _homing_register_limit(bus, motor)
        if limit is not None and not limit[0] <= offset <= limit[1]:
            raise CalibrationError(
                f"motor {motor!r}: homing offset {offset} (raw position {actual[motor]}) does not fit the "
                f"Homing_Offset register ({limit[0]}..{limit[1]}); move the joint a little away from the end of its "
                "turn and calibrate again"
            )
        offsets[motor] = offset
        bus.write("Homing_Offset", motor, offset)

    swept = [m for m in motors if m not in full_turn]
    done = threading.Event()
    failure: list[BaseException] = []

    def wait_for_user() -> None:
        try:
            prompt(
                f"Move each joint ({', '.join(swept)}) through its full range of motion, then press Enter to stop..."
            )
        except BaseException as exc:  # surfaced in the calling thread below
            failure.append(exc)
        finally:
            done.set()

    mins: dict[str, int] = {}
    maxes: dict[str, int] = {}
    if swept:
        waiter = threading.Thread(target=wait_for_user, name="calibration-prompt", daemon=True)
        waiter.start()
        try:
            mins, maxes = _sweep(sample_positions, swept, done, sample_period_s, on_sample)
        finally:
            done.set()
        waiter.join(timeout=0.1)
        if failure:
            raise failure[0]
        still = [m for m in swept if mins[m] == maxes[m]]
        if still:
            raise CalibrationError(
                f"motors {still} did not move during the range sweep (min == max); move every joint through its "
                "full range before pressing Enter"
            )
    for motor in full_turn:
        mins[motor] = 0
        maxes[motor] = resolutions[motor] - 1

    calibration = {
        motor: MotorCalibration(
            id=bus.motors[motor].id,
            drive_mode=int(drive_modes.get(motor, 0)),
            homing_offset=offsets[motor],
            range_min=mins[motor],
            range_max=maxes[motor],
        )
        for motor in motors
    }
    if write:
        bus.write_calibration(calibration)
    return calibration


def calibration_differs(
    a: Mapping[str, MotorCalibration], b: Mapping[str, MotorCalibration], *, compare_drive_mode: bool = True
) -> list[str]:
    """Motors whose records differ between ``a`` and ``b`` (missing on either side counts as different).

    Feetech servos have no drive-mode register (inversion is host-side), so compare with ``compare_drive_mode=False``.
    """
    diff = []
    for motor in dict.fromkeys([*a, *b]):
        ca, cb = a.get(motor), b.get(motor)
        if ca is None or cb is None:
            diff.append(motor)
            continue
        same = (ca.homing_offset, ca.range_min, ca.range_max) == (cb.homing_offset, cb.range_min, cb.range_max)
        if compare_drive_mode:
            same = same and ca.drive_mode == cb.drive_mode
        if not same:
            diff.append(motor)
    return diff
