"""PA-RL's online phase (algorithms.md section 6), in rounds after the offline phase:

  1. act in simulation with the *optimised* policy: at every chunk, N samples from the head, PA-RL's global and
     local optimisation against the critic, the best chunk executed (`CriticGuidedPolicy`); or, with
     `actor="policy"`, with the distilled head itself, as it is deployed (where acting with the critic is far
     worse than the head, as on PushT, its rollouts show the critic the successes and failures of the policy it
     is meant to improve);
  2. append those episodes, with the environment's rewards, to a replay dataset that started as a copy of the
     offline data with its rewards written out (`replay_dataset`);
  3. fine-tune on the replay dataset with online windows drawn `online_fraction` of the time (PA-RL: 50/50),
     starting from the last round's policy and critic (`rl.init_critic`; the optimizers start afresh).
Each round is an ordinary fine-tuning run (`<out>/round_<r>`) that `eval`, `deploy` and `serve` load. A killed
phase continues where it stopped: finished rounds are kept, and a round whose recording was cut short records
only the episodes the replay dataset lacks (the writer saves whole episodes only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from robopolicy.data.features import Feature
from robopolicy.policies.policy import Policy, load_policy, resolve_checkpoint
from robopolicy.rl.action_optimization import ActionOptimizationConfig, choose, optimize_actions
from robopolicy.rl.chunks import executed_slice, flatten_condition
from robopolicy.rl.critics import EnsembleQ
from robopolicy.rl.rewards import DONE_KEY, REWARD_KEY, SUCCESS_KEY, dataset_rewards

CRITIC_FILE = Path("train_state") / "modules" / "critic.safetensors"
ACTORS = ("guided", "policy")  # who acts in an online round: PA-RL's optimised actions, or the head itself


def phase_dir(actor: str) -> str:
    """The folder of a run's online rounds acted by `actor`: "online" for PA-RL's optimised actions, else
    "online_<actor>"."""
    return "online" if actor == "guided" else f"online_{actor}"


def load_critic(checkpoint: str | Path, policy: Policy, k: int, config) -> EnsembleQ:
    """The critic module saved with a PA-RL checkpoint (train_state/modules/critic.safetensors), on the policy's
    device; its observation size is read from the saved first layer."""
    path = resolve_checkpoint(checkpoint) / CRITIC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no critic in this checkpoint; pass a PA-RL fine-tuning run")
    state = load_file(str(path))
    in_features = state["net.layers.0.weight"].shape[1]
    action_dim = k * policy.config.action_dim
    critic = EnsembleQ(in_features - action_dim, action_dim, config)
    try:
        missing, unexpected = critic.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{path}: the saved critic does not match rl.critic {config}: {e}") from e
    if unexpected or [m for m in missing if not m.startswith("target_net.")]:
        raise ValueError(f"{path}: critic does not match rl.critic (missing {missing}, unexpected {unexpected})")
    if missing:  # saved without its target copy: start the target at the critic
        critic.target_net.load_state_dict(critic.net.state_dict())
    return critic.to(device=policy.head.device).eval().requires_grad_(False)


def load_value(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The weights of IQL's V(s) saved with a PA-RL checkpoint trained with rl.critic_loss=iql."""
    path = resolve_checkpoint(checkpoint) / CRITIC_FILE.with_name("value.safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no IQL value network in this checkpoint (trained with rl.critic_loss="
                                f"cal_ql?); pass a run trained with the same rl.critic_loss")
    return load_file(str(path))


class CriticGuidedPolicy:
    """A ChunkPolicy (robopolicy.runtime.protocol) acting with PA-RL's optimised actions: per observation N head
    samples, global top-k and local ascent on the critic's ensemble-mean Q, the best chunk (unnormalized, (B, H, D))."""

    def __init__(self, policy: Policy, critic: EnsembleQ, k: int, optimization: ActionOptimizationConfig):
        self.policy, self.critic, self.optimization = policy.eval(), critic, optimization
        self.config = policy.config
        self.slice = executed_slice(policy.config, k)

    def reset(self) -> None:  # stateless between episodes, like Policy
        pass

    def predict_chunk(self, obs: Mapping[str, object], generator: torch.Generator | None = None, **_) -> torch.Tensor:
        head = self.policy.head
        with torch.no_grad():
            prepared = self.policy.prepare(obs)
            feat = flatten_condition(head.encode(prepared)).float()
            candidates = head.sample(prepared, num_samples=self.optimization.num_samples, generator=generator)

        def q_fn(f: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return self.critic.q(f, a[:, self.slice].float()).mean(0)

        # the local step differentiates Q in the actions, also when the caller runs under inference mode
        with torch.inference_mode(False), torch.enable_grad():
            best, q = optimize_actions(q_fn, feat.clone(), candidates.float().clone(), self.optimization)
        chunk = choose(best.detach(), q.detach(), "argmax").to(candidates.dtype)
        return self.policy.normalizer.unnormalize(self.config.action_key, chunk)


def guided_policy(run: str | Path, map_location: str = "cpu") -> CriticGuidedPolicy:
    """The optimised actor of a PA-RL run: its policy, its critic and its rl.optimization settings."""
    from robopolicy.rl.registry import method_config

    ckpt = resolve_checkpoint(run)
    rl = json.loads((ckpt / "train_config.json").read_text())["rl"]
    if rl.get("method") != "pa_rl":
        raise ValueError(f"{ckpt}: rl.method={rl.get('method')!r}; acting with optimised actions needs a pa_rl run")
    cfg = method_config(rl)
    policy = load_policy(ckpt, map_location=map_location)
    k = cfg.chunk_steps or policy.config.n_action_steps
    return CriticGuidedPolicy(policy, load_critic(ckpt, policy, k, cfg.critic), k, cfg.optimization)


def replay_dataset(offline: str | Path, out: str | Path, policy: Policy, reward: str) -> Path:
    """A zarr copy of the offline dataset with the policy's inputs, its action and the method's rewards written out
    as next.reward / next.success / next.done (what `eval --record` appends); returns `out`. Written once: an
    existing complete copy is reused."""
    from robopolicy.data.dataset import open_dataset
    from robopolicy.data.writer import create_writer

    out = Path(out)
    if (out / ".complete").exists():
        return out
    src = open_dataset(offline)
    rewards = dataset_rewards(src, reward)
    keys = [*policy.config.input_features, policy.config.action_key]
    feats: dict[str, Feature] = {k: src.feature(k) for k in keys}
    feats[REWARD_KEY] = Feature(REWARD_KEY, "float32", (1,), "reward")
    feats[DONE_KEY] = Feature(DONE_KEY, "bool", (1,), "done")
    feats[SUCCESS_KEY] = Feature(SUCCESS_KEY, "bool", (1,), "done")
    with create_writer(out, feats, src.fps or 10.0, format="zarr", overwrite=True) as writer:
        for e, ep in enumerate(src.episodes):
            frames = np.arange(ep.start, ep.stop)
            data = {k: src.read(k, frames) for k in keys}
            for i, t in enumerate(frames):
                writer.add_frame({**{k: data[k][i] for k in keys},
                                  REWARD_KEY: np.array([rewards.reward[t]], np.float32),
                                  DONE_KEY: np.array([t == ep.stop - 1]),
                                  SUCCESS_KEY: np.array([bool(rewards.terminal[t])])},
                                 task=ep.tasks[0] if ep.tasks else None)
            success = src.episode_success[e] if src.episode_success is not None else None
            writer.save_episode(task=ep.tasks[0] if ep.tasks else None, success=success)
    (out / ".complete").write_text(f"{src.num_episodes} offline episodes from {offline}\n")
    return out


@dataclass(frozen=True)
class OnlineConfig:
    env: str  # the simulation spec, e.g. "pusht"
    rounds: int = 2
    episodes: int = 20  # episodes acted per round
    steps: int = 500  # fine-tuning updates per round
    online_fraction: float = 0.5  # share of windows drawn from the online episodes (PA-RL: 50/50)
    seed: int = 500_000  # first environment seed of the online episodes (apart from evaluation seeds)
    n_envs: int = 1
    actor: str = "guided"  # who acts: "guided" (PA-RL's optimised actions, as published) or "policy" (the head)

    def __post_init__(self):
        if self.rounds < 1 or self.episodes < 1 or self.steps < 1:
            raise ValueError(f"rounds, episodes and steps must be >= 1, got {self.rounds}, {self.episodes}, "
                             f"{self.steps}")
        if not 0.0 < self.online_fraction < 1.0:
            raise ValueError(f"online_fraction must be in (0, 1), got {self.online_fraction}")
        if self.actor not in ACTORS:
            raise ValueError(f"actor must be one of {ACTORS}, got {self.actor!r}")


def round_rl(prev: Path, config: OnlineConfig, num_offline: int) -> dict:
    """The rl fields every online round sets itself: rewards from the replay data, the last round's critic, no
    critic warm-up (it would hold the policy for the whole round), the online share of the batches."""
    return {"reward": REWARD_KEY, "init_critic": str(prev), "critic_warmup_steps": 0,
            "online_fraction": config.online_fraction, "online_from_episode": num_offline}


def round_overrides(overrides) -> list[str]:
    """The command line's --section.field=value for the rounds, without those the round sets itself (the offline
    run's --rl.critic_warmup_steps=N must not make every round a warm-up; its steps and output_dir are its own)."""
    own = {f"--rl.{k}" for k in ("reward", "init_critic", "critic_warmup_steps", "online_fraction",
                                 "online_from_episode")} | {"--train.steps", "--train.output_dir", "--train.overwrite"}
    return [o for o in overrides if o.split("=", 1)[0] not in own]


def online_phase(offline_run: str | Path, offline_data: str | Path, out: str | Path, config: OnlineConfig,
                 overrides: list[str] = (), progress: bool = True) -> Path:
    """Rounds of acting, recording and fine-tuning after the offline PA-RL run `offline_run`; returns the last
    round's run directory. `overrides`: extra --section.field=value for every round (e.g. --train.batch_size=32)."""
    from robopolicy.data.dataset import open_dataset
    from robopolicy.rl.registry import build_rule
    from robopolicy.sim.envs import env_spec_for_policy
    from robopolicy.sim.evaluate import evaluate
    from robopolicy.train.config import load_config
    from robopolicy.train.trainer import train

    out = Path(out)
    prev = Path(offline_run)
    base = json.loads((resolve_checkpoint(prev) / "train_config.json").read_text())
    policy = load_policy(prev)
    buffer = replay_dataset(offline_data, out / "replay.zarr", policy, base["rl"].get("reward", REWARD_KEY))
    num_offline = int((buffer / ".complete").read_text().split()[0])
    for r in range(config.rounds):
        run_dir = out / f"round_{r}"
        if (run_dir / "DONE").exists():
            prev = run_dir
            continue
        have = open_dataset(buffer).num_episodes - num_offline - r * config.episodes  # this round's, so far
        if have < config.episodes:
            actor = guided_policy(prev) if config.actor == "guided" else load_policy(prev)
            spec = env_spec_for_policy(config.env, actor.config.input_features)
            evaluate(actor, spec, config.episodes - have, seed=config.seed + r * config.episodes + have,
                     out_dir=out / f"round_{r}_eval", n_envs=config.n_envs, record=buffer, overwrite=True,
                     progress=progress)
        # the critic continues from the last round: no warm-up again
        rl = {**base["rl"], **round_rl(resolve_checkpoint(prev), config, num_offline)}
        sections = {k: base[k] for k in ("policy", "optim", "train") if k in base}
        cfg = load_config(None, [f"--train.steps={config.steps}", f"--train.output_dir={run_dir}",
                                 "--train.overwrite=true", *round_overrides(overrides)],
                          base={**sections, "data": {**base["data"], "uri": str(buffer)}, "rl": rl})
        train(cfg, rule=build_rule(cfg.rl), policy=load_policy(prev))
        (run_dir / "DONE").write_text("trained\n")
        prev = run_dir
    return prev
