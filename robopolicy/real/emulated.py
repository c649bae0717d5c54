"""Emulated hardware for robot descriptions: servo emulators on ptys, a simulated follower arm, a scripted operator.

`emulate_arm(config)` starts a `ServoEmulator` speaking the config's protocol with its motor ids and models and
returns the pty path to use as the robot's port, so `make_robot(config, port=rig.port)` runs the real driver
stack (codec, bus, calibration, normalization, safety) against it. The follower can be backed by the MuJoCo arm
(`MujocoArmBackend`); a leader arm by a `FirstOrderBackend` whose joints a `ScriptedOperator` moves "by hand".

`ScriptedOperator` demonstrates the simulated arm's reach task on a leader arm: in every reset phase it moves the
leader to a random start pose, in every episode it moves it to the inverse-kinematics solution of the task's
target (seeded from `home`, so the same whatever the timing; minimum-jerk, `move_s` seconds) and holds it. Poses
are joint angles in rad, converted to servo ticks the way the simulated arm maps them, so the follower mirrors the
leader through both arms' calibrations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from robopolicy.real.motors.calibration import normalize
from robopolicy.real.motors.emulator import Faults, ServoEmulator
from robopolicy.real.motors.motion import FirstOrderBackend, MotionBackend, rad_to_ticks
from robopolicy.real.robots.config import RobotConfig, resolve_config


@dataclass
class EmulatedArm:
    """A running emulator for one robot description; `port` is the pty path the driver opens."""

    config: RobotConfig
    emulator: ServoEmulator
    backend: MotionBackend

    @property
    def port(self) -> str:
        return self.emulator.port

    def stop(self) -> None:
        self.emulator.stop()

    def __enter__(self) -> EmulatedArm:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def emulate_arm(config: RobotConfig | str | Mapping, *, backend: MotionBackend | None = None, pace: bool = False,
                faults: Faults | None = None, seed: int = 0) -> EmulatedArm:
    """Start a servo emulator for every motor of `config` (ids, models, baud rate) and return it running."""
    cfg = resolve_config(config)
    servos = {m.id: m.model for m in cfg.motors}
    if backend is None:
        backend = FirstOrderBackend(initial=dict.fromkeys(servos, 2048.0))
    emulator = ServoEmulator(cfg.protocol, servos, baudrate=cfg.baudrate, pace=pace, faults=faults or Faults(),
                             backend=backend, seed=seed)
    emulator.start()
    return EmulatedArm(cfg, emulator, backend)


def random_start_pose(home: np.ndarray, rng: np.random.Generator, box: float = 0.5) -> np.ndarray:
    """A start pose (rad): `home` with the four arm joints (pan, lift, elbow, wrist flex) moved by U(-box, box)."""
    q = np.asarray(home, dtype=float).copy()
    q[:4] += rng.uniform(-box, box, size=4)
    return q


class ScriptedOperator:
    """Moves an emulated leader arm (FirstOrderBackend, torque off) along time-based joint trajectories.

    leader: the leader's backend; ids: servo ids in joint order; task: a `ReachTask` of the simulated follower
    (targets and IK); start_box: half-width (rad) of the random start poses around `home` (rad, joint order).
    The operator thread writes the hand-held positions at `rate_hz`.
    """

    def __init__(self, leader: FirstOrderBackend, ids: list[int], task, *, home: np.ndarray, move_s: float = 1.5,
                 start_box: float = 0.5, seed: int = 0, rate_hz: float = 200.0):
        self.leader, self.ids, self.task = leader, list(ids), task
        self.home = np.asarray(home, dtype=float)
        self.move_s, self.start_box = move_s, start_box
        self.rng = np.random.default_rng(seed)
        self._q = self.home.copy()
        self._from, self._to, self._t0, self._duration = self._q, self._q, time.perf_counter(), 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._period = 1.0 / rate_hz
        self._thread = threading.Thread(target=self._run, name="scripted-operator", daemon=True)
        self._write(self._q)
        self._thread.start()

    def _write(self, q: np.ndarray) -> None:
        for motor_id, rad in zip(self.ids, q):
            self.leader.set_position(motor_id, rad_to_ticks(float(rad)))

    def _current(self) -> np.ndarray:
        s = 1.0 if self._duration <= 0 else min(1.0, (time.perf_counter() - self._t0) / self._duration)
        blend = 10 * s**3 - 15 * s**4 + 6 * s**5
        return self._from + (self._to - self._from) * blend

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            with self._lock:
                self._q = self._current()
                q = self._q.copy()
            self._write(q)

    def move_to(self, q: np.ndarray, duration_s: float) -> None:
        """Start a minimum-jerk move from the current pose to `q` (rad, joint order)."""
        with self._lock:
            self._from, self._to = self._q.copy(), np.asarray(q, dtype=float)
            self._t0, self._duration = time.perf_counter(), float(duration_s)

    def random_start(self) -> np.ndarray:
        return random_start_pose(self.home, self.rng, self.start_box)

    def on_phase(self, phase: str, episode: int) -> None:
        """Record-loop hook: reset -> go to a random start pose; episode -> reach for the task's target."""
        if phase == "reset":
            self.move_to(self.random_start(), self.move_s)
        else:
            # IK seeded from `home`, not from the pose the leader happens to be in when the episode starts: that
            # pose depends on how long the reset phase really took (scheduling on a loaded machine), and the arm
            # is redundant for a position target, so each seed would give another joint solution
            self.move_to(self.task.solve(self.home), self.move_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


class SimArmRig:
    """The simulated arm (MuJoCo, sim/so101_arm) behind an emulated servo bus, for record/deploy without hardware.

    follower: description of the robot whose servos are emulated (6 motors, ids 1..6, as the sim arm's joints);
    leader: optional leader-arm description, emulated with a `ScriptedOperator` demonstrating the reach task;
    pace / faults: byte pacing at the baud rate and fault injection, for both emulated buses;
    camera: optional (width, height) of a `SimCamera` "front" rendering the arm (MUJOCO_GL=egl headless).
    The task is `ReachTask` with a fixed target (episode 0 of `task_seed`): reach it from random start poses;
    `seed` draws the start poses (recording and deployment use different seeds) and the fault injection.
    """

    def __init__(self, follower: RobotConfig | str | Mapping, leader: RobotConfig | str | Mapping | None = None, *,
                 seed: int = 0, pace: bool = False, faults: Faults | None = None,
                 camera: tuple[int, int] | None = None, fps: float = 30.0, tolerance_m: float = 0.02,
                 task_seed: int = 0):
        from robopolicy.real.cameras.sim import SimCamera
        from robopolicy.real.sim_arm import MujocoArmBackend, ReachTask

        self.arm = MujocoArmBackend()
        self.seed = seed
        self.home = self.arm.qpos.copy()
        self.task = ReachTask(self.arm, seed=task_seed, tolerance_m=tolerance_m)
        self.task.reset(0)
        self.follower = emulate_arm(follower, backend=self.arm, pace=pace, faults=faults, seed=seed)
        self.leader: EmulatedArm | None = None
        self.operator: ScriptedOperator | None = None
        if leader is not None:
            self.leader = emulate_arm(leader, pace=pace, faults=faults, seed=seed + 1)
            ids = sorted(self.arm.joints)
            self.operator = ScriptedOperator(self.leader.backend, ids, self.task, home=self.home, seed=seed)
        self.cameras = {}
        if camera is not None:
            self.cameras["front"] = SimCamera(self.arm.render, width=camera[0], height=camera[1], fps=fps, name="front")

    def start_pose(self, robot, episode: int, box: float = 0.5) -> dict[str, float]:
        """A random start pose for deployment episode `episode` (seeded by (seed, episode)) in the robot's
        normalized units {"<joint>.pos": value}, converted through the robot's calibration."""
        q = random_start_pose(self.home, np.random.default_rng([self.seed, episode]), box)
        calibration = robot.bus.calibration
        pose = {}
        for motor_id, rad in zip(sorted(self.arm.joints), q):
            m = next(m for m in robot.config.motors if m.id == motor_id)
            pose[f"{m.name}.pos"] = float(normalize(round(rad_to_ticks(float(rad))), calibration[m.name], m.norm_mode))
        return pose

    def on_phase(self, phase: str, episode: int) -> None:
        if self.operator is not None:
            self.operator.on_phase(phase, episode)

    def emulator_errors(self) -> list[str]:
        """Exceptions raised inside the emulators' threads (a crashed emulator looks like an unplugged bus)."""
        rigs = [("follower", self.follower), ("leader", self.leader)]
        return [f"{name} emulator: {exc!r}" for name, rig in rigs if rig is not None for exc in rig.emulator.errors]

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        for rig in (self.leader, self.follower):
            if rig is not None:
                rig.stop()
        self.arm.close()

    def __enter__(self) -> SimArmRig:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
