"""`robopolicy stats URI`: streaming normalization stats (min/max/mean/std/count/quantiles) of a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from robopolicy.cli.arguments import int_at_least
from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError
from robopolicy.data.stats import compute_stats, stats_to_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="local zarr store, LeRobot directory or hf://<repo_id>")
    p.add_argument("--keys", nargs="+", default=None, help="features to compute (default: numeric and visual)")
    p.add_argument("--out", type=Path, default=None, help="write LeRobot-style stats.json here")
    p.add_argument("--bins", type=int_at_least(2), default=5000, help="histogram bins per dimension for quantiles")


def run(args: argparse.Namespace) -> int:
    with open_dataset(args.uri) as ds:
        if ds.num_frames == 0:
            raise DatasetError(f"{args.uri}: the dataset has {ds.num_episodes} episodes and no frames, nothing to "
                               "compute stats of; record or collect episodes into it first")
        unknown = [k for k in args.keys or () if k not in ds.features]
        if unknown:
            raise DatasetError(f"--keys: {unknown} not features of {args.uri}; it has {sorted(ds.features)}")
        stats = compute_stats(ds, args.keys, bins=args.bins)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(stats_to_json(stats), indent=4))
        print(f"wrote {args.out}")
    with np.printoptions(precision=4, suppress=True, linewidth=110, threshold=12):
        for key, kv in stats.items():
            print(f"{key}  (count {int(kv['count'][0])})")
            for name in ("min", "max", "mean", "std", "q01", "q50", "q99"):
                print(f"  {name:<4} {np.asarray(kv[name]).reshape(-1)}")
    return 0
