"""How hard each term of CO-RFT's actor pulls on the policy, at a CO-RFT checkpoint's critic.

On --states dataset windows, the gradient norm in the head's parameters of the Q term -Q_k(s, pi(s)) / mean|Q|
(per unit of lambda) and of each behaviour term: the L1 norm of the sampled chunk's error (bc_term "l1"), the
mean of that error over the chunk's H x D elements (the form before the L1 norm), and the head's own loss on
the data (bc_term "head_loss"). Printed with the ratio lambda * |grad Q term| / |grad BC term| at the run's
lambda: above 1 the critic's direction dominates and nothing holds the policy to the data.

  python benchmarks/bench_actor_balance.py --run outputs/offline_rl/flow/co_rft_critic
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robopolicy.data.dataset import open_dataset  # noqa: E402
from robopolicy.policies.policy import load_policy, resolve_checkpoint  # noqa: E402
from robopolicy.rl.chunked_critic import ChunkedCritic  # noqa: E402
from robopolicy.rl.chunks import executed_slice, flatten_condition  # noqa: E402
from robopolicy.rl.co_rft import chunk_l1  # noqa: E402
from robopolicy.rl.online import CRITIC_FILE  # noqa: E402
from robopolicy.rl.registry import build_rule  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a CO-RFT run or checkpoint (policy + chunked critic)")
    p.add_argument("--states", type=int, default=64)
    args = p.parse_args()
    ckpt = resolve_checkpoint(args.run)
    config = json.loads((ckpt / "train_config.json").read_text())
    if config["rl"].get("method") != "co_rft":
        sys.exit(f"{ckpt}: rl.method={config['rl'].get('method')!r}; this probe reads a co_rft run's critic")
    rule = build_rule(config["rl"])
    policy = load_policy(ckpt)
    windows = rule.sampler(open_dataset(config["data"]["uri"]), policy)
    critic = ChunkedCritic(rule.obs_dim, policy.config.action_dim, rule.k, rule.config.critic)
    critic.load_state_dict(load_file(str(ckpt / CRITIC_FILE)))
    critic.requires_grad_(False)
    index = [int(i) for i in np.random.default_rng(0).choice(len(windows), args.states, replace=False)]
    batch = windows.get_batch(index)
    key, sl = policy.config.action_key, executed_slice(policy.config, rule.k)
    params = [q for q in policy.parameters() if q.requires_grad]

    def grad_norm(loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return float(torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None)))

    policy.train()
    obs = policy.prepare(batch)
    with torch.no_grad():
        feat = flatten_condition(policy.head.encode(obs))
    torch.manual_seed(0)
    chunk = policy(batch, sample=True).float()  # (B, H, D) with gradients through the sampler
    q = critic(feat, chunk[:, sl]).min(dim=0).values[:, -1]
    data, pad = obs[key].float(), obs.get(f"{key}_is_pad")
    valid = float((~pad).sum()) * chunk.shape[-1] if pad is not None else float(chunk[..., 0].numel() * chunk.shape[-1])
    norm = chunk_l1(chunk, data, pad)
    terms = {"Q term (per unit lambda)": -q.mean() / q.abs().mean().detach(),
             "L1 norm of the chunk error (bc_term l1)": norm,
             "L1 mean over H x D elements (before)": norm * chunk.shape[0] / valid,
             "head's own loss on the data (bc_term head_loss)": policy(batch).loss}
    norms = {name: grad_norm(t) for name, t in terms.items()}
    lam = rule.config.bc_lambda
    print(f"{ckpt}: {args.states} windows, chunk {tuple(chunk.shape[1:])}, k = {rule.k}, lambda = {lam}")
    print(f"Q at the policy's chunk {q.mean():.3f}; chunk L1 norm {norm:.3f}")
    g_q = norms.pop("Q term (per unit lambda)")
    print(f"{'term':<50} {'|grad|':>10} {'lambda*|grad Q|/|grad|':>24}")
    print(f"{'Q term (per unit lambda)':<50} {g_q:>10.4f} {'':>24}")
    for name, g in norms.items():
        print(f"{name:<50} {g:>10.4f} {lam * g_q / max(g, 1e-12):>24.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
