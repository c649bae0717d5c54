"""`robopolicy train --config PRESET.yaml [--section.field=value ...] [--resume]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from robopolicy.config_parsing import ConfigError
from robopolicy.train.config import describe_fields, load_config, parse_yaml


class _HelpWithFields(argparse.Action):
    """--help: the usage, then every config field with its default and one line of help."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            fields = describe_fields(_policy_type(namespace))
        except (ConfigError, OSError) as e:
            parser.error(str(e))
        parser.print_help()
        print(f"\nconfig fields (--section.field=default  type: help; a preset's values replace these defaults):"
              f"\n{fields}")
        parser.exit()


def _policy_type(namespace: argparse.Namespace) -> str:
    """The head whose fields --help lists: --policy.type, else the preset's, else diffusion."""
    if namespace.policy_type:
        return namespace.policy_type
    if namespace.config:
        preset = parse_yaml(Path(namespace.config).read_text(), namespace.config)
        if isinstance(preset, dict) and isinstance(preset.get("policy"), dict):
            return preset["policy"].get("type", "diffusion")
    return "diffusion"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.conflict_handler = "resolve"  # a group added now replaces argparse's -h/--help with one listing the fields
    p.add_argument_group("help").add_argument("-h", "--help", action=_HelpWithFields, nargs=0,
                   help="show this help and every config field, for the head of --policy.type or of the preset "
                        "(put --help last)")
    p.add_argument("--config", help="YAML preset (e.g. configs/diffusion_pusht_state.yaml)")
    p.add_argument("--policy.type", dest="policy_type", metavar="NAME",
                   help="the head to train (default: the preset's, else diffusion)")
    p.add_argument("--resume", action="store_true", help="continue from <train.output_dir>/checkpoints/last")
    p.add_argument(
        "overrides", nargs="*", metavar="--section.field=value",
        help="override any config field, e.g. --train.steps=2000 --policy.horizon=16 --data.uri=path",
    )
    p.epilog = ("Sections: policy (type + head fields), data, optim, train, eval. Values are parsed as YAML; "
                "an invalid value is an error naming the field, the value and what is allowed.")


def run(args: argparse.Namespace) -> int:
    from robopolicy.train.trainer import train

    policy_type = [f"--policy.type={args.policy_type}"] if args.policy_type else []
    cfg = load_config(args.config, [*policy_type, *args.overrides])
    if not cfg.data.uri:
        raise ConfigError("data.uri='': set the dataset in the preset or with --data.uri=PATH")
    callbacks = []
    if cfg.train.eval_every and cfg.eval.env:
        from robopolicy.train.sim_eval import sim_eval_callback

        callbacks.append(sim_eval_callback(cfg.eval, cfg.train.eval_every))
    rule = None
    if cfg.rl:  # an offline-RL method from scratch (PTR is reward-free; fine-tuning is `robopolicy finetune`)
        from robopolicy.rl.registry import build_rule

        rule = build_rule(cfg.rl)
    ckpt = train(cfg, resume=args.resume, callbacks=callbacks, rule=rule)
    print(f"checkpoint: {ckpt}")
    return 0
