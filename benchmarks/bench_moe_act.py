"""MoE-ACT against ACT at the same data and training budget on phase-structured tasks (issue 11).

Transfer-cube (gym-aloha 0.1.5, bimanual, 50 Hz):
  1. collect  --episodes scripted demonstrations (seeds 0..N-1) with per-frame phase labels, and --heldout
              episodes from seed 100000 for the phase report
  2. train    act and moe_act from configs/{act,moe_act}_aloha_transfer_cube.yaml with the same steps and batch;
              --lowdim (default) replaces the top camera with the privileged cube pose
              (observation.environment_state), which a CPU trains in minutes instead of hours
  3. eval     --eval-episodes unseen seeds from 100000 with temporal ensembling (as the ACT paper evaluates)
  4. report   moe_act's phase confusion and expert usage per true phase on the held-out episodes (z = 0, no labels
              at inference)
Robosuite (--robosuite DIR, the output of bench_multitask.py): success of its act and moe_act policies per task,
and moe_act's phase report on --heldout episodes per task collected from seed 100000.

A stage whose output exists is skipped (a killed run continues). Prints the tables; writes OUT/results.json.

  python benchmarks/bench_moe_act.py --steps 10000 --robosuite outputs/multitask
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_multitask import EVAL_SEED, REPO, robopolicy, run, success

HEADS = ("act", "moe_act")


def collect(env: str, episodes: int, seed: int, out: Path, log: Path, *options: str) -> None:
    if not (out / "meta" / "info.json").exists():
        run([*robopolicy(), "collect", "--env", env, "--episodes", str(episodes), "--seed", str(seed), "--out",
             str(out), "--format", "lerobot", "--no-progress", *options], log)


def report(run_dir: Path, data: Path, batch_size: int = 64) -> dict:
    """moe_act's phase report on the dataset at `data` (every window), as plain lists."""
    from robopolicy.data.dataset import open_dataset
    from robopolicy.data.sampler import WindowSampler
    from robopolicy.policies.moe_act.modeling import phase_report
    from robopolicy.policies.policy import load_policy

    policy = load_policy(run_dir)
    dataset = open_dataset(data)
    windows = WindowSampler(dataset, policy.config.delta_indices())
    batches = (windows.get_batch(list(range(i, min(i + batch_size, len(windows)))))
               for i in range(0, len(windows), batch_size))
    names = dataset.features[policy.head.config.phase_key].names or []
    r = phase_report(policy, batches, names=names)
    return {"names": list(r.names), "accuracy": r.accuracy, "support": r.support.tolist(),
            "confusion": r.confusion.tolist(), "usage": [[round(float(x), 3) for x in row] for row in r.usage]}


def print_report(title: str, r: dict) -> None:
    names = r["names"] or [str(i) for i in range(len(r["confusion"]))]
    k = len(names)
    print(f"\n{title}: phase accuracy {100 * r['accuracy']:.1f}% over {sum(r['support'])} action steps")
    print("| true phase (steps) | " + " | ".join(f"pred {n}" for n in names) + " | "
          + " | ".join(f"expert {i}" for i in range(k)) + " |")
    print("|---" * (2 * k + 1) + "|")
    for i, name in enumerate(names):
        total = max(r["support"][i], 1)
        row = [f"{100 * c / total:.0f}%" for c in r["confusion"][i]] + [f"{u:.2f}" for u in r["usage"][i]]
        print(f"| {name} ({r['support'][i]}) | " + " | ".join(row) + " |")


def transfer_cube(args: argparse.Namespace, out: Path, log: Path, results: dict) -> None:
    """Collect, train act and moe_act, evaluate both, report moe_act's phases; fills `results`."""
    data, heldout = out / "transfer_cube", out / "transfer_cube_heldout"
    cameras = ["--cameras", "top", "--image-size", "120"] if args.images else []
    collect("aloha:TransferCube", args.episodes, 0, data, log, *cameras)
    collect("aloha:TransferCube", args.heldout, EVAL_SEED, heldout, log)
    inputs = "[observation.state,observation.images.top]" if args.images else \
        "[observation.state,observation.environment_state]"
    for head in HEADS:
        run_dir = out / head
        if not (run_dir / "DONE").exists():
            cmd = [*robopolicy(), "train", "--config", str(REPO / "configs" / f"{head}_aloha_transfer_cube.yaml"),
                   f"--data.uri={data}", f"--data.input_keys={inputs}", f"--train.steps={args.steps}",
                   f"--train.batch_size={args.batch_size}", f"--train.output_dir={run_dir}"]
            if (run_dir / "checkpoints" / "last").exists():
                cmd.append("--resume")
            run(cmd, log)
            (run_dir / "DONE").write_text("trained\n")
        eval_dir = out / "eval" / head
        if not (eval_dir / "eval_info.json").exists():
            run([*robopolicy(), "eval", "--checkpoint", str(run_dir), "--env", "aloha:TransferCube", "--episodes",
                 str(args.eval_episodes), "--seed", str(EVAL_SEED), "--executor", "temporal_ensembling", "--videos",
                 "2", "--out", str(eval_dir), "--no-progress"], log)
        results[head] = success(eval_dir)
    results["phases"] = report(out / "moe_act", heldout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=50, help="transfer-cube demonstrations")
    p.add_argument("--heldout", type=int, default=10, help="held-out episodes (per task) for the phase report")
    p.add_argument("--eval-episodes", type=int, default=50, help="transfer-cube evaluation episodes")
    p.add_argument("--steps", type=int, default=10000, help="training steps of both heads")
    p.add_argument("--batch-size", type=int, default=8, help="batch size of both heads (the ACT paper's 8)")
    p.add_argument("--images", action="store_true", help="train on the 120x160 top camera instead of the cube pose")
    p.add_argument("--robosuite", type=Path, default=None, help="bench_multitask.py output with act and moe_act")
    p.add_argument("--no-transfer-cube", action="store_true", help="only the robosuite comparison (--robosuite)")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "moe_act")
    args = p.parse_args()
    out, log = args.out, args.out / "bench.log"
    results: dict = {}
    if not args.no_transfer_cube:
        tc = results["transfer_cube"] = {"episodes": args.episodes, "steps": args.steps,
                                         "batch_size": args.batch_size,
                                         "inputs": "top camera 120x160" if args.images else "cube pose"}
        transfer_cube(args, out, log, tc)

    if args.robosuite is not None:
        tasks = json.loads((args.robosuite / "results.json").read_text())["tasks"]
        rs = results["robosuite"] = {head: {t: success(args.robosuite / "eval" / head / t) for t in tasks}
                                     for head in HEADS}
        rs_heldout = out / "robosuite_heldout"
        collect("robosuite:" + ",".join(tasks), args.heldout, EVAL_SEED, rs_heldout, log)
        rs["phases"] = report(args.robosuite / "moe_act", rs_heldout)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    if "transfer_cube" in results:
        tc = results["transfer_cube"]
        print(f"transfer-cube ({tc['inputs']}, {args.episodes} demos, {args.steps} steps x {args.batch_size}): "
              f"success over {args.eval_episodes} unseen seeds: ACT {tc['act']:.0f}%, MoE-ACT {tc['moe_act']:.0f}%")
        print_report("MoE-ACT transfer-cube, held-out episodes", tc["phases"])
    if "robosuite" in results:
        rs = results["robosuite"]
        print("\n| robosuite | " + " | ".join(tasks) + " |\n" + "|---" * (len(tasks) + 1) + "|")
        for head in HEADS:
            print(f"| {head} | " + " | ".join(f"{rs[head][t]:.0f}%" for t in tasks) + " |")
        print_report("MoE-ACT robosuite (all tasks), held-out episodes", rs["phases"])
    print(f"results: {out / 'results.json'}; log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
