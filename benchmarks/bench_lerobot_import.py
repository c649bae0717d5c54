"""LeRobot-trained ACT / Diffusion checkpoints in robopolicy: the same actions on the same inputs as LeRobot 0.4.4.

For each case: `lerobot-train` (in the LeRobot venv) trains a small policy for a few steps on a real dataset;
the same raw observation windows (8 frames of it) go through LeRobot's inference path
(lerobot_import_reference.py) and through robopolicy (the checkpoint loaded directly, and after
`robopolicy import-lerobot`); the largest absolute difference of the unnormalized actions is printed, and
relative to the action range. Diffusion cases fix the global seed before sampling on both sides (same initial
noise, same DDPM step noise).

  .venv/bin/python benchmarks/bench_lerobot_import.py --lerobot-python /work/lrvenv/bin/python
      [--dataset ../shared/data/lerobot_v3_pusht] [--steps 20] [--cases act,diffusion_ddpm,diffusion_ddim]
      [--write-fixtures tests/policies/fixtures]   (the small state-only checkpoints the unit tests compare with)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "lerobot_import_reference.py"

COMMON = ["--policy.device=cpu", "--policy.push_to_hub=false", "--batch_size=8", "--num_workers=0",
          "--eval_freq=0", "--log_freq=10", "--wandb.enable=false", "--dataset.video_backend=pyav"]
CASES = {
    # ACT as LeRobot's PushT / ALOHA users train it, narrowed (dim 256) so that it trains on 2 CPU cores
    "act": ["--policy.type=act", "--policy.pretrained_backbone_weights=null", "--policy.dim_model=256",
            "--policy.dim_feedforward=1024", "--policy.chunk_size=20", "--policy.n_action_steps=20"],
    # LeRobot's PushT Diffusion Policy (84x84 crop, GroupNorm ResNet-18), UNet narrowed to (128, 256, 512)
    "diffusion_ddpm": ["--policy.type=diffusion", "--policy.down_dims=[128,256,512]", "--policy.crop_shape=[84,84]"],
    "diffusion_ddim": ["--policy.type=diffusion", "--policy.down_dims=[128,256,512]", "--policy.crop_shape=[84,84]",
                       "--policy.noise_scheduler_type=DDIM", "--policy.num_inference_steps=10"],
}


# the unit tests' fixtures: state + environment-state policies, small enough to commit (tests/policies/fixtures)
FIXTURE_CASES = {
    "act_env": ["--policy.type=act", "--policy.dim_model=32", "--policy.dim_feedforward=64", "--policy.n_heads=4",
                "--policy.chunk_size=8", "--policy.n_action_steps=8", "--policy.n_encoder_layers=2",
                "--policy.n_vae_encoder_layers=1", "--policy.latent_dim=4"],
    "diffusion_env": ["--policy.type=diffusion", "--policy.down_dims=[16,32]", "--policy.diffusion_step_embed_dim=16",
                      "--policy.horizon=8", "--policy.n_action_steps=4", "--policy.num_inference_steps=10",
                      "--policy.kernel_size=3", "--policy.n_groups=4"],
}


def run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}); see {log}:\n"
                         + "\n".join(log.read_text().splitlines()[-15:]))


def raw_windows(dataset: str, keys: list[str], n_obs: int, count: int = 8) -> dict[str, torch.Tensor]:
    """`count` raw observation windows {key: (count, n_obs, ...)} spread over the dataset (uint8 images)."""
    from robopolicy.data.dataset import open_dataset
    from robopolicy.data.sampler import WindowSampler

    with open_dataset(dataset) as ds:
        sampler = WindowSampler(ds, {k: list(range(1 - n_obs, 1)) for k in keys})
        picks = np.linspace(0, len(sampler) - 1, count).astype(int)
        items = [sampler[int(i)] for i in picks]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in keys}


def robopolicy_actions(checkpoint: Path, obs: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    from robopolicy.policies.policy import Policy

    policy = Policy.load(checkpoint)
    torch.manual_seed(seed)
    chunk = policy.predict_chunk(obs)
    start = policy.config.action_delta_indices.index(0)
    return chunk[:, start : start + policy.config.n_action_steps]


def lerobot_run(case: str, args: list[str], lr_python: str, dataset: str, steps: int, work: Path,
                seed: int) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """Train `case` in LeRobot, then LeRobot's actions on 8 raw windows: (pretrained_model dir, windows, ref)."""
    out = work / case
    shutil.rmtree(out, ignore_errors=True)  # lerobot-train refuses an existing output directory
    run([lr_python, str(REFERENCE), "train", f"--dataset.repo_id=local/{Path(dataset).name}",
         f"--dataset.root={dataset}", *COMMON, *args, f"--steps={steps}", f"--save_freq={steps}",
         f"--output_dir={out}"], work / f"{case}_train.log")
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    lr_config = json.loads((ckpt / "config.json").read_text())
    obs = raw_windows(dataset, list(lr_config["input_features"]), lr_config["n_obs_steps"])
    torch.save(obs, work / f"{case}_batch.pt")
    run([lr_python, str(REFERENCE), "predict", "--checkpoint", str(ckpt), "--batch", str(work / f"{case}_batch.pt"),
         "--out", str(work / f"{case}_ref.pt"), "--seed", str(seed)], work / f"{case}_predict.log")
    return ckpt, obs, torch.load(work / f"{case}_ref.pt")


def compare(case: str, lr_python: str, dataset: str, steps: int, work: Path, seed: int = 0) -> dict:
    ckpt, obs, ref = lerobot_run(case, CASES[case], lr_python, dataset, steps, work, seed)
    out = work / case
    direct = robopolicy_actions(out, obs, seed)  # the LeRobot run directory, loaded as it is
    imported = work / f"{case}_imported"
    subprocess.run([sys.executable, "-m", "robopolicy.cli.main", "import-lerobot", str(ckpt), str(imported)],
                   check=True, capture_output=True)
    converted = robopolicy_actions(imported, obs, seed)
    span = float((ref["actions"].amax((0, 1)) - ref["actions"].amin((0, 1))).max())
    return {"case": case, "lerobot": ref["versions"]["lerobot"], "shape": list(ref["actions"].shape),
            "max_abs_diff_direct": float((direct - ref["actions"]).abs().max()),
            "max_abs_diff_imported": float((converted - ref["actions"]).abs().max()),
            "action_span": span, "mean_abs_action": float(ref["actions"].abs().mean())}


def env_state_dataset(root: Path) -> str:
    """6 episodes x 40 frames of a random walk in PushT's layout (state (2,), environment_state (16,), action (2,)),
    so that the fixture policies also run in the PushT evaluation harness."""
    from robopolicy.data.features import Feature
    from robopolicy.data.writer import create_writer

    feats = {"observation.state": Feature("observation.state", "float32", (2,), "state"),
             "observation.environment_state": Feature("observation.environment_state", "float32", (16,), "state"),
             "action": Feature("action", "float32", (2,), "action")}
    rng = np.random.default_rng(0)
    with create_writer(root, feats, fps=10, format="lerobot", overwrite=True) as w:
        for _ in range(6):
            pos = rng.uniform(100, 400, size=2)
            for _ in range(40):
                step = rng.normal(0, 5, size=2)
                w.add_frame({"observation.state": pos.astype(np.float32),
                             "observation.environment_state": np.concatenate([pos, rng.normal(size=14) * 50 + 250]
                                                                             ).astype(np.float32),
                             "action": (pos + step).astype(np.float32)}, task="push the block")
                pos = pos + step
            w.save_episode()
    return str(root)


def write_fixtures(target: Path, lr_python: str, work: Path, steps: int = 5, seed: int = 0) -> None:
    """tests/policies/fixtures/lerobot044_<case>/: LeRobot's pretrained_model files + reference.safetensors
    (the raw windows "obs.<key>" and LeRobot's actions "actions")."""
    from safetensors.torch import save_file

    dataset = env_state_dataset(work / "env_state_ds")
    for case, args in FIXTURE_CASES.items():
        ckpt, obs, ref = lerobot_run(case, args, lr_python, dataset, steps, work, seed)
        dest = target / f"lerobot044_{case}"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(ckpt, dest, ignore=shutil.ignore_patterns("train_config.json"))
        save_file({**{f"obs.{k}": v.contiguous() for k, v in obs.items()}, "actions": ref["actions"].contiguous()},
                  str(dest / "reference.safetensors"), metadata={"seed": str(seed), **ref["versions"]})
        print(f"wrote {dest}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lerobot-python", required=True)
    p.add_argument("--dataset", default=str(HERE.parent.parent / "shared" / "data" / "lerobot_v3_pusht"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--write-fixtures", type=Path, default=None)
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="lerobot_import_"))
    work.mkdir(parents=True, exist_ok=True)
    if a.write_fixtures:
        write_fixtures(a.write_fixtures, a.lerobot_python, work)
        return
    for case in a.cases.split(","):
        print(json.dumps(compare(case, a.lerobot_python, a.dataset, a.steps, work)), flush=True)


if __name__ == "__main__":
    main()
