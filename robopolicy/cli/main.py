"""The `robopolicy` command. Each subcommand lives in its own module with `add_parser` and `run`.

Errors: an exception that reaches `main` is one line on stderr, `robopolicy <command>: error: <message>`, with
exit code 2 for bad input (a dataset, config, checkpoint, robot description, file or device the message names)
and 1 for an unexpected internal error (then with a hint to rerun with --debug). `--debug` (anywhere on the
command line) or ROBOPOLICY_DEBUG=1 prints the traceback too. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

# name -> module under robopolicy.cli, "-" spelled "_" (imported lazily so `--help` stays fast)
SUBCOMMANDS = {
    "info": "Summarize a dataset: format, fps, episodes, frames, features, tasks.",
    "convert": "Convert a dataset between Zarr (diffusion-policy layout) and LeRobot v3.0.",
    "edit": "Edit a dataset (LeRobot v3, zarr): delete episodes, split, merge, remove / rename features, re-encode.",
    "viz": "Look at a dataset: one HTML page with the episodes, their videos in sync with state / action plots.",
    "stats": "Compute normalization stats (streaming) and print or save them.",
    "validate": "Check a dataset for missing files, NaN/inf, bad timestamps and inconsistent metadata.",
    "collect": "Collect demonstrations with a scripted expert in simulation.",
    "eval": "Evaluate a policy checkpoint in simulation (PushT, robosuite, benchmark suites): success, videos.",
    "sim": "Simulators in their own environments (install, list) and merging sharded suite evaluations.",
    "train": "Train a policy head on a dataset from a YAML preset with --section.field=value overrides.",
    "finetune": "Fine-tune a trained policy with offline RL (PA-RL) on a dataset with rewards.",
    "deploy": "Deploy a policy checkpoint to a robot: fixed-rate loop, safety limits, e-stop, async inference, RTC.",
    "import-lerobot": "Turn a LeRobot ACT or Diffusion Policy checkpoint into a robopolicy checkpoint.",
    "push": "Upload a dataset or a checkpoint to the Hugging Face hub, with a dataset or model card.",
    "serve": "Serve a policy checkpoint over TCP for `robopolicy deploy --inference server`.",
    "record": "Record teleoperated demonstrations into a LeRobot v3 / Zarr dataset (--emulate: emulated hardware).",
}

DEBUG_FLAG = "--debug"
DEBUG_ENV = "ROBOPOLICY_DEBUG"
EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: `robopolicy <cmd>: error: <what> (see robopolicy <cmd> --help)`."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="robopolicy", description="Robot learning toolkit.")
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"on an error, print the full traceback (anywhere on the line; or {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"robopolicy.cli.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (their messages name the file, key, field or motor): exit code 2."""
    from robopolicy.config_parsing import ConfigError
    from robopolicy.data.errors import DatasetError
    from robopolicy.data.normalize import StatsMismatchError
    from robopolicy.hub import HubError
    from robopolicy.policies.policy import CheckpointError
    from robopolicy.policies.processor import ProcessorError
    from robopolicy.real.cameras.base import CameraError
    from robopolicy.real.motors.calibration import CalibrationError
    from robopolicy.real.motors.errors import MotorBusError
    from robopolicy.real.robots.config import RobotConfigError
    from robopolicy.sim.simulators import SimulatorError
    from robopolicy.sim.suite_eval import SuiteEvalError
    from robopolicy.train.checkpoint import ResumeMismatchError
    from robopolicy.wire import RemotePolicyError

    return (DatasetError, ConfigError, CheckpointError, StatsMismatchError, ProcessorError, ResumeMismatchError,
            RemotePolicyError, RobotConfigError, CalibrationError, MotorBusError, CameraError, SimulatorError,
            SuiteEvalError, HubError, OSError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a KeyError's without the quotes its str() adds)."""
    message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else error
    text = " ".join(str(message).split())
    return text or type(error).__name__


def _debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether --debug is on the command line (before a `--`) or in the environment; argv without it."""
    end = argv.index("--") if "--" in argv else len(argv)
    flag = DEBUG_FLAG in argv[:end]
    rest = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    return flag or env, rest


def main(argv: list[str] | None = None) -> int:
    debug, argv = _debug_requested(list(sys.argv[1:] if argv is None else argv))
    command = "robopolicy"
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        command = f"robopolicy {args.command}"
        if extra and args.command in ("train", "finetune"):  # dotted overrides look like options to argparse
            args.overrides = [*args.overrides, *extra]
        elif extra:
            args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            traceback.print_exc()
        try:
            known = isinstance(e, bad_input_errors())
        except Exception:  # an import failing while classifying: report the original error as internal
            known = False
        if known:
            print(f"{command}: error: {one_line(e)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        hint = "" if debug else f" (an internal error; run with {DEBUG_FLAG} for the traceback)"
        print(f"{command}: error: {type(e).__name__}: {one_line(e)}{hint}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
