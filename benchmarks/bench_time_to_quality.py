"""Time to quality with and without Level-2 minibatching (Mini-Diffuser): wall time of training until the
policy reaches a fixed PushT mean max coverage.

A variant is `KxB`: B observations per step, each encoded once and reused for K noised action samples (the
denoiser sees B*K chunks). `1x64` is plain training; `8x8` is Level-2 with the same denoiser batch and 8x
fewer encoder passes (the Mini-Diffuser setting: the observation encoder is the expensive part).

Two measurements, because this machine is shared and noisy:
  quality  each variant trains the preset with `policy.minibatch_k=K`, `train.batch_size=B` and evaluates its EMA
           weights every `--eval-every` steps on `--episodes` PushT episodes (seeds from 100000): coverage per step.
  cost     (`--cost`) seconds per training step (data loading + forward/backward/optimizer/EMA, as the trainer
           does it) of every variant, measured side by side in one process, interleaved in rounds, medians.
Time to quality = first step at which avg max coverage >= --target, times the variant's median s/step. The
trainer's own `train_s` (metrics.csv) is printed too, but it depends on whatever else shared the machine.

Usage:
  python benchmarks/bench_time_to_quality.py --config configs/diffusion_pusht_image_cpu.yaml \
      --variants 1x64 8x8 --steps 3000 --eval-every 500 --episodes 20 --target 0.5 --out outputs/ttq
  python benchmarks/bench_time_to_quality.py --config ... --variants 1x64 8x8 --cost --out outputs/ttq
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import torch

from robopolicy.data.dataset import open_dataset
from robopolicy.data.sampler import WindowSampler
from robopolicy.train.config import load_config
from robopolicy.train.ema import EMA
from robopolicy.train.trainer import build_policy, make_optimizer, train


def parse_variant(text: str) -> tuple[int, int]:
    k, b = text.lower().split("x")
    return int(k), int(b)


def variant_overrides(k: int, b: int) -> list[str]:
    """K=1 leaves minibatch_k unset, so heads without Level-2 minibatching (ACT) run as the plain variant."""
    return [*([f"--policy.minibatch_k={k}"] if k != 1 else []), f"--train.batch_size={b}"]


def quality(config: str, variant: str, args: argparse.Namespace) -> list[dict]:
    """Train one variant with periodic PushT evaluation; returns [{step, train_s, coverage, pc_success}]."""
    out = Path(args.out) / variant
    overrides = [
        *variant_overrides(*parse_variant(variant)), f"--train.steps={args.steps}",
        f"--train.eval_every={args.eval_every}", f"--train.save_every={args.steps}", "--eval.env=pusht",
        f"--eval.episodes={args.episodes}", "--eval.videos=0", f"--eval.n_envs={args.n_envs}",
        f"--train.output_dir={out}", "--train.overwrite=true", "--train.progress=false",
        f"--train.log_every={args.eval_every}", *args.overrides,
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


def step_cost(config: str, variants: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per training step of each variant, interleaved in `--cost-rounds` rounds of
    `--cost-steps` steps so that every variant sees the same background load."""
    extra = [f"--data.uri={args.data}"] if args.data else []
    runs = {}
    for v in variants:
        cfg = load_config(config, [*variant_overrides(*parse_variant(v)), *extra, *args.overrides])
        dataset = open_dataset(cfg.data.uri, cache_mb=cfg.data.cache_mb)
        policy = build_policy(cfg, dataset)
        windows = WindowSampler(dataset, policy.config.delta_indices(), episodes=cfg.data.episodes)
        optimizer = make_optimizer(policy.head.parameters(), cfg.optim)
        ema = EMA(policy.head, cfg.train.ema_power, cfg.train.ema_max_decay) if cfg.train.ema_power > 0 else None
        gen = torch.Generator().manual_seed(0)
        runs[v] = (policy, windows, optimizer, ema, cfg, gen)
        if cfg.data.cache_mb:
            prefill = getattr(dataset, "prefill_cache", None)
            if prefill is not None:
                prefill()

    def one_step(v: str) -> None:
        policy, windows, optimizer, ema, cfg, gen = runs[v]
        idx = torch.randint(len(windows), (cfg.train.batch_size,), generator=gen).tolist()
        batch = windows.__getitems__(idx)
        out = policy(batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(policy.head)

    for v in variants:  # warm-up
        one_step(v)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.cost_rounds):
        for v in variants:
            t0 = time.perf_counter()
            for _ in range(args.cost_steps):
                one_step(v)
            times[v].append((time.perf_counter() - t0) / args.cost_steps)
    return {v: statistics.median(ts) for v, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--data", help="override data.uri")
    p.add_argument("--variants", nargs="+", default=["1x64", "8x8"], help="KxB: K noise samples x B observations")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--n-envs", type=int, default=2)
    p.add_argument("--target", type=float, default=0.6, help="avg max coverage to reach")
    p.add_argument("--out", default="outputs/time_to_quality")
    p.add_argument("--cost", action="store_true", help="measure s/step side by side instead of training")
    p.add_argument("--cost-rounds", type=int, default=5)
    p.add_argument("--cost-steps", type=int, default=10)
    p.add_argument("overrides", nargs="*", help="extra --section.field=value overrides")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cost:
        cost = step_cost(args.config, args.variants, args)
        base = cost[args.variants[0]]
        for v, s in cost.items():
            print(f"  {v:>6}: {s * 1000:8.1f} ms/step  ({base / s:.2f}x the steps/s of {args.variants[0]})")
        (out / "cost.json").write_text(json.dumps(cost, indent=2))
        return
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for v in args.variants:
        results[v] = quality(args.config, v, args)
        results_file.write_text(json.dumps(results, indent=2))
    cost = json.loads((out / "cost.json").read_text()) if (out / "cost.json").exists() else {}
    print(f"\ntime to reach avg max coverage >= {args.target} ({args.episodes} PushT episodes per eval)")
    for v in args.variants:
        for pt in results[v]:
            print(f"  {v:>6} step {pt['step']:>6}  train_s {pt['train_s']:>8.1f}  coverage {pt['coverage']:.3f}  "
                  f"success {pt['pc_success']:.0f}%")
        hit = next((pt for pt in results[v] if pt["coverage"] is not None and pt["coverage"] >= args.target), None)
        if hit is None:
            print(f"{v}: not reached in {args.steps} steps")
        elif v in cost:
            print(f"{v}: step {hit['step']} x {cost[v]:.3f} s/step = {hit['step'] * cost[v]:.0f} s")
        else:
            print(f"{v}: step {hit['step']} (train_s {hit['train_s']:.0f} s; run --cost for the side-by-side s/step)")


if __name__ == "__main__":
    main()
