"""CO-RFT through the trainer: the chunked critic on prefix targets, the TD3+BC actor through differentiable
sampling (and the fallback for a head without it), success oversampling, exact resume, the finetune command."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from robopolicy.data.features import Feature
from robopolicy.data.writer import create_writer
from robopolicy.policies.policy import load_policy
from robopolicy.rl.chunked_critic import ChunkedCriticConfig
from robopolicy.rl.co_rft import CORFT, CORFTConfig, chunk_l1
from robopolicy.train.config import load_config
from robopolicy.train.trainer import Trainer, train
from tests.rl.test_pa_rl import TINY

RL = CORFTConfig(critic=ChunkedCriticConfig(ensemble_size=2, dim=16, n_heads=2, dim_feedforward=32), cql_samples=2)


@pytest.fixture(scope="module")
def sparse_reach(tmp_path_factory):
    """A point driven to the origin; sparse reward 1 (terminal) once within 0.05 of it, in half the episodes."""
    root = tmp_path_factory.mktemp("corft") / "reach.zarr"
    feats = {"state": Feature("state", "float32", (2,), "state"),
             "action": Feature("action", "float32", (2,), "action"),
             "next.reward": Feature("next.reward", "float32", (1,), "reward")}
    rng = np.random.default_rng(0)
    with create_writer(root, feats, 10, format="zarr") as w:
        for e in range(6):
            x = rng.uniform(-1, 1, 2)
            gain = 0.4 if e % 2 == 0 else 0.02  # even episodes get there, odd ones barely move
            for _ in range(15):
                a = -gain * x + rng.normal(0, 0.01, 2)
                x = x + a
                done = bool(np.abs(x).max() < 0.05)
                w.add_frame({"state": x.astype(np.float32), "action": a.astype(np.float32),
                             "next.reward": np.array([float(done)], np.float32)})
            w.save_episode(task="reach", success=bool(np.abs(x).max() < 0.05))
    return root


def _cfg(data, out, steps, policy="diffusion", save_every=100):
    tiny = [o for o in TINY if not o.startswith("--policy.")] if policy != "diffusion" else TINY
    extra = [] if policy == "diffusion" else [f"--policy.type={policy}", "--policy.horizon=8",
                                              "--policy.n_action_steps=4"]
    return load_config(None, [*tiny, *extra, f"--data.uri={data}", f"--train.steps={steps}",
                              f"--train.save_every={save_every}", f"--train.output_dir={out}"])


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def bc_run(sparse_reach, tmp_path_factory):
    out = tmp_path_factory.mktemp("bc")
    train(_cfg(sparse_reach, out, 2))
    return out


def test_co_rft_trains_the_actor_through_the_critic_and_resumes_exactly(sparse_reach, bc_run, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    ckpt = train(_cfg(sparse_reach, full, 4), rule=CORFT(RL), policy=load_policy(bc_run))
    train(_cfg(sparse_reach, part, 4, save_every=2), rule=CORFT(RL), policy=load_policy(bc_run), stop_after=2)
    train(_cfg(sparse_reach, part, 4, save_every=2), rule=CORFT(RL), policy=load_policy(bc_run), resume=True)
    rows = _rows(full)
    for a, b in zip(rows, _rows(part), strict=True):
        assert (a["loss"], a["critic/q_data"]) == (b["loss"], b["critic/q_data"]), a["step"]
    assert rows[0]["actor/loss"] == "" and rows[1]["actor/loss"] != ""  # delayed actor: every 2nd update
    assert 0.0 <= float(rows[-1]["critic/target"]) <= 1.0  # sparse 0/1 rewards, no bootstrap above the return
    moved = [not torch.equal(a, b) for a, b in zip(load_policy(ckpt).state_dict().values(),
                                                      load_policy(bc_run).state_dict().values())]
    assert any(moved)


def test_the_head_loss_bc_term_trains_the_actor_on_the_heads_own_loss(sparse_reach, bc_run, tmp_path):
    import dataclasses

    from robopolicy.data.dataset import open_dataset

    policy = load_policy(bc_run)
    batch = CORFT(RL).sampler(open_dataset(sparse_reach), policy).get_batch(list(range(8)))
    # with no Q term, head_loss makes the actor update plain BC: the head's loss on the data goes down
    rl = dataclasses.replace(RL, bc_term="head_loss", bc_lambda=0.0, actor_every=1)
    ckpt = train(_cfg(sparse_reach, tmp_path, 6), rule=CORFT(rl), policy=load_policy(bc_run))
    rows = _rows(tmp_path)
    assert all(float(r["actor/bc_head_loss"]) > 0 and r["actor/bc_l1"] != "" for r in rows)
    torch.manual_seed(0)
    after = load_policy(ckpt)(batch).loss.item()
    torch.manual_seed(0)
    again = load_policy(bc_run)(batch).loss.item()
    assert after < again  # the head's own loss on a fixed data batch, the same noise
    with pytest.raises(ValueError, match="bc_term"):
        CORFTConfig(bc_term="mse")


def test_the_l1_term_is_the_norm_of_each_chunks_error_over_its_valid_steps():
    chunk = torch.tensor([[[0.5, -0.5], [1.0, 1.0]], [[0.0, 0.25], [0.0, 0.0]]])
    data = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [3.0, -3.0]]])
    pad = torch.tensor([[False, False], [False, True]])  # the second sample's last step is past its episode
    # sample 0: 0.5 + 0.5 + 1 + 1 = 3; sample 1: 0.25 (its padded step's 6 does not count); mean over samples
    assert chunk_l1(chunk, data, pad).item() == pytest.approx((3.0 + 0.25) / 2)
    assert chunk_l1(chunk, data, None).item() == pytest.approx((3.0 + 6.25) / 2)


def test_critic_warmup_holds_the_actor(sparse_reach, bc_run, tmp_path):
    cfg = CORFTConfig(critic=RL.critic, cql_samples=2, actor_every=1, critic_warmup_steps=2)
    ckpt = train(_cfg(sparse_reach, tmp_path / "warm", 3), rule=CORFT(cfg), policy=load_policy(bc_run))
    rows = _rows(tmp_path / "warm")
    assert [r["actor/loss"] == "" for r in rows] == [True, True, False]  # the actor starts at update 3
    before = train(_cfg(sparse_reach, tmp_path / "held", 2), rule=CORFT(cfg), policy=load_policy(bc_run))
    a, b = load_policy(before).state_dict(), load_policy(bc_run).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(x, y) for x, y in zip(load_policy(ckpt).state_dict().values(), b.values()))


def test_warmup_draws_the_frozen_policys_chunks_once_per_frame_and_resumes_exactly(sparse_reach, bc_run, tmp_path):
    cfg = CORFTConfig(critic=RL.critic, cql_samples=2, actor_every=1, critic_warmup_steps=3)
    full, part = tmp_path / "full", tmp_path / "part"
    train(_cfg(sparse_reach, full, 5), rule=CORFT(cfg), policy=load_policy(bc_run))
    rows = _rows(full)
    filled = [float(r["candidates/cached_frames"]) for r in rows[:3]]
    assert 0 < filled[0] <= filled[1] <= filled[2] <= 1 and all(r["candidates/cached_frames"] == "" for r in rows[3:])
    assert [r["actor/loss"] == "" for r in rows] == [True, True, True, False, False]
    train(_cfg(sparse_reach, part, 5, save_every=2), rule=CORFT(cfg), policy=load_policy(bc_run), stop_after=2)
    train(_cfg(sparse_reach, part, 5, save_every=2), rule=CORFT(cfg), policy=load_policy(bc_run), resume=True)
    for a, b in zip(rows, _rows(part), strict=True):  # the cache is checkpointed: the same samples after resume
        assert (a["loss"], a["critic/cql"], a["critic/q_data"]) == (b["loss"], b["critic/cql"], b["critic/q_data"])
    uncached = CORFTConfig(critic=RL.critic, cql_samples=2, critic_warmup_steps=3, warmup_sample_cache=False)
    train(_cfg(sparse_reach, tmp_path / "plain", 1), rule=CORFT(uncached), policy=load_policy(bc_run))
    assert "candidates/cached_frames" not in _rows(tmp_path / "plain")[0]


def test_chunks_reaching_a_success_are_oversampled(sparse_reach, bc_run, tmp_path):
    rule = CORFT(RL)
    trainer = Trainer(_cfg(sparse_reach, tmp_path / "w", 1), rule=rule, policy=load_policy(bc_run))
    w = rule.window_weights(trainer.windows, "frames")
    _, terminal, exists, _ = rule.rewards.chunk(torch.from_numpy(trainer.windows.anchors), rule.k)
    reaches = (terminal & exists[:, :rule.k]).any(1).numpy()
    assert reaches.any() and not reaches.all()
    assert w.sum() == pytest.approx(1.0)
    assert np.allclose(w[reaches] / w[~reaches].max(), 4.0)


def test_a_head_without_differentiable_sampling_takes_the_fallback(sparse_reach, tmp_path):
    dd_vla = [o for o in TINY if not o.startswith("--policy.")] + [
        "--policy.type=dd_vla", "--policy.horizon=4", "--policy.n_action_steps=4", "--policy.bins=32",
        "--policy.action_norm=min_max", "--policy.small.dim=16", "--policy.small.n_heads=2",
        "--policy.small.n_layers=1", "--policy.small.dim_feedforward=32", "--policy.decoding.rounds=2",
        f"--data.uri={sparse_reach}"]
    train(load_config(None, [*dd_vla, "--train.steps=1", f"--train.output_dir={tmp_path / 'bc'}"]))
    cfg = load_config(None, [*dd_vla, "--train.steps=2", f"--train.output_dir={tmp_path / 'ft'}"])
    ckpt = train(cfg, rule=CORFT(RL), policy=load_policy(tmp_path / "bc"))
    second = _rows(tmp_path / "ft")[1]
    assert second["actor/loss"] != "" and not second.get("actor/bc_l1")  # the distillation path, no L1 term
    assert load_policy(ckpt).predict_chunk({"state": torch.zeros(1, 1, 2)}).shape == (1, 4, 2)


def test_finetune_command_runs_co_rft(sparse_reach, bc_run, tmp_path, capsys):
    from robopolicy.cli.main import main

    rc = main(["finetune", "--checkpoint", str(bc_run), "--method", "co_rft", "--dataset", str(sparse_reach),
               "--train.steps=2", "--train.progress=false", "--train.tensorboard=false",
               f"--train.output_dir={tmp_path / 'ft'}", "--rl.critic.dim=16", "--rl.critic.n_heads=2",
               "--rl.cql_samples=2"])
    assert rc == 0, capsys.readouterr().err
