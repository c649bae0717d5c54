"""Cost of N action candidates for one image observation (what PA-RL draws per state), three ways, side by side:

  candidates   policy.predict_chunk(obs, num_samples=N): the observation is encoded once, the denoiser runs on
               a batch of N (the contract's path)
  repeated     predict_chunk on the observation repeated N times: a batch of N, but the image encoder runs N times
  single       N separate predict_chunk(obs) calls

Heads: diffusion and flow with the CPU image preset (configs/diffusion_pusht_image_cpu.yaml: 96x96 PushT camera +
agent xy, ResNet-18 GroupNorm + spatial softmax, crop 84, UNet 64/128/256, 10 DDIM / Euler steps, T_o 2) and ACT
with the paper's / LeRobot's image config (ResNet-18 feature map, dim 512, 4 + 1 layers, chunk 100). Random
weights (cost does not depend on them). Each round times the three ways in turn (interleaved, same background
load); reported: medians over rounds and the ratio single / candidates.

Usage: .venv/bin/python benchmarks/bench_sample_candidates.py [--n 32] [--rounds 3] [--threads 2] [--heads a,b]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.common.denoiser import DenoiserConfig, UnetConfig
from robopolicy.policies.common.encoders import EncoderConfig
from robopolicy.policies.policy import Policy, make_normalizer
from robopolicy.policies.registry import get_config_class

IMAGE, STATE, ACTION = "observation.image", "observation.state", "action"
FEATURES = {IMAGE: FeatureSpec((3, 96, 96), "image"), STATE: FeatureSpec((2,), "state")}
PRESET_DENOISER = DenoiserConfig(unet=UnetConfig(down_dims=(64, 128, 256), step_embed_dim=64),
                                 encoder=EncoderConfig(crop_shape=(84, 84)))


def build(name: str) -> Policy:
    cls = get_config_class(name)
    fields = {"act": {}}.get(name, {"denoiser": PRESET_DENOISER, "num_inference_steps": 10})
    cfg = cls(input_features=FEATURES, output_features={ACTION: FeatureSpec((2,), "action")}, **fields)
    stats = {k: {"min": np.zeros(2), "max": np.full(2, 512.0), "mean": np.full(2, 256.0), "std": np.full(2, 100.0)}
             for k in (STATE, ACTION)}
    torch.manual_seed(0)
    return Policy(cfg, make_normalizer(cfg, stats)).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=32, help="candidates per observation (PA-RL: 32)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--heads", default="diffusion,flow,act")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n
    print(f"N = {n} candidates for one observation, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'head':<10} {'candidates s':>13} {'repeated s':>11} {'single x N s':>13} {'single/cand':>12} "
          f"{'repeated/cand':>14}")
    for name in args.heads.split(","):
        med = measure(build(name), n, args.rounds)
        print(f"{name:<10} {med['candidates']:>13.3f} {med['repeated']:>11.3f} {med['single']:>13.3f} "
              f"{med['single'] / med['candidates']:>11.1f}x {med['repeated'] / med['candidates']:>13.2f}x",
              flush=True)


def measure(policy: Policy, n: int, rounds: int) -> dict[str, float]:
    """Median seconds of each way over `rounds` interleaved rounds, after one warm-up of each."""
    t_o = policy.config.n_obs_steps
    g = torch.Generator().manual_seed(0)
    obs = {IMAGE: torch.randint(0, 256, (1, t_o, 3, 96, 96), dtype=torch.uint8, generator=g),
           STATE: torch.rand(1, t_o, 2, generator=g) * 512}
    repeated = {k: v.repeat_interleave(n, 0) for k, v in obs.items()}
    ways = {
        "candidates": lambda: policy.predict_chunk(obs, num_samples=n),
        "repeated": lambda: policy.predict_chunk(repeated),
        "single": lambda: [policy.predict_chunk(obs) for _ in range(n)],
    }
    with torch.inference_mode():
        for fn in ways.values():  # warm-up: lazy init, packed weights
            fn()
        times = {k: [] for k in ways}
        for _ in range(rounds):
            for k, fn in ways.items():
                times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    main()
