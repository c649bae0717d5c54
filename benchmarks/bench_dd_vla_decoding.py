"""dd_vla decoding cost: latency per chunk against the rounds T (4 / 8 / 12) and against left-to-right decoding
(one token per pass, NFE = L) of the same model, on this CPU.

Model (no checkpoint): the small backbone at its defaults (dim 256, 6 layers, 8 heads, FF 1024), ResNet-18 with
GroupNorm on one 84x84 camera (random crop to 90% of the area at train, centre crop here), a 9-d state token and
a learned instruction embedding; chunk H = 8 x D = 7 (L = 56 tokens, the paper's LIBERO setting), 256 bins,
random weights (latency does not depend on them). Both attention layouts of the small backbone are timed:
"prefix" (the observation's keys / values are computed once per chunk and reused by every round) and "full"
(every round recomputes the whole sequence). `encode` (the camera trunk, once per observation) is timed apart.

--checkpoint DIR times a trained dd_vla policy instead (its own config; observations are random tensors of its
input shapes); success against T comes from benchmarks/bench_multitask.py (its decoding stage evaluates one
trained dd_vla checkpoint with T = 4, 8, 12 and left to right on the robosuite tasks).

Usage:
  .venv/bin/python benchmarks/bench_dd_vla_decoding.py [--repeats 20] [--threads 1] [--batch 1]
      [--checkpoint DIR] [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import torch

from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.common.masked_decoding import DecodeConfig
from robopolicy.policies.dd_vla.configuration import DDVLAConfig, SmallBackboneConfig
from robopolicy.policies.policy import Policy, make_normalizer

DECODERS = [("T=4", DecodeConfig(rounds=4)), ("T=8", DecodeConfig(rounds=8)), ("T=12", DecodeConfig(rounds=12)),
            ("left-to-right", DecodeConfig(variant="left_to_right"))]


def reference_policy(attention: str) -> Policy:
    features = {"observation.image": FeatureSpec((3, 84, 84), "image"), "observation.state": FeatureSpec((9,), "state"),
                "task": FeatureSpec((), "language")}
    cfg = DDVLAConfig(input_features=features, output_features={"action": FeatureSpec((7,), "action")},
                      gripper_dims=(-1,), small=SmallBackboneConfig(attention=attention)).resolved(["lift the cube"])
    stats = {k: {"q01": np.full(n, -1.0), "q99": np.ones(n), "min": np.full(n, -1.0), "max": np.ones(n)}
             for k, n in (("observation.state", 9), ("action", 7))}
    return Policy(cfg, make_normalizer(cfg, stats), processor=None).eval()


def fake_obs(cfg: DDVLAConfig, batch: int) -> dict[str, Any]:
    obs: dict[str, Any] = {}
    for key, spec in cfg.input_features.items():
        if spec.kind == "image":
            obs[key] = torch.randint(0, 256, (batch, 1, *spec.shape), dtype=torch.uint8)
        elif spec.kind == "language":
            obs[key] = [next(iter(cfg.language.tasks), "task")] * batch
        else:
            obs[key] = torch.randn(batch, 1, *spec.shape)
    return obs


def with_decoding(policy: Policy, decoding: DecodeConfig) -> Policy:
    policy.head.config = policy.config = policy.config.replace(decoding=decoding)
    return policy


def timer(fn, device: torch.device):
    def timed() -> float:
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    return timed


@torch.no_grad()
def measure(policy: Policy, batch: int, repeats: int) -> dict[str, float]:
    """Median seconds of `encode` and of each decoder's `sample_from_condition`; the cases take turns within each
    repeat, so a burst of background load hits all of them alike."""
    from robopolicy.policies.processor import Processor

    if not len(policy.processor) and policy.config.language_keys:
        policy.processor = Processor(policy.config.processor_steps(policy.config.language.tasks))
    inputs = policy.prepare(fake_obs(policy.config, batch))
    head, device = policy.head, policy.device
    cond = head.encode(inputs)
    cases = {"encode": timer(lambda: head.encode(inputs), device)}
    for name, decoding in DECODERS:
        def decode(decoding=decoding):
            with_decoding(policy, decoding)
            head.sample_from_condition(cond, generator=torch.Generator(device).manual_seed(0))
        cases[name] = timer(decode, device)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(repeats + 1):  # the first round warms up
        for name, timed in cases.items():
            t = timed()
            if r:
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)  # 2 threads on a loaded 2-core machine spin-wait
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--checkpoint", default=None, help="a trained dd_vla checkpoint (default: the reference model)")
    ap.add_argument("--device", default="cpu", help="torch device (cuda for the GPU recipe)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        policy = Policy.load(args.checkpoint, map_location=args.device).eval()
        if policy.config.name != "dd_vla":
            raise SystemExit(f"{args.checkpoint}: a {policy.config.name!r} policy, not dd_vla")
        rows = {f"checkpoint ({policy.config.backbone})": measure(policy, args.batch, args.repeats)}
    else:
        rows = {f"small, attention={a}": measure(reference_policy(a).to(args.device), args.batch, args.repeats)
                for a in ("prefix", "full")}
    cfg = policy.config if args.checkpoint else reference_policy("prefix").config
    length = cfg.num_tokens
    print(f"dd_vla decoding on {args.device}, batch {args.batch}, L = {cfg.horizon} x {cfg.action_dim} = {length} "
          f"tokens, {args.threads} CPU threads, median of {args.repeats} (ms per chunk, decoding only; encode apart)")
    names = [n for n, _ in DECODERS]
    header = f"{'model':<26} {'encode':>8} " + " ".join(f"{n:>14}" for n in names)
    print(header)
    for model, t in rows.items():
        cells = []
        for name, decoding in DECODERS:
            ratio = t["left-to-right"] / t[name]
            cells.append(f"{t[name] * 1e3:7.1f} ({decoding.nfe(length):>2})" if name == "left-to-right"
                         else f"{t[name] * 1e3:6.1f} x{ratio:4.1f}")
        print(f"{model:<26} {t['encode'] * 1e3:8.1f} " + " ".join(f"{c:>14}" for c in cells))
    print("cells: ms per chunk and the speed-up over left-to-right (whose cell shows its NFE in brackets)")
    for model, t in rows.items():
        per_pass = {name: t[name] / d.nfe(length) * 1e3 for name, d in DECODERS}
        print(f"{model}: ms per forward pass " + ", ".join(f"{n} {v:.1f}" for n, v in per_pass.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"length": length, "batch": args.batch, "threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
