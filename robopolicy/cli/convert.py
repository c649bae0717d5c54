"""`robopolicy convert SRC DST --to lerobot|zarr`: convert a dataset, episode by episode, with a progress bar."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from robopolicy.data.convert import FORMATS, NothingToConvertError, convert, parse_renames
from robopolicy.data.dataset import open_dataset

EPILOG = (
    "DST is written in a staging directory beside it (.<DST>.partial-<pid>) and appears only when complete; "
    "an interrupted convert's staging directory is removed by the next convert to the same DST. DST may not "
    "be SRC, lie inside it or contain it. --overwrite replaces only a dataset robopolicy wrote, and the old "
    "one is deleted only after the new one is in place. "
    "Exit status: 0 written; 1 nothing to convert (the source has no episodes; nothing is created); "
    "2 refused or failed (the message says why; the source and any old DST are untouched)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("src", help="source dataset: zarr store, LeRobot directory or hf://<repo_id>")
    p.add_argument("dst", help="destination directory (must be empty or absent unless --overwrite)")
    p.add_argument("--to", required=True, choices=FORMATS, help="target format")
    p.add_argument("--fps", type=float, default=None, help="frame rate; required when the source has none")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset robopolicy wrote at DST")
    p.add_argument(
        "--lossless", action="store_true", help="LeRobot target: store images as PNG in the parquet, not video"
    )
    p.add_argument(
        "--rename", action="append", metavar="SRC=DST", help="rename a feature (repeatable), e.g. img=observation.image"
    )
    p.add_argument("--task", default=None, help="task string for episodes the source gives none")
    p.add_argument("--vcodec", default="auto", help="LeRobot video encoder (auto: libsvtav1, else libx264)")


def run(args: argparse.Namespace) -> int:
    key_map = parse_renames(args.rename)
    with open_dataset(args.src) as ds:
        total = ds.num_frames
    options = {"vcodec": args.vcodec} if args.to == "lerobot" else {}
    # delay: a refusal (DST around SRC, an existing DST) is one line, not a bar at 0% and then the line
    with tqdm(total=total, unit="frame", desc=f"convert -> {args.to}", delay=1.0) as bar:
        try:
            dst = convert(
                args.src,
                args.dst,
                to=args.to,
                fps=args.fps,
                overwrite=args.overwrite,
                lossless=args.lossless,
                key_map=key_map,
                task=args.task,
                progress=bar.update,
                log=lambda message: tqdm.write(f"robopolicy convert: {message}", file=sys.stderr),
                **options,
            )
        except NothingToConvertError as e:
            print(f"robopolicy convert: {e}", file=sys.stderr)
            return 1
    print(f"wrote {dst}")
    return 0
