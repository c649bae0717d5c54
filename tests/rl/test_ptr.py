"""PTR through the trainer: windows whose actions do not explain the next observation get smaller weights, the
queue and controller state survive a resume exactly, and `robopolicy finetune --method ptr` runs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from robopolicy.data.features import Feature
from robopolicy.data.writer import create_writer
from robopolicy.policies.policy import load_policy
from robopolicy.rl.ptr import PTR, SCORER, TARGET, PTRConfig, window_weights
from robopolicy.train.config import load_config
from robopolicy.train.trainer import Trainer, train
from tests.rl.test_pa_rl import TINY

FAST = PTRConfig(hidden_dim=32, warmup_steps=0, queue_size=64, queue_negatives=16)


@pytest.fixture(scope="module")
def half_corrupted(tmp_path_factory):
    """x_{t+1} = x_t + a_t from about the same start; in episodes 4..7 the recorded actions are shuffled in time
    (they no longer explain the next state, and the states alone cannot tell the futures apart)."""
    root = tmp_path_factory.mktemp("ptr") / "half.zarr"
    feats = {"state": Feature("state", "float32", (2,), "state"),
             "action": Feature("action", "float32", (2,), "action")}
    rng = np.random.default_rng(0)
    with create_writer(root, feats, 10, format="zarr") as w:
        for e in range(8):
            x = rng.uniform(-0.1, 0.1, 2)
            states, actions = [], []
            for _ in range(25):
                a = rng.uniform(-0.3, 0.3, 2)
                states.append(x.copy())
                actions.append(a)
                x = x + a
            if e >= 4:
                actions = [actions[i] for i in rng.permutation(len(actions))]
            for s, a in zip(states, actions):
                w.add_frame({"state": s.astype(np.float32), "action": a.astype(np.float32)})
            w.save_episode(task="move")
    return root


@pytest.fixture(scope="module")
def bc_run(half_corrupted, tmp_path_factory):
    out = tmp_path_factory.mktemp("bc")
    train(load_config(None, [*TINY, f"--data.uri={half_corrupted}", "--train.steps=2", f"--train.output_dir={out}"]))
    return out


def _cfg(data, out, steps, save_every=1000, lr=1e-3):
    return load_config(None, [*TINY, f"--data.uri={data}", f"--train.steps={steps}", "--train.batch_size=32",
                              f"--train.save_every={save_every}", f"--train.output_dir={out}", f"--optim.lr={lr}"])


def test_corrupted_windows_get_smaller_weights(half_corrupted, bc_run, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(_cfg(half_corrupted, tmp_path / "run", 200, lr=3e-3), rule=PTR(FAST), policy=load_policy(bc_run))
    trainer.run()
    windows = trainer.windows
    eps = windows.dataset.episode_of(windows.anchors)
    clean = np.flatnonzero((eps < 4) & (windows.anchors < windows.dataset.episode_ends[eps] - 5))
    bad = np.flatnonzero((eps >= 4) & (windows.anchors < windows.dataset.episode_ends[eps] - 5))
    batch = windows.get_batch(np.concatenate([clean[:48], bad[:48]]))
    policy, scorer, target = trainer.policy, trainer.modules[SCORER], trainer.modules[TARGET]
    w = window_weights(policy.eval(), scorer, target, batch)
    assert w.min() >= 0.25 and w.max() <= 4.0
    assert float(w[:48].mean()) > 1.05 * float(w[48:].mean()), (w[:48].mean(), w[48:].mean())
    with open(tmp_path / "run" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert float(last["ptr/accuracy"]) > 0.08 and 0.03 <= float(last["ptr/tau"]) <= 0.2


def test_ptr_resumes_exactly_queue_and_controller_included(half_corrupted, bc_run, tmp_path):
    cfg = PTRConfig(hidden_dim=16, warmup_steps=2, queue_size=16, queue_negatives=8)
    train(_cfg(half_corrupted, tmp_path / "full", 4), rule=PTR(cfg), policy=load_policy(bc_run))
    part = _cfg(half_corrupted, tmp_path / "part", 4, save_every=2)
    train(part, rule=PTR(cfg), policy=load_policy(bc_run), stop_after=2)
    train(part, rule=PTR(cfg), policy=load_policy(bc_run), resume=True)
    rows = []
    for run in ("full", "part"):
        with open(tmp_path / run / "metrics.csv") as f:
            rows.append(list(csv.DictReader(f)))
    for a, b in zip(*rows, strict=True):
        assert (a["loss"], a["ptr/tau"], a["ptr/w_mean"]) == (b["loss"], b["ptr/tau"], b["ptr/w_mean"]), a["step"]
    assert float(rows[0][0]["ptr/w_mean"]) == 1.0  # warm-up: no reweighting


def test_finetune_command_runs_ptr(half_corrupted, bc_run, tmp_path, capsys):
    from robopolicy.cli.main import main

    out = tmp_path / "ft"
    rc = main(["finetune", "--checkpoint", str(bc_run), "--method", "ptr", "--dataset", str(half_corrupted),
               "--train.steps=2", "--train.progress=false", "--train.tensorboard=false", f"--train.output_dir={out}",
               "--rl.hidden_dim=16", "--rl.warmup_steps=0"])
    assert rc == 0, capsys.readouterr().err
    assert load_policy(out).predict_chunk({"state": torch.zeros(1, 2, 2)}).shape == (1, 8, 2)


def test_train_command_runs_the_rl_section_from_scratch(half_corrupted, tmp_path, capsys):
    """`robopolicy train --rl.method=ptr` trains with PTR's rule (its metrics appear), not plain BC."""
    from robopolicy.cli.main import main

    out = tmp_path / "scratch"
    rc = main(["train", *TINY, f"--data.uri={half_corrupted}", "--train.steps=2", "--train.progress=false",
               "--train.tensorboard=false", f"--train.output_dir={out}", "--train.log_every=1",
               "--rl.method=ptr", "--rl.hidden_dim=16", "--rl.warmup_steps=0"])
    assert rc == 0, capsys.readouterr().err
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and 0.25 <= float(rows[-1]["ptr/w_mean"]) <= 4.0
