"""`robopolicy validate URI`: every problem found in a dataset, one per line (exit 1 if any)."""

from __future__ import annotations

import argparse
from pathlib import Path

from robopolicy.data.errors import DatasetError
from robopolicy.data.validate import validate_dataset

EPILOG = (
    "exit status: 0 no problems; 1 problems found (also for a dataset too damaged to open: each damaged "
    "file is named); 2 no such path, or bad arguments."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("uri", help="local zarr store, local LeRobot v3.0/v2.1 directory, or hf://<repo_id>[@rev]")
    p.add_argument("--no-videos", action="store_true", help="skip the video-file checks")
    p.add_argument("--decode", action="store_true", help="also decode the first and last frame of every episode")


def run(args: argparse.Namespace) -> int:
    if not str(args.uri).startswith("hf://") and not Path(args.uri).expanduser().exists():
        raise DatasetError(f"{args.uri}: no such dataset (expected a zarr store or a LeRobot directory)")
    problems = validate_dataset(args.uri, videos=not args.no_videos, decode=args.decode)
    for p in problems:
        print(f"[{p.check}] {p.message}")
    print(f"{args.uri}: {len(problems)} problem(s)" if problems else f"{args.uri}: no problems found")
    return 1 if problems else 0
