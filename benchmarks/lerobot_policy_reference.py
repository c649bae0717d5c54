"""LeRobot 0.4.4 side of `bench_policy_speed.py`: time one case with LeRobot's own policy classes, print one JSON line.

Runs inside the LeRobot venv (benchmarks/setup_lerobot_venv.sh, plus `diffusers<0.36` and `pyserial` at LeRobot's
pins), never in the project venv. The batches come from the file the driver wrote (raw PushT windows from the
zarr + stats); they are normalized here once, outside the timed region (LeRobot normalizes in its processor
pipeline, outside the policy).

Cases (the paper's image config; see bench_policy_speed.py):
  diffusion_train   DiffusionPolicy, batch 64: forward + backward + clip_grad_norm_ + LeRobot's optimizer preset (Adam)
  diffusion_ddim    DiffusionPolicy, batch 1: one chunk with 10 DDIM steps (`DiffusionModel.generate_actions`)
  diffusion_ddpm    same with 100 DDPM steps
  act_train         ACTPolicy (chunk 100, dim 512), batch 8: forward + backward + clip + its AdamW preset
  act_chunk         ACTPolicy, batch 1: `predict_action_chunk`

Usage: /work/lrvenv/bin/python benchmarks/lerobot_policy_reference.py --case diffusion_train --batches B.pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lerobot_runtime import lerobot_versions, prepare_lerobot

prepare_lerobot()

import torch  # noqa: E402
from lerobot.configs.types import FeatureType, PolicyFeature  # noqa: E402

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
IMAGE, STATE, ACTION = "observation.image", "observation.state", "action"


def features() -> tuple[dict, dict]:
    return (
        {IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 96, 96)), STATE: PolicyFeature(FeatureType.STATE, (2,))},
        {ACTION: PolicyFeature(FeatureType.ACTION, (2,))},
    )


def normalize(raw: dict, stats: dict, mode: str, squeeze_time: bool) -> dict:
    """Raw uint8 images / float state+action -> what LeRobot's processors hand the policy."""
    out = {}
    for key in (IMAGE, STATE, ACTION):
        if key not in raw:
            continue
        x = raw[key]
        if key == IMAGE:
            x = (x.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        elif mode == "min_max":
            lo, hi = stats[key]["min"], stats[key]["max"]
            x = (x - lo) / (hi - lo) * 2.0 - 1.0
        else:
            x = (x - stats[key]["mean"]) / stats[key]["std"]
        if squeeze_time and key != ACTION:
            x = x[:, -1]
        out[key] = x.contiguous()
    if f"{ACTION}_is_pad" in raw:
        out[f"{ACTION}_is_pad"] = raw[f"{ACTION}_is_pad"]
    return out


def make_policy(case: str):
    inputs, outputs = features()
    if case.startswith("diffusion"):
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

        ddpm = case == "diffusion_ddpm"
        cfg = DiffusionConfig(
            input_features=inputs, output_features=outputs, device="cpu", crop_shape=(84, 84),
            down_dims=(512, 1024, 2048), n_obs_steps=2, horizon=16, n_action_steps=8,
            noise_scheduler_type="DDPM" if ddpm else "DDIM", num_inference_steps=100 if ddpm else 10,
        )
        return DiffusionPolicy(cfg), cfg
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    cfg = ACTConfig(input_features=inputs, output_features=outputs, device="cpu", pretrained_backbone_weights=None)
    return ACTPolicy(cfg), cfg


def run(case: str, data: dict, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    policy, cfg = make_policy(case)
    family = "diffusion" if case.startswith("diffusion") else "act"
    part = data[family]
    mode = "min_max" if family == "diffusion" else "mean_std"
    squeeze = family == "act"
    times = []
    if case.endswith("train"):
        batches = [normalize(b, data["stats"], mode, squeeze) for b in part["batches"]]
        optimizer = cfg.get_optimizer_preset().build(policy.get_optim_params())
        clip = cfg.get_optimizer_preset().grad_clip_norm
        params = [p for p in policy.parameters() if p.requires_grad]
        policy.train()
        for i in range(warmup + steps):
            batch = batches[i % len(batches)]  # the same batch sequence as robopolicy's side
            t0 = time.perf_counter()
            loss, _ = policy.forward(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        batch_size = batch[ACTION].shape[0]
        value = batch_size * len(times) / sum(times)
        unit = "samples/s"
    else:
        obs = normalize(part["obs"], data["stats"], mode, squeeze)
        policy.eval()
        with torch.no_grad():
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                if family == "diffusion":
                    # predict_action_chunk minus the rollout queues: the (1, T_o, ...) window is given directly
                    policy.diffusion.generate_actions({STATE: obs[STATE], "observation.images": obs[IMAGE][:, :, None]})
                else:
                    policy.predict_action_chunk(obs)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        value = statistics.median(times)
        unit = "s/chunk"
    return {
        "side": "lerobot", "case": case, "value": value, "unit": unit, "times": times,
        "params": sum(p.numel() for p in policy.parameters()), "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", required=True,
                    choices=["diffusion_train", "diffusion_ddim", "diffusion_ddpm", "act_train", "act_chunk"])
    ap.add_argument("--batches", required=True, help="the .pt file written by bench_policy_speed.py")
    ap.add_argument("--steps", type=int, default=2, help="timed steps / chunks")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = torch.load(args.batches, weights_only=False)
    result = run(args.case, data, args.steps, args.warmup)
    result["versions"] = {k: lerobot_versions()[k] for k in ("lerobot", "torch")} | {"diffusers": version("diffusers")}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
