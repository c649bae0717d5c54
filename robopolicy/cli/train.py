"""`robopolicy train --config PRESET.yaml [--section.field=value ...] [--resume]`."""

from __future__ import annotations

import argparse

from robopolicy.train.config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML preset (e.g. configs/diffusion_pusht_state.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from <train.output_dir>/checkpoints/last")
    p.add_argument(
        "overrides", nargs="*", metavar="--section.field=value",
        help="override any config field, e.g. --train.steps=2000 --policy.horizon=16 --data.uri=path",
    )
    p.epilog = "Sections: policy (type + head fields), data, optim, train, eval. Values are parsed as YAML."


def run(args: argparse.Namespace) -> int:
    from robopolicy.train.trainer import train

    cfg = load_config(args.config, args.overrides)
    if not cfg.data.uri:
        raise SystemExit("robopolicy train: set data.uri in the preset or with --data.uri=PATH")
    callbacks = []
    if cfg.train.eval_every and cfg.eval.env:
        from robopolicy.train.sim_eval import sim_eval_callback

        callbacks.append(sim_eval_callback(cfg.eval, cfg.train.eval_every))
    ckpt = train(cfg, resume=args.resume, callbacks=callbacks)
    print(f"checkpoint: {ckpt}")
    return 0
