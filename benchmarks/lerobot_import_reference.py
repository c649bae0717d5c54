"""LeRobot 0.4.4 side of `bench_lerobot_import.py`; runs in the LeRobot venv (benchmarks/setup_lerobot_venv.sh).

  train   ARGS...                         `lerobot-train` itself (with the venv shims of lerobot_runtime)
  predict --checkpoint DIR --batch B.pt --out R.pt [--seed S]
          LeRobot's inference path on raw observations: policy_preprocessor (normalize), the policy's
          `predict_action_chunk` (Diffusion: its observation queues filled with the window's steps, oldest
          first, as `select_action` does), policy_postprocessor (unnormalize). B.pt holds {key: (B, T, ...)}
          raw windows (uint8 images); R.pt gets {"actions": (B, n_action_steps, D), "versions": ...}.
          Diffusion's noise: torch.manual_seed(S) just before the call (the initial chunk and DDPM's step noise
          come from the global generator, as in LeRobot's evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lerobot_runtime import lerobot_versions, prepare_lerobot

prepare_lerobot()


def train(args: list[str]) -> None:
    from lerobot.scripts.lerobot_train import main

    sys.argv = ["lerobot-train", *args]
    main()


def predict(checkpoint: Path, batch_file: Path, out: Path, seed: int) -> None:
    import torch
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.utils import populate_queues
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    kind = json.loads((checkpoint / "config.json").read_text())["type"]
    policy = {"act": ACTPolicy, "diffusion": DiffusionPolicy}[kind].from_pretrained(checkpoint).eval()
    pre = PolicyProcessorPipeline.from_pretrained(checkpoint, config_filename="policy_preprocessor.json")
    post = PolicyProcessorPipeline.from_pretrained(checkpoint, config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    raw = torch.load(batch_file)
    steps = next(iter(raw.values())).shape[1]
    frames = []
    for t in range(steps):  # one observation per step, images float in [0, 1] as LeRobot's env wrappers give
        obs = {k: (v[:, t].float() / 255.0 if v.dtype == torch.uint8 else v[:, t].float()) for k, v in raw.items()}
        # the preprocessor's output also carries the transition's empty fields (action, reward, ...): drop them,
        # as select_action drops the action before filling its queues
        frames.append({k: v for k, v in pre(obs).items() if torch.is_tensor(v) and k in raw})
    with torch.no_grad():
        if kind == "act":
            chunk = policy.predict_action_chunk(frames[-1])[:, : policy.config.n_action_steps]
        else:
            policy.reset()
            for obs in frames:  # what select_action does before it predicts
                obs = dict(obs)
                if policy.config.image_features:
                    obs["observation.images"] = torch.stack([obs[k] for k in policy.config.image_features], -4)
                policy._queues = populate_queues(policy._queues, obs)
            torch.manual_seed(seed)
            chunk = policy.predict_action_chunk(obs)
        actions = post(chunk)
    torch.save({"actions": actions, "versions": lerobot_versions()}, out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        train(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["predict"])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--batch", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    predict(a.checkpoint, a.batch, a.out, a.seed)


if __name__ == "__main__":
    main()
