"""`robopolicy finetune --checkpoint RUN --method pa_rl --dataset URI [--config PRESET] [--section.field=value ...]`.

Starts from a trained policy (its weights, stats and processor; the head's fields come from the checkpoint) and
trains it with an offline-RL method on a dataset with rewards, through the same trainer as `train`: progress
bar, metrics.csv, TensorBoard, checkpoints that `eval`, `deploy` and `serve` load like any other, exact resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from robopolicy.policies.base import PolicyConfig
from robopolicy.train.config import DATASET_FIELDS

# what fine-tuning changes from training's defaults (a preset or the command line can set them again)
# the policy's EMA is on, as in `train`, and counts the policy's own updates (from the end of a critic warm-up);
# only the 3 newest checkpoints are kept (a long critic warm-up would otherwise leave dozens, critics included)
FINETUNE_DEFAULTS = {"optim": {"lr": 5e-5, "warmup_steps": 0},
                     "train": {"steps": 1000, "save_every": 500, "keep_checkpoints": 3}}


class _HelpWithFields(argparse.Action):
    """--help: the usage, then every rl field of --method (or of each method) with its default and help."""

    def __call__(self, parser, namespace, values, option_string=None):
        from robopolicy.config_parsing import ConfigError
        from robopolicy.rl.registry import available_methods, describe_method

        names = [namespace.method] if namespace.method else available_methods()
        parser.print_help()
        for name in names:
            try:
                print(f"\nrl fields of --method {name} (--rl.field=default  type: help):\n{describe_method(name)}")
            except ConfigError as e:
                parser.error(str(e))
        parser.exit()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.conflict_handler = "resolve"  # replaces argparse's -h/--help with one listing the method's fields
    p.add_argument_group("help").add_argument("-h", "--help", action=_HelpWithFields, nargs=0,
                   help="show this help and every rl field of --method (put --help last)")
    p.add_argument("--checkpoint", required=True, help="the policy to fine-tune: a checkpoint or a training run dir")
    p.add_argument("--method", required=True, metavar="NAME",
                   help="offline-RL method: pa_rl, co_rft or ptr; bc continues behaviour cloning with the same "
                        "settings (the control of an RL fine-tune, or BC on new data)")
    p.add_argument("--dataset", required=True, metavar="URI",
                   help="dataset with rewards (a reward column such as next.reward, or relabel with "
                        "--rl.reward=episode_success / pusht_coverage): zarr, LeRobot dir or hf://")
    p.add_argument("--config", help="YAML preset with rl/optim/train sections (e.g. configs/pa_rl_pusht.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from <train.output_dir>/checkpoints/last")
    online = p.add_argument_group("online phase (pa_rl, after the offline updates; robopolicy.rl.online)")
    online.add_argument("--online-env", metavar="SPEC", help="act in this simulation (e.g. pusht) with the optimised "
                        "policy, append the episodes, fine-tune on offline and online data 50/50")
    online.add_argument("--online-rounds", type=int, default=2, help="act/fine-tune rounds (default: %(default)s)")
    online.add_argument("--online-episodes", type=int, default=20, help="episodes per round (default: %(default)s)")
    online.add_argument("--online-steps", type=int, default=500, help="updates per round (default: %(default)s)")
    online.add_argument("--online-fraction", type=float, default=0.5,
                        help="share of online windows in a batch (default: %(default)s)")
    online.add_argument("--online-n-envs", type=int, default=1, help="parallel simulations while acting")
    online.add_argument("--online-actor", metavar="{guided,policy}", default="guided",
                        help="who acts: 'guided', PA-RL's optimised actions (as published), or 'policy', the head "
                        "itself as deployed; the rounds go to <output_dir>/online (guided) or online_policy "
                        "(default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="--section.field=value",
                   help="e.g. --rl.gamma=0.99 --rl.critic.ensemble_size=10 --train.steps=5000 --optim.lr=5e-5")
    p.epilog = ("Fields: rl (the method's, e.g. gamma, reward, critic.*, optimization.*, cql_alpha), optim (the "
                "policy's learning rate; PA-RL distils with 5e-5), train (steps, batch_size, output_dir, ...), "
                "data (episodes). The policy section comes from the checkpoint. Default output: "
                "outputs/finetune/<method>.")


def policy_section(config: PolicyConfig) -> dict:
    """The checkpoint's head as a `policy` config section: its type and every field the dataset does not fix."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.init and f.name not in DATASET_FIELDS}
    return {"type": config.name, **json.loads(json.dumps(_plain(fields)))}


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    from robopolicy.config_parsing import ConfigError
    from robopolicy.policies.policy import load_policy, resolve_checkpoint
    from robopolicy.rl.online import OnlineConfig, online_phase, phase_dir
    from robopolicy.rl.registry import build_rule
    from robopolicy.train.config import load_config
    from robopolicy.train.trainer import train

    if fixed := [o for o in args.overrides if o.startswith("--policy.")]:
        raise ConfigError(f"{fixed[0].split('=')[0]}: the policy's architecture and sampler come from the "
                          f"checkpoint {args.checkpoint}; fine-tuning cannot change them (set them when training; eval "
                          f"takes --n-action-steps)")
    checkpoint = resolve_checkpoint(args.checkpoint)
    policy = load_policy(checkpoint)
    pcfg = policy.config
    base = {
        "policy": policy_section(pcfg),
        "data": {"uri": args.dataset, "input_keys": list(pcfg.input_features), "action_key": pcfg.action_key},
        **FINETUNE_DEFAULTS,
        "train": {**FINETUNE_DEFAULTS["train"], "output_dir": f"outputs/finetune/{args.method}"},
        "rl": {"method": args.method},
    }
    overrides = [*args.overrides, f"--rl.method={args.method}", f"--data.uri={args.dataset}"]
    cfg = load_config(args.config, overrides, base=base)
    run_dir = Path(cfg.train.output_dir)
    if args.online_env and args.method != "pa_rl":
        raise ConfigError(f"--online-env: the online phase is PA-RL's (acting with its optimised actions), not "
                          f"{args.method}'s")
    if args.online_env:  # checked before the offline phase spends its time
        try:
            online = OnlineConfig(env=args.online_env, rounds=args.online_rounds, episodes=args.online_episodes,
                                  steps=args.online_steps, online_fraction=args.online_fraction,
                                  n_envs=args.online_n_envs, actor=args.online_actor)
        except ValueError as e:
            raise ConfigError(f"--online-*: {e}") from e
    ckpt = train(cfg, rule=build_rule(cfg.rl), policy=policy, resume=args.resume)
    (run_dir / "finetune.json").write_text(json.dumps({"checkpoint": str(checkpoint.resolve()),
                                                       "method": args.method, "dataset": args.dataset}, indent=2))
    print(f"checkpoint: {ckpt}")
    if args.online_env:
        last = online_phase(run_dir, args.dataset, run_dir / phase_dir(online.actor), online, args.overrides)
        print(f"online phase: {online.rounds} rounds of {online.episodes} episodes; checkpoint: {last}")
    return 0
