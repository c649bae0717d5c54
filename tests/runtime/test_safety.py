"""Safety: hand-computed clamps, watchdog, fault counter, e-stop modes, the wired guard."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.runtime.safety import (
    EStop,
    FaultCounter,
    SafetyConfig,
    SafetyFilter,
    SafetyGuard,
    SafetyStop,
    Watchdog,
)

NAMES = ("shoulder", "elbow", "gripper")


def config(**kw) -> SafetyConfig:
    base = dict(joint_min=(-100.0, -50.0, 0.0), joint_max=(100.0, 50.0, 100.0), joint_names=NAMES)
    return SafetyConfig(**{**base, **kw})


class FakeRobot:
    def __init__(self, fail: bool = False):
        self.calls: list[tuple] = []
        self.fail = fail

    def hold(self, torque_fraction=None):
        self.calls.append(("hold", torque_fraction))
        if self.fail:
            raise OSError("bus down")

    def torque_off(self):
        self.calls.append(("torque_off",))


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_joint_limits_only():
    f = SafetyFilter(config())
    sent, rep = f.apply([120.0, -60.0, 50.0], [0.0, 0.0, 0.0], dt=0.02)
    np.testing.assert_array_equal(sent, [100.0, -50.0, 50.0])
    assert rep["limit"] == {"shoulder": 20.0, "elbow": -10.0}
    assert rep["step"] == {} and rep["velocity"] == {} and rep["clamped"] and not rep["held"]


def test_step_clamp_against_last_commanded():
    f = SafetyFilter(config(max_step=5.0))
    sent, rep = f.apply([12.0, -3.0, 40.0], [10.0, 3.0, 30.0], dt=0.02)
    # shoulder +2 (ok), elbow -6 -> -5, gripper +10 -> +5
    np.testing.assert_allclose(sent, [12.0, -2.0, 35.0])
    assert rep["step"] == pytest.approx({"elbow": -1.0, "gripper": 5.0})
    assert rep["limit"] == {} and rep["velocity"] == {}


def test_velocity_cap_scales_with_dt_and_the_tighter_limit_is_reported():
    f = SafetyFilter(config(max_step=(5.0, 5.0, 5.0), max_velocity=(100.0, 400.0, 100.0)))
    # dt = 0.02: velocity caps 2, 8, 2 -> effective 2, 5, 2
    sent, rep = f.apply([10.0, 10.0, 10.0], [0.0, 0.0, 0.0], dt=0.02)
    np.testing.assert_allclose(sent, [2.0, 5.0, 2.0])
    assert rep["velocity"] == pytest.approx({"shoulder": 8.0, "gripper": 8.0})
    assert rep["step"] == pytest.approx({"elbow": 5.0})
    # dt = 0.1: velocity caps 10, 40, 10 -> step wins everywhere
    sent, rep = f.apply([10.0, 10.0, 10.0], [0.0, 0.0, 0.0], dt=0.1)
    np.testing.assert_allclose(sent, [5.0, 5.0, 5.0])
    assert set(rep["step"]) == set(NAMES) and rep["velocity"] == {}


def test_limits_then_step_walks_into_range_from_outside():
    f = SafetyFilter(config(max_step=3.0))
    # the arm starts at elbow = 60 (outside +-50); target 55 is limited to 50, then the step cap gives 57
    sent, rep = f.apply([0.0, 55.0, 0.0], [0.0, 60.0, 0.0], dt=0.02)
    np.testing.assert_allclose(sent, [0.0, 57.0, 0.0])
    assert rep["limit"] == {"elbow": 5.0} and rep["step"] == pytest.approx({"elbow": -7.0})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_target_holds_every_joint(bad):
    f = SafetyFilter(config(max_step=1.0))
    last = np.array([1.0, 2.0, 3.0])
    sent, rep = f.apply([5.0, bad, 7.0], last, dt=0.02)
    np.testing.assert_array_equal(sent, last)
    assert sent is not last
    assert rep["nonfinite"] == ["elbow"] and rep["held"] and rep["clamped"]


def test_bad_shapes_and_inputs_are_named():
    f = SafetyFilter(config(max_velocity=10.0))
    with pytest.raises(ValueError, match=r"target has shape \(2,\), expected \(3,\)"):
        f.apply([0.0, 0.0], [0.0, 0.0, 0.0], 0.02)
    with pytest.raises(ValueError, match="last_commanded is not finite for joints \\['gripper'\\]"):
        f.apply([0.0, 0.0, 0.0], [0.0, 0.0, np.nan], 0.02)
    with pytest.raises(ValueError, match="dt must be > 0"):
        f.apply([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 0.0)


def test_config_validation():
    with pytest.raises(ValueError, match="min <= max"):
        SafetyConfig((1.0,), (0.0,))
    with pytest.raises(ValueError, match="max_step has 2 values"):
        config(max_step=(1.0, 2.0))
    with pytest.raises(ValueError, match="estop_mode"):
        config(estop_mode="explode")
    with pytest.raises(ValueError, match="joint_names"):
        SafetyConfig((0.0,), (1.0,), joint_names=("a", "b"))
    cfg = SafetyConfig.from_limits({"a": (-1, 1), "b": (0, 2)}, max_step=0.5)
    assert cfg.joint_min == (-1.0, 0.0) and cfg.joint_max == (1.0, 2.0) and cfg.names == ("a", "b")
    assert SafetyConfig((0.0,), (1.0,)).names == ("joint0",)


def test_apply_mapping_uses_robot_action_keys():
    f = SafetyFilter(config(max_step=10.0))
    sent, rep = f.apply_mapping({"shoulder.pos": 50.0, "elbow.pos": 0.0, "gripper.pos": 5.0},
                                {"shoulder.pos": 0.0, "elbow.pos": 0.0, "gripper.pos": 0.0}, 0.02)
    assert sent == {"shoulder.pos": 10.0, "elbow.pos": 0.0, "gripper.pos": 5.0}
    assert rep["step"] == {"shoulder": 40.0}
    with pytest.raises(KeyError, match="gripper.pos"):
        f.apply_mapping({"shoulder.pos": 0.0, "elbow.pos": 0.0}, {"shoulder.pos": 0.0, "elbow.pos": 0.0}, 0.02)


def test_watchdog_expires_after_timeout():
    clock = FakeClock()
    wd = Watchdog(0.5, clock=clock)
    clock.t = 0.5
    assert not wd.expired  # exactly at the timeout is still alive
    clock.t = 0.51
    assert wd.expired and wd.age_s == pytest.approx(0.51)
    wd.heartbeat()
    clock.t = 0.9
    assert not wd.expired and wd.age_s == pytest.approx(0.39)


def test_fault_counter_needs_consecutive_faults():
    fc = FaultCounter(3)
    fc.fault(TimeoutError("a"), "elbow")
    fc.fault(TimeoutError("b"), "elbow")
    fc.ok()  # a good transaction resets the run
    assert not fc.fault(TimeoutError("c"), "wrist") and not fc.fault(TimeoutError("d"), "wrist")
    assert fc.fault(TimeoutError("no status packet"), "wrist")
    assert fc.tripped and fc.total == 5 and fc.consecutive == 3
    assert "motor 'wrist'" in fc.message and "no status packet" in fc.message


def test_estop_hold_vs_torque_off_and_idempotent():
    robot = FakeRobot()
    stop = EStop(robot, "hold", torque_fraction=0.3)
    assert stop.trigger("watchdog") and stop.trigger("again")
    assert robot.calls == [("hold", 0.3)] and stop.reason == "watchdog"
    robot2 = FakeRobot()
    assert EStop(robot2, "torque_off").trigger("user")
    assert robot2.calls == [("torque_off",)]


def test_estop_hold_failure_never_becomes_torque_off():
    robot = FakeRobot(fail=True)
    stop = EStop(robot, "hold")
    assert not stop.trigger("bus faults")
    assert robot.calls == [("hold", None)] and isinstance(stop.error, OSError)


def test_guard_trips_on_repeated_faults_naming_the_motor():
    robot = FakeRobot()
    guard = SafetyGuard(config(max_consecutive_faults=2), robot)
    guard.bus_fault(TimeoutError("no status packet from motor 'elbow' (id 2)"), "elbow")
    assert robot.calls == []
    with pytest.raises(SafetyStop, match=r"holding position.*2 consecutive bus faults.*motor 'elbow'"):
        guard.bus_fault(TimeoutError("no status packet from motor 'elbow' (id 2)"), "elbow")
    assert robot.calls == [("hold", None)]


def test_guard_watchdog_and_failed_stop_message():
    clock = FakeClock()
    robot = FakeRobot(fail=True)
    guard = SafetyGuard(config(watchdog_s=0.1), robot, clock=clock)
    guard.check()
    clock.t = 0.25
    with pytest.raises(SafetyStop, match=r"no heartbeat for 0.250 s.*e-stop did not reach every motor \(bus down\)"):
        guard.check()
