"""Trainer: runs, logs, checkpoints, and resumes exactly (same losses after resume as without interruption)."""

from __future__ import annotations

import csv

import pytest
import torch

from robopolicy.policies.policy import Policy
from robopolicy.train.config import load_config
from robopolicy.train.trainer import lr_at, train

TINY = [
    "--policy.type=diffusion",
    "--policy.denoiser.unet.down_dims=[32,64]",
    "--policy.denoiser.unet.step_embed_dim=32",
    "--data.input_keys=[state]",
    "--train.batch_size=32",
    "--train.log_every=1",
    "--train.tensorboard=false",
    "--train.progress=false",
    "--optim.warmup_steps=3",
]


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_resume_continues_exactly(pusht_zarr, tmp_path):
    base = [*TINY, f"--data.uri={pusht_zarr}", "--data.episodes=[0,1,2,3,4,5]", "--train.steps=12"]
    full = load_config(None, [*base, f"--train.output_dir={tmp_path / 'full'}", "--train.save_every=100"])
    train(full)
    part = load_config(None, [*base, f"--train.output_dir={tmp_path / 'part'}", "--train.save_every=6"])
    train(part, stop_after=6)
    assert _losses(tmp_path / "part").keys() == set(range(1, 7))
    train(part, resume=True)
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert sorted(b) == list(range(1, 13))
    for step in range(1, 13):
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), f"step {step}: {a[step]} vs {b[step]}"
    # the final checkpoints hold identical EMA weights
    p = Policy.load(tmp_path / "full/checkpoints/step_000012")
    q = Policy.load(tmp_path / "part/checkpoints/step_000012")
    for (k, v), (_, w) in zip(p.head.state_dict().items(), q.head.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)


def test_resume_without_checkpoint_is_clear(pusht_zarr, tmp_path):
    cfg = load_config(None, [*TINY, f"--data.uri={pusht_zarr}", f"--train.output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        train(cfg, resume=True)


def test_existing_run_is_not_overwritten_without_asking(pusht_zarr, tmp_path):
    args = [*TINY, f"--data.uri={pusht_zarr}", "--data.episodes=[0,1]", "--train.steps=2"]
    args.append(f"--train.output_dir={tmp_path}")
    train(load_config(None, args))
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train(load_config(None, args))
    assert train(load_config(None, [*args, "--train.overwrite=true"])).name == "step_000002"


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 4, 104) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 104) == pytest.approx(1.0)
    assert lr_at(54, 1.0, 4, 104) == pytest.approx(0.5)
    assert lr_at(104, 1.0, 4, 104) == pytest.approx(0.0, abs=1e-12)


def test_overrides_and_unknown_fields(tmp_path):
    cfg = load_config(None, ["--train.steps=7", "--optim.betas=[0.9,0.99]", "--policy.type=flow"])
    assert cfg.train.steps == 7 and cfg.optim.betas == (0.9, 0.99) and cfg.policy["type"] == "flow"
    with pytest.raises(ValueError, match="unknown config fields"):
        load_config(None, ["--train.stepz=7"])
    with pytest.raises(ValueError, match="must look like"):
        load_config(None, ["--train.steps"])


def test_periodic_eval_writes_eval_info(pusht_zarr, tmp_path):
    import json

    cfg = load_config(None, [
        *TINY, f"--data.uri={pusht_zarr}", "--data.episodes=[0,1]", "--train.steps=2", "--train.eval_every=2",
        "--eval.env=pusht", "--eval.episodes=1", "--eval.max_steps=5", "--eval.videos=0",
        f"--train.output_dir={tmp_path}",
    ])
    train(cfg)
    info = json.loads((tmp_path / "eval/step_000002/eval_info.json").read_text())
    assert info["env"] == "pusht" and len(info["per_episode"]) == 1
    assert 0.0 <= info["aggregated"]["avg_max_coverage"] <= 1.0
