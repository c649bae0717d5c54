"""Time to quality with and without Level-2 minibatching (Mini-Diffuser): wall time of training until the
policy reaches a fixed PushT mean max coverage, for K = 1 (plain) and K > 1 noised action samples per encoded
observation.

Each run trains the same preset with `policy.minibatch_k=K` and evaluates the EMA weights every `--eval-every`
steps on `--episodes` PushT episodes (seeds from 100000). Training time excludes the evaluations
(metrics.csv `train_s`). Prints, per K, the first (train time, step) at which avg max coverage >= --target.

Usage:
  python benchmarks/bench_time_to_quality.py --config configs/diffusion_pusht_state_cpu.yaml \
      --k 1 8 --steps 6000 --eval-every 1000 --episodes 20 --target 0.6 --out outputs/ttq
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from robopolicy.train.config import load_config
from robopolicy.train.trainer import train


def run(config: str, k: int, args: argparse.Namespace) -> list[dict]:
    out = Path(args.out) / f"k{k}"
    overrides = [
        f"--policy.minibatch_k={k}", f"--train.steps={args.steps}", f"--train.eval_every={args.eval_every}",
        f"--train.save_every={args.steps}", "--eval.env=pusht", f"--eval.episodes={args.episodes}",
        "--eval.videos=0", f"--eval.n_envs={args.n_envs}", f"--train.output_dir={out}", "--train.overwrite=true",
        "--train.progress=false", f"--train.log_every={args.eval_every}", *args.overrides,
    ]
    if args.data:
        overrides.append(f"--data.uri={args.data}")
    train(load_config(config, overrides))
    with open(out / "metrics.csv") as f:
        train_s = {int(r["step"]): float(r["train_s"]) for r in csv.DictReader(f)}
    points = []
    for info_file in sorted((out / "eval").glob("step_*/eval_info.json")):
        step = int(info_file.parent.name.split("_")[1])
        agg = json.loads(info_file.read_text())["aggregated"]
        points.append({"step": step, "train_s": train_s.get(step), "coverage": agg.get("avg_max_coverage"),
                       "pc_success": agg["pc_success"]})
    return points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--data", help="override data.uri")
    p.add_argument("--k", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--n-envs", type=int, default=2)
    p.add_argument("--target", type=float, default=0.6, help="avg max coverage to reach")
    p.add_argument("--out", default="outputs/time_to_quality")
    p.add_argument("overrides", nargs="*", help="extra --section.field=value overrides")
    args = p.parse_args()
    results = {k: run(args.config, k, args) for k in args.k}
    print(f"\ntime to reach avg max coverage >= {args.target} ({args.episodes} PushT episodes per eval)")
    for k, points in results.items():
        for pt in points:
            print(f"  K={k:<2} step {pt['step']:>6}  train {pt['train_s']:>8.1f} s  coverage {pt['coverage']:.3f}  "
                  f"success {pt['pc_success']:.0f}%")
        hit = next((pt for pt in points if pt["coverage"] is not None and pt["coverage"] >= args.target), None)
        verdict = f"{hit['train_s']:.0f} s (step {hit['step']})" if hit else "not reached"
        print(f"K={k}: {verdict}")
    (Path(args.out) / "results.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
