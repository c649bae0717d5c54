"""Offline-RL fine-tuning on PushT's real human demonstrations: BC against PA-RL, CO-RFT and PTR (issue 12).

Stages (each a `robopolicy` command; a stage whose output exists is skipped, so a killed run continues):
  1. bc        a state policy per --heads from configs/<head>_pusht_state_cpu.yaml (--bc-steps, EMA weights)
  2. finetune  each BC checkpoint with each --methods (--steps updates, rewards relabelled from the block pose:
               rl.reward=pusht_coverage; PTR is reward-free; `bc` = BC continued at the same settings, the
               control, in <head>/bc_continued)
  3. eval      every checkpoint on --seed-sets x --episodes gym-pusht episodes (sets from 100000, 200000, ...,
               never used for tuning): success (coverage > 0.95) and mean max coverage, mean and spread over sets
  cost         --cost N: wall time of N updates of BC and of each method on the same data, side by side

  python benchmarks/bench_offline_rl.py --bc-steps 6000 --steps 2000 --seed-sets 3 --episodes 50
  python benchmarks/bench_offline_rl.py --bc-steps 20 --steps 4 --seed-sets 1 --episodes 2 --cost 5   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_multitask import REPO, robopolicy, run

PUSHT = REPO.parent / "shared" / "data" / "pusht_cchi_v7_replay.zarr"
# bc: the control, BC continued for the same updates at the same fine-tuning settings (batch, lr, EMA)
METHODS = ("bc", "pa_rl", "co_rft", "ptr")
REWARD = {"bc": [], "pa_rl": ["--rl.reward=pusht_coverage"], "co_rft": ["--rl.reward=pusht_coverage"], "ptr": []}
# sizes a 2-core CPU can afford (--paper-sizes drops them): sampling the 4.5M-parameter UNet dominates PA-RL
# (N = 32 candidates at s_t and at s_t+k: ~25 s per update at batch 64) and CO-RFT (a chunk at each prefix end)
# PA-RL's critic is IQL's here (PA-RL's parl_iql): it needs no policy samples, so --critic-warmup updates of
# critic pre-training cost minutes; then --steps updates of distillation (the policy's schedule starts there),
# onto the argmax candidate: PushT's dense coverage returns (~60) separate a state's candidates by < 1, so
# softmax(Q) at temperature 1 is nearly uniform and selects nothing
CPU_SIZES = {"pa_rl": ["--rl.optimization.num_samples=8", "--rl.optimization.top_k=4", "--rl.critic_loss=iql",
                       "--rl.distill_action=argmax"],
             "co_rft": ["--rl.cql_samples=2"], "ptr": ["--rl.warmup_steps=300"]}


def eval_sets(ckpt: Path, out: Path, sets: int, episodes: int, log: Path) -> dict:
    """Success % and mean max coverage per seed set, their mean and spread."""
    per_set = []
    for i in range(sets):
        d = out / f"seeds_{i}"
        if not (d / "eval_info.json").exists():
            run([*robopolicy(), "eval", "--checkpoint", str(ckpt), "--env", "pusht", "--episodes", str(episodes),
                 "--seed", str(100_000 * (i + 1)), "--n-envs", "2", "--videos", "1" if i == 0 else "0", "--out",
                 str(d), "--no-progress"], log)
        agg = json.loads((d / "eval_info.json").read_text())["aggregated"]
        per_set.append((agg["pc_success"], agg.get("avg_max_coverage")))
    succ = [s for s, _ in per_set]
    cov = [c for _, c in per_set if c is not None]
    spread = statistics.pstdev(succ) if len(succ) > 1 else 0.0
    return {"per_set": per_set, "success": statistics.mean(succ), "success_std": spread,
            "max_coverage": statistics.mean(cov) if cov else None}


def cost(bc_run: Path, updates: int, methods: list[str], batch: int, extra: dict[str, list[str]]
         ) -> dict[str, float]:
    """Seconds per 1k updates of BC and of each method, on the same data, one after the other in this process."""
    from robopolicy.policies.policy import load_policy
    from robopolicy.rl.registry import build_rule
    from robopolicy.train.config import load_config
    from robopolicy.train.trainer import Trainer

    base = json.loads((bc_run / "train_config.json").read_text())
    out: dict[str, float] = {}
    for method in ["bc", *(m for m in methods if m != "bc")]:
        overrides = [f"--train.steps={updates}", "--train.progress=false", "--train.tensorboard=false",
                     f"--train.batch_size={batch}", *extra.get(method, []),
                     f"--train.output_dir={bc_run.parent / 'cost' / method}", "--train.overwrite=true",
                     "--train.save_every=1000000", f"--data.uri={PUSHT}", "--train.ema_power=0"]
        rl = {"method": method, **({"reward": "pusht_coverage"} if method != "ptr" else {})}
        cfg = load_config(None, overrides, base={k: base[k] for k in ("policy", "data", "optim")}
                          | ({"rl": rl} if method != "bc" else {}))
        trainer = Trainer(cfg, rule=build_rule(cfg.rl) if method != "bc" else None,
                          policy=load_policy(bc_run) if method != "bc" else None)
        start = time.perf_counter()
        trainer.run()
        out[method] = (time.perf_counter() - start) * 1000 / updates
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default="flow,diffusion", help="state heads (configs/<head>_pusht_state_cpu.yaml)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--bc-steps", type=int, default=6000)
    p.add_argument("--steps", type=int, default=2000, help="fine-tuning updates per method")
    p.add_argument("--ptr-steps", type=int, help="PTR's updates (it costs what BC costs); default --steps")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch")
    p.add_argument("--critic-warmup", type=int, default=0,
                   help="PA-RL's and CO-RFT's critic-only updates before --steps policy updates")
    p.add_argument("--paper-sizes", action="store_true", help="the methods' default sizes, not CPU_SIZES")
    p.add_argument("--no-bc-eval", action="store_true",
                   help="skip evaluating BC (another process does it); the table lists what exists")
    p.add_argument("--seed-sets", type=int, default=3)
    p.add_argument("--episodes", type=int, default=50, help="episodes per seed set")
    p.add_argument("--cost", type=int, default=0, help="also time this many updates of each method against BC")
    p.add_argument("--cost-only", action="store_true", help="only the --cost timing (needs the BC run)")
    p.add_argument("--name", default=None, help="the fine-tuned run's directory (default: the method's name); "
                   "for a variant of one method beside another")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "offline_rl")
    p.epilog = "Any --rl.*, --train.* or --optim.* argument is passed on to finetune (e.g. --rl.cql_alpha=1)."
    args, overrides = p.parse_known_args()
    if unknown := [o for o in overrides if not o.startswith(("--rl.", "--train.", "--optim."))]:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not PUSHT.exists():
        sys.exit(f"{PUSHT} is missing: this benchmark needs the real PushT demonstrations")
    heads, methods = args.heads.split(","), [m for m in args.methods.split(",") if m]
    if args.name and len(methods) != 1:
        sys.exit(f"--name {args.name} names one run: give exactly one method (--methods), not {methods}")
    extra = {} if args.paper_sizes else CPU_SIZES
    out, log = args.out, args.out / "bench.log"
    results: dict = {"bc_steps": args.bc_steps, "steps": args.steps, "critic_warmup": args.critic_warmup,
                     "seed_sets": args.seed_sets,
                     "episodes": args.episodes, "batch_size": args.batch_size, "sizes": extra, "runs": {}}
    for head in heads:
        bc = out / head / "bc"
        if not (bc / "DONE").exists():
            cmd = [*robopolicy(), "train", "--config", str(REPO / "configs" / f"{head}_pusht_state_cpu.yaml"),
                   f"--data.uri={PUSHT}", f"--train.steps={args.bc_steps}", f"--train.output_dir={bc}",
                   "--train.progress=false"]
            run(cmd + (["--resume"] if (bc / "checkpoints" / "last").exists() else []), log)
            (bc / "DONE").write_text("trained\n")
        if not (args.no_bc_eval or args.cost_only):
            results["runs"][f"{head}/bc"] = eval_sets(bc, out / head / "eval" / "bc", args.seed_sets, args.episodes,
                                                      log)
        for method in [] if args.cost_only else methods:
            name = args.name or ("bc_continued" if method == "bc" else method)  # not the BC run itself
            ft = out / head / name
            steps = args.ptr_steps if method == "ptr" and args.ptr_steps else args.steps
            warmup = [f"--rl.critic_warmup_steps={args.critic_warmup}"] if method in ("pa_rl", "co_rft") else []
            steps += args.critic_warmup if warmup else 0
            if not (ft / "DONE").exists():
                cmd = [*robopolicy(), "finetune", "--checkpoint", str(bc), "--method", method, "--dataset",
                       str(PUSHT), f"--train.steps={steps}", f"--train.output_dir={ft}",
                       f"--train.batch_size={args.batch_size}", "--train.progress=false", *REWARD[method],
                       *extra.get(method, []), *warmup, *overrides]
                run(cmd + (["--resume"] if (ft / "checkpoints" / "last").exists() else []), log)
                (ft / "DONE").write_text("trained\n")
            results["runs"][f"{head}/{name}"] = eval_sets(ft, out / head / "eval" / name, args.seed_sets,
                                                          args.episodes, log)
        if args.cost:
            results.setdefault("ms_per_update", {})[head] = cost(bc, args.cost, methods, args.batch_size, extra)
    result_file = out / f"results_{'_'.join(heads)}_{'_'.join(methods) or 'bc'}.json"
    result_file.write_text(json.dumps(results, indent=2) + "\n")

    print(f"PushT, {args.seed_sets} x {args.episodes} episodes (seeds from 100000 per set); BC {args.bc_steps} "
          f"steps, fine-tuning {args.steps} updates")
    print("| run | success % (mean ± spread over sets) | mean max coverage |\n|---|---|---|")
    for name, r in results["runs"].items():
        cov = f"{r['max_coverage']:.3f}" if r["max_coverage"] is not None else "-"
        print(f"| {name} | {r['success']:.1f} ± {r['success_std']:.1f} | {cov} |")
    for head, row in results.get("ms_per_update", {}).items():
        print(f"{head}: ms per update " + ", ".join(f"{m} {v:.0f} ({v / row['bc']:.1f}x BC)" for m, v in row.items()))
    print(f"results: {result_file}; log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
