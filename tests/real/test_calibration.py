"""Calibration records, normalization formulas, LeRobot JSON files and the interactive procedure."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from robopolicy.real.motors.calibration import (
    CalibrationError,
    MotorCalibration,
    NormMode,
    calibrate_interactively,
    calibration_differs,
    calibration_dir,
    calibration_root,
    half_turn_homing_offset,
    load_calibration,
    normalize,
    save_calibration,
    unnormalize,
)

pytestmark = pytest.mark.timeout(20)

CAL = MotorCalibration(id=1, drive_mode=0, homing_offset=0, range_min=1000, range_max=3000)
INV = MotorCalibration(id=1, drive_mode=1, homing_offset=0, range_min=1000, range_max=3000)


# ----------------------------------------------------------------------------------------- formulas


def test_hand_computed_values():
    assert normalize(1500, CAL, NormMode.RANGE_M100_100) == pytest.approx(-50.0)
    assert normalize(2500, CAL, NormMode.RANGE_M100_100) == pytest.approx(50.0)
    assert normalize(1500, CAL, NormMode.RANGE_0_100) == pytest.approx(25.0)
    assert normalize(3000, CAL, NormMode.DEGREES) == pytest.approx(1000 * 360 / 4095)
    assert normalize(2000, CAL, NormMode.DEGREES) == 0.0
    # resolution matters for degrees only
    assert normalize(2100, CAL, NormMode.DEGREES, resolution=1024) == pytest.approx(100 * 360 / 1023)
    assert unnormalize(-50.0, CAL, NormMode.RANGE_M100_100) == 1500
    assert unnormalize(25.0, CAL, NormMode.RANGE_0_100) == 1500
    assert unnormalize(45.0, CAL, "degrees") == round(2000 + 45 * 4095 / 360)


def test_drive_mode_inverts():
    assert normalize(1500, INV, NormMode.RANGE_M100_100) == pytest.approx(50.0)
    assert normalize(1500, INV, NormMode.RANGE_0_100) == pytest.approx(75.0)
    assert normalize(2500, INV, NormMode.DEGREES) == pytest.approx(-500 * 360 / 4095)
    assert unnormalize(50.0, INV, NormMode.RANGE_M100_100) == 1500
    assert unnormalize(75.0, INV, NormMode.RANGE_0_100) == 1500
    assert unnormalize(-500 * 360 / 4095, INV, NormMode.DEGREES) == 2500
    # firmware-inverting buses (Dynamixel Drive_Mode) skip the software inversion
    assert normalize(1500, INV, NormMode.RANGE_M100_100, apply_drive_mode=False) == pytest.approx(-50.0)
    assert unnormalize(-50.0, INV, NormMode.RANGE_M100_100, apply_drive_mode=False) == 1500


@pytest.mark.parametrize("mode", list(NormMode))
@pytest.mark.parametrize("calib", [CAL, INV, MotorCalibration(3, 0, -709, 43, 1335)])
def test_round_trip_every_tick(mode, calib):
    raw = np.arange(calib.range_min, calib.range_max + 1)
    back = unnormalize(normalize(raw, calib, mode), calib, mode)
    assert back.dtype == np.int64 and back.shape == raw.shape
    assert np.abs(back - raw).max() <= 1
    assert np.array_equal(back, raw)  # rounding makes it exact


@pytest.mark.parametrize("mode", list(NormMode))
def test_clamping_in_every_mode(mode):
    lo_norm = normalize(CAL.range_min, CAL, mode)
    hi_norm = normalize(CAL.range_max, CAL, mode)
    # raw readings outside the calibrated range clamp (DEGREES too, unlike LeRobot)
    assert normalize(0, CAL, mode) == lo_norm
    assert normalize(4095, CAL, mode) == hi_norm
    assert normalize(-100_000, CAL, mode) == lo_norm
    # goals outside the range clamp to the range ends, including +-inf
    for huge in (1e6, np.inf):
        assert unnormalize(huge, CAL, mode) == CAL.range_max
        assert unnormalize(-huge, CAL, mode) == CAL.range_min
    assert normalize(3000, CAL, NormMode.DEGREES) == pytest.approx(87.912, abs=1e-3)
    assert unnormalize(400.0, CAL, NormMode.DEGREES) == 3000


def test_range_mode_output_bounds():
    assert normalize(10_000, CAL, NormMode.RANGE_M100_100) == 100.0
    assert unnormalize(150.0, CAL, NormMode.RANGE_0_100) == 3000
    assert unnormalize(-5.0, CAL, NormMode.RANGE_0_100) == 1000
    assert unnormalize(-5.0, INV, NormMode.RANGE_0_100) == 3000


def test_vectorized_shapes_and_scalar_types():
    raw = np.array([[1000, 2000], [3000, 4000]])
    out = normalize(raw, CAL, NormMode.RANGE_M100_100)
    assert out.shape == (2, 2) and out.dtype == np.float64
    np.testing.assert_allclose(out, [[-100, 0], [100, 100]])
    assert isinstance(normalize(np.int64(1500), CAL, NormMode.RANGE_0_100), float)
    assert isinstance(unnormalize(np.float32(10.0), CAL, NormMode.RANGE_0_100), int)
    assert unnormalize([0.0, 100.0], CAL, NormMode.RANGE_0_100).tolist() == [1000, 3000]


def test_invalid_records_and_nan():
    with pytest.raises(CalibrationError, match="range_min 3000 must be below range_max 3000"):
        normalize(5, MotorCalibration(4, 0, 0, 3000, 3000), NormMode.DEGREES)
    with pytest.raises(CalibrationError, match="drive_mode"):
        MotorCalibration(1, 2, 0, 0, 10)
    with pytest.raises(CalibrationError, match="integer"):
        MotorCalibration(1, 0, 0.5, 0, 10)
    with pytest.raises(ValueError, match="NaN"):
        unnormalize(float("nan"), CAL, NormMode.DEGREES)
    with pytest.raises(ValueError):
        normalize(5, CAL, "radians")


# -------------------------------------------------------------------------------------------- files

LEROBOT_FILE = """{
    "shoulder_pan": {
        "id": 1,
        "drive_mode": 0,
        "homing_offset": -709,
        "range_min": 43,
        "range_max": 1335
    },
    "gripper": {
        "id": 6,
        "drive_mode": 1,
        "homing_offset": 12,
        "range_min": 2000,
        "range_max": 3400
    }
}"""


def test_load_lerobot_file_and_save_identical_bytes(tmp_path):
    src = tmp_path / "lerobot.json"
    src.write_text(LEROBOT_FILE)
    calib = load_calibration(src)
    assert list(calib) == ["shoulder_pan", "gripper"]
    assert calib["shoulder_pan"] == MotorCalibration(1, 0, -709, 43, 1335)
    assert calib["gripper"].drive_mode == 1
    out = save_calibration(tmp_path / "sub" / "arm.json", calib)
    assert out.read_text() == LEROBOT_FILE + "\n"  # LeRobot's layout (json indent 4)
    assert load_calibration(out) == calib
    assert sorted(p.name for p in out.parent.iterdir()) == ["arm.json"]  # no temp files left


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "non-empty JSON object"),
        ('{"elbow": 3}', "motor 'elbow': expected an object"),
        ('{"elbow": {"id": 3, "drive_mode": 0, "homing_offset": 0, "range_min": 0}}', r"'elbow': missing.*range_max"),
        ('{"elbow": {"id": 3, "drive_mode": 0, "homing_offset": 0, "range_min": 0, "range_max": 9, "x": 1}}', "'x'"),
        ('{"elbow": {"id": 3, "drive_mode": 0, "homing_offset": "a", "range_min": 0, "range_max": 9}}', "elbow.*int"),
        ('{"elbow": {"id": 3, "drive_mode": 0, "homing_offset": 0, "range_min": 9, "range_max": 9}}', "'elbow'.*below"),
    ],
)
def test_bad_files_name_file_and_motor(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=match) as info:
        load_calibration(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_calibration(tmp_path / "nope.json")


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = save_calibration(tmp_path / "arm.json", {"a": CAL})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError, match="disk full"):
        save_calibration(path, {"a": INV})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["arm.json"]


def test_calibration_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path / "cal"))
    assert calibration_dir("robots", "so101_follower") == tmp_path / "cal" / "robots" / "so101_follower"
    assert calibration_dir("teleoperator", "koch_leader") == tmp_path / "cal" / "teleoperators" / "koch_leader"
    monkeypatch.delenv("HF_LEROBOT_CALIBRATION")
    monkeypatch.delenv("HF_LEROBOT_HOME", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert calibration_root() == tmp_path / "hf" / "lerobot" / "calibration"
    with pytest.raises(ValueError, match="kind"):
        calibration_dir("cameras", "x")


def test_calibration_differs():
    a = {"x": CAL, "y": INV}
    assert calibration_differs(a, dict(a)) == []
    assert calibration_differs(a, {"x": CAL}) == ["y"]
    b = {"x": CAL, "y": MotorCalibration(1, 0, 0, 1000, 3000)}
    assert calibration_differs(a, b) == ["y"]
    assert calibration_differs(a, b, compare_drive_mode=False) == []


# ---------------------------------------------------------------------------------------- procedure


def test_half_turn_homing_sign_conventions():
    # Dynamixel: Present = Actual + offset; Feetech: Present = Actual - offset; both read 2047 afterwards
    for actual in (0, 100, 2047, 3000, 4095):
        assert actual + half_turn_homing_offset(actual, "dynamixel") == 2047
        assert actual - half_turn_homing_offset(actual, "feetech") == 2047


@dataclass(frozen=True)
class _Motor:
    id: int
    model: str


class FakeBus:
    """Register-level stand-in for MotorsBus: applies the vendor's homing sign to Present_Position."""

    def __init__(self, protocol: str, actual: dict[str, int]):
        model = "sts3215" if protocol == "feetech" else "xl430-w250"
        self.protocol = protocol
        self.motors = {name: _Motor(i + 1, model) for i, name in enumerate(actual)}
        self.actual = dict(actual)
        self.regs = {m: {"Homing_Offset": 999, "Torque_Enable": 1} for m in actual}
        self.lock = threading.Lock()
        self.samples = 0  # sync reads served, for a scripted user that waits for the procedure to have sampled
        self.written: dict | None = None

    def disable_torque(self, motors=None):
        for m in self.regs:
            self.regs[m]["Torque_Enable"] = 0

    def read(self, register, motor, *, normalize=False):
        return self.regs[motor].get(register, 0)

    def write(self, register, motor, value, *, normalize=False):
        assert self.regs[motor]["Torque_Enable"] == 0 or register == "Goal_Position"
        self.regs[motor][register] = value

    def sync_read(self, register, motors=None, *, normalize=True):
        assert register == "Present_Position" and not normalize
        with self.lock:
            out = {}
            for m in motors or self.motors:
                off = self.regs[m]["Homing_Offset"]
                out[m] = self.actual[m] + off if self.protocol == "dynamixel" else self.actual[m] - off
            self.samples += 1
            return out

    def move(self, positions: dict[str, int]) -> None:
        """Set actual positions, then wait until the calibration has sampled them (a sync read that started after
        the move has returned and the one after it began), instead of sleeping and hoping it did."""
        with self.lock:
            self.actual.update(positions)
            moved_at = self.samples
        deadline = time.monotonic() + 10.0
        while self.samples < moved_at + 2:
            assert time.monotonic() < deadline, "the calibration stopped sampling positions"
            time.sleep(0.001)

    def write_calibration(self, calibration):
        self.written = dict(calibration)


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_calibrate_interactively_with_fake_bus(protocol):
    bus = FakeBus(protocol, {"pan": 1500, "elbow": 2600, "roll": 100})
    prompts = []
    sweep = {"pan": (-300, 400), "elbow": (-800, 100)}  # offsets from the centred position

    def prompt(message):
        prompts.append(message)
        if len(prompts) == 2:  # the sweep: move joints while the procedure samples
            centre = {"pan": 1500, "elbow": 2600}
            for step in range(11):
                bus.move({m: centre[m] + lo + (hi - lo) * step // 10 for m, (lo, hi) in sweep.items()})
            bus.move(centre)
        return ""

    calib = calibrate_interactively(
        bus, full_turn_motors=["roll"], drive_modes={"elbow": 1}, prompt=prompt, sample_period_s=0.002
    )
    assert len(prompts) == 2 and "middle" in prompts[0] and "pan, elbow" in prompts[1]
    mode = 0 if protocol == "feetech" else 4
    assert all(bus.regs[m]["Operating_Mode"] == mode for m in bus.motors)
    if protocol == "dynamixel":
        assert bus.regs["elbow"]["Drive_Mode"] == 1 and bus.regs["pan"]["Drive_Mode"] == 0
        assert calib["pan"].homing_offset == 2047 - 1500
    else:
        assert "Drive_Mode" not in bus.regs["elbow"]
        assert calib["pan"].homing_offset == 1500 - 2047
    assert calib["pan"].range_min == 2047 - 300 and calib["pan"].range_max == 2047 + 400
    assert calib["elbow"].range_min == 2047 - 800 and calib["elbow"].range_max == 2047 + 100
    assert calib["elbow"].drive_mode == 1 and calib["pan"].drive_mode == 0
    assert (calib["roll"].range_min, calib["roll"].range_max) == (0, 4095)
    assert [c.id for c in calib.values()] == [1, 2, 3]
    assert bus.written == calib
    assert bus.sync_read("Present_Position", ["roll"], normalize=False)["roll"] == 2047


def test_calibrate_interactively_rejects_unmoved_joint():
    bus = FakeBus("feetech", {"pan": 1500, "elbow": 2600})
    with pytest.raises(CalibrationError, match=r"\['elbow'\] did not move"):

        def prompt(message):
            if "range" in message:
                time.sleep(0.02)
                with bus.lock:
                    bus.actual["pan"] += 50
                time.sleep(0.02)

        calibrate_interactively(bus, prompt=prompt, sample_period_s=0.002)
    assert bus.written is None


def test_calibrate_interactively_feetech_offset_limit():
    bus = FakeBus("feetech", {"pan": 4095})
    with pytest.raises(CalibrationError, match="'pan'.*Homing_Offset"):
        calibrate_interactively(bus, prompt=lambda m: "", sample_period_s=0.002)


def test_calibrate_interactively_prompt_error_propagates():
    bus = FakeBus("feetech", {"pan": 1500})

    def prompt(message):
        if "range" in message:
            raise EOFError("stdin closed")

    with pytest.raises(EOFError):
        calibrate_interactively(bus, prompt=prompt, sample_period_s=0.002)


def test_unknown_motor_names():
    bus = FakeBus("feetech", {"pan": 1500})
    with pytest.raises(CalibrationError, match="unknown motors"):
        calibrate_interactively(bus, full_turn_motors=["wrist"], prompt=lambda m: "")


