"""`robopolicy deploy`: run a trained policy on a robot with a fixed-rate loop, safety limits and async inference."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from robopolicy.cli.device import add_device_argument, check_device
from robopolicy.config_parsing import ConfigError

DESCRIPTION = """\
Deploy a policy checkpoint to a robot: fixed-rate loop, safety limits, e-stop, async inference, RTC.

The loop runs at --fps with absolute deadlines (no drift, no bursts after an overrun) and reports per-section
timing. Inference: 'sync' runs the chunk executor in the loop (receding horizon, or temporal ensembling for
ACT); 'process' computes the next chunk in a worker process while the current one executes; 'server' asks a
`robopolicy serve` policy server over TCP. --rtc adds real-time chunking (flow / diffusion heads): the actions
that execute while the next chunk is computed are frozen and the rest is guided towards them.

Safety: the robot's joint limits and max_relative_target, --max-velocity, a watchdog on the policy
(--watchdog seconds without an action), and an e-stop that holds position (or cuts torque with
--estop torque_off) after --max-faults consecutive bus faults; the error names the motor. A policy server or
worker that dies or fails stops the robot the same way at the next tick; one that is slow or silent leaves it
holding its last target until the watchdog stops it. After a "hold" e-stop deploy exits with the motors still
torqued, holding position (support the arm before you power it off); otherwise it disconnects as the robot
description says.

--emulate deploys to the simulated arm (MuJoCo, sim/so101_arm) behind emulated servos and scores its reach
task: before each episode the arm is moved to a random start pose (seeded by --seed), and an episode succeeds
when the gripper tip ends within 2 cm of the target.
"""

EXAMPLES = """\
examples:
  robopolicy deploy --checkpoint outputs/run --robot real/so101_follower.yaml --robot-port /dev/ttyACM0
  robopolicy serve --checkpoint outputs/run --port 8765 &   # e.g. on a GPU workstation
  robopolicy deploy --checkpoint outputs/run --robot real/so101_follower.yaml --inference server \\
      --server gpu-box:8765 --rtc
  robopolicy deploy --checkpoint outputs/sim_reach --robot real/so101_follower.yaml --emulate --episodes 20
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--checkpoint", required=True, help="checkpoint or training run directory")
    p.add_argument("--robot", required=True, help="robot description YAML (real/*.yaml)")
    p.add_argument("--robot-port", help="serial port (default: the YAML's port)")
    p.add_argument("--calibration", default=None, help="'defaults' or a LeRobot calibration JSON (default: saved file)")
    p.add_argument("--fps", type=float, default=30.0, help="control rate, Hz (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=1, help="number of runs (default: %(default)s)")
    p.add_argument("--episode-time", type=float, default=30.0, help="seconds per run (default: %(default)s)")
    p.add_argument("--inference", choices=("sync", "process", "server"), default="sync", help="default: %(default)s")
    p.add_argument("--server", help="host:port of a `robopolicy serve` server (--inference server)")
    p.add_argument("--server-timeout", type=float, default=5.0,
                   help="seconds to connect to the server and get its policy info (default: %(default)s)")
    add_device_argument(p, default=None, what="cpu; with --inference server: the `robopolicy serve --device`")
    p.add_argument("--executor", choices=("auto", "receding_horizon", "temporal_ensembling"), default="auto",
                   help="sync chunk execution (default: %(default)s)")
    p.add_argument("--n-action-steps", type=int, help="actions executed per chunk (default: the policy's)")
    p.add_argument("--task", metavar="INSTRUCTION", help="instruction for a language-conditioned policy")
    p.add_argument("--rtc", action="store_true", help="real-time chunking (async inference, flow / diffusion)")
    p.add_argument("--max-velocity", type=float, help="joint speed cap, normalized units per second")
    p.add_argument("--watchdog", type=float, default=1.0, help="seconds without a policy action before the e-stop")
    p.add_argument("--estop", choices=("hold", "torque_off"), default="hold", help="e-stop action (default: hold)")
    p.add_argument("--max-faults", type=int, default=3, help="consecutive bus faults before the e-stop")
    p.add_argument("--realtime", action="store_true",
                   help="run the control loop thread in SCHED_FIFO (root or an rtprio limit): p99 jitter < 1 ms")
    p.add_argument("--emulate", action="store_true", help="deploy to the simulated arm behind emulated servos")
    p.add_argument("--seed", type=int, default=1000, help="with --emulate: seed of the start poses")
    p.add_argument("--reset-time", type=float, default=2.0, help="with --emulate: seconds to reach the start pose")
    p.add_argument("--out", help="write the per-episode report (JSON) here")


def parse_server(address: str | None) -> tuple[str, int]:
    """--server "host:port" -> (host, port); ConfigError saying what is wrong otherwise."""
    if not address or ":" not in address:
        raise ConfigError(f"--inference server needs --server host:port (e.g. gpu-box:8765), got {address!r}")
    host, port = address.rsplit(":", 1)
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"--server {address!r}: expected host:port with a port in 1..65535 (e.g. gpu-box:8765)")
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    from robopolicy.real.deploy import DeployConfig, Deployer
    from robopolicy.real.robots import make_robot

    cfg = DeployConfig(fps=args.fps, episode_time_s=args.episode_time, executor=args.executor,
                       n_action_steps=args.n_action_steps, max_velocity=args.max_velocity, watchdog_s=args.watchdog,
                       estop_mode=args.estop, max_consecutive_faults=args.max_faults, rtc=args.rtc,
                       task=args.task)
    if args.device is not None and args.inference == "server":
        raise ConfigError("--device applies to --inference sync / process; pass it to `robopolicy serve` instead")
    if args.episodes < 1 or not args.server_timeout > 0 or not args.reset_time >= 0:
        raise ConfigError(f"need --episodes >= 1, --server-timeout > 0 and --reset-time >= 0, got {args.episodes}, "
                          f"{args.server_timeout} and {args.reset_time}")
    address = parse_server(args.server) if args.inference == "server" else None
    device = check_device(args.device or "cpu")
    rig = source = None
    port, calibration = args.robot_port, args.calibration
    try:
        if args.emulate:
            from robopolicy.real.emulated import SimArmRig

            rig = SimArmRig(args.robot, seed=args.seed, fps=args.fps)
            port, calibration = rig.follower.port, calibration or "defaults"
        policy = None
        if args.inference == "sync":
            from robopolicy.policies.policy import load_policy

            policy = load_policy(args.checkpoint, map_location=device).eval()
        elif args.inference == "process":
            from robopolicy.runtime.async_inference import ProcessChunkSource

            source = ProcessChunkSource(args.checkpoint, device=device)
        else:
            from robopolicy.runtime.async_inference import RemotePolicyClient

            source = RemotePolicyClient(*address, connect_timeout=args.server_timeout)
        robot = make_robot(args.robot, port=port, calibration=calibration)
        reports = []
        with robot:
            if not robot.is_connected:
                robot.connect()
            deployer = Deployer(robot, cfg, policy=policy, source=source)
            try:
                if args.realtime:  # after every helper thread has started: threads inherit the policy
                    realtime_or_warn()
                for episode in range(args.episodes):
                    if rig is not None:
                        deployer.move_to(rig.start_pose(robot, episode), args.reset_time)
                    report = deployer.run_episode().to_dict()
                    if rig is not None:
                        report["distance_m"] = rig.task.distance()
                        report["success"] = rig.task.success()
                    reports.append(report)
                    print(_episode_line(episode, report))
                    if report["stopped"]:
                        break
            finally:
                if deployer.estop_held:
                    keep_holding(robot)
    finally:
        if source is not None:
            source.close()
        if rig is not None:
            for line in rig.emulator_errors():
                print(line, file=sys.stderr)
            rig.stop()
    summary = _summary(reports)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "episodes": reports}, indent=2, default=str))
    print(json.dumps(summary, indent=2))
    if "success_rate" in summary:
        print(f"success rate: {100 * summary['success_rate']:.1f}% ({summary['n_success']}/{summary['episodes']})")
    return 1 if any(r["stopped"] for r in reports) else 0


def keep_holding(robot) -> None:
    """After a "hold" e-stop: disconnect without turning torque off, so the arm keeps holding its position
    instead of falling the moment deploy exits (the robot description's disable_torque_on_disconnect is for a
    normal end)."""
    config = getattr(robot, "config", None)
    if config is not None and getattr(config, "disable_torque_on_disconnect", False):
        robot.config = dataclasses.replace(config, disable_torque_on_disconnect=False)
    print("e-stop: the motors stay torqued, holding position; support the arm before powering it off",
          file=sys.stderr)


def realtime_or_warn() -> None:
    """--realtime: SCHED_FIFO for the calling (loop) thread, or a warning saying why not."""
    from robopolicy.runtime.loop import set_realtime_priority

    why_not = set_realtime_priority()
    if why_not:
        print(f"--realtime: {why_not}; running with normal scheduling", file=sys.stderr)


def _episode_line(episode: int, report: dict) -> str:
    loop = report["loop"]
    err = loop.get("period_error", {})
    parts = [f"episode {episode}: {report['ticks']} ticks",
             f"p99 period error {err.get('p99_ms', float('nan')):.2f} ms",
             f"held {report['held_ticks']}", f"clamped {report['clamped_ticks']}", f"bus faults {report['bus_faults']}"]
    if "success" in report:
        parts.append(f"distance {100 * report['distance_m']:.1f} cm -> {'success' if report['success'] else 'fail'}")
    if report["stopped"]:
        parts.append(f"STOPPED: {report['stopped']}")
    return ", ".join(parts)


def _summary(reports: list[dict]) -> dict:
    summary = {"episodes": len(reports), "stopped": [r["stopped"] for r in reports if r["stopped"]]}
    if reports and "success" in reports[0]:
        n = sum(bool(r["success"]) for r in reports)
        summary.update(n_success=n, success_rate=n / len(reports),
                       mean_distance_m=sum(r["distance_m"] for r in reports) / len(reports))
    return summary
