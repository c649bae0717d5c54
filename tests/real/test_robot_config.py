"""Robot descriptions: the four YAML files under real/ and the errors for bad descriptions."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from robopolicy.real.motors.calibration import NormMode, normalize
from robopolicy.real.motors.tables import model_spec
from robopolicy.real.robots.config import RobotConfig, RobotConfigError, resolve_config

pytestmark = pytest.mark.timeout(20)
REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "real"
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


@pytest.mark.parametrize("name", ["so101_follower", "so101_leader", "koch_follower", "koch_leader"])
def test_shipped_descriptions_load_and_are_consistent(name):
    cfg = RobotConfig.from_yaml(REAL / f"{name}.yaml")
    assert cfg.name == name and cfg.source.endswith(f"{name}.yaml")
    assert cfg.joint_names == JOINTS
    assert [m.id for m in cfg.motors] == [1, 2, 3, 4, 5, 6]
    assert cfg.kind == ("robot" if name.endswith("follower") else "teleoperator")
    assert cfg.protocol == ("feetech" if name.startswith("so101") else "dynamixel")
    defaults = cfg.default_calibration()
    assert defaults is not None
    for m in cfg.motors:
        assert m.norm_mode is (NormMode.RANGE_0_100 if m.name == "gripper" else NormMode.DEGREES)
        calib = defaults[m.name]
        assert calib.id == m.id and calib.drive_mode == m.drive_mode
        # the joint limits lie inside what the default calibration can represent
        res = model_spec(m.model).resolution
        lo = normalize(calib.range_min, calib, m.norm_mode, res)
        hi = normalize(calib.range_max, calib, m.norm_mode, res)
        assert min(lo, hi) - 1e-9 <= m.limits[0] < m.limits[1] <= max(lo, hi) + 1e-9
        if m.full_turn:
            assert (calib.range_min, calib.range_max) == (0, res - 1)


def test_so101_follower_matches_lerobot_settings():
    cfg = RobotConfig.from_yaml(REAL / "so101_follower.yaml")
    assert all(m.model == "sts3215" and m.torque for m in cfg.motors)
    for m in cfg.motors:
        regs = dict(m.registers)
        assert (regs["Operating_Mode"], regs["P_Coefficient"], regs["I_Coefficient"], regs["D_Coefficient"]) == (
            0, 16, 0, 32,
        )  # fmt: skip
    gripper = dict(cfg.motor("gripper").registers)
    assert (gripper["Max_Torque_Limit"], gripper["Protection_Current"], gripper["Overload_Torque"]) == (500, 250, 25)
    assert "Max_Torque_Limit" not in dict(cfg.motor("elbow_flex").registers)
    assert cfg.motor("wrist_roll").full_turn and not cfg.motor("shoulder_pan").full_turn
    assert all(m.max_relative_target == 15.0 for m in cfg.motors)
    assert cfg.disable_torque_on_disconnect


def test_koch_settings():
    follower = RobotConfig.from_yaml(REAL / "koch_follower.yaml")
    assert [m.model for m in follower.motors] == ["xl430-w250"] * 2 + ["xl330-m288"] * 4
    modes = {m.name: dict(m.registers)["Operating_Mode"] for m in follower.motors}
    assert modes == {**dict.fromkeys(JOINTS[:5], 4), "gripper": 5}
    elbow = dict(follower.motor("elbow_flex").registers)
    assert (elbow["Position_P_Gain"], elbow["Position_I_Gain"], elbow["Position_D_Gain"]) == (1500, 0, 600)
    assert follower.calibration_operating_mode == 4
    assert {m.name for m in follower.motors if m.full_turn} == {"shoulder_pan", "wrist_roll"}
    leader = RobotConfig.from_yaml(REAL / "koch_leader.yaml")
    assert all(m.model == "xl330-m077" for m in leader.motors)
    assert [m.name for m in leader.motors if m.torque] == ["gripper"]
    assert leader.motor("gripper").goal == 50.0
    assert leader.motor("elbow_flex").drive_mode == 1
    assert leader.default_calibration()["elbow_flex"].drive_mode == 1


def test_so101_defaults_cover_the_simulated_arm():
    """The default calibration (emulator) spans each joint's range in sim/so101_arm/arm.xml (tick 2048 = 0 rad)."""
    xml = REPO / "sim" / "so101_arm" / "arm.xml"
    if not xml.is_file():
        pytest.skip(f"{xml} not present")
    ranges = {j.get("name"): [float(v) for v in j.get("range").split()] for j in ET.parse(xml).iter("joint")
              if j.get("range")}  # fmt: skip
    cfg = RobotConfig.from_yaml(REAL / "so101_follower.yaml")
    for m in cfg.motors:
        lo, hi = (2048 + r * 4096 / (2 * math.pi) for r in ranges[m.name])
        assert m.calibration.range_min <= lo + 1 and hi - 1 <= m.calibration.range_max, m.name
        if m.norm_mode is NormMode.DEGREES and not m.full_turn:  # centred: 0 degrees == sim zero
            assert (m.calibration.range_min + m.calibration.range_max) / 2 == 2048


def _write(tmp_path, data) -> Path:
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _base() -> dict:
    return {
        "name": "arm",
        "kind": "robot",
        "port": "/dev/null",
        "motors": {
            "a": {"id": 1, "model": "sts3215", "norm_mode": "degrees", "limits": [-90, 90]},
            "b": {"id": 2, "model": "sts3215", "norm_mode": "range_0_100"},
        },
    }


def test_minimal_description_defaults(tmp_path):
    cfg = RobotConfig.from_yaml(_write(tmp_path, _base()))
    assert cfg.motor("b").limits == (0.0, 100.0) and cfg.motor("a").limits == (-90.0, 90.0)
    assert cfg.default_calibration() is None and cfg.id == "default" and cfg.baudrate == 1_000_000
    assert cfg.motor("a").max_relative_target is None and cfg.motor("a").torque
    assert resolve_config(cfg) is cfg and resolve_config(_base()).joint_names == ["a", "b"]
    with pytest.raises(KeyError, match="no motor 'c'"):
        cfg.motor("c")


def _bad(**changes):
    data = _base()
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_bad(colour="red"), r"top level: unknown keys \['colour'\]"),
        (_bad(kind="arm"), "kind: must be one of"),
        (_bad(motors__a__modle="x"), r"motors.a: unknown keys \['modle'\]"),
        (_bad(motors__a__model="sts9999"), "motors.a.model: unknown servo model 'sts9999'; known models"),
        (_bad(motors__a__norm_mode="radians"), "motors.a.norm_mode: must be one of"),
        (_bad(motors__b__id=1), r"motors: duplicate motor ids \[1, 1\]"),
        (_bad(motors__b__model="xl430-w250"), "share a protocol"),
        (_bad(motors__a__limits=[-200, 90]), r"motors.a.limits: need -180.0 <= min < max <= 180.0"),
        (_bad(motors__b__limits=[50, 10]), "motors.b.limits"),
        (_bad(motors__a__id=300), r"motors.a.id: 300 is outside 0..252"),
        (_bad(motors__a__id="one"), "motors.a.id: expected an integer"),
        (_bad(registers={"P_Gain": 3}), "motors.a.registers.P_Gain: model sts3215 has no register 'P_Gain'"),
        (_bad(motors__a__registers={"Acceleration": 999}), r"motors.a.registers.Acceleration: 999 outside 0..255"),
        (_bad(motors__a__registers={"Present_Position": 1}), "read-only"),
        (_bad(motors__b__goal=150), r"motors.b.goal: 150.0 outside the joint limits"),
        (_bad(max_relative_target={"z": 3}), r"max_relative_target: unknown keys \['z'\]"),
        (_bad(max_relative_target=-1), "max_relative_target: must be > 0"),
        (_bad(motors__a__calibration={"homing_offset": 0, "range_min": 0}), r"missing keys \['range_max'\]"),
        (_bad(motors__a__calibration={"homing_offset": 0, "range_min": 10, "range_max": 5000}), "range_max <= 4095"),
        (_bad(motors__a__calibration={"homing_offset": 3000, "range_min": 0, "range_max": 9}), "-2047..2047"),
        (_bad(cameras={"cam": {"type": "ros"}}), "cameras.cam.type: must be one of"),
        (_bad(cameras={"a.pos": {}}), "clash with joint keys"),
        (_bad(motors={}), "at least one motor"),
        ({"kind": "robot", "motors": {}}, "name: missing"),
        ("motors: [1, 2", "invalid YAML"),
    ],
)
def test_bad_descriptions_name_file_and_key(tmp_path, data, match):
    path = _write(tmp_path, data)
    with pytest.raises(RobotConfigError, match=match) as info:
        RobotConfig.from_yaml(path)
    assert str(path) in str(info.value)


def test_per_motor_overrides(tmp_path):
    data = _base()
    data["max_relative_target"] = {"a": 5.0}
    data["torque"] = False
    data["registers"] = {"Operating_Mode": 0, "P_Coefficient": 16}
    data["motors"]["b"].update(torque=True, goal=50, registers={"P_Coefficient": 20}, max_relative_target=2.5)
    cfg = RobotConfig.from_yaml(_write(tmp_path, data))
    assert cfg.motor("a").max_relative_target == 5.0 and cfg.motor("b").max_relative_target == 2.5
    assert not cfg.motor("a").torque and cfg.motor("b").torque and cfg.motor("b").goal == 50.0
    assert cfg.motor("a").registers == (("Operating_Mode", 0), ("P_Coefficient", 16))
    assert cfg.motor("b").registers == (("Operating_Mode", 0), ("P_Coefficient", 20))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        RobotConfig.from_yaml(tmp_path / "nope.yaml")
