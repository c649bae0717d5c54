"""Control-loop timing at 50 Hz against emulated servos while a policy runs in another process.

Set-up: the SO-101 follower's six servos are emulated in a child process (`EmulatorProcess`, the MuJoCo arm
behind the registers, bytes paced at 1 Mbps); `robopolicy.real.deploy.Deployer` drives them with asynchronous
inference: a flow policy in a worker process (`ProcessChunkSource`) computes the next chunk while the current
one executes. Every tick: sync read (observe), chunk queue (policy), safety filter, sync write (send), then the
absolute-deadline wait. Reported: period error p50/p99/max, ticks later than one period, overruns/skipped ticks,
drift (lateness of the last tick minus the second), per-section times. `--realtime` also runs it with the
loop thread in SCHED_FIFO (root or an rtprio limit), which is what a deployment machine should use, and the
emulator's threads above it (they stand in for servos, which answer in hardware time whatever the host load).

Usage:
  python benchmarks/bench_control_loop.py [--ticks 3000] [--fps 50] [--checkpoint DIR] [--realtime]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile

import numpy as np
import torch

from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.policy import Policy, make_normalizer
from robopolicy.policies.registry import from_plain, get_config_class
from robopolicy.real.deploy import DeployConfig, Deployer
from robopolicy.real.motors.emulator import EmulatorProcess
from robopolicy.real.robots import make_robot
from robopolicy.real.sim_arm import MujocoArmBackend
from robopolicy.runtime.async_inference import ProcessChunkSource
from robopolicy.runtime.loop import set_realtime_priority

ROBOT = "real/so101_follower.yaml"


def untrained_checkpoint(directory: str) -> str:
    """A flow policy of the sim-reach preset's size (UNet 64/128/256) whose actions stay near the home pose."""
    cls = get_config_class("flow")
    typed = from_plain(cls, {"denoiser": {"unet": {"down_dims": (64, 128, 256), "step_embed_dim": 64}}})
    cfg = cls(input_features={"observation.state": FeatureSpec((6,), "state")},
              output_features={"action": FeatureSpec((6,), "action")}, denoiser=typed.denoiser)
    stats = {k: {"min": np.full(6, -3.0), "max": np.full(6, 3.0), "mean": np.zeros(6), "std": np.ones(6)}
             for k in ("observation.state", "action")}
    torch.manual_seed(0)
    Policy(cfg, make_normalizer(cfg, stats)).save(directory)
    return directory


def run(checkpoint: str, ticks: int, fps: float, realtime: bool) -> dict:
    servos = {i: "sts3215" for i in range(1, 7)}
    with EmulatorProcess("feetech", servos, backend_factory=functools.partial(MujocoArmBackend), pace=True) as emu:
        robot = make_robot(ROBOT, port=emu.port, calibration="defaults")
        with ProcessChunkSource(checkpoint) as source, robot:
            robot.connect() if not robot.is_connected else None
            deployer = Deployer(robot, DeployConfig(fps=fps, episode_time_s=ticks / fps), source=source)
            if realtime:
                why_not = set_realtime_priority(10)
                if why_not:
                    raise SystemExit(f"--realtime: {why_not}")
                emu.set_realtime(20)
            try:
                report = deployer.run_episode()
            finally:
                if realtime:
                    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        errors = emu.errors
    loop = report.loop
    return {"realtime": realtime, "ticks": report.ticks, "stopped": report.stopped, "held_ticks": report.held_ticks,
            "period_error_ms": loop["period_error"], "lateness_ms": loop["lateness"],
            "late_over_period": loop["late_over_period"], "overruns": loop["overruns"], "skipped": loop["skipped"],
            "drift_ms": loop["drift_ms"], "achieved_fps": loop["achieved_fps"],
            "sections": {k: {q: round(v[q], 3) for q in ("p50_ms", "p99_ms", "max_ms")}
                         for k, v in loop["sections"].items()},
            "inference": report.inference, "emulator_errors": errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ticks", type=int, default=3000)
    p.add_argument("--fps", type=float, default=50.0)
    p.add_argument("--checkpoint", help="policy checkpoint (default: an untrained flow policy of the preset's size)")
    p.add_argument("--realtime", action="store_true", help="also run with the loop thread in SCHED_FIFO")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or untrained_checkpoint(tmp)
        results = [run(checkpoint, args.ticks, args.fps, False)]
        if args.realtime:
            results.append(run(checkpoint, args.ticks, args.fps, True))
    for r in results:
        e = r["period_error_ms"]
        print(f"{'SCHED_FIFO' if r['realtime'] else 'normal    '}: {r['ticks']} ticks at {args.fps:g} Hz "
              f"(achieved {r['achieved_fps']:.3f}), period error p50 {e['p50_ms']:.3f} / p99 {e['p99_ms']:.3f} / "
              f"max {e['max_ms']:.3f} ms, ticks later than a period {r['late_over_period']}, overruns "
              f"{r['overruns']}, skipped {r['skipped']}, drift {r['drift_ms']:.3f} ms, held {r['held_ticks']}, "
              f"chunks {r['inference'].get('chunks')}")
        print("   sections:", json.dumps(r["sections"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
