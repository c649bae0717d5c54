"""How far distillation moves a policy, side by side: the same updates on the data (BC), on the policy's own
samples (PA-RL's distillation with nothing optimised: N = 1, T = 0), and on a batch that keeps a share of the
dataset's chunks (PA-RL's `distill_data_fraction` anchor).

A fixed set of windows is sampled with a fixed generator before and after each run; printed per variant: the
mean |chunk after - chunk before| over the executed steps (pixels for PushT), the same distance to the data's
chunk, and the flow loss on the data (fixed noise). Every variant: batch 32, lr 5e-5, fresh AdamW, no
EMA unless --ema-power, lr decayed to 0 by the cosine schedule, like `robopolicy finetune`.

  python benchmarks/bench_self_distillation.py --checkpoint outputs/offline_rl/flow/bc --updates 150
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PUSHT = REPO.parent / "shared" / "data" / "pusht_cchi_v7_replay.zarr"
sys.path.insert(0, str(REPO))

from robopolicy.data.dataset import open_dataset  # noqa: E402
from robopolicy.data.sampler import WindowSampler  # noqa: E402
from robopolicy.policies.policy import load_policy  # noqa: E402
from robopolicy.rl.chunks import eval_mode, executed_slice, with_actions  # noqa: E402
from robopolicy.train.config import load_config  # noqa: E402
from robopolicy.train.trainer import Trainer  # noqa: E402
from robopolicy.train.update import POLICY, BehaviourCloning  # noqa: E402


class SelfDistillation(BehaviourCloning):
    """The head's own loss on its own samples at the batch's states; the first `data_fraction` of each batch
    keeps the dataset's chunk (what PA-RL's update does with N = 1, T = 0)."""

    def __init__(self, data_fraction: float):
        self.data_fraction = data_fraction

    def update(self, learner, batch, step):
        policy = learner.unwrap(POLICY)
        with torch.no_grad(), eval_mode(policy):
            chunk = policy.head.sample(policy.prepare(batch))
        keep = round(self.data_fraction * chunk.shape[0])
        return super().update(learner, with_actions(batch, policy, chunk, keep=keep), step)


def probe(policy, windows: WindowSampler, index: list[int]) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Chunks sampled with a fixed generator (unnormalized), the loss on the data with fixed noise, the data."""
    policy.eval()
    batch = windows.get_batch(index)
    chunk = policy.predict_chunk({k: batch[k] for k in policy.config.input_features},
                                 generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    with torch.no_grad():
        loss = policy.loss(batch).loss.item()
    return chunk, loss, torch.as_tensor(batch[policy.config.action_key])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a BC run directory (train_config.json)")
    p.add_argument("--dataset", default=str(PUSHT))
    p.add_argument("--updates", type=int, default=150)
    p.add_argument("--variants", default="bc,self,anchor")
    p.add_argument("--anchor", type=float, default=0.5, help="data share of the anchored variant")
    p.add_argument("--windows", type=int, default=256, help="probe windows")
    p.add_argument("--ema-power", type=float, default=0.0, help="the policy's EMA during the updates (0: none)")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "self_distillation")
    args = p.parse_args()
    base_policy = load_policy(args.checkpoint)
    windows = WindowSampler(open_dataset(args.dataset), base_policy.config.delta_indices())
    index = [int(i) for i in np.random.default_rng(1).choice(len(windows), args.windows, replace=False)]
    sl = executed_slice(base_policy.config)
    before, loss0, data = probe(base_policy, windows, index)
    base = json.loads((args.checkpoint / "train_config.json").read_text())
    rows = {"before": {"moved": 0.0, "to_data": (before - data)[:, sl].abs().mean().item(), "loss": loss0}}
    for variant in args.variants.split(","):
        rule = {"bc": BehaviourCloning(), "self": SelfDistillation(0.0),
                "anchor": SelfDistillation(args.anchor)}[variant]
        cfg = load_config(None, [
            f"--train.steps={args.updates}", "--train.progress=false", "--train.tensorboard=false",
            "--train.batch_size=32", f"--train.output_dir={args.out / variant}", "--train.overwrite=true",
            f"--train.save_every={args.updates}", f"--data.uri={args.dataset}", f"--train.ema_power={args.ema_power}",
            "--optim.lr=5e-5", "--optim.warmup_steps=0",
        ], base={k: base[k] for k in ("policy", "data", "optim")})
        start = time.perf_counter()
        Trainer(cfg, rule=rule, policy=load_policy(args.checkpoint)).run()
        after, loss, _ = probe(load_policy(args.out / variant), windows, index)
        rows[variant] = {"moved": (after - before)[:, sl].abs().mean().item(),
                         "to_data": (after - data)[:, sl].abs().mean().item(), "loss": loss,
                         "seconds": time.perf_counter() - start}
    print(f"{args.updates} updates from {args.checkpoint}, {args.windows} probe windows")
    print("| variant | chunk moved | chunk to data | loss on data |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        compare = "bc" in rows and name not in ("bc", "before")
        ratio = f" ({r['moved'] / rows['bc']['moved']:.1f}x BC)" if compare else ""
        print(f"| {name} | {r['moved']:.2f}{ratio} | {r['to_data']:.2f} | {r['loss']:.4f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
