"""Teleoperators: keyboard (manual and terminal backends, record keys), gamepad, leader arm on the emulator."""

from __future__ import annotations

import os
import sys
import termios
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from robopolicy.real.motors.emulator import ServoEmulator
from robopolicy.real.robots import make_robot
from robopolicy.real.teleop import (
    GamepadTeleop,
    KeyboardTeleop,
    KeyListener,
    LeaderArm,
    attach_record_keys,
    make_teleoperator,
    parse_terminal_input,
    wait_for_key,
)
from robopolicy.real.teleop.gamepad import apply_deadzone

pytestmark = pytest.mark.timeout(30)
REAL = Path(__file__).resolve().parents[2] / "real"
IDS = [1, 2, 3, 4, 5, 6]


def _wait_for(predicate, timeout_s=2.0) -> bool:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


# ------------------------------------------------------------------------------------------- keyboard


def test_parse_terminal_input():
    keys = parse_terminal_input("\x1b[C\x1b[DqQ\x1bOA\x1b \n")
    assert keys == ["right", "left", "q", "q", "up", "esc", "space", "enter"]
    assert parse_terminal_input("\x1b[1;5Cw\x7f") == ["w", "backspace"]  # unknown CSI (ctrl+right) skipped


def test_keyboard_teleop_held_keys_and_limits():
    listener = KeyListener("manual")
    teleop = KeyboardTeleop(["pan", "lift"], step=2.0, limits={"pan": (-5.0, 5.0)}, listener=listener)
    assert teleop.action_features == {"pan.pos": float, "lift.pos": float}
    with teleop:
        teleop.reset({"pan.pos": 1.0, "lift.pos": 10.0, "front": object()})
        listener.inject("q")  # pan +
        assert teleop.get_action() == {"pan.pos": 3.0, "lift.pos": 10.0}
        assert teleop.get_action()["pan.pos"] == 5.0  # still held: moves every tick, clamped at the limit
        assert teleop.get_action()["pan.pos"] == 5.0
        listener.inject("q", pressed=False)
        listener.inject("s")  # lift -
        listener.inject("s", pressed=False)
        listener.inject("x")  # unmapped
        assert teleop.get_action() == {"pan.pos": 5.0, "lift.pos": 8.0}
        assert teleop.get_action() == {"pan.pos": 5.0, "lift.pos": 8.0}  # released: no motion
    assert not teleop.is_connected and listener.running  # the caller's listener is the caller's to stop
    listener.inject("q")
    listener.stop()


def test_keyboard_terminal_backend_on_a_pty():
    master, slave = os.openpty()
    stdin = os.fdopen(slave, "r", closefd=False)
    before = termios.tcgetattr(slave)
    try:
        listener = KeyListener("terminal", stdin=stdin)
        teleop = KeyboardTeleop(["pan"], step=1.0, listener=listener)
        events = SimpleNamespace(next=threading.Event(), rerecord=threading.Event(), stop=threading.Event())
        attach_record_keys(listener, events)
        teleop.connect()
        assert listener.backend == "terminal" and not listener.holds_keys
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak: no line buffering
        os.write(master, b"qqq\x1b[C")
        assert _wait_for(events.next.is_set)
        assert teleop.get_action() == {"pan.pos": 3.0}  # three presses; no release events in a terminal
        assert teleop.get_action() == {"pan.pos": 3.0}
        os.write(master, b"\x1b")
        assert _wait_for(events.stop.is_set) and not events.rerecord.is_set()
        teleop.disconnect()
        assert listener.running  # a shared listener stays up for its other users
        listener.stop()
        assert termios.tcgetattr(slave) == before  # terminal restored
    finally:
        stdin.close()
        os.close(master)
        os.close(slave)


def test_record_keys_and_wait_for_key():
    listener = KeyListener("manual")
    listener.start()
    events = SimpleNamespace(next=threading.Event(), rerecord=threading.Event(), stop=threading.Event())
    callback = attach_record_keys(listener, events)
    listener.inject("left")
    assert events.rerecord.is_set() and not events.next.is_set()
    listener.inject("right", pressed=False)  # releases do nothing
    assert not events.next.is_set()
    listener.remove_callback(callback)
    listener.inject("esc")
    assert not events.stop.is_set()
    threading.Timer(0.05, listener.inject, args=("enter",)).start()
    assert wait_for_key(listener, ["enter"], timeout_s=2) == "enter"
    assert wait_for_key(listener, ["enter"], timeout_s=0.01) is None
    with pytest.raises(TypeError, match="'next'"):
        attach_record_keys(listener, SimpleNamespace())
    listener.stop()


def test_keyboard_without_display_or_terminal(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("display detection differs off Linux")
    listener = KeyListener("auto", stdin=SimpleNamespace(isatty=lambda: False))
    with pytest.raises(RuntimeError, match="no keyboard available"):
        listener.start()


def test_keyboard_from_robot_config():
    teleop = make_teleoperator("keyboard", robot_config=REAL / "so101_follower.yaml", listener=KeyListener("manual"))
    assert list(teleop.action_features) == [f"{j}.pos" for j in
                                            ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll",
                                             "gripper"]]  # fmt: skip
    assert teleop.key_map["h"] == ("gripper", -1.0) and teleop.limits["gripper"] == (0.0, 100.0)


# -------------------------------------------------------------------------------------------- gamepad


class FakeJoystick:
    def __init__(self, axes=6, buttons=8):
        self.axes = [0.0] * axes
        self.buttons = [0] * buttons

    def get_numaxes(self):
        return len(self.axes)

    def get_numbuttons(self):
        return len(self.buttons)

    def get_axis(self, i):
        return self.axes[i]

    def get_button(self, i):
        return self.buttons[i]


def test_deadzone():
    assert apply_deadzone(0.05, 0.1) == 0.0 and apply_deadzone(-0.1, 0.1) == 0.0
    assert apply_deadzone(0.55, 0.1) == pytest.approx(0.5) and apply_deadzone(-1.0, 0.1) == -1.0


def test_gamepad_velocity_teleop():
    now = [0.0]
    joystick = FakeJoystick()
    joints = ["a", "b", "c", "d", "e", "f"]
    pad = GamepadTeleop(joints, speed=10.0, joystick=joystick, clock=lambda: now[0], limits={"f": (0.0, 100.0)})
    with pad:
        assert pad.get_action()["a.pos"] == 0.0  # first call: dt = 0
        joystick.axes[0] = 0.08  # inside the deadzone
        joystick.axes[1] = -1.0  # stick up (SDL y down) -> joint b +
        joystick.buttons[5] = 1  # RB -> joint e +
        joystick.buttons[0] = 1  # A -> gripper -
        now[0] = 0.05
        action = pad.get_action()
        assert action == {"a.pos": 0.0, "b.pos": 0.5, "c.pos": 0.0, "d.pos": 0.0, "e.pos": 0.5, "f.pos": 0.0}
        now[0] = 10.0  # a long stall is capped at 0.1 s of motion
        assert pad.get_action()["b.pos"] == pytest.approx(1.5)
    with pytest.raises(RuntimeError, match="needs 5 axes"):
        GamepadTeleop(joints, joystick=FakeJoystick(axes=2)).connect()


def test_gamepad_without_pygame_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)
    with pytest.raises(ImportError, match="pip install pygame"):
        GamepadTeleop(["a"]).connect()


# ----------------------------------------------------------------------------------------- leader arm


@pytest.fixture(autouse=True)
def calibration_root(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path / "calibration"))


def test_so101_leader_reads_with_torque_off():
    with ServoEmulator("feetech", dict.fromkeys(IDS, "sts3215")) as emu:
        leader = make_teleoperator(REAL / "so101_leader.yaml", port=emu.port, calibration="defaults")
        assert isinstance(leader, LeaderArm)
        with leader:
            assert all(emu.register(i, "Torque_Enable") == 0 for i in IDS)
            assert leader.get_action()["shoulder_pan.pos"] == pytest.approx(0.0)
            emu.backend.set_position(1, 2048 + 455)  # the operator moves the arm
            emu.backend.set_position(6, 1938 + 1250)
            assert _wait_for(lambda: leader.get_action()["shoulder_pan.pos"] > 39.9)
            before = leader.bus.stats.transactions
            action = leader.get_action()
            assert leader.bus.stats.transactions == before + 1  # one sync read
            assert action["shoulder_pan.pos"] == pytest.approx(455 * 360 / 4095)
            assert action["gripper.pos"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="describes a robot"):
        LeaderArm(REAL / "so101_follower.yaml", port="/dev/null")


def test_leader_drives_follower_end_to_end():
    """Teleop loop between two emulated buses: the follower tracks the leader within the step cap."""
    with ServoEmulator("feetech", dict.fromkeys(IDS, "sts3215")) as leader_emu, ServoEmulator(
        "feetech", dict.fromkeys(IDS, "sts3215")
    ) as follower_emu:
        leader = LeaderArm(REAL / "so101_leader.yaml", port=leader_emu.port, calibration="defaults")
        follower = make_robot(REAL / "so101_follower.yaml", port=follower_emu.port, calibration="defaults")
        with leader, follower:
            leader_emu.backend.set_position(2, 2048 - 600)  # shoulder_lift about -52.7 degrees
            leader_emu.backend.set_position(6, 1938 + 500)  # gripper 40 %
            time.sleep(0.01)
            capped = []
            for _ in range(60):
                sent = follower.send_action(leader.get_action())
                capped.append(follower.last_clamped.get("shoulder_lift"))
                time.sleep(0.005)
            target = leader.get_action()
            assert sent["shoulder_lift.pos"] == pytest.approx(target["shoulder_lift.pos"], abs=0.1)
            assert capped[0] == "step"  # a 52-degree jump is spread over ticks of at most 15 degrees
            assert _wait_for(
                lambda: abs(follower.get_observation()["shoulder_lift.pos"] - target["shoulder_lift.pos"]) < 0.5
            )
            assert abs(follower.get_observation()["gripper.pos"] - 40.0) < 0.5
