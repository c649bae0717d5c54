"""Roll out a scripted expert in simulation and record the episodes with an `EpisodeWriter`.

Episode k of a collection started at `seed` uses environment seed `seed + k` (k counts attempts, including
discarded failures), so a collection is reproducible and its seeds are known: evaluate on seeds outside
[seed, seed + attempts) to test on unseen initial states.

Recorded per frame t (see robopolicy.sim.robosuite_env for the observation features):
  observation.* at t, `action` taken at t, `next.reward` float32 (1,) = 1.0 if the task is solved after the
  action, `next.done` bool (1,) = True on the episode's last frame.
An episode ends `success_hold_steps` steps after the first success (so the demonstration shows the object
held, not dropped) or after `max_steps` steps; each episode is saved with its success flag.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from robopolicy.data.features import Feature
from robopolicy.data.writer import EpisodeWriter, create_writer
from robopolicy.sim.experts import make_expert
from robopolicy.sim.robosuite_env import ACTION_KEY, RobosuiteEnv, make_env, parse_env_spec

REWARD_KEY = "next.reward"
DONE_KEY = "next.done"


@dataclass(frozen=True)
class CollectConfig:
    """What to collect.

    env: "robosuite:<Task>" (only "robosuite:Lift" has an expert so far).
    episodes: number of episodes to write (successful ones if `only_successful`).
    seed: environment seed of the first episode; attempt k uses seed + k.
    max_steps: episode time limit in control steps (20 Hz: 200 steps = 10 s).
    success_hold_steps: steps recorded after the first success.
    cameras / image_size: cameras to render as uint8 (image_size, image_size, 3) frames; none = low-dim only.
    only_successful: discard failed episodes and keep trying new seeds, up to `max_attempts`.
    max_attempts: cap on rollouts when `only_successful` (default 2 * episodes + 10).
    """

    env: str = "robosuite:Lift"
    episodes: int = 50
    seed: int = 0
    max_steps: int = 200
    success_hold_steps: int = 10
    cameras: tuple[str, ...] = ()
    image_size: int = 84
    only_successful: bool = False
    max_attempts: int | None = None

    def __post_init__(self):
        parse_env_spec(self.env)
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.success_hold_steps < 0:
            raise ValueError(f"success_hold_steps must be >= 0, got {self.success_hold_steps}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")

    @property
    def attempts_allowed(self) -> int:
        if not self.only_successful:
            return self.episodes
        return self.max_attempts if self.max_attempts is not None else 2 * self.episodes + 10


@dataclass(frozen=True)
class EpisodeResult:
    """One rollout: its seed, number of recorded frames, success flag, and first successful step (or None)."""

    seed: int
    length: int
    success: bool
    first_success_step: int | None
    saved_as: int | None  # episode index in the dataset, None if discarded


@dataclass
class CollectResult:
    out: Path
    format: str
    rollouts: list[EpisodeResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def saved(self) -> list[EpisodeResult]:
        return [r for r in self.rollouts if r.saved_as is not None]

    @property
    def success_rate(self) -> float:
        return float(np.mean([r.success for r in self.rollouts])) if self.rollouts else 0.0

    @property
    def mean_length(self) -> float:
        return float(np.mean([r.length for r in self.rollouts])) if self.rollouts else 0.0

    @property
    def episodes_per_minute(self) -> float:
        return 60.0 * len(self.rollouts) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        saved = self.saved
        return (
            f"wrote {len(saved)} episodes ({sum(r.length for r in saved)} frames) to {self.out} [{self.format}]; "
            f"expert success {sum(r.success for r in self.rollouts)}/{len(self.rollouts)} "
            f"({100 * self.success_rate:.0f}%), mean length {self.mean_length:.1f} steps, "
            f"{self.episodes_per_minute:.1f} episodes/min, seeds {self.rollouts[0].seed}..{self.rollouts[-1].seed}"
        )


def recording_features(env: RobosuiteEnv, video: bool) -> dict[str, Feature]:
    """The env's observation/action features plus the reward and done columns."""
    feats = env.dataset_features(video=video)
    feats[REWARD_KEY] = Feature(REWARD_KEY, "float32", (1,), "reward")
    feats[DONE_KEY] = Feature(DONE_KEY, "bool", (1,), "done")
    return feats


def rollout(
    env: RobosuiteEnv,
    expert,
    seed: int,
    writer: EpisodeWriter,
    *,
    max_steps: int,
    success_hold_steps: int,
) -> EpisodeResult:
    """Run one expert episode, adding every frame to `writer` (the caller saves or discards it)."""
    obs = env.reset(seed)
    expert.reset()
    first_success: int | None = None
    success = False
    for t in range(max_steps):
        action = expert.act(obs)
        frame = env.features(obs)
        obs, _, success = env.step(action)
        if success and first_success is None:
            first_success = t
        done = t == max_steps - 1 or (first_success is not None and t >= first_success + success_hold_steps)
        frame[ACTION_KEY] = action
        frame[REWARD_KEY] = np.array([float(success)], dtype=np.float32)
        frame[DONE_KEY] = np.array([done])
        writer.add_frame(frame, task=env.task)
        if done:
            break
    return EpisodeResult(seed, t + 1, bool(success), first_success, None)


def collect(
    config: CollectConfig,
    out: str | Path,
    *,
    format: str = "lerobot",
    overwrite: bool = False,
    append: bool = False,
    progress: bool = True,
    writer_options: dict | None = None,
) -> CollectResult:
    """Collect `config.episodes` expert episodes into `out` (a new dataset, or appended to with `append`).

    An episode counts as successful if the task is solved on its last frame. Returns per-rollout results.
    """
    from tqdm.auto import tqdm

    task = parse_env_spec(config.env)
    env = make_env(config.env, cameras=config.cameras, image_size=config.image_size)
    expert = make_expert(task)
    result = CollectResult(Path(out), format)
    features = recording_features(env, video=format != "zarr")
    start = time.perf_counter()
    try:
        with create_writer(
            out, features, env.fps, format=format, overwrite=overwrite, append=append, **(writer_options or {})
        ) as writer:
            bar = tqdm(total=config.episodes, desc=f"collect {config.env}", unit="ep", disable=not progress)
            for attempt in range(config.attempts_allowed):
                if len(result.saved) == config.episodes:
                    break
                r = rollout(
                    env,
                    expert,
                    config.seed + attempt,
                    writer,
                    max_steps=config.max_steps,
                    success_hold_steps=config.success_hold_steps,
                )
                if config.only_successful and not r.success:
                    writer.discard_episode()
                else:
                    r = replace(r, saved_as=writer.save_episode(success=r.success))
                result.rollouts.append(r)
                bar.set_postfix(
                    success=f"{sum(x.success for x in result.rollouts)}/{len(result.rollouts)}", refresh=False
                )
                bar.update(1 if r.saved_as is not None else 0)
            bar.close()
    finally:
        env.close()
        result.seconds = time.perf_counter() - start
    return result
