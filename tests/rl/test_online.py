"""PA-RL's online phase: acting with optimised actions, the replay dataset, 50/50 mixing, rounds that resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robopolicy.data.dataset import open_dataset
from robopolicy.data.features import Feature
from robopolicy.data.writer import create_writer
from robopolicy.policies.policy import load_policy
from robopolicy.rl.online import OnlineConfig, guided_policy, online_phase
from robopolicy.rl.registry import build_rule
from robopolicy.train.config import load_config
from robopolicy.train.trainer import Trainer, train
from tests.rl.test_pa_rl import TINY

pytest.importorskip("gym_pusht", reason="the online phase acts in gym-pusht")

RL = ["--rl.method=pa_rl", "--rl.critic.ensemble_size=2", "--rl.critic.hidden_dims=[16]",
      "--rl.optimization.num_samples=4", "--rl.optimization.top_k=2", "--rl.optimization.steps=2"]


@pytest.fixture(scope="module")
def pusht_like(tmp_path_factory):
    """PushT-shaped data (state (5,), action (2,) in pixels) with a reward column, 4 episodes of 30 frames."""
    root = tmp_path_factory.mktemp("online") / "offline.zarr"
    feats = {"state": Feature("state", "float32", (5,), "state"),
             "action": Feature("action", "float32", (2,), "action"),
             "next.reward": Feature("next.reward", "float32", (1,), "reward")}
    rng = np.random.default_rng(0)
    with create_writer(root, feats, 10, format="zarr") as w:
        for _ in range(4):
            for _ in range(30):
                s = np.concatenate([rng.uniform(100, 400, 4), rng.uniform(0, 6.28, 1)]).astype(np.float32)
                w.add_frame({"state": s, "action": rng.uniform(100, 400, 2).astype(np.float32),
                             "next.reward": rng.uniform(0, 1, 1).astype(np.float32)})
            w.save_episode(task="push the T", success=False)
    return root


@pytest.fixture(scope="module")
def pa_rl_run(pusht_like, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    train(load_config(None, [*TINY, f"--data.uri={pusht_like}", "--train.steps=2",
                             f"--train.output_dir={base / 'bc'}"]))
    cfg = load_config(None, [*TINY, *RL, f"--data.uri={pusht_like}", "--train.steps=2",
                             f"--train.output_dir={base / 'pa_rl'}"])
    train(cfg, rule=build_rule(cfg.rl), policy=load_policy(base / "bc"))
    return base / "pa_rl"


def test_guided_policy_beats_every_raw_candidate(pa_rl_run):
    actor = guided_policy(pa_rl_run)
    obs = {"state": torch.rand(3, 2, 5) * 300}
    guided = actor.predict_chunk(obs, generator=torch.Generator().manual_seed(1))
    raw = actor.policy.predict_chunk(obs, generator=torch.Generator().manual_seed(1), num_samples=4)  # same draws
    assert guided.shape == (3, 8, 2)
    norm = actor.policy.normalizer.normalize
    key = actor.config.action_key

    def q(chunks):
        flat = norm(key, chunks).flatten(0, -3) if chunks.dim() == 4 else norm(key, chunks)
        with torch.no_grad():
            feat = actor.policy.head.encode(actor.policy.prepare(obs))
            from robopolicy.rl.chunks import flatten_condition

            f = flatten_condition(feat).float().repeat_interleave(len(flat) // 3, 0)
            return actor.critic.q(f, flat[:, actor.slice].float()).mean(0)

    assert (q(guided) >= q(raw).view(3, 4).max(1).values - 1e-5).all()


def test_online_rounds_append_mix_and_resume(pusht_like, pa_rl_run, tmp_path):
    out = tmp_path / "online"
    config = OnlineConfig(env="pusht", rounds=1, episodes=1, steps=2)
    online_phase(pa_rl_run, pusht_like, out, config, progress=False)
    last = online_phase(pa_rl_run, pusht_like, out, OnlineConfig(env="pusht", rounds=2, episodes=1, steps=2),
                        progress=False)  # round 0 is kept, only round 1 acts and trains
    assert last == out / "round_1"
    replay = open_dataset(out / "replay.zarr")
    assert replay.num_episodes == 4 + 2 and replay.num_frames == 4 * 30 + 2 * 300
    rewards = replay.read("next.reward", np.arange(120))[:, 0]
    np.testing.assert_allclose(rewards, open_dataset(pusht_like).read("next.reward", np.arange(120))[:, 0])
    rl = json.loads((last / "train_config.json").read_text())["rl"]
    assert rl["online_from_episode"] == 4 and rl["init_critic"].startswith(str(out / "round_0"))
    assert load_policy(last).predict_chunk({"state": torch.rand(1, 2, 5)}).shape == (1, 8, 2)

    cfg = load_config(None, [*TINY, f"--data.uri={out / 'replay.zarr'}", "--train.steps=1",
                             f"--train.output_dir={tmp_path / 'probe'}"], base={"rl": rl})
    trainer = Trainer(cfg, rule=build_rule(cfg.rl), policy=load_policy(last))
    w = trainer.rule.window_weights(trainer.windows, "frames")
    online = trainer.windows.dataset.episode_of(trainer.windows.anchors) >= 4
    assert abs(w[online].sum() - 0.5) < 1e-9 and abs(w.sum() - 1.0) < 1e-9


def test_rounds_train_the_policy_whatever_warm_up_the_offline_command_asked_for(pusht_like, pa_rl_run, tmp_path):
    from robopolicy.rl.online import round_overrides

    out = tmp_path / "online"
    # the offline run's command line, passed on to the rounds as finetune does
    cli = ["--rl.critic_warmup_steps=50", "--train.steps=60", "--train.batch_size=8", "--rl.reward=next.reward"]
    assert round_overrides(cli) == ["--train.batch_size=8"]
    last = online_phase(pa_rl_run, pusht_like, out, OnlineConfig(env="pusht", rounds=1, episodes=1, steps=2), cli,
                        progress=False)
    cfg = json.loads((last / "train_config.json").read_text())
    assert cfg["rl"]["critic_warmup_steps"] == 0 and cfg["train"]["steps"] == 2 and cfg["train"]["batch_size"] == 8
    before, after = load_policy(pa_rl_run).state_dict(), load_policy(last).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the round distilled into the policy


def test_rounds_can_act_with_the_head_itself(pusht_like, pa_rl_run, tmp_path, monkeypatch):
    import robopolicy.sim.evaluate as evaluate_module
    from robopolicy.policies.policy import Policy

    actors = []
    real = evaluate_module.evaluate
    monkeypatch.setattr(evaluate_module, "evaluate",
                        lambda actor, *a, **k: actors.append(actor) or real(actor, *a, **k))
    out = tmp_path / "online"
    online_phase(pa_rl_run, pusht_like, out, OnlineConfig(env="pusht", rounds=1, episodes=1, steps=1, actor="policy"),
                 progress=False)
    assert len(actors) == 1 and isinstance(actors[0], Policy)  # the head itself, no critic in the loop
    assert open_dataset(out / "replay.zarr").num_episodes == 4 + 1
    with pytest.raises(ValueError, match="actor must be one of"):
        OnlineConfig(env="pusht", actor="critic")


def test_finetune_command_runs_the_online_phase(pusht_like, tmp_path, capsys):
    from robopolicy.cli.main import main

    bc = tmp_path / "bc"
    train(load_config(None, [*TINY, f"--data.uri={pusht_like}", "--train.steps=2", f"--train.output_dir={bc}"]))
    out = tmp_path / "ft"
    args = ["finetune", "--checkpoint", str(bc), "--method", "pa_rl", "--dataset", str(pusht_like),
            "--online-env", "pusht", "--online-rounds", "1", "--online-episodes", "1", "--online-steps", "1",
            "--train.steps=1", "--train.batch_size=8", "--train.progress=false", "--train.tensorboard=false",
            f"--train.output_dir={out}", *RL[1:]]
    assert main(args) == 0, capsys.readouterr().err
    assert "online phase: 1 rounds" in capsys.readouterr().out
    assert (out / "online" / "round_0" / "DONE").exists()
    co_rft = [a if a != "pa_rl" else "co_rft" for a in args if not a.startswith("--rl.")]
    assert main([*co_rft[:-1], f"--train.output_dir={tmp_path / 'co_rft'}"]) == 2
    assert "PA-RL" in capsys.readouterr().err


def test_eval_acts_with_the_critic_guided_policy(pa_rl_run, tmp_path, capsys):
    from robopolicy.cli.main import main

    out = tmp_path / "guided"
    args = ["eval", "--checkpoint", str(pa_rl_run), "--env", "pusht", "--episodes", "1", "--max-steps", "16",
            "--videos", "0", "--no-progress"]
    assert main([*args, "--critic-guided", "--out", str(out)]) == 0, capsys.readouterr().err
    info = json.loads((out / "eval_info.json").read_text())
    assert len(info["per_episode"]) == 1
    bc = pa_rl_run.parent / "bc"  # a plain policy has no critic to act with: one line naming why
    assert main([*args, "--critic-guided", "--checkpoint", str(bc), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--critic-guided" in err and "pa_rl" in err and "Traceback" not in err
