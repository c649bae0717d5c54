"""The `robopolicy` command. Each subcommand lives in its own module with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import sys

from robopolicy.config_parsing import ConfigError
from robopolicy.data.errors import DatasetError
from robopolicy.data.normalize import StatsMismatchError
from robopolicy.runtime.policy_server import RemotePolicyError

# name -> module under robopolicy.cli (imported lazily so `--help` stays fast)
SUBCOMMANDS = {
    "info": "Summarize a dataset: format, fps, episodes, frames, features, tasks.",
    "convert": "Convert a dataset between Zarr (diffusion-policy layout) and LeRobot v3.0.",
    "stats": "Compute normalization stats (streaming) and print or save them.",
    "validate": "Check a dataset for missing files, NaN/inf, bad timestamps and inconsistent metadata.",
    "collect": "Collect demonstrations with a scripted expert in simulation.",
    "eval": "Evaluate a policy checkpoint in simulation (PushT, robosuite): success rate, videos.",
    "train": "Train a policy head on a dataset from a YAML preset with --section.field=value overrides.",
    "deploy": "Deploy a policy checkpoint to a robot: fixed-rate loop, safety limits, e-stop, async inference, RTC.",
    "serve": "Serve a policy checkpoint over TCP for `robopolicy deploy --inference server`.",
    "record": "Record teleoperated demonstrations into a LeRobot v3 / Zarr dataset (--emulate: emulated hardware).",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robopolicy", description="Robot learning toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"robopolicy.cli.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "train":  # dotted overrides look like options to argparse
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args._run(args) or 0)
    except (DatasetError, ConfigError, FileNotFoundError, StatsMismatchError, RemotePolicyError) as e:
        # bad input the message already names (dataset, config field, checkpoint file, policy worker): one line
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError's str() adds quotes
        print(f"robopolicy {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
