"""`robopolicy collect`: record scripted-expert demonstrations in simulation into a Zarr or LeRobot v3 dataset."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Collect demonstrations with a scripted expert in simulation.

Episode k uses environment seed SEED + k, so the same command writes the same dataset; evaluate a policy
on seeds outside that range. Each episode is stored with a success flag. Low-dim features by default
(observation.state, observation.environment_state, action, next.reward, next.done); --cameras adds
uint8 images rendered headless (MUJOCO_GL=egl).
"""

EXAMPLES = """\
examples:
  robopolicy collect --env robosuite:Lift --episodes 100 --out data/lift.zarr
  robopolicy collect --env robosuite:Lift --episodes 50 --out data/lift_lerobot --format lerobot \\
      --cameras agentview --image-size 84
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--env", default="robosuite:Lift", help="simulation task with an expert (default: %(default)s)")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes to write")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument(
        "--format",
        choices=("lerobot", "zarr"),
        default=None,
        help="dataset format (default: zarr if --out ends in .zarr, else lerobot v3.0)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (default: %(default)s)")
    p.add_argument(
        "--max-steps", type=int, default=200, help="episode time limit in control steps at 20 Hz (default: %(default)s)"
    )
    p.add_argument(
        "--success-hold-steps",
        type=int,
        default=10,
        help="steps recorded after the first success before the episode ends (default: %(default)s)",
    )
    p.add_argument(
        "--cameras", nargs="+", default=[], metavar="CAMERA", help="cameras to record, e.g. agentview (default: none)"
    )
    p.add_argument("--image-size", type=int, default=84, help="camera image height = width (default: %(default)s)")
    p.add_argument(
        "--only-successful",
        action="store_true",
        help="discard failed episodes and try further seeds (at most 2 * episodes + 10 rollouts)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    mode.add_argument("--append", action="store_true", help="add episodes to an existing dataset at --out")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def resolve_format(out: str, fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    return "zarr" if out.rstrip("/").endswith(".zarr") else "lerobot"


def run(args: argparse.Namespace) -> int:
    from robopolicy.config_parsing import ConfigError
    from robopolicy.data.errors import DatasetExistsError
    from robopolicy.sim.collect import CollectConfig, collect

    try:
        config = CollectConfig(
            env=args.env,
            episodes=args.episodes,
            seed=args.seed,
            max_steps=args.max_steps,
            success_hold_steps=args.success_hold_steps,
            cameras=tuple(args.cameras),
            image_size=args.image_size,
            only_successful=args.only_successful,
        )
    except ValueError as e:  # an unknown env or an out-of-range option: `robopolicy.cli.main` prints it, exit 2
        raise ConfigError(str(e)) from e
    fmt = resolve_format(args.out, args.format)
    try:
        result = collect(
            config, args.out, format=fmt, overwrite=args.overwrite, append=args.append, progress=not args.no_progress
        )
    except DatasetExistsError as e:  # bad input, like every command's: exit 2
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
