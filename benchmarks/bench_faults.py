"""Faults survived: record and deploy against emulated arms that drop, corrupt, delay and truncate replies.

Three runs on the simulated SO-101 (follower on the MuJoCo arm, leader moved by the scripted operator):
  record    `Recorder` for --episodes episodes with faults injected on both buses at the stated rates
  deploy    `Deployer` (sync inference, --checkpoint or an untrained near-home flow policy) with the same faults
  unplug    deploy again and unplug the elbow servo (id 3) after 2 s: the loop must hold position and stop with an
            error naming the motor; then record with the elbow unplugged mid-episode: the saved episodes survive.
Printed: faults injected (emulator counters), what the bus did about them (retries, timeouts, corrupt frames),
episodes requested / saved, and how each run ended.

Usage:
  python benchmarks/bench_faults.py [--episodes 5] [--drop 0.02] [--corrupt 0.01] [--delay 0.01 --delay-s 0.05]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from robopolicy.data.dataset import open_dataset
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.policy import Policy, load_policy, make_normalizer
from robopolicy.policies.registry import from_plain, get_config_class
from robopolicy.real.deploy import DeployConfig, Deployer
from robopolicy.real.emulated import SimArmRig
from robopolicy.real.motors.emulator import FAULT_COUNTERS, Faults
from robopolicy.real.record import RecordConfig, Recorder
from robopolicy.real.robots import make_robot
from robopolicy.real.teleop import make_teleoperator

REPO = Path(__file__).resolve().parents[1]
FOLLOWER, LEADER = REPO / "real" / "so101_follower.yaml", REPO / "real" / "so101_leader.yaml"


def near_pose_policy(center: np.ndarray) -> Policy:
    cls = get_config_class("flow")
    typed = from_plain(cls, {"denoiser": {"unet": {"down_dims": (32, 64), "step_embed_dim": 32}}})
    cfg = cls(input_features={"observation.state": FeatureSpec((6,), "state")},
              output_features={"action": FeatureSpec((6,), "action")}, denoiser=typed.denoiser)
    stats = {k: {"min": center - 3, "max": center + 3, "mean": center, "std": np.ones(6)}
             for k in ("observation.state", "action")}
    torch.manual_seed(0)
    return Policy(cfg, make_normalizer(cfg, stats)).eval()


def injected(rig: SimArmRig) -> dict:
    total = dict.fromkeys(FAULT_COUNTERS, 0)
    for arm in (rig.follower, rig.leader):
        if arm is not None:
            for k in FAULT_COUNTERS:
                total[k] += arm.emulator.counts.get(k, 0)
    total["replies"] = sum(a.emulator.counts.get("replies", 0) for a in (rig.follower, rig.leader) if a is not None)
    return total


def bus_stats(*devices) -> dict:
    out: dict[str, int] = {}
    for d in devices:
        for k, v in d.bus.stats.as_dict().items():
            out[k] = out.get(k, 0) + v
    return out


def record_run(faults: Faults, episodes: int, root: Path, unplug_after_s: float | None = None) -> dict:
    rig = SimArmRig(FOLLOWER, LEADER, seed=7, faults=faults)
    robot = make_robot(FOLLOWER, port=rig.follower.port, calibration="defaults")
    teleop = make_teleoperator(LEADER, port=rig.leader.port, calibration="defaults")
    ended = "completed"
    try:
        robot.connect()
        teleop.connect()
        robot.bus.stats.reset()
        teleop.bus.stats.reset()
        if unplug_after_s is not None:
            dead = Faults(dead_ids=frozenset({3}))
            threading.Timer(unplug_after_s, lambda: setattr(rig.follower.emulator, "faults", dead)).start()
        cfg = RecordConfig(root=str(root), fps=30, episodes=episodes, episode_time_s=2.0, reset_time_s=0.5)
        try:
            Recorder(robot, teleop, cfg, on_phase=rig.on_phase).run()
        except Exception as exc:
            ended = f"{type(exc).__name__}: {exc}"
        stats = bus_stats(robot, teleop)
    finally:
        rig.follower.emulator.faults = Faults()
        for dev in (robot, teleop):
            if dev.is_connected:
                dev.disconnect()
        counts = injected(rig)
        rig.stop()
    saved = [e.length for e in open_dataset(root).episodes] if (root / "meta" / "info.json").exists() else []
    return {"episodes_requested": episodes, "episodes_saved": len(saved), "lengths": saved, "ended": ended,
            "injected": counts, "bus": stats}


def deploy_run(faults: Faults, checkpoint: str | None, seconds: float, unplug_at_tick: int | None = None) -> dict:
    rig = SimArmRig(FOLLOWER, seed=7, faults=faults)
    robot = make_robot(FOLLOWER, port=rig.follower.port, calibration="defaults")
    try:
        robot.connect()
        robot.bus.stats.reset()
        center = np.array(list(robot.last_commanded.values()))
        policy = load_policy(checkpoint).eval() if checkpoint else near_pose_policy(center)
        deployer = Deployer(robot, DeployConfig(fps=30, episode_time_s=seconds), policy=policy)

        def on_tick(t):
            if unplug_at_tick is not None and t == unplug_at_tick:
                rig.follower.emulator.faults = Faults(dead_ids=frozenset({3}))

        report = deployer.run_episode(on_tick=on_tick)
        held = None
        if report.stopped:
            goal = rig.follower.emulator.register(1, "Goal_Position")
            present = rig.follower.emulator.register(1, "Present_Position")
            held = {"torque_on": rig.follower.emulator.register(1, "Torque_Enable") == 1,
                    "goal_minus_present_ticks": goal - present}
        stats = robot.bus.stats.as_dict()
    finally:
        rig.follower.emulator.faults = Faults()
        if robot.is_connected:
            robot.disconnect()
        counts = injected(rig)
        rig.stop()
    return {"ticks": report.ticks, "bus_faults_seen_by_loop": report.bus_faults, "stopped": report.stopped,
            "hold_after_stop": held, "p99_period_error_ms": report.loop["period_error"]["p99_ms"],
            "injected": counts, "bus": stats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--deploy-seconds", type=float, default=20.0)
    p.add_argument("--drop", type=float, default=0.02)
    p.add_argument("--corrupt", type=float, default=0.01)
    p.add_argument("--partial", type=float, default=0.01)
    p.add_argument("--delay", type=float, default=0.01)
    p.add_argument("--delay-s", type=float, default=0.05, help="longer than one bus timeout: forces a retry")
    p.add_argument("--checkpoint", help="policy for the deploy runs (default: untrained, near the home pose)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    faults = Faults(drop_rate=args.drop, corrupt_rate=args.corrupt, partial_rate=args.partial,
                    delay_rate=args.delay, delay_s=args.delay_s)
    print(f"faults per reply: {faults}")
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "record": record_run(faults, args.episodes, Path(tmp) / "faulty"),
            "deploy": deploy_run(faults, args.checkpoint, args.deploy_seconds),
            "deploy_unplug": deploy_run(Faults(), args.checkpoint, 5.0, unplug_at_tick=60),
            "record_unplug": record_run(Faults(), 3, Path(tmp) / "unplug", unplug_after_s=3.5),
        }
    for name, r in results.items():
        print(f"\n{name}:")
        print(json.dumps(r, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
