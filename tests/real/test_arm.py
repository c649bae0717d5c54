"""The generic Arm against the servo emulator (both protocols): calibration, configure, observe, clamp, send."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from robopolicy.real.cameras import SimCamera
from robopolicy.real.motors.calibration import (
    CalibrationError,
    MotorCalibration,
    load_calibration,
    normalize,
    save_calibration,
    unnormalize,
)
from robopolicy.real.motors.emulator import ServoEmulator
from robopolicy.real.robots import Arm, DeviceNotConnectedError, RobotConfig, make_robot

pytestmark = pytest.mark.timeout(30)
REAL = Path(__file__).resolve().parents[2] / "real"
IDS = [1, 2, 3, 4, 5, 6]
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


@pytest.fixture(autouse=True)
def calibration_root(tmp_path, monkeypatch):
    root = tmp_path / "calibration"
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(root))
    return root


def _emulator(protocol: str, models, initial=None) -> ServoEmulator:
    servos = dict(zip(IDS, models if isinstance(models, list) else [models] * 6))
    return ServoEmulator(protocol, servos, initial_positions=initial)


@pytest.fixture
def so101_emu():
    with _emulator("feetech", "sts3215", {1: 2048 + 455, 6: 1938 + 625}) as emu:
        yield emu


def _wait_for(predicate, timeout_s=2.0) -> bool:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def _never(message):
    raise AssertionError(f"unexpected prompt: {message}")


def test_connect_configures_like_lerobot(so101_emu):
    emu = so101_emu
    robot = make_robot(REAL / "so101_follower.yaml", port=emu.port, calibration="defaults", prompt=_never)
    assert robot.action_features == {f"{j}.pos": float for j in JOINTS}
    robot.connect()
    try:
        cfg = robot.config
        for motor_id, m in zip(IDS, cfg.motors):
            reg = lambda name, i=motor_id: emu.register(i, name)  # noqa: E731
            assert (reg("Homing_Offset"), reg("Min_Position_Limit"), reg("Max_Position_Limit")) == (
                0, m.calibration.range_min, m.calibration.range_max,
            )  # fmt: skip
            assert (reg("P_Coefficient"), reg("I_Coefficient"), reg("D_Coefficient")) == (16, 0, 32)
            assert reg("Return_Delay_Time") == 0 and reg("Operating_Mode") == 0
            assert reg("Torque_Enable") == 1 and reg("Lock") == 1
            # torque came on holding the present position: no jump to a stale goal
            assert abs(reg("Goal_Position") - reg("Present_Position")) <= 1
        assert (emu.register(6, "Max_Torque_Limit"), emu.register(6, "Protection_Current")) == (500, 250)
        assert emu.register(6, "Overload_Torque") == 25 and emu.register(1, "Max_Torque_Limit") != 500
        assert robot.is_calibrated
        obs = robot.get_observation()
        assert list(obs) == [f"{j}.pos" for j in JOINTS]
        assert obs["shoulder_pan.pos"] == pytest.approx(455 * 360 / 4095)  # 40.0 degrees
        assert obs["gripper.pos"] == pytest.approx(50.0)
        assert obs["elbow_flex.pos"] == pytest.approx(0.0)
        assert robot.last_commanded == obs
    finally:
        robot.disconnect()
    assert all(emu.register(i, "Torque_Enable") == 0 for i in IDS)
    with pytest.raises(DeviceNotConnectedError):
        robot.get_observation()


def test_send_action_clamps_and_costs_one_transaction(so101_emu):
    emu = so101_emu
    robot = make_robot(REAL / "so101_follower.yaml", port=emu.port, calibration="defaults")
    with robot:
        calib = robot.bus.calibration
        start = robot.get_observation()
        before = robot.bus.stats.transactions
        sent = robot.send_action({"shoulder_pan.pos": 150.0, "elbow_flex.pos": -5.0, "gripper.pos": 90.0})
        assert robot.bus.stats.transactions == before + 1  # one sync write, no extra read
        # step cap 15 against the last commanded goal (the position held at connect)
        assert start["shoulder_pan.pos"] + 15 - 0.1 <= sent["shoulder_pan.pos"] <= start["shoulder_pan.pos"] + 15
        assert sent["elbow_flex.pos"] == pytest.approx(-5.0, abs=0.1)
        assert sent["gripper.pos"] == pytest.approx(65.0, abs=0.1)
        assert sent["wrist_flex.pos"] == pytest.approx(start["wrist_flex.pos"])  # missing joints keep their goal
        assert robot.last_clamped == {"shoulder_pan": "limit", "gripper": "step"}
        # the returned values are exactly what the servos got (SYNC_WRITE has no reply: wait for the emulator)
        for motor_id, joint in zip(IDS, JOINTS):
            mode = robot.config.motor(joint).norm_mode
            expected = unnormalize(sent[f"{joint}.pos"], calib[joint], mode)
            assert _wait_for(lambda i=motor_id, e=expected: emu.register(i, "Goal_Position") == e)
            assert normalize(expected, calib[joint], mode) == pytest.approx(sent[f"{joint}.pos"])
        # keep pushing: the joint limit (109 deg) is reached and never exceeded after tick rounding
        for _ in range(10):
            sent = robot.send_action({"shoulder_pan.pos": 150.0})
        assert 108.9 <= sent["shoulder_pan.pos"] <= 109.0
        assert robot.last_clamped == {"shoulder_pan": "limit"}
        assert _wait_for(lambda: robot.get_observation()["shoulder_pan.pos"] > 108.0)
        goal_before = emu.register(3, "Goal_Position")
        with pytest.raises(KeyError, match="unknown action key 'elbow.pos'"):
            robot.send_action({"elbow.pos": 1.0})
        with pytest.raises(ValueError, match="elbow_flex.pos is nan"):
            robot.send_action({"elbow_flex.pos": float("nan")})
        assert emu.register(3, "Goal_Position") == goal_before
        before = robot.bus.stats.transactions
        robot.get_observation()
        assert robot.bus.stats.transactions == before + 1


def test_calibration_file_wins_and_is_written_to_servos(so101_emu, calibration_root):
    emu = so101_emu
    cfg = RobotConfig.from_yaml(REAL / "so101_follower.yaml")
    custom = {m.name: MotorCalibration(m.id, 0, 10 * m.id, 500, 3500) for m in cfg.motors}
    path = save_calibration(calibration_root / "robots" / "so101_follower" / "default.json", custom)
    robot = Arm(cfg, port=emu.port, prompt=_never)
    assert robot.calibration_path == path
    with robot:
        assert robot.bus.calibration == custom
        for motor_id in IDS:
            assert emu.register(motor_id, "Homing_Offset") == 10 * motor_id
            assert (emu.register(motor_id, "Min_Position_Limit"), emu.register(motor_id, "Max_Position_Limit")) == (
                500, 3500,
            )  # fmt: skip
        # Present = Actual - Homing_Offset on Feetech: 2503 - 10 ticks from the centre of 500..3500 (2000)
        expected = normalize(2048 + 455 - 10, custom["shoulder_pan"], "degrees")
        assert robot.get_observation()["shoulder_pan.pos"] == pytest.approx(expected)
        assert robot.is_calibrated


def test_calibration_errors(so101_emu, calibration_root, tmp_path):
    emu = so101_emu
    cfg = RobotConfig.from_yaml(REAL / "so101_follower.yaml")
    wrong_ids = {m.name: MotorCalibration(m.id + 1, 0, 0, 500, 3500) for m in cfg.motors}
    bad = save_calibration(tmp_path / "wrong.json", wrong_ids)
    robot = Arm(cfg, port=emu.port, calibration=bad)
    with pytest.raises(CalibrationError, match=r"wrong.json: motor 'shoulder_pan' has id 2"):
        robot.connect()
    assert not robot.is_connected
    few = save_calibration(tmp_path / "few.json", {"gripper": MotorCalibration(6, 0, 0, 1, 2)})
    with pytest.raises(CalibrationError, match=r"few.json has motors \['gripper'\]"):
        Arm(cfg, port=emu.port, calibration=few).connect()
    no_defaults = cfg.replace(motors=tuple(m.__class__(**{**m.__dict__, "calibration": None}) for m in cfg.motors))
    with pytest.raises(CalibrationError, match="no calibration file at .*default.json and no defaults"):
        Arm(no_defaults, port=emu.port).connect(calibrate=False)
    # calibrate=False without a file falls back to the YAML defaults
    robot = Arm(cfg, port=emu.port)
    robot.connect(calibrate=False)
    assert robot.bus.calibration == cfg.default_calibration()
    robot.disconnect()


def test_hold_on_disconnect_and_cameras(so101_emu):
    emu = so101_emu
    cfg = RobotConfig.from_yaml(REAL / "so101_follower.yaml").replace(disable_torque_on_disconnect=False)
    frames = []

    def render(width, height):
        frames.append(1)
        return np.full((height, width, 3), 7, np.uint8)

    camera = SimCamera(render, width=8, height=6, fps=50, name="front")
    robot = Arm(cfg, port=emu.port, calibration="defaults", cameras={"front": camera})
    assert robot.observation_features["front"] == (6, 8, 3)
    robot.connect()
    obs = robot.get_observation()
    assert obs["front"].shape == (6, 8, 3) and obs["front"][0, 0, 0] == 7
    robot.disconnect()
    assert not camera.is_connected
    assert all(emu.register(i, "Torque_Enable") == 1 for i in IDS)  # holds position


def test_koch_follower_on_dynamixel():
    models = ["xl430-w250", "xl430-w250", "xl330-m288", "xl330-m288", "xl330-m288", "xl330-m288"]
    with _emulator("dynamixel", models) as emu:
        robot = make_robot(REAL / "koch_follower.yaml", port=emu.port, calibration="defaults")
        with robot:
            assert [emu.register(i, "Operating_Mode") for i in IDS] == [4, 4, 4, 4, 4, 5]
            assert (emu.register(3, "Position_P_Gain"), emu.register(3, "Position_D_Gain")) == (1500, 600)
            assert emu.register(3, "Position_I_Gain") == 0 and emu.register(6, "Current_Limit") == 1000
            assert all(emu.register(i, "Torque_Enable") == 1 for i in IDS)
            obs = robot.get_observation()
            assert obs["elbow_flex.pos"] == pytest.approx(0.0) and obs["gripper.pos"] == pytest.approx(0.0)
            sent = robot.send_action({"elbow_flex.pos": 10.0, "gripper.pos": 10.0})
            assert sent["elbow_flex.pos"] == pytest.approx(10.0, abs=0.1)
            assert _wait_for(lambda: emu.register(3, "Goal_Position") == 2048 + round(10 * 4095 / 360))
            assert _wait_for(lambda: abs(robot.get_observation()["elbow_flex.pos"] - 10.0) < 0.5)
        assert all(emu.register(i, "Torque_Enable") == 0 for i in IDS)


class _Operator:
    """Plays the user during interactive calibration: centres the arm, then sweeps joints on the emulator."""

    def __init__(self, emu: ServoEmulator, centre: dict[int, int], sweep: dict[int, tuple[int, int]]):
        self.emu, self.centre, self.sweep = emu, centre, sweep
        self.prompts: list[str] = []

    def _move(self, positions: dict[int, float], sampled: bool) -> None:
        """Move joints by hand and wait until the emulated servos report them; with ``sampled`` also until the
        calibration has sampled them (instead of sleeping and hoping both happened on a loaded machine)."""
        for motor_id, ticks in positions.items():
            self.emu.backend.set_position(motor_id, ticks)
        applied = lambda: all(self.emu.actual_position(i) == t for i, t in positions.items())  # noqa: E731
        assert _wait_for(applied, timeout_s=10.0), "the emulator's motion thread did not apply the hand-set positions"
        if sampled:
            # packets that arrive from now on are answered with these positions; the calibration thread sends
            # its next sample request only after it recorded the previous sample
            seen = self.emu.counts["packets"]
            assert _wait_for(lambda: self.emu.counts["packets"] >= seen + 3, timeout_s=10.0), "sampling stopped"

    def __call__(self, message: str) -> str:
        self.prompts.append(message)
        if len(self.prompts) == 1:  # centre the arm
            self._move(self.centre, sampled=False)
        elif len(self.prompts) == 2:  # sweep while the procedure samples
            for step in range(11):  # from each joint's low end to its high end
                self._move(
                    {i: self.centre[i] + lo + (hi - lo) * step / 10 for i, (lo, hi) in self.sweep.items()},
                    sampled=True,
                )
            self._move(self.centre, sampled=True)
        return ""


def test_interactive_calibration_feetech(calibration_root):
    centre = {1: 1500, 2: 2600, 3: 2048, 4: 3000, 5: 800, 6: 2200}
    sweep = {1: (-400, 500), 2: (-900, 300), 3: (-1000, 1000), 4: (-200, 600), 6: (-50, 700)}
    with _emulator("feetech", "sts3215", centre) as emu:
        operator = _Operator(emu, centre, sweep)
        robot = make_robot(REAL / "so101_follower.yaml", port=emu.port, prompt=operator)
        robot.connect()  # no file: interactive calibration
        try:
            assert len(operator.prompts) == 2
            calib = load_calibration(robot.calibration_path)
            assert calib == robot.bus.calibration
            for motor_id, joint in zip(IDS, JOINTS):
                c = calib[joint]
                assert c.homing_offset == centre[motor_id] - 2047  # Feetech: Present = Actual - offset
                assert emu.register(motor_id, "Homing_Offset") == c.homing_offset
                if joint == "wrist_roll":
                    assert (c.range_min, c.range_max) == (0, 4095)
                else:
                    lo, hi = sweep[motor_id]
                    assert (c.range_min, c.range_max) == (2047 + lo, 2047 + hi)
                assert (emu.register(motor_id, "Min_Position_Limit"), emu.register(motor_id, "Max_Position_Limit")) == (
                    c.range_min, c.range_max,
                )  # fmt: skip
                assert emu.register(motor_id, "Present_Position") == 2047  # centred pose reads half a turn
            obs = robot.get_observation()
            assert obs["elbow_flex.pos"] == pytest.approx(0.0)  # centred in its symmetric sweep 1047..3047
            assert obs["shoulder_pan.pos"] == pytest.approx((2047 - (1647 + 2547) / 2) * 360 / 4095)
            assert obs["wrist_roll.pos"] == pytest.approx(-0.5 * 360 / 4095)  # 2047 vs mid 2047.5
            assert all(emu.register(i, "Torque_Enable") == 1 for i in IDS)  # configured after calibration
        finally:
            robot.disconnect()
        # the next connect uses the file without prompting
        again = make_robot(REAL / "so101_follower.yaml", port=emu.port, prompt=_never)
        with again:
            assert again.bus.calibration == calib


def test_interactive_calibration_dynamixel_leader_with_drive_mode(calibration_root):
    centre = {1: 1000, 2: 2048, 3: 3000, 4: 2500, 5: 100, 6: 2048}
    sweep = {2: (-700, 800), 3: (-600, 400), 4: (-300, 300), 6: (0, 900)}
    with _emulator("dynamixel", "xl330-m077", centre) as emu:
        operator = _Operator(emu, centre, sweep)
        leader = make_robot_leader(emu.port, operator)
        leader.connect()
        try:
            calib = load_calibration(leader.calibration_path)
            assert "teleoperators/koch_leader/default.json" in str(leader.calibration_path)
            assert emu.register(3, "Drive_Mode") & 1 == 1 and calib["elbow_flex"].drive_mode == 1
            assert calib["shoulder_pan"].range_min == 0 and calib["shoulder_pan"].range_max == 4095
            for motor_id, joint in zip(IDS, JOINTS):
                sign = -1 if joint == "elbow_flex" else 1
                # Dynamixel: Present = sign * Actual + offset reads 2047 at the centre
                assert calib[joint].homing_offset == 2047 - sign * centre[motor_id]
                if motor_id in sweep:
                    lo, hi = sweep[motor_id]
                    lo, hi = sorted((sign * lo, sign * hi))
                    assert (calib[joint].range_min, calib[joint].range_max) == (2047 + lo, 2047 + hi)
            # leader: torque off except the spring-back gripper held at 50 %
            assert [emu.register(i, "Torque_Enable") for i in IDS] == [0, 0, 0, 0, 0, 1]
            assert emu.register(6, "Operating_Mode") == 5
            gripper_goal = unnormalize(50.0, calib["gripper"], "range_0_100")
            assert _wait_for(lambda: emu.register(6, "Goal_Position") == gripper_goal)
            # the elbow reads inverted: moving the actual position up lowers the reading
            emu.backend.set_position(3, centre[3] + 200)
            assert _wait_for(lambda: leader.get_action()["elbow_flex.pos"] < -10)
        finally:
            leader.disconnect()


def make_robot_leader(port, prompt):
    from robopolicy.real.teleop import LeaderArm

    return LeaderArm(REAL / "koch_leader.yaml", port=port, prompt=prompt)


def test_tick_cost_on_emulator(so101_emu):
    """200 observe+send ticks against the emulator stay well under a 30 Hz budget on the host."""
    robot = make_robot(REAL / "so101_follower.yaml", port=so101_emu.port, calibration="defaults")
    with robot:
        durations = []
        for i in range(200):
            start = time.perf_counter()
            robot.get_observation()
            robot.send_action({"shoulder_pan.pos": 40 + 10 * np.sin(i / 20)})
            durations.append(time.perf_counter() - start)
        assert np.median(durations) < 0.01
        # the emulator thread shares this process: on a loaded machine a starved reply may cost a retry now and
        # then (the bus waits longer on a retry, so the tick still succeeds); a bus that timed out routinely would
        # count one per tick
        assert robot.bus.stats.timeouts <= 5, robot.bus.stats


def test_so101_follower_on_the_simulated_arm_with_a_sim_camera():
    """YAML defaults + emulator + MuJoCo arm: degrees on the host are the sim's joint angles; the camera renders
    the arm on its own thread (EGL contexts are per thread)."""
    sim_arm = pytest.importorskip("robopolicy.real.sim_arm")
    backend = sim_arm.MujocoArmBackend()
    try:
        with ServoEmulator("feetech", dict.fromkeys(IDS, "sts3215"), backend=backend) as emu:
            camera = SimCamera(backend.render, width=64, height=48, fps=10, name="front")
            robot = make_robot(REAL / "so101_follower.yaml", port=emu.port, calibration="defaults",
                               cameras={"front": camera})  # fmt: skip
            with robot:
                start = robot.get_observation()
                for joint in ("shoulder_pan", "elbow_flex"):
                    index = JOINTS.index(joint)
                    assert start[f"{joint}.pos"] == pytest.approx(np.degrees(backend.qpos[index]), abs=0.2)
                for _ in range(40):
                    robot.send_action({"shoulder_pan.pos": 30.0, "elbow_flex.pos": 20.0})
                    time.sleep(0.01)
                assert _wait_for(lambda: abs(np.degrees(backend.qpos[0]) - 30.0) < 1.5, timeout_s=3.0)
                assert _wait_for(lambda: abs(np.degrees(backend.qpos[2]) - 20.0) < 3.0, timeout_s=3.0)
                obs = robot.get_observation()
                assert obs["shoulder_pan.pos"] == pytest.approx(np.degrees(backend.qpos[0]), abs=0.2)
                frame = obs["front"]
                assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 1.0
    finally:
        backend.close()
