"""MuJoCo arm behind the servo emulator (robopolicy.real.sim_arm): model, tick mapping, physics, reach task."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from robopolicy.real.motors.motion import MotionBackend, ServoCommand
from robopolicy.real.sim_arm import (
    DEFAULT_MODEL_PATH,
    JOINT_NAMES,
    MujocoArmBackend,
    ReachTask,
    min_jerk,
)

pytestmark = pytest.mark.timeout(60)
TICK = 2 * math.pi / 4096


@pytest.fixture
def arm():
    backend = MujocoArmBackend()
    yield backend
    backend.close()


def hold(arm, ticks, seconds, torque=True):
    cmds = {i: ServoCommand(ticks[i], torque) for i in ticks}
    fb = {}
    for _ in range(round(seconds / 0.002)):
        fb = arm.step(0.002, cmds)
    return fb


def test_model_joints_and_ranges_fit_servo_ticks(arm):
    assert DEFAULT_MODEL_PATH.is_file()
    assert isinstance(arm, MotionBackend)
    assert list(arm.joints.values()) == list(JOINT_NAMES)
    assert arm.model.opt.timestep == pytest.approx(0.002)
    for motor_id in arm.joints:
        lo, hi = arm.joint_range(motor_id)
        assert lo < 0 < hi
        assert arm.rad_to_ticks(motor_id, lo) >= 0
        assert arm.rad_to_ticks(motor_id, hi) <= 4095
    np.testing.assert_allclose(arm.qpos, 0.0)
    np.testing.assert_allclose(arm.end_effector_pos(), [0.315, 0.0, 0.231], atol=1e-3)  # "L" zero pose


def test_step_advances_whole_physics_steps_and_carries_the_remainder(arm):
    fb = arm.step(0.0, {})
    assert arm.sim_time_s == 0.0 and set(fb) == set(range(1, 7))
    arm.step(0.003, {})
    assert arm.sim_time_s == pytest.approx(0.002)
    arm.step(0.003, {})
    assert arm.sim_time_s == pytest.approx(0.006)  # 3 ms + 3 ms = 3 steps
    arm.step(1.0, {})  # a stalled caller is not replayed in one burst
    assert arm.sim_time_s == pytest.approx(0.006 + 0.05, abs=0.0021)
    assert arm.dropped_time_s > 0.9


def test_goal_ticks_drive_joints_and_feedback_matches(arm):
    goal = {i: 2048 + 200 for i in range(1, 7)}
    fb = hold(arm, goal, 0.6)
    q = arm.qpos
    np.testing.assert_allclose(q, 200 * TICK, atol=0.01)  # within a few ticks despite gravity
    for i in range(1, 7):
        assert fb[i].position == pytest.approx(arm.rad_to_ticks(i, q[i - 1]))
        assert abs(fb[i].velocity) < 20
    # gravity pulls the lifted arm: the shoulder and elbow actuators push back, load is non-zero
    assert abs(fb[2].load) > 0.02 and abs(fb[3].load) > 0.02


def test_signs_and_centers_map_ticks_per_joint():
    arm = MujocoArmBackend(signs={2: -1}, centers={1: 1000})
    hold(arm, {1: 1000 + 300, 2: 2048 + 300}, 0.5)
    assert arm.qpos[0] == pytest.approx(300 * TICK, abs=0.01)
    assert arm.qpos[1] == pytest.approx(-300 * TICK, abs=0.01)
    assert arm.feedback()[2].position == pytest.approx(2048 + 300, abs=8)


def test_torque_off_lets_gravity_act_and_torque_on_holds(arm):
    pose = {1: 2048, 2: 2048 - 150, 3: 2048 + 200, 4: 2048 + 200, 5: 2048, 6: 2048}
    hold(arm, pose, 0.5)
    held = arm.qpos.copy()
    hold(arm, pose, 0.5)
    np.testing.assert_allclose(arm.qpos, held, atol=0.005)
    hold(arm, pose, 0.5, torque=False)
    sagged = arm.qpos
    assert sagged[1] - held[1] > 0.1  # the shoulder falls forward
    # torque back on: holds where it is now (no jump back to the stale goal needs a new command)
    here = {i: arm.rad_to_ticks(i, sagged[i - 1]) for i in range(1, 7)}
    hold(arm, here, 0.3)
    np.testing.assert_allclose(arm.qpos, sagged, atol=0.05)


def test_max_speed_rate_limits_the_setpoint(arm):
    cmds = {1: ServoCommand(2048 + 1024, True, max_speed=512.0)}  # 90 deg at 45 deg/s
    for _ in range(250):
        arm.step(0.002, cmds)
    assert arm.qpos[0] == pytest.approx(256 * TICK, abs=0.08)


def test_reach_task_targets_are_seeded_and_reachable(arm):
    task = ReachTask(arm, seed=3, tolerance_m=0.02)
    t0 = task.reset(0)
    assert np.array_equal(t0, ReachTask(arm, seed=3).sample_target(0))
    assert not np.allclose(t0, task.sample_target(1))
    assert not np.allclose(t0, ReachTask(arm, seed=4).sample_target(0))
    for episode in range(5):
        target = task.reset(episode)
        assert 0.03 <= target[2] <= 0.25
        assert np.linalg.norm(arm.forward_kinematics(task.solve()) - target) <= 0.005


def test_scripted_reach_succeeds_through_servo_commands(arm):
    task = ReachTask(arm, seed=0)
    successes = 0
    for episode in range(3):
        arm.reset()
        task.reset(episode)
        q_goal = task.solve()
        for q in min_jerk(arm.qpos, q_goal, 200):  # 0.4 s demonstration
            ticks = arm.qpos_to_ticks(q)
            arm.step(0.002, {i: ServoCommand(ticks[i], True) for i in ticks})
        hold(arm, arm.qpos_to_ticks(q_goal), 0.4)
        successes += task.success()
    assert successes == 3


def test_min_jerk_endpoints():
    path = min_jerk([0.0, 1.0], [1.0, -1.0], 10)
    assert path.shape == (10, 2)
    np.testing.assert_allclose(path[-1], [1.0, -1.0])
    assert np.all(np.diff(path[:, 0]) > 0)


def test_concurrent_reads_while_stepping(arm):
    stop = threading.Event()
    errors = []

    def stepper():
        cmds = {i: ServoCommand(2048 + 300, True) for i in range(1, 7)}
        while not stop.is_set():
            try:
                arm.step(0.002, cmds)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            # paced like the emulator's motion thread (2 ms of simulated time per step), faster than real time: an
            # unpaced loop re-takes the arm's lock at once and starved the reader for > 60 s on a loaded machine
            time.sleep(0.0005)

    thread = threading.Thread(target=stepper, daemon=True)
    thread.start()
    try:
        for _ in range(300):
            assert arm.qpos.shape == (6,)
            assert np.isfinite(arm.end_effector_pos()).all()
            arm.inverse_kinematics([0.2, 0.05, 0.1])
    finally:
        stop.set()
        thread.join(2)
    assert not errors


def test_real_time_factor(arm):
    cmds = {i: ServoCommand(2048 + 100, True) for i in range(1, 7)}
    start = time.perf_counter()
    for _ in range(1000):  # 2 s of simulated time in 2 ms calls, as the emulator's motion thread does
        arm.step(0.002, cmds)
    elapsed = time.perf_counter() - start
    assert 2.0 / elapsed > 2.0, f"sim arm runs at {2.0 / elapsed:.1f}x real time"


def test_render_is_optional_and_shows_the_arm(arm):
    try:
        frame = arm.render(64, 48, camera="front")
    except Exception as exc:  # no EGL / GL on this machine
        pytest.skip(f"headless MuJoCo rendering unavailable: {exc}")
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    assert frame.std() > 5
    from_thread = {}
    thread = threading.Thread(target=lambda: from_thread.setdefault("frame", arm.render(64, 48, camera="front")))
    thread.start()
    thread.join(10)
    np.testing.assert_array_equal(from_thread["frame"], frame)  # a camera thread renders through its own context
    arm.reset([0.8, 0.5, 0.5, 0.0, 0.0, 0.0])
    assert np.abs(arm.render(64, 48, camera="front").astype(int) - frame).mean() > 1


def test_missing_model_and_bad_joint_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="arm.xml"):
        MujocoArmBackend(tmp_path / "arm.xml")
    with pytest.raises(ValueError, match="nope"):
        MujocoArmBackend(joints={1: "nope"})


def test_emulated_servos_drive_the_sim_arm_in_real_time(arm):
    """Feetech frames over the pty -> emulator registers -> MuJoCo arm: reach a target, read it back, torque off."""
    serial = pytest.importorskip("serial")
    from robopolicy.real.motors import feetech
    from robopolicy.real.motors.emulator import ServoEmulator

    ids = list(range(1, 7))
    position = ServoEmulator("feetech", {1: "sts3215"})._servos[0].spec.register("Present_Position")
    task = ReachTask(arm, seed=1)
    task.reset(0)
    goal_ticks = {i: round(t) for i, t in arm.qpos_to_ticks(task.solve()).items()}
    with ServoEmulator("feetech", {i: "sts3215" for i in ids}, backend=arm) as emu:
        host = serial.Serial(emu.port, 1_000_000, timeout=0.5)
        try:
            start_wall, start_sim = time.perf_counter(), arm.sim_time_s
            host.write(feetech.sync_write(40, 1, {i: b"\x01" for i in ids}))  # torque on
            host.write(feetech.sync_write(42, 2, {i: feetech.encode_value(goal_ticks[i], position) for i in ids}))
            deadline = time.monotonic() + 3.0
            while not task.success() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert task.success(), f"tip {task.distance():.3f} m from the target"
            time.sleep(0.3)
            # physics advanced with the wall clock (the motion thread steps it every ~2 ms)
            wall, sim = time.perf_counter() - start_wall, arm.sim_time_s - start_sim
            assert 0.7 * wall <= sim <= wall + 0.01
            host.reset_input_buffer()
            host.write(feetech.sync_read(56, 2, ids))
            answer = host.read(6 * 8)
            present = {p.motor_id: feetech.decode_value(p.params, position)
                       for p in feetech.PacketParser("status").feed(answer)}
            assert sorted(present) == ids
            for i in ids:
                assert abs(present[i] - goal_ticks[i]) <= 12  # gravity droop of a kp = 50 servo
                assert present[i] == pytest.approx(arm.rad_to_ticks(i, arm.qpos[i - 1]), abs=1)
            lift_before = emu.register(2, "Present_Position")
            host.write(feetech.sync_write(40, 1, {i: b"\x00" for i in ids}))  # torque off: the arm sags
            time.sleep(0.4)
            assert emu.register(2, "Present_Position") - lift_before > 20
        finally:
            host.close()


def test_rest_keyframe_is_stable_with_torque_off_and_hand_moves():
    arm = MujocoArmBackend(keyframe="rest")
    rest = arm.qpos.copy()
    hold(arm, {i: 2048 for i in range(1, 7)}, 1.0, torque=False)
    np.testing.assert_allclose(arm.qpos, rest, atol=0.02)  # resting on its stops, the gripper on the table
    assert arm.end_effector_pos()[2] < 0.03
    arm.set_position(1, 2048 + 512)  # an operator turns the base by hand
    assert arm.qpos[0] == pytest.approx(math.pi / 4)
    assert arm.feedback()[1].position == pytest.approx(2048 + 512)
