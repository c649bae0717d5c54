"""`robopolicy edit`: delete episodes, split, merge, remove / rename features and re-encode video (LeRobot v3 and
zarr), as lerobot-edit-dataset does; each writes a new dataset and leaves its sources untouched."""

from __future__ import annotations

import argparse
import sys

EPILOG = (
    "Examples: robopolicy edit delete data/pusht data/pusht_clean --episodes 3,17  |  robopolicy edit split "
    "data/pusht --out data/splits --splits train=0.8,val=0.2  (or 'train=0-159;val=160-205')  |  robopolicy edit merge "
    "data/a data/b --out data/ab  |  robopolicy edit features data/pusht data/small --remove observation.images.wrist "
    "--rename action=action.joints  |  robopolicy edit reencode data/pusht data/h264 --vcodec libx264 --crf 23 "
    "--resize 96x96. The output keeps the source's format; it is written beside DST and appears only when complete; "
    "--overwrite replaces only a dataset robopolicy wrote. Numeric features are copied exactly; so is LeRobot video in "
    "delete / split / merge / features (each episode's packets are copied, not re-encoded; an episode whose packets "
    "cannot be, e.g. not starting at a keyframe, is re-encoded and named), unless --reencode-video; reencode and "
    "merge --vcodec/--crf/--resize re-encode."
)


def _episodes(text: str) -> list[int]:
    """'3,17,20-25' -> [3, 17, 20, ..., 25]."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: episode numbers and ranges, e.g. 3,17,20-25") from None
    return out


def _splits(text: str) -> dict[str, float | list[int]]:
    """'train=0.8,val=0.2' -> fractions; 'train=0-159;val=160-205' (';' between splits) -> episode lists."""
    sep = ";" if ";" in text else ","
    out: dict[str, float | list[int]] = {}
    for item in filter(None, text.split(sep)):
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise argparse.ArgumentTypeError(f"{item!r}: write NAME=FRACTION or NAME=EPISODES, e.g. train=0.8")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            out[name.strip()] = _episodes(value.replace(" ", ","))
    return out


def _size(text: str) -> tuple[int, int]:
    """'96x128' (width x height, as ffmpeg writes it) -> (height, width)."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write WIDTHxHEIGHT, e.g. 96x96") from None
    return h, w


def _video_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vcodec", default=None, help="LeRobot video encoder, e.g. libsvtav1, libx264 (default: the "
                   "source's codec)")
    p.add_argument("--crf", type=int, default=None, help="video quality, lower is better (default: the encoder's)")
    p.add_argument("--resize", type=_size, default=None, metavar="WxH", help="resize every camera frame, e.g. 96x96")


def _common(p: argparse.ArgumentParser, *, dst: bool = True) -> None:
    if dst:
        p.add_argument("dst", help="the new dataset (absent or empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset robopolicy wrote")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    sub = p.add_subparsers(dest="operation", metavar="OPERATION", required=True)
    d = sub.add_parser("delete", help="a copy without some episodes")
    d.add_argument("src", help="dataset: zarr store, LeRobot v3 directory or hf://<repo_id>")
    _common(d)
    d.add_argument("--episodes", required=True, type=_episodes, help="episodes to delete, e.g. 3,17,20-25")
    s = sub.add_parser("split", help="one dataset per split, OUT/<name>")
    s.add_argument("src", help="dataset to split")
    s.add_argument("--out", required=True, help="directory for the splits")
    s.add_argument("--splits", required=True, type=_splits,
                   help="fractions in episode order (train=0.8,val=0.2) or episode lists (train=0-159;val=160-205)")
    _common(s, dst=False)
    m = sub.add_parser("merge", help="one dataset with every episode of the sources (fps, features, codecs equal)")
    m.add_argument("srcs", nargs="+", help="datasets to merge, in order")
    m.add_argument("--out", required=True, help="the merged dataset")
    _common(m, dst=False)
    _video_arguments(m)
    f = sub.add_parser("features", help="a copy with features removed or renamed")
    f.add_argument("src", help="dataset")
    _common(f)
    f.add_argument("--remove", action="append", default=[], metavar="KEY", help="feature to drop (repeatable)")
    f.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename a feature (repeatable)")
    r = sub.add_parser("reencode", help="a copy with its video re-encoded (codec, quality, resolution)")
    r.add_argument("src", help="dataset")
    _common(r)
    _video_arguments(r)
    for q in (d, s, m, f):
        q.add_argument("--reencode-video", action="store_true",
                       help="decode and re-encode LeRobot video (lossy) instead of copying each episode's packets")
    for q in (d, s, m, f, r):
        q.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from robopolicy.data import edit
    from robopolicy.data.convert import parse_renames
    from robopolicy.data.dataset import open_dataset

    srcs = args.srcs if args.operation == "merge" else [args.src]
    args.reencode_video = getattr(args, "reencode_video", False)  # reencode re-encodes anyway
    total = 0
    for src in srcs:
        with open_dataset(src) as ds:
            total += ds.num_frames
    video = None
    if getattr(args, "vcodec", None) or getattr(args, "crf", None) is not None or getattr(args, "resize", None):
        try:
            video = edit.VideoEdit(vcodec=args.vcodec, crf=args.crf, size=args.resize)
        except ValueError as e:
            raise edit.DatasetError(f"robopolicy edit: {e}") from None
    with tqdm(total=total, unit="frame", desc=f"edit {args.operation}", delay=1.0, disable=args.no_progress) as bar:
        common = {"overwrite": args.overwrite, "progress": bar.update, "reencode_video": args.reencode_video,
                  "log": lambda message: tqdm.write(f"robopolicy edit: {message}", file=sys.stderr)}
        if args.operation == "delete":
            outs = [edit.delete_episodes(args.src, args.dst, args.episodes, **common)]
        elif args.operation == "split":
            outs = list(edit.split(args.src, args.splits, args.out, **common).values())
        elif args.operation == "merge":
            outs = [edit.merge(args.srcs, args.out, video=video, **common)]
        elif args.operation == "features":
            if not args.remove and not args.rename:
                raise edit.DatasetError("robopolicy edit features: give --remove KEY and/or --rename OLD=NEW")
            try:
                rename = parse_renames(args.rename)
            except ValueError as e:
                raise edit.DatasetError(str(e)) from None
            outs = [edit.edit(args.src, args.dst, remove=args.remove, rename=rename, **common)]
        else:
            if video is None:
                raise edit.DatasetError("robopolicy edit reencode: give --vcodec, --crf and/or --resize")
            outs = [edit.edit(args.src, args.dst, video=video, **common)]
    for out in outs:
        with open_dataset(out) as ds:
            print(f"wrote {out}: {ds.num_episodes} episodes, {ds.num_frames} frames, {len(ds.tasks)} task(s)")
    return 0

