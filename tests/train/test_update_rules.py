"""A toy actor + critic rule plugged into the trainer without editing it: two optimizers, a critic and its Polyak
target saved in the checkpoint, and a resumed run bit-identical to an uninterrupted one."""

from __future__ import annotations

import copy
import csv

import torch
from safetensors.torch import load_file
from torch import nn

from robopolicy.train.config import load_config
from robopolicy.train.trainer import train
from robopolicy.train.update import POLICY, Learner, UpdateRule, make_optimizer, polyak_update
from tests.train.test_trainer import TINY

STATE, ACTION = "state", "action"


class ToyActorCritic(UpdateRule):
    """Critic Q(s_0, a_0) regresses a made-up reward plus its target's bootstrap; the actor is the policy's loss
    weighted by exp(Q) (advantage-weighted behaviour cloning)."""

    def build(self, policy, cfg):
        state_dim = policy.config.input_features[STATE].shape[0]
        critic = nn.Sequential(nn.Linear(state_dim + policy.config.action_dim, 32), nn.ReLU(), nn.Linear(32, 1))
        target = copy.deepcopy(critic).requires_grad_(False)
        modules = {POLICY: policy, "critic": critic, "critic_target": target}
        optimizers = {POLICY: make_optimizer(policy.head.parameters(), cfg.optim),
                      "critic": torch.optim.Adam(critic.parameters(), lr=3e-4)}
        return modules, optimizers

    def update(self, learner: Learner, batch, step):
        policy = learner.unwrap(POLICY)
        inputs = policy.prepare(batch)
        sa = torch.cat([inputs[STATE][:, -1], inputs[ACTION][:, 0]], dim=-1)
        reward = -inputs[ACTION][:, 0].square().sum(-1, keepdim=True)
        with torch.no_grad():
            target_q = reward + 0.9 * learner.modules["critic_target"](sa)
        critic_loss = (learner.modules["critic"](sa) - target_q).square().mean()
        critic_norm = learner.step("critic", critic_loss)
        polyak_update(learner.modules["critic_target"], learner.unwrap("critic"), tau=0.05)
        with torch.no_grad():
            weights = torch.softmax(learner.modules["critic"](sa).squeeze(-1), 0) * sa.shape[0]
        out = learner.modules[POLICY](batch)
        actor_loss = out.weighted(weights)
        actor_norm = learner.step(POLICY, actor_loss)
        return {"loss": actor_loss.detach(), "grad_norm": actor_norm, "critic_loss": critic_loss.detach(),
                "critic_grad_norm": critic_norm}


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_actor_critic_rule_checkpoints_and_resumes_bit_identically(pusht_zarr, tmp_path):
    base = [*TINY, f"--data.uri={pusht_zarr}", "--data.episodes=[0,1,2]", "--train.steps=6"]
    full = load_config(None, [*base, f"--train.output_dir={tmp_path / 'full'}", "--train.save_every=100"])
    train(full, rule=ToyActorCritic())
    part = load_config(None, [*base, f"--train.output_dir={tmp_path / 'part'}", "--train.save_every=3"])
    train(part, rule=ToyActorCritic(), stop_after=3)
    train(part, rule=ToyActorCritic(), resume=True)

    a, b = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert [int(r["step"]) for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b, strict=True):
        assert (ra["loss"], ra["critic_loss"]) == (rb["loss"], rb["critic_loss"]), ra["step"]
    ts_a, ts_b = (tmp_path / run / "checkpoints/step_000006/train_state" for run in ("full", "part"))
    for name in ("modules/policy", "modules/critic", "modules/critic_target", "optimizers/policy",
                 "optimizers/critic"):
        wa, wb = load_file(str(ts_a / f"{name}.safetensors")), load_file(str(ts_b / f"{name}.safetensors"))
        assert wa.keys() == wb.keys() and wa
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}/{k}"
    critic, target = (load_file(str(ts_a / f"modules/{n}.safetensors")) for n in ("critic", "critic_target"))
    assert not torch.equal(critic["0.weight"], target["0.weight"])  # the target lags the critic
