"""PTR under corruption on PushT's real demonstrations (issue 12): uniform BC against PTR, both trained from
scratch on the same corrupted copy, and the weights PTR gives the corrupted windows.

Corruption (seeded, `corrupt`): every episode is cut into segments of --segment frames; a --fraction of all
segments is corrupted, alternately by shuffling the segment's actions in time (they no longer explain the
next state) and by replacing its states with those of an equally long segment of another episode (the
observation no longer matches the actions). The frame mask is saved as corruption.npz beside the copy.
A window (anchor t) counts as corrupted when a frame PTR looks at (its observations, t .. t + D) is corrupted,
and as clean when nothing from its first observation to its last action is.

Stages (a stage whose output exists is skipped, so a killed run continues):
  corrupt  the copy of pusht_cchi_v7_replay.zarr (state and action only)
  train    bc and ptr with configs/<head>_pusht_state_cpu.yaml, --steps each (PTR: `--rl.method=ptr`)
  eval     each on --seed-sets x --episodes gym-pusht episodes (seeds 100000, 200000, ...)
  weights  PTR's weight for every window of the copy: corrupted vs clean

  python benchmarks/bench_ptr_corruption.py --fraction 0.3 --steps 3000 --seed-sets 3 --episodes 50
  python benchmarks/bench_ptr_corruption.py --steps 4 --seed-sets 1 --episodes 1 --out /tmp/ptrc   # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_multitask import REPO, robopolicy, run
from bench_offline_rl import PUSHT, eval_sets


def corrupt(src: Path, dst: Path, fraction: float, segment: int, seed: int) -> np.ndarray:
    """Write the corrupted copy at dst (zarr); returns the per-frame code (0 clean, 1 shuffled, 2 swapped)."""
    from robopolicy.data.dataset import open_dataset
    from robopolicy.data.writer import create_writer

    ds = open_dataset(src)
    ends = ds.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    state, action = ds.read("state", np.arange(ds.num_frames)), ds.read("action", np.arange(ds.num_frames))
    segments = [(e, s, min(s + segment, end)) for e, (start, end) in enumerate(zip(starts, ends, strict=True))
                for s in range(int(start), int(end), segment) if min(s + segment, end) - s == segment]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(segments), size=round(fraction * len(segments)), replace=False)
    code = np.zeros(ds.num_frames, np.int8)
    new_state, new_action = state.copy(), action.copy()
    for i, idx in enumerate(chosen):
        ep, a, b = segments[idx]
        if i % 2 == 0:
            new_action[a:b] = action[a + rng.permutation(b - a)]
            code[a:b] = 1
        else:
            others = [j for j, (e, _, _) in enumerate(segments) if e != ep]
            _, c, d = segments[others[rng.integers(len(others))]]
            new_state[a:b] = state[c:d]
            code[a:b] = 2
    feats = {"state": ds.feature("state"), "action": ds.feature("action")}
    with create_writer(dst, feats, ds.fps or 10.0, format="zarr") as w:
        for start, end in zip(starts, ends, strict=True):
            for t in range(int(start), int(end)):
                w.add_frame({"state": new_state[t], "action": new_action[t]})
            w.save_episode(task=ds.frame_tasks(np.array([start]))[0] or None)
    np.savez(dst.parent / "corruption.npz", code=code, fraction=fraction, segment=segment, seed=seed)
    return code


def ptr_weights(run_dir: Path, code: np.ndarray, batch: int = 256) -> dict:
    """PTR's weights for every window of its training data, split into corrupted / clean windows."""
    import torch

    from robopolicy.rl.ptr import SCORER, TARGET, window_weights
    from robopolicy.rl.registry import build_rule
    from robopolicy.train.config import load_config
    from robopolicy.train.trainer import Trainer

    base = json.loads((run_dir / "train_config.json").read_text())
    cfg = load_config(None, ["--train.progress=false", "--train.tensorboard=false"], base=base)
    trainer = Trainer(cfg, rule=build_rule(cfg.rl), resume=True)
    policy, scorer, target = trainer.policy.eval(), trainer.modules[SCORER], trainer.modules[TARGET]
    windows, pcfg = trainer.windows, trainer.policy.config
    offset = cfg.rl.get("offset") or pcfg.n_action_steps
    torch.manual_seed(0)
    w = np.concatenate([
        window_weights(policy, scorer, target, windows.get_batch(range(i, min(i + batch, len(windows))))).numpy()
        for i in range(0, len(windows), batch)])
    t = windows.anchors
    seen = np.stack([code[np.clip(t + d, 0, len(code) - 1)] for d in range(-pcfg.n_obs_steps + 1, offset + 1)])
    span = np.stack([code[np.clip(t + d, 0, len(code) - 1)] for d in range(-pcfg.n_obs_steps + 1, pcfg.horizon)])
    groups = {"clean": (span == 0).all(0), "corrupted": (seen > 0).any(0),
              "shuffled actions": (seen == 1).any(0), "frames from another episode": (seen == 2).any(0)}
    out = {}
    for name, m in groups.items():
        x = w[m]
        out[name] = {"windows": int(m.sum()), "mean": float(x.mean()), "p10": float(np.quantile(x, 0.1)),
                     "median": float(np.median(x)), "p90": float(np.quantile(x, 0.9)),
                     "below_1": float((x < 1).mean())}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", default="flow", help="configs/<head>_pusht_state_cpu.yaml")
    p.add_argument("--fraction", type=float, default=0.3, help="share of segments corrupted")
    p.add_argument("--segment", type=int, default=16, help="frames per segment (the presets' horizon)")
    p.add_argument("--steps", type=int, default=3000, help="training steps of each run")
    p.add_argument("--ptr-warmup", type=int, default=1000, help="PTR's updates with weights 1 first")
    p.add_argument("--seed-sets", type=int, default=3)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="corruption seed")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "ptr_corruption")
    args = p.parse_args()
    if not PUSHT.exists():
        sys.exit(f"{PUSHT} is missing: this benchmark needs the real PushT demonstrations")
    out, log = args.out, args.out / "bench.log"
    data = out / f"pusht_corrupted_{args.fraction:g}.zarr"
    if not (out / "corruption.npz").exists():
        out.mkdir(parents=True, exist_ok=True)
        corrupt(PUSHT, data, args.fraction, args.segment, args.seed)
    code = np.load(out / "corruption.npz")["code"]
    results: dict = {"fraction": args.fraction, "segment": args.segment, "steps": args.steps,
                     "corrupted_frames": float((code > 0).mean()), "runs": {}}
    preset = REPO / "configs" / f"{args.head}_pusht_state_cpu.yaml"
    for name, extra in (("bc", []), ("ptr", ["--rl.method=ptr", f"--rl.warmup_steps={args.ptr_warmup}"])):
        run_dir = out / name
        if not (run_dir / "DONE").exists():
            cmd = [*robopolicy(), "train", "--config", str(preset), f"--data.uri={data}",
                   f"--train.steps={args.steps}", f"--train.output_dir={run_dir}", "--train.progress=false", *extra]
            run(cmd + (["--resume"] if (run_dir / "checkpoints" / "last").exists() else []), log)
            (run_dir / "DONE").write_text("trained\n")
        results["runs"][name] = eval_sets(run_dir, out / "eval" / name, args.seed_sets, args.episodes, log)
    results["ptr_weights"] = ptr_weights(out / "ptr", code)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"PushT, {results['corrupted_frames']:.0%} of frames corrupted ({args.fraction:g} of {args.segment}-frame "
          f"segments), {args.steps} steps each, {args.seed_sets} x {args.episodes} episodes")
    print("| run | success % (mean ± spread over sets) | mean max coverage |\n|---|---|---|")
    for name, r in results["runs"].items():
        print(f"| {name} | {r['success']:.1f} ± {r['success_std']:.1f} | {r['max_coverage']:.3f} |")
    print("| windows | count | mean weight | p10 / median / p90 | share below 1 |\n|---|---:|---:|---|---:|")
    for name, r in results["ptr_weights"].items():
        print(f"| {name} | {r['windows']} | {r['mean']:.3f} | {r['p10']:.2f} / {r['median']:.2f} / {r['p90']:.2f} "
              f"| {r['below_1']:.0%} |")
    print(f"results: {out / 'results.json'}; log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
