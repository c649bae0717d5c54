"""FirstOrderBackend (the emulator's default motion model) and the tick <-> radian helpers."""

from __future__ import annotations

import math

import pytest

from robopolicy.real.motors.motion import (
    FirstOrderBackend,
    MotionBackend,
    ServoCommand,
    ServoFeedback,
    rad_to_ticks,
    ticks_to_rad,
)

pytestmark = pytest.mark.timeout(30)


def run(backend, seconds, commands, dt=0.002):
    feedback = {}
    for _ in range(round(seconds / dt)):
        feedback = backend.step(dt, commands)
    return feedback


def test_first_order_time_constant_and_settling():
    backend = FirstOrderBackend(tau_s=0.05, max_speed_ticks_s=1e9, initial={1: 2048.0})
    assert isinstance(backend, MotionBackend)
    cmd = {1: ServoCommand(goal=3048.0, torque=True)}
    fb = run(backend, 0.05, cmd)
    # after one time constant: 1 - e^-1 of the step
    assert fb[1].position == pytest.approx(2048 + 1000 * (1 - math.exp(-1)), abs=1.0)
    assert fb[1].velocity > 0
    fb = run(backend, 0.5, cmd)
    assert fb[1].position == pytest.approx(3048.0, abs=0.1)


def test_velocity_limit_from_backend_and_command():
    backend = FirstOrderBackend(tau_s=0.01, max_speed_ticks_s=1000.0, initial={1: 0.0, 2: 0.0})
    fb = run(backend, 0.1, {1: ServoCommand(4000.0, True), 2: ServoCommand(4000.0, True, max_speed=200.0)})
    assert fb[1].position == pytest.approx(100.0, abs=1e-6)  # 1000 ticks/s for 0.1 s
    assert fb[2].position == pytest.approx(20.0, abs=1e-6)  # the command's tighter limit
    assert fb[1].velocity == pytest.approx(1000.0)
    assert fb[1].load == 1.0  # saturated tracking error


def test_torque_off_stays_and_reports():
    backend = FirstOrderBackend(initial={3: 1500.0})
    fb = run(backend, 0.2, {3: ServoCommand(3000.0, False)})
    assert fb[3] == ServoFeedback(1500.0, 0.0, 0.0)
    assert backend.step(0.0, {})[3].position == 1500.0  # dt = 0 just reports
    backend.set_position(3, 1700.0)  # moved by hand
    assert backend.step(0.0, {3: ServoCommand(0.0, False)})[3].position == 1700.0


def test_unknown_ids_start_at_center_and_bad_config():
    backend = FirstOrderBackend()
    assert backend.step(0.0, {7: ServoCommand(2048.0, True)})[7].position == 2048.0
    with pytest.raises(ValueError, match="tau_s"):
        FirstOrderBackend(tau_s=-1)


def test_tick_radian_conversions():
    assert ticks_to_rad(2048) == 0.0
    assert ticks_to_rad(3072) == pytest.approx(math.pi / 2)
    assert ticks_to_rad(3072, sign=-1) == pytest.approx(-math.pi / 2)
    assert rad_to_ticks(ticks_to_rad(1234.0, -1), -1) == pytest.approx(1234.0)
    assert rad_to_ticks(math.pi) == pytest.approx(4096.0)
