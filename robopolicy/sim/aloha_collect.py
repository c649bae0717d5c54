"""Record scripted gym-aloha demonstrations (transfer-cube, insertion) with per-frame phase labels.

Episode k of a collection started at `seed` uses environment seed `seed + k` (k counts attempts, including
discarded failures), as in robopolicy.sim.collect. Every episode is the expert's whole scripted demonstration
(`AlohaExpert.length` = 300 steps = 6 s at 50 Hz, gym-aloha's time limit), recorded on after the first success
like ACT's data, so the release and retreat phases are in it.

Recorded per frame t (features in robopolicy.sim.aloha_env): observation.* at t, `action` (14,) taken at t,
`next.reward` float32 (1,) = gym-aloha's stage reward (0..4) after the action, `next.done` bool (1,) = True on
the last frame, `phase` int64 (1,) = the expert's phase at t (its feature `names` list the vocabulary), and the
episode's task string (`AlohaEnv.task_description`). An episode's success flag: reward 4 at some step of the last
`END_WINDOW` = 10 steps (0.2 s): the cube still held by the left gripper off the table / the peg still on the
pin at the end. Stricter than ACT's "max reward 4 at some step"; not "reward 4 on the very last step", because
gym-aloha's reward tests contact with one particular finger geom, which drops out for single steps while the
object is firmly held (seen as 4 4 0 4 4 in held episodes).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from robopolicy.data.features import PHASE_KEY, Feature
from robopolicy.data.writer import EpisodeWriter, create_writer
from robopolicy.sim.aloha_env import (
    ACTION_KEY,
    ENV_STATE_KEY,
    STATE_KEY,
    SUCCESS_REWARD,
    AlohaConfig,
    AlohaEnv,
    image_shape,
    parse_env_spec,
)
from robopolicy.sim.aloha_expert import AlohaExpert, AlohaExpertConfig, phase_feature
from robopolicy.sim.collect import CollectResult, EpisodeResult

REWARD_KEY = "next.reward"  # the same column names as robopolicy.sim.collect
DONE_KEY = "next.done"
END_WINDOW = 10  # steps: success = reward 4 somewhere in the episode's last END_WINDOW steps


@dataclass(frozen=True)
class AlohaCollectConfig:
    """What to collect (the keyword names of robopolicy.sim.collect.CollectConfig where they mean the same).

    env: "aloha:TransferCube" or "aloha:Insertion".
    episodes: number of episodes to write (successful ones if `only_successful`).
    seed: environment seed of the first episode; attempt k uses seed + k.
    cameras / image_size: cameras to record ("top"); image_size is the height (int, width 4/3 of it: 96 ->
      96 x 128) or (H, W); default 120 x 160 (gym-aloha renders 480 x 640; CPU rendering is slow).
    only_successful / max_attempts: discard failed episodes and try further seeds, up to max_attempts
      (default 2 * episodes + 10).
    max_steps / success_hold_steps: accepted for compatibility with CollectConfig and ignored: an episode is
      always the expert's whole script.
    """

    env: str = "aloha:TransferCube"
    episodes: int = 50
    seed: int = 0
    cameras: tuple[str, ...] = ()
    image_size: int | tuple[int, int] | None = None
    only_successful: bool = False
    max_attempts: int | None = None
    max_steps: int | None = None
    success_hold_steps: int | None = None

    def __post_init__(self):
        parse_env_spec(self.env)
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        h, w = image_shape(self.image_size)
        if min(h, w) < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")
        self.env_config()  # validates the camera names

    @property
    def task(self) -> str:
        return parse_env_spec(self.env)

    @property
    def attempts_allowed(self) -> int:
        if not self.only_successful:
            return self.episodes
        return self.max_attempts if self.max_attempts is not None else 2 * self.episodes + 10

    def env_config(self) -> AlohaConfig:
        h, w = image_shape(self.image_size)
        return AlohaConfig(task=self.task, cameras=self.cameras, image_height=h, image_width=w)


def recording_features(env: AlohaEnv, video: bool) -> dict[str, Feature]:
    """The env's observation/action features plus reward, done and the phase label."""
    feats = env.dataset_features(video=video)
    feats[REWARD_KEY] = Feature(REWARD_KEY, "float32", (1,), "reward")
    feats[DONE_KEY] = Feature(DONE_KEY, "bool", (1,), "done")
    feats[PHASE_KEY] = phase_feature(env.task_name)
    return feats


def rollout(env: AlohaEnv, expert: AlohaExpert, seed: int, writer: EpisodeWriter | None = None) -> EpisodeResult:
    """Play the expert's whole script from `seed`, adding every frame to `writer` (the caller saves it)."""
    env.reset(seed=seed)
    expert.reset()
    frame = env.features()
    first_success: int | None = None
    last_success = -1
    for t in range(expert.length):
        action = expert.act(frame)
        _, reward, _, _, _ = env.step(action)
        if reward >= SUCCESS_REWARD:
            last_success = t
            first_success = t if first_success is None else first_success
        if writer is not None:
            frame[ACTION_KEY] = action
            frame[REWARD_KEY] = np.array([reward], dtype=np.float32)
            frame[DONE_KEY] = np.array([t == expert.length - 1])
            frame[PHASE_KEY] = np.array([expert.phase_index], dtype=np.int64)
            writer.add_frame(frame, task=env.task_description)
        frame = env.features()
    success = last_success >= expert.length - END_WINDOW
    return EpisodeResult(env.task_name, seed, expert.length, success, first_success, None)


def collect(
    config: AlohaCollectConfig,
    out: str | Path,
    *,
    format: str = "lerobot",
    overwrite: bool = False,
    append: bool = False,
    progress: bool = True,
    writer_options: dict | None = None,
) -> CollectResult:
    """Collect `config.episodes` scripted episodes into `out` (LeRobot v3 or Zarr); the signature of
    robopolicy.sim.collect.collect."""
    from tqdm.auto import tqdm

    env = AlohaEnv(config.env_config(), keys=[STATE_KEY, ENV_STATE_KEY])  # step() renders nothing; features() does
    expert = AlohaExpert(AlohaExpertConfig(task=config.task))
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
                r = rollout(env, expert, config.seed + attempt, writer)
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


def run_cli(args: argparse.Namespace) -> int:
    """`robopolicy collect --env aloha:<Task> ...` with the namespace of robopolicy.cli.collect's parser
    (--max-steps and --success-hold-steps do not apply: an episode is the expert's whole script)."""
    from robopolicy.cli.collect import resolve_format
    from robopolicy.config_parsing import ConfigError
    from robopolicy.data.errors import DatasetExistsError

    try:
        config = AlohaCollectConfig(
            env=args.env,
            episodes=args.episodes,
            seed=args.seed,
            cameras=tuple(args.cameras),
            image_size=args.image_size,
            only_successful=args.only_successful,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    fmt = resolve_format(args.out, args.format)
    try:
        result = collect(
            config, args.out, format=fmt, overwrite=args.overwrite, append=args.append, progress=not args.no_progress
        )
    except DatasetExistsError as e:
        print(f"robopolicy collect: error: {e} (command line: --overwrite or --append)", file=sys.stderr)
        return 2
    print(result.summary())
    if len(result.saved) < config.episodes:
        print(
            f"robopolicy collect: only {len(result.saved)} of {config.episodes} episodes succeeded within "
            f"{config.attempts_allowed} attempts",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point with the collect command's options: python -m robopolicy.sim.aloha_collect ..."""
    from robopolicy.cli.collect import add_arguments

    parser = argparse.ArgumentParser(prog="python -m robopolicy.sim.aloha_collect")
    add_arguments(parser)
    parser.set_defaults(env="aloha:TransferCube", image_size=120)
    args = parser.parse_args(argv)
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
