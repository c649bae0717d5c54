"""`robopolicy import-lerobot SRC OUT`: a LeRobot ACT / Diffusion Policy checkpoint as a robopolicy checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("SRC is a LeRobot pretrained_model directory, a LeRobot checkpoint step or training run (its "
                "checkpoints/last), or hf://OWNER/NAME[@REV]. Read: LeRobot 0.4.x checkpoints (config.json, "
                "model.safetensors, policy_preprocessor/postprocessor .json + normalizer .safetensors) and LeRobot "
                "0.1-0.3 ones (normalization buffers inside model.safetensors), of type act or diffusion. The "
                "result (heads lerobot_act / lerobot_diffusion) gives LeRobot's actions on the same inputs and works "
                "with eval, deploy, serve and finetune; eval / deploy / serve also load SRC directly. Example: "
                "robopolicy import-lerobot outputs/train/act_pusht outputs/act_pusht_rp")
    p.add_argument("src", help="LeRobot checkpoint directory, run directory or hf://OWNER/NAME[@REV]")
    p.add_argument("out", type=Path, help="where to write the robopolicy checkpoint (must not exist)")


def run(args: argparse.Namespace) -> int:
    from robopolicy.policies.lerobot_import import import_lerobot
    from robopolicy.policies.policy import CheckpointError

    if args.out.exists():
        raise CheckpointError(f"{args.out}: already exists; choose a new directory (nothing was written)")
    out = import_lerobot(args.src, args.out)
    head = json.loads((out / "config.json").read_text())["type"]
    print(f"imported {args.src} -> {out} (head {head}); use it as --checkpoint {out}")
    return 0
