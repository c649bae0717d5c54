"""Success rate and episode length of the scripted robosuite experts (robopolicy.sim.experts), per task.

Each task runs `--episodes` episodes with environment seeds SEED, SEED + 1, ... (the seeds `robopolicy collect`
uses); an episode runs the expert until the first success or `--max-steps` control steps (20 Hz), low-dim
observations only (no rendering). Reported per task: success rate, mean episode length (steps until success,
the limit for failures), mean steps to success over the successful episodes, the phase sequence of the first
failure (if any), and the wall time.

Usage:
  .venv/bin/python benchmarks/bench_robosuite_experts.py [--episodes 50] [--seed 0] [--max-steps 400]
      [--tasks Lift,Stack,PickPlaceCan,Door,NutAssemblyRound] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from robopolicy.sim.experts import EXPERTS, make_expert
from robopolicy.sim.robosuite_env import RobosuiteConfig, RobosuiteEnv


def run_task(task: str, episodes: int, seed: int, max_steps: int) -> dict:
    env = RobosuiteEnv(RobosuiteConfig(task=task))
    expert = make_expert(task)
    lengths, successes, failures = [], [], []
    start = time.perf_counter()
    try:
        for k in range(episodes):
            obs = env.reset(seed + k)
            expert.reset()
            phases, success, t = [], False, 0
            for t in range(max_steps):  # noqa: B007 (t is the episode length below)
                action = expert.act(obs)
                if not phases or phases[-1] != expert.phase:
                    phases.append(expert.phase)
                obs, _, success = env.step(action)
                if success:
                    break
            lengths.append(t + 1)
            successes.append(success)
            if not success:
                failures.append({"seed": seed + k, "phases": phases})
    finally:
        env.close()
    ok = [n for n, s in zip(lengths, successes) if s]
    return {
        "task": task,
        "episodes": episodes,
        "success_rate": float(np.mean(successes)),
        "mean_length": float(np.mean(lengths)),
        "mean_steps_to_success": float(np.mean(ok)) if ok else None,
        "failures": failures,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--tasks", default=",".join(EXPERTS))
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    results = []
    print(f"{'task':<18} {'success':>8} {'mean len':>9} {'len|ok':>7} {'time s':>7}  first failure", flush=True)
    for task in args.tasks.split(","):
        r = run_task(task, args.episodes, args.seed, args.max_steps)
        results.append(r)
        fail = r["failures"][0] if r["failures"] else None
        fail_s = f"seed {fail['seed']}: {'>'.join(fail['phases'])}" if fail else "-"
        to_ok = f"{r['mean_steps_to_success']:.1f}" if r["mean_steps_to_success"] is not None else "-"
        print(
            f"{task:<18} {100 * r['success_rate']:7.0f}% {r['mean_length']:9.1f} {to_ok:>7} {r['seconds']:7.0f}  "
            f"{fail_s}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
