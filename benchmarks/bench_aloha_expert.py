"""gym-aloha 0.1.5 (ACT's bimanual tasks): scripted-expert success and environment speed on this CPU.

Expert: `robopolicy.sim.aloha_expert.AlohaExpert` plays its whole 300-step script (6 s at 50 Hz) from seeds
SEED..SEED+N-1 of `AlohaEnv` (low-dim, no rendering). Reported per task: success = gym-aloha reward 4 within the
last 10 steps (object still held / peg still on the pin at the end: the recorder's success flag),
success_last_step = reward 4 on the very last step (gym-aloha's contact test flickers for single steps),
success_any = reward 4 at some step (ACT's criterion), mean first-success step, largest IK residual, wall time
per episode (expert IK included).
Env speed: control steps/s of `AlohaEnv` holding the start pose, low-dim and with the "top" camera at the given
sizes, and gym-aloha's own `gym.make("gym_aloha/AlohaTransferCube-v0")` (which renders three 480 x 640
cameras inside every step) for comparison. MUJOCO_GL=egl (Mesa software rendering here).

Usage:
  python benchmarks/bench_aloha_expert.py [--episodes 50] [--seed 0] [--tasks TransferCube Insertion]
      [--sizes 96 120 240] [--speed-steps 300] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

from robopolicy.sim.aloha_collect import END_WINDOW
from robopolicy.sim.aloha_env import SUCCESS_REWARD, AlohaConfig, AlohaEnv, image_shape
from robopolicy.sim.aloha_expert import AlohaExpert, AlohaExpertConfig


def expert_success(task: str, episodes: int, seed: int) -> dict:
    env = AlohaEnv(AlohaConfig(task=task))
    expert = AlohaExpert(AlohaExpertConfig(task=task))
    final, last, anytime, first_steps, failures, ik = [], [], [], [], [], 0.0
    start = time.perf_counter()
    for s in range(seed, seed + episodes):
        obs, _ = env.reset(seed=s)
        expert.reset()
        rewards = []
        for _ in range(expert.length):
            obs, reward, _, _, _ = env.step(expert.act(obs))
            rewards.append(reward)
        rewards = np.asarray(rewards)
        final.append(bool((rewards[-END_WINDOW:] >= SUCCESS_REWARD).any()))
        last.append(bool(rewards[-1] >= SUCCESS_REWARD))
        hit = np.flatnonzero(rewards >= SUCCESS_REWARD)
        anytime.append(hit.size > 0)
        if hit.size:
            first_steps.append(int(hit[0]))
        if not final[-1]:
            failures.append({"seed": s, "final_reward": float(rewards[-1]), "max_reward": float(rewards.max())})
        ik = max(ik, expert.ik_error)
    seconds = time.perf_counter() - start
    return {
        "task": task,
        "episodes": episodes,
        "seeds": [seed, seed + episodes - 1],
        "success": float(np.mean(final)),
        "success_last_step": float(np.mean(last)),
        "success_any": float(np.mean(anytime)),
        "mean_first_success_step": float(np.mean(first_steps)) if first_steps else None,
        "max_ik_residual_m": ik,
        "s_per_episode": seconds / episodes,
        "failures": failures,
    }


def env_speed(task: str, cameras: tuple[str, ...], size: int | None, steps: int) -> dict:
    h, w = image_shape(size)
    env = AlohaEnv(AlohaConfig(task=task, cameras=cameras, image_height=h, image_width=w))
    obs, _ = env.reset(seed=0)
    hold = np.asarray(obs["observation.state"])
    env.step(hold)  # the first render builds the GL context
    start = time.perf_counter()
    for _ in range(steps):
        env.step(hold)
    rate = steps / (time.perf_counter() - start)
    return {"task": task, "camera": f"top {h}x{w}" if cameras else "none", "steps_per_s": rate}


def gym_aloha_speed(steps: int) -> dict:
    import gym_aloha  # noqa: F401  (registers the ids)
    import gymnasium as gym

    env = gym.make("gym_aloha/AlohaTransferCube-v0", obs_type="pixels_agent_pos")
    obs, _ = env.reset(seed=0)
    hold = np.asarray(obs["agent_pos"])
    env.step(hold)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(hold)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return {"task": "TransferCube", "camera": "gym-aloha AlohaEnv (top/angle/front_close 480x640)", "steps_per_s": rate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="+", default=["TransferCube", "Insertion"])
    p.add_argument("--sizes", nargs="*", type=int, default=[96, 120, 240], help="camera heights (4:3) to time")
    p.add_argument("--speed-steps", type=int, default=300, help="steps per speed measurement (low-dim: x5)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    results: dict = {"expert": [], "speed": []}
    for task in args.tasks:
        r = expert_success(task, args.episodes, args.seed)
        results["expert"].append(r)
        print(
            f"expert {task}: success {100 * r['success']:.0f}% (reward 4 in the last {END_WINDOW} steps), "
            f"{100 * r['success_last_step']:.0f}% (on the last step), "
            f"{100 * r['success_any']:.0f}% (reward 4 at some step), first success at step "
            f"{r['mean_first_success_step']}, max IK residual {1000 * r['max_ik_residual_m']:.1f} mm, "
            f"{r['s_per_episode']:.2f} s/episode; failures {r['failures']}",
            flush=True,
        )
    task = args.tasks[0]
    runs = [((), None, 5 * args.speed_steps)] + [(("top",), s, args.speed_steps) for s in args.sizes]
    for cameras, size, steps in runs:
        r = env_speed(task, cameras, size, steps)
        results["speed"].append(r)
        print(f"env {r['task']} camera {r['camera']}: {r['steps_per_s']:.1f} steps/s", flush=True)
    r = gym_aloha_speed(max(10, args.speed_steps // 10))
    results["speed"].append(r)
    print(f"env {r['camera']}: {r['steps_per_s']:.1f} steps/s", flush=True)
    print(json.dumps(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
