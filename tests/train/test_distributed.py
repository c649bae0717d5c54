"""`accelerate launch --num_processes 2` on CPU: DDP over gloo, global batch split across the processes."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robopolicy.policies.policy import Policy


def test_two_process_cpu_training_end_to_end(pusht_zarr, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists() and shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not installed")
    out = tmp_path / "run"
    cmd = [
        str(accelerate if accelerate.exists() else "accelerate"), "launch", "--num_processes", "2", "--multi_gpu",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "robopolicy.cli.main", "train",
        f"--data.uri={pusht_zarr}", "--data.input_keys=[state]", "--data.episodes=[0,1,2,3]",
        "--policy.denoiser.unet.down_dims=[32,64]", "--train.steps=4", "--train.batch_size=32",
        "--train.log_every=1", f"--train.output_dir={out}", "--train.progress=false", "--train.tensorboard=false",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "global batch 32 over 2 process(es)" in res.stdout
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # logged once, by the main process
    policy = Policy.load(out)
    assert policy.config.horizon == 16
