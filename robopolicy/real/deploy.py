"""Run a trained policy on a robot: a fixed-rate loop with safety, synchronous or asynchronous inference.

Every tick t (absolute deadlines, `FixedRateLoop`):
  observe   robot.get_observation() -> observation.state / observation.images.* -> observation history
  policy    sync: the chunk executor (receding horizon / temporal ensembling) asks for a chunk when it needs
            one and pops one action; async: `AsyncChunker` (the next chunk is computed in a worker process or on
            a policy server while the current one executes, optionally with real-time chunking) pops one action,
            or none yet (the robot then holds its last commanded target)
  safety    `SafetyGuard`: joint limits, per-tick step and velocity clamps against the last commanded target,
            a watchdog on the policy (no action for `watchdog_s` -> e-stop), consecutive bus faults -> e-stop
  send      robot.send_action (the robot clamps again to its own limits and returns what it sent)
The e-stop holds position (goal = present) unless configured to cut torque; `SafetyStop` ends the episode
with a message naming the failing motor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from robopolicy.real.dataset_features import IMAGE_PREFIX, action_dict, action_vector, observation_frame
from robopolicy.real.motors.errors import MotorBusError
from robopolicy.runtime.async_inference import AsyncChunker
from robopolicy.runtime.executors import make_executor
from robopolicy.runtime.history import ObservationHistory
from robopolicy.runtime.loop import FixedRateLoop
from robopolicy.runtime.rtc import RTCConfig
from robopolicy.runtime.safety import SafetyConfig, SafetyGuard, SafetyStop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployConfig:
    """fps: control rate (Hz); episode_time_s: length of one run; executor: sync chunk execution ("auto",
    "receding_horizon", "temporal_ensembling"); n_action_steps: override the policy's; max_velocity: joint
    speed cap (normalized units/s, None = only the robot's max_relative_target); watchdog_s: longest time
    without a policy action before the e-stop; estop_mode: "hold" or "torque_off"; max_consecutive_faults:
    bus faults in a row that stop the robot; rtc: real-time chunking (async flow/diffusion policies)."""

    fps: float = 30.0
    episode_time_s: float = 30.0
    executor: str = "auto"
    n_action_steps: int | None = None
    max_velocity: float | None = None
    watchdog_s: float = 1.0
    estop_mode: str = "hold"
    max_consecutive_faults: int = 3
    rtc: bool = False


@dataclass
class EpisodeReport:
    ticks: int = 0
    held_ticks: int = 0  # ticks without a policy action (async: chunk not there yet) -> last target held
    clamped_ticks: int = 0  # ticks where the safety filter changed the target
    bus_faults: int = 0
    stopped: str | None = None  # SafetyStop message, if the e-stop ended the episode
    loop: dict = field(default_factory=dict)
    inference: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def policy_frame(robot, obs: dict, input_keys) -> dict[str, np.ndarray]:
    """A robot observation -> the policy's inputs {key: (1, ...)}: state float32, images uint8 CHW."""
    frame = observation_frame(robot.observation_features, obs)
    missing = [k for k in input_keys if k not in frame]
    if missing:
        raise KeyError(f"the policy needs {missing}, the robot provides {sorted(frame)}; record with the same "
                       "cameras / joints the policy was trained on")
    out = {}
    for key in input_keys:
        value = frame[key]
        out[key] = (value.transpose(2, 0, 1) if key.startswith(IMAGE_PREFIX) else value)[None]
    return out


class Deployer:
    """A policy driving a connected robot. `policy`: a loaded `Policy` (sync inference) or None with `source`
    (an async `ChunkSource`: ProcessChunkSource / RemotePolicyClient) whose `info` describes the policy."""

    def __init__(self, robot, cfg: DeployConfig, *, policy=None, source=None):
        if (policy is None) == (source is None):
            raise ValueError("Deployer needs exactly one of policy= (sync) or source= (async)")
        self.robot, self.cfg, self.policy, self.source = robot, cfg, policy, source
        info = source.info if source is not None else None
        features = ({k: f.kind for k, f in policy.config.input_features.items()} if policy is not None
                    else {k: f["kind"] for k, f in info["input_features"].items()})
        self.input_keys = [k for k, kind in features.items() if kind != "language"]  # the instruction: not a frame
        self.n_obs_steps = policy.config.n_obs_steps if policy is not None else int(info["n_obs_steps"])
        action_dim = policy.config.action_dim if policy is not None else int(info["action_dim"])
        if action_dim != len(robot.action_features):
            raise ValueError(f"the policy outputs {action_dim} action values, {robot.name} takes "
                             f"{len(robot.action_features)}: {list(robot.action_features)}")
        lo, hi = zip(*(m.limits for m in robot.config.motors))
        self.safety = SafetyConfig(joint_min=lo, joint_max=hi, joint_names=tuple(robot.config.joint_names),
                                   max_velocity=cfg.max_velocity, watchdog_s=cfg.watchdog_s,
                                   estop_mode=cfg.estop_mode, max_consecutive_faults=cfg.max_consecutive_faults)
        self.loop = FixedRateLoop(cfg.fps)

    def _chooser(self) -> Callable[[int, ObservationHistory], np.ndarray | None]:
        """A function (t, history) -> action (D,) or None, fresh for each episode."""
        if self.policy is not None:
            executor = make_executor(self.policy.config, self.cfg.executor, n_action_steps=self.cfg.n_action_steps)
            executor.reset()

            def sync(t: int, history: ObservationHistory) -> np.ndarray:
                if executor.needs_chunk():
                    with torch.inference_mode():
                        executor.push(self.policy.predict_chunk(history.window()).cpu())  # chunk from any device
                return executor.pop()[0].numpy()

            return sync
        chunker = AsyncChunker(self.source, n_action_steps=self.cfg.n_action_steps,
                               rtc=RTCConfig() if self.cfg.rtc else None)
        self._chunker = chunker

        def asynchronous(t: int, history: ObservationHistory) -> np.ndarray | None:
            action = chunker.step(t, history.window)
            return None if action is None else np.asarray(action)[0]

        return asynchronous

    def run_episode(self, *, on_tick: Callable[[int], None] | None = None) -> EpisodeReport:
        robot, loop, cfg = self.robot, self.loop, self.cfg
        guard = SafetyGuard(self.safety, robot)
        choose = self._chooser()
        history = ObservationHistory(self.n_obs_steps)
        report = EpisodeReport()
        dt = 1.0 / cfg.fps
        last = action_vector(robot.action_features, robot.last_commanded)
        n_ticks = max(1, round(cfg.episode_time_s * cfg.fps))
        history.reset(policy_frame(robot, robot.get_observation(), self.input_keys))
        if self.source is not None:
            self._first_chunk(history)
        loop.reset()
        guard.watchdog.heartbeat()
        try:
            for t in range(n_ticks):
                with loop.section("observe"):
                    try:
                        obs = robot.get_observation()
                        guard.bus_ok()
                    except MotorBusError as exc:
                        report.bus_faults += 1
                        guard.bus_fault(exc, motor=_motor_of(exc))
                        loop.wait()
                        continue
                    history.push(policy_frame(robot, obs, self.input_keys))
                with loop.section("policy"):
                    action = choose(t, history)
                if action is None:
                    report.held_ticks += 1
                    target = last
                else:
                    guard.watchdog.heartbeat()
                    target = action.astype(np.float64)
                with loop.section("safety"):
                    sent, clamp = guard.filter(target, last, dt)
                    report.clamped_ticks += bool(clamp.get("clamped"))
                with loop.section("send"):
                    try:
                        sent_dict = robot.send_action(action_dict(robot.action_features, sent))
                        last = action_vector(robot.action_features, sent_dict).astype(np.float64)
                        guard.bus_ok()
                    except MotorBusError as exc:
                        report.bus_faults += 1
                        guard.bus_fault(exc, motor=_motor_of(exc))
                guard.check()
                report.ticks += 1
                if on_tick is not None:
                    on_tick(t)
                loop.wait()
        except SafetyStop as exc:
            report.stopped = str(exc)
            log.error("%s", exc)
        report.loop = loop.report()
        chunker = getattr(self, "_chunker", None)
        if chunker is not None:
            report.inference = dict(chunker.stats, delay_estimate=chunker.delay_estimate)
        return report

    def _first_chunk(self, history: ObservationHistory, timeout_s: float = 60.0) -> None:
        """Async inference: wait for the first chunk before the clock starts (the robot is holding still), so the
        episode does not begin with ticks that have no action."""
        chunker = self._chunker
        chunker.request(0, history.window())
        deadline = time.monotonic() + timeout_s
        while chunker.update(0) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no first action chunk from the policy within {timeout_s} s")
            time.sleep(0.001)

    def move_to(self, target: dict[str, float], duration_s: float) -> None:
        """Move the robot to `target` ({"<joint>.pos": value}) along a straight line in joint space at the loop
        rate, through the robot's own clamps (a reset between episodes; not a policy)."""
        start = action_vector(self.robot.action_features, self.robot.last_commanded)
        goal = action_vector(self.robot.action_features, target)
        n = max(1, round(duration_s * self.cfg.fps))
        self.loop.reset()
        for i in range(1, n + 1):
            s = i / n
            blend = 10 * s**3 - 15 * s**4 + 6 * s**5
            self.robot.send_action(action_dict(self.robot.action_features, start + (goal - start) * blend))
            self.loop.wait()


def _motor_of(exc: BaseException) -> str | None:
    """The motor(s) a bus error names ("elbow_flex" or "elbow_flex, wrist_flex")."""
    motors = [m for m in getattr(exc, "motors", ()) if m is not None]
    return ", ".join(map(str, motors)) if motors else getattr(exc, "motor", None)
