"""One language-conditioned policy for several robosuite tasks, per head, at the same training budget (issue 11).

Stages (each one a `robopolicy` command; a stage whose output exists is skipped, so a killed run continues where
it stopped, and a killed training resumes from its last checkpoint):
  1. collect  scripted demonstrations of every task into one LeRobot v3 dataset (task strings, phase labels)
  2. train    one policy per head from configs/multitask_robosuite_<head>.yaml (same steps and batch size)
  3. eval     each policy on each task: --episodes unseen seeds (from 100000; collection uses 0..N-1), the
              task's own instruction, the task's collection step limit (TASK_MAX_STEPS: about twice the
              expert's longest episode; --max-steps N for one limit everywhere)
  4. swapped  the same episodes with another task's instruction (the next task in the list): a policy that
              follows the words fails there, one that reads only the scene does not
  5. decoding dd_vla only: the same checkpoint decoded with T = 4 and 8 rounds and left to right (NFE = L, one
              token per pass) on --decoding-episodes per task (T = 12, the default, is stage 3)
Prints a success table (per task, mean) and writes OUT/results.json.

  python benchmarks/bench_multitask.py --episodes-per-task 50 --eval-episodes 50
  python benchmarks/bench_multitask.py --steps 200 --episodes-per-task 4 --eval-episodes 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("Lift", "Stack", "PickPlaceCan", "Door", "NutAssemblyRound")
HEADS = ("diffusion", "flow", "act", "dd_vla", "moe_act")
EVAL_SEED = 100_000
DECODINGS = {"T4": {"rounds": 4}, "T8": {"rounds": 8}, "left_to_right": {"variant": "left_to_right"}}


def run(cmd: list[str], log: Path) -> float:
    """Run a robopolicy command, its output appended to `log`; returns the wall time (s); exits on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "MUJOCO_GL": "egl"})
    if rc != 0:
        sys.exit(f"failed ({rc}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - start


def robopolicy() -> list[str]:
    return [sys.executable, "-m", "robopolicy.cli.main"]


def instruction(task: str) -> str:
    from robopolicy.sim.robosuite_env import TASK_STRINGS

    return TASK_STRINGS[task]


def success(eval_dir: Path) -> float:
    return json.loads((eval_dir / "eval_info.json").read_text())["aggregated"]["pc_success"]


def max_steps(task: str, override: int | None) -> int:
    from robopolicy.sim.collect import TASK_MAX_STEPS

    return override if override is not None else TASK_MAX_STEPS[task]


def eval_decoding(run_dir: Path, task: str, decoding: dict, episodes: int, n_envs: int, steps: int,
                  out_dir: Path) -> None:
    """Evaluate a dd_vla checkpoint with other decoding settings (its config's `decoding` fields replaced)."""
    import dataclasses

    from robopolicy.policies.policy import load_policy
    from robopolicy.sim.evaluate import evaluate

    policy = load_policy(run_dir)
    head = policy.head
    head.config = dataclasses.replace(head.config, decoding=dataclasses.replace(head.config.decoding, **decoding))
    evaluate(policy, f"robosuite:{task}", n_episodes=episodes, seed=EVAL_SEED, out_dir=out_dir, n_envs=n_envs,
             max_steps=steps, video_episodes=0, progress=False, verbose=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default=",".join(HEADS), help="comma-separated heads (configs/multitask_*)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated robosuite tasks")
    p.add_argument("--episodes-per-task", type=int, default=50, help="demonstrations per task")
    p.add_argument("--eval-episodes", type=int, default=50, help="evaluation episodes per task")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the presets', the same for all)")
    p.add_argument("--max-steps", type=int, default=None, help="episode step limit for every task (default: "
                   "the task's TASK_MAX_STEPS)")
    p.add_argument("--n-envs", type=int, default=2, help="parallel evaluation environments")
    p.add_argument("--no-swapped", action="store_true", help="skip the swapped-instruction evaluation")
    p.add_argument("--swapped-episodes", type=int, default=None, help="episodes per task with the swapped "
                   "instruction (default: --eval-episodes)")
    p.add_argument("--decoding-episodes", type=int, default=20, help="dd_vla episodes per task per decoding")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "multitask")
    args = p.parse_args()
    heads, tasks = args.heads.split(","), args.tasks.split(",")
    out, log = args.out, args.out / "bench.log"  # and OUT/<head>.log per head (runs with other --heads beside)
    data = out / "robosuite"
    times: dict[str, float] = {}

    if not (data / "meta" / "info.json").exists():
        times["collect"] = run([*robopolicy(), "collect", "--env", "robosuite:" + ",".join(tasks), "--episodes",
                                str(args.episodes_per_task), "--out", str(data), "--format", "lerobot"], log)
    for head in heads:
        run_dir = out / head
        done = run_dir / "DONE"
        if not done.exists():
            cmd = [*robopolicy(), "train", "--config", str(REPO / "configs" / f"multitask_robosuite_{head}.yaml"),
                   f"--data.uri={data}", f"--train.output_dir={run_dir}"]
            if args.steps is not None:
                cmd.append(f"--train.steps={args.steps}")
            if (run_dir / "checkpoints" / "last").exists():
                cmd.append("--resume")
            times[f"train/{head}"] = run(cmd, out / f"{head}.log")
            done.write_text("trained\n")
        for i, task in enumerate(tasks):
            swapped = tasks[(i + 1) % len(tasks)]
            runs = [("eval", None)] + ([] if args.no_swapped or len(tasks) < 2 else [("swapped", swapped)])
            for kind, other in runs:
                eval_dir = out / kind / head / task
                if (eval_dir / "eval_info.json").exists():
                    continue
                episodes = args.eval_episodes if kind == "eval" else args.swapped_episodes or args.eval_episodes
                cmd = [*robopolicy(), "eval", "--checkpoint", str(run_dir), "--env", f"robosuite:{task}",
                       "--episodes", str(episodes), "--seed", str(EVAL_SEED), "--n-envs", str(args.n_envs),
                       "--max-steps", str(max_steps(task, args.max_steps)),
                       "--videos", "1" if kind == "eval" else "0", "--out", str(eval_dir), "--no-progress"]
                if other is not None:
                    cmd += ["--task", instruction(other)]
                times[f"{kind}/{head}/{task}"] = run(cmd, out / f"{head}.log")
            if head != "dd_vla" or not args.decoding_episodes:
                continue
            for name, decoding in DECODINGS.items():
                eval_dir = out / "decoding" / name / task
                if not (eval_dir / "eval_info.json").exists():
                    start = time.perf_counter()
                    eval_decoding(run_dir, task, decoding, args.decoding_episodes, args.n_envs,
                                  max_steps(task, args.max_steps), eval_dir)
                    times[f"decoding/{name}/{task}"] = time.perf_counter() - start

    results = {"tasks": tasks, "heads": heads, "episodes_per_task": args.episodes_per_task,
               "eval_episodes": args.eval_episodes, "swapped_episodes": args.swapped_episodes or args.eval_episodes,
               "max_steps": {t: max_steps(t, args.max_steps) for t in tasks},
               "seconds": times, "success": {}, "swapped": {}}
    for head in heads:
        results["success"][head] = {t: success(out / "eval" / head / t) for t in tasks}
        if (out / "swapped" / head / tasks[0] / "eval_info.json").exists():
            results["swapped"][head] = {t: success(out / "swapped" / head / t) for t in tasks}
    if "dd_vla" in heads and args.decoding_episodes:
        results["decoding"] = {name: {t: success(out / "decoding" / name / t) for t in tasks} for name in DECODINGS}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"success % over {args.eval_episodes} unseen seeds per task ({args.episodes_per_task} demos per task)")
    print("| head | " + " | ".join(tasks) + " | mean | swapped instruction (mean) |")
    print("|---" * (len(tasks) + 3) + "|")
    for head in heads:
        row = results["success"][head]
        mean = sum(row.values()) / len(row)
        sw = results["swapped"].get(head)
        sw_mean = f"{sum(sw.values()) / len(sw):.0f}" if sw else "-"
        print(f"| {head} | " + " | ".join(f"{row[t]:.0f}" for t in tasks) + f" | {mean:.1f} | {sw_mean} |")
    for name, row in results.get("decoding", {}).items():
        print(f"dd_vla decoded {name}: " + ", ".join(f"{t} {row[t]:.0f}" for t in tasks)
              + f"; mean {sum(row.values()) / len(row):.1f} ({args.decoding_episodes} episodes per task)")
    print(f"results: {out / 'results.json'}; logs: {log}, {out}/<head>.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
