"""Trainer: runs, logs, checkpoints, and resumes exactly (same losses after resume as without interruption), with
metrics.csv free of duplicated steps, refusing other data on resume, and pluggable update rules (actor + critic)."""

from __future__ import annotations

import csv

import pytest
import torch

from robopolicy.policies.policy import Policy
from robopolicy.train.callbacks import Callback
from robopolicy.train.checkpoint import ResumeMismatchError
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
    """Through the command line, which injects the sim-eval callback (the trainer imports no simulator)."""
    import json

    from robopolicy.cli.main import main

    assert main([
        "train", *TINY, f"--data.uri={pusht_zarr}", "--data.episodes=[0,1]", "--train.steps=2",
        "--train.eval_every=2", "--eval.env=pusht", "--eval.episodes=1", "--eval.max_steps=5", "--eval.videos=0",
        f"--train.output_dir={tmp_path}",
    ]) == 0
    info = json.loads((tmp_path / "eval/step_000002/eval_info.json").read_text())
    assert info["env"] == "pusht" and len(info["per_episode"]) == 1
    assert 0.0 <= info["aggregated"]["avg_max_coverage"] <= 1.0


def test_trainer_imports_no_simulator():
    import subprocess
    import sys

    code = ("import sys, robopolicy.train.trainer; "
            "bad = [m for m in sys.modules if m.startswith(('robopolicy.sim', 'mujoco', 'gymnasium', 'robosuite'))]; "
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


class _CrashAt(Callback):
    """Stands in for a run killed after logging `step` (its last checkpoint is older)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step):
        if step == self.step:
            raise KeyboardInterrupt


def test_metrics_csv_has_each_step_once_after_resume(pusht_zarr, tmp_path):
    cfg = load_config(None, [*TINY, f"--data.uri={pusht_zarr}", "--data.episodes=[0,1]", "--train.steps=7",
                             "--train.save_every=3", f"--train.output_dir={tmp_path}"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[_CrashAt(5)])
    assert sorted(_losses(tmp_path)) == [1, 2, 3, 4, 5]  # steps 4, 5 logged after the checkpoint at 3
    train(cfg, resume=True)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert {"loss", "lr", "grad_norm", "samples_per_s", "train_s"} <= set(rows[0])
    assert all(float(r["grad_norm"]) > 0 for r in rows)


def test_keep_checkpoints_prunes_older_steps_and_resume_still_works(pusht_zarr, tmp_path):
    cfg = load_config(None, [*TINY, f"--data.uri={pusht_zarr}", "--data.episodes=[0,1]", "--train.steps=7",
                             "--train.save_every=2", "--train.keep_checkpoints=2", f"--train.output_dir={tmp_path}"])
    train(cfg, stop_after=5)
    ckpts = tmp_path / "checkpoints"
    foreign = ckpts / "step_old_notes"  # not a step_<N> checkpoint: never touched
    foreign.mkdir()
    assert sorted(p.name for p in ckpts.glob("step_0*")) == ["step_000004", "step_000005"]  # stop saves too
    train(cfg, resume=True)
    assert sorted(p.name for p in ckpts.glob("step_0*")) == ["step_000006", "step_000007"]
    assert (ckpts / "last").read_text() == "step_000007" and foreign.is_dir()
    with pytest.raises(ValueError, match="keep_checkpoints"):
        load_config(None, [*TINY, "--train.keep_checkpoints=-1"])


def test_resume_on_other_data_is_refused_naming_the_difference(pusht_zarr, tmp_path):
    args = [*TINY, f"--data.uri={pusht_zarr}", "--train.steps=4", f"--train.output_dir={tmp_path}"]
    train(load_config(None, [*args, "--data.episodes=[0,1]"]), stop_after=2)
    with pytest.raises(ResumeMismatchError, match=r"episodes: checkpoint \[0, 1\], now \[0, 1, 2\].*stats for"):
        train(load_config(None, [*args, "--data.episodes=[0,1,2]"]), resume=True)


def test_head_metrics_are_logged_as_columns(pusht_zarr, tmp_path):
    cfg = load_config(None, [
        "--policy.type=act", "--policy.dim_model=32", "--policy.dim_feedforward=64", "--policy.n_heads=4",
        "--policy.horizon=8", "--policy.n_action_steps=8", "--policy.n_encoder_layers=1",
        "--data.input_keys=[state]", "--data.episodes=[0,1]", "--train.batch_size=8",
        "--train.steps=2", "--train.log_every=1", "--train.tensorboard=false", "--train.progress=false",
        f"--data.uri={pusht_zarr}", f"--train.output_dir={tmp_path}",
    ])
    train(cfg)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"l1", "kl"} <= set(rows[0]) and all(float(r["l1"]) >= 0 for r in rows)


def test_a_metric_first_logged_later_gets_its_column(tmp_path):
    from robopolicy.train.run_log import RunLog

    log = RunLog(tmp_path, 0, tensorboard=False, wandb_project=None, config={})
    log.row(1, {"loss": 1.0})
    log.row(2, {"loss": 0.5, "actor/loss": 3.0})
    log.row(3, {"loss": 0.25})
    log.close()
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"], r["actor/loss"]) for r in rows] == [("1", "1", ""), ("2", "0.5", "3"),
                                                                        ("3", "0.25", "")]
