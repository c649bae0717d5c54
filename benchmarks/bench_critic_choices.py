"""What a PA-RL run's critic prefers among its policy's samples, on dataset states.

For --states windows of the dataset, N policy chunks per state are scored by the run's critic (ensemble mean Q);
printed: Q at the dataset chunk against Q at the samples (a critic that rates samples above the data is optimistic
off the data), the distance to the dataset chunk of the mean and the argmax-Q sample (the max finding
extrapolation errors picks far ones), and the per-state correlation of Q with that distance and with the chunk's
speed. Distances are in the action's units (PushT: pixels) over the executed steps.

  python benchmarks/bench_critic_choices.py --run outputs/offline_rl/flow/pa_rl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PUSHT = REPO.parent / "shared" / "data" / "pusht_cchi_v7_replay.zarr"
sys.path.insert(0, str(REPO))

from robopolicy.data.dataset import open_dataset  # noqa: E402
from robopolicy.data.sampler import WindowSampler  # noqa: E402
from robopolicy.rl.chunks import flatten_condition  # noqa: E402
from robopolicy.rl.online import guided_policy  # noqa: E402


def per_state_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the Pearson correlation of a[i] and b[i] (B, N)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-12)).mean().item()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a PA-RL fine-tuning run (policy + critic)")
    p.add_argument("--dataset", default=str(PUSHT))
    p.add_argument("--states", type=int, default=256)
    p.add_argument("--samples", type=int, default=8)
    args = p.parse_args()
    actor = guided_policy(args.run)
    policy, critic, sl = actor.policy, actor.critic, actor.slice
    key = policy.config.action_key
    windows = WindowSampler(open_dataset(args.dataset), policy.config.delta_indices())
    index = [int(i) for i in np.random.default_rng(0).choice(len(windows), args.states, replace=False)]
    batch = windows.get_batch(index)
    torch.manual_seed(0)
    with torch.no_grad():
        obs = policy.prepare(batch)
        feat = flatten_condition(policy.head.encode(obs))
        cand = policy.head.sample(obs, num_samples=args.samples)  # (B, N, H, D) normalized
        n = cand.shape[1]
        q = critic.q(feat.repeat_interleave(n, 0), cand.flatten(0, 1)[:, sl].float()).mean(0).view(-1, n)
        q_data = critic.q(feat, obs[key][:, sl].float()).mean(0)
        raw = policy.normalizer.unnormalize(key, cand)[:, :, sl]  # (B, N, k, D) in the action's units
        data = torch.as_tensor(batch[key])[:, sl].unsqueeze(1)
        dist = (raw - data).norm(dim=-1).mean(-1)  # (B, N)
        speed = (raw[:, :, 1:] - raw[:, :, :-1]).norm(dim=-1).mean(-1)
    rows = torch.arange(q.shape[0])
    best = q.argmax(1)
    print(f"{args.run}: {args.states} dataset states x {n} policy samples")
    print(f"Q at the dataset chunk {q_data.mean():.3f}, at the samples {q.mean():.3f} (argmax "
          f"{q.max(1).values.mean():.3f}; spread within a state {q.std(1).mean():.3f})")
    print(f"distance to the dataset chunk: samples {dist.mean():.2f}, argmax-Q sample {dist[rows, best].mean():.2f}, "
          f"argmin-Q sample {dist[rows, q.argmin(1)].mean():.2f}; corr(Q, distance) {per_state_corr(q, dist):+.3f}")
    print(f"chunk speed per step: samples {speed.mean():.2f}, argmax-Q sample {speed[rows, best].mean():.2f}; "
          f"corr(Q, speed) {per_state_corr(q, speed):+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
