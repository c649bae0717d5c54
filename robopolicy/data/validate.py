"""Deep dataset checks that are too slow to run on every open.

Opening a dataset already checks the metadata and the row layout (see lerobot_format.py). Here:
- non_finite: NaN / inf in float features, reported per key and episode;
- timestamps: non-monotonic timestamps within an episode, or spacing off 1/fps by more than tolerance_s;
- frame_index: not 0..length-1 within an episode;
- stats: state / action features without stored stats, or stats of the wrong shape;
- missing_video / unreadable_video / video_frames (LeRobot): absent or truncated files, video frames that
  do not cover the episode's timestamps within tolerance_s (checked on the packet index, no decoding),
  frame size different from info.json; `decode=True` also decodes each episode's first and last frame.

`validate_dataset(ds_or_path) -> list[Problem]` never raises for a broken dataset (a dataset that cannot be
opened gives one "open" problem); `check_dataset(...)` raises DatasetValidationError listing them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robopolicy.data.dataset import Dataset, open_dataset
from robopolicy.data.errors import DatasetError

_LIST_LIMIT = 10


@dataclass(frozen=True)
class Problem:
    """One finding: `check` names the rule, `key` / `episodes` (episode indices) what it concerns."""

    check: str
    message: str
    key: str | None = None
    episodes: tuple[int, ...] = ()

    def __str__(self) -> str:
        return self.message


class DatasetValidationError(DatasetError):
    """`check_dataset` found problems; `.problems` holds them."""

    def __init__(self, where: str, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - [{p.check}] {p.message}" for p in problems)
        super().__init__(f"{where}: {len(problems)} problem(s) found:\n{lines}")


def validate_dataset(
    dataset: Dataset | str | Path, *, videos: bool = True, decode: bool = False, **open_kwargs
) -> list[Problem]:
    """All problems found in `dataset` (an open Dataset, or a path / uri opened with `open_kwargs`)."""
    if not isinstance(dataset, Dataset):
        try:
            dataset = open_dataset(dataset, **open_kwargs)
        except DatasetError as e:
            return [Problem("open", str(e))]
    ds = dataset
    problems: list[Problem] = []
    problems += _check_non_finite(ds)
    problems += _check_timestamps(ds)
    problems += _check_frame_index(ds)
    problems += _check_stats(ds)
    if videos and hasattr(ds, "missing_videos"):
        problems += _check_videos(ds, decode)
    return problems


def check_dataset(dataset: Dataset | str | Path, **kwargs) -> None:
    """Raise DatasetValidationError if `validate_dataset` finds anything."""
    problems = validate_dataset(dataset, **kwargs)
    if problems:
        where = str(dataset.root) if isinstance(dataset, Dataset) else str(dataset)
        raise DatasetValidationError(where, problems)


# ----- helpers -----------------------------------------------------------------------------------------


def _all(ds: Dataset, key: str) -> np.ndarray:
    return ds.read(key, np.arange(ds.num_frames))


def _episode_list(items: list[str]) -> str:
    more = f", ... ({len(items)} episodes)" if len(items) > _LIST_LIMIT else ""
    return ", ".join(items[:_LIST_LIMIT]) + more


def _within_episode(ds: Dataset) -> np.ndarray:
    """Bool (N-1,): True where frames i and i+1 belong to the same episode."""
    same = np.ones(max(ds.num_frames - 1, 0), dtype=bool)
    ends = ds.episode_ends[:-1]
    same[ends[(ends > 0) & (ends < ds.num_frames)] - 1] = False
    return same


def _group_by_episode(ds: Dataset, frames: np.ndarray) -> list[tuple[int, int, int]]:
    """Bad global `frames` -> [(episode index, count, first frame_index in episode)]."""
    pos = ds.episode_of(frames)
    out = []
    for p in np.unique(pos):
        sel = frames[pos == p]
        ep = ds.episodes[int(p)]
        out.append((ep.index, len(sel), int(sel.min() - ep.start)))
    return out


def _frames_problem(ds: Dataset, check: str, key: str, frames: np.ndarray, item: str, message: str) -> Problem:
    """One Problem for bad global `frames`: `item` formats each episode's group ({e} episode, {n} frames,
    {f} first frame in it) and the joined list replaces "{detail}" in `message`."""
    groups = _group_by_episode(ds, frames)
    detail = _episode_list([item.format(e=e, n=n, f=f) for e, n, f in groups])
    # replace, not format: paths and keys in `message` may contain braces
    return Problem(check, message.replace("{detail}", detail), key, tuple(e for e, _, _ in groups))


# ----- checks ------------------------------------------------------------------------------------------


def _check_non_finite(ds: Dataset) -> list[Problem]:
    problems = []
    for key, feat in ds.features.items():
        if not feat.is_numeric or not np.issubdtype(np.dtype(feat.dtype), np.floating):
            continue
        values = _all(ds, key).reshape(ds.num_frames, -1)
        bad = np.nonzero(~np.isfinite(values).all(axis=1))[0]
        if bad.size:
            problems.append(
                _frames_problem(
                    ds, "non_finite", key, bad, "episode {e}: {n} frames from frame {f}",
                    f"{ds.root}: {key!r} has NaN/inf in {bad.size} frames ({{detail}}); "
                    "drop those episodes or fix the recording",
                )
            )
    return problems


def _check_timestamps(ds: Dataset) -> list[Problem]:
    if "timestamp" not in ds.features or ds.num_frames < 2:
        return []
    ts = _all(ds, "timestamp").reshape(-1).astype(np.float64)
    diffs = np.diff(ts)
    same = _within_episode(ds)
    problems = []
    back = np.nonzero(same & (diffs <= 0))[0] + 1
    if back.size:
        problems.append(
            _frames_problem(
                ds, "timestamps", "timestamp", back, "episode {e} at frame {f}",
                f"{ds.root}: timestamps are not increasing within episodes ({{detail}}); "
                "video frames cannot be located — re-export those episodes",
            )
        )
    if ds.fps:
        tol = getattr(ds, "tolerance_s", 1e-4)
        off = np.nonzero(same & (diffs > 0) & (np.abs(diffs - 1.0 / ds.fps) > tol))[0] + 1
        if off.size:
            problems.append(
                _frames_problem(
                    ds, "timestamps", "timestamp", off, "episode {e}: {n} gaps from frame {f}",
                    f"{ds.root}: timestamp steps differ from 1/fps={1 / ds.fps:.6g} s by more than "
                    f"tolerance_s={tol} ({{detail}}); frames were dropped or the fps is wrong",
                )
            )
    return problems


def _check_frame_index(ds: Dataset) -> list[Problem]:
    if "frame_index" not in ds.features:
        return []
    fi = _all(ds, "frame_index").reshape(-1).astype(np.int64)
    expected = np.arange(ds.num_frames) - np.repeat([ep.start for ep in ds.episodes], [ep.length for ep in ds.episodes])
    bad = np.nonzero(fi != expected)[0]
    if not bad.size:
        return []
    return [
        _frames_problem(
            ds, "frame_index", "frame_index", bad, "episode {e} from frame {f}",
            f"{ds.root}: frame_index is not 0..length-1 ({{detail}}); rows are missing or out of order",
        )
    ]


def _check_stats(ds: Dataset) -> list[Problem]:
    stats = ds.stats
    if stats is None:
        return []
    problems = []
    for key, feat in ds.features.items():
        if feat.kind not in ("state", "action") or not feat.is_numeric:
            continue
        if key not in stats or "mean" not in stats[key]:
            problems.append(Problem("stats", f"{ds.root}: no stats for {key!r}; recompute the dataset stats", key))
            continue
        shape = np.shape(stats[key]["mean"])
        if shape != feat.shape:
            problems.append(
                Problem(
                    "stats",
                    f"{ds.root}: stats of {key!r} have shape {list(shape)}, the feature {list(feat.shape)}; "
                    "recompute the dataset stats",
                    key,
                )
            )
    return problems


def _check_videos(ds, decode: bool) -> list[Problem]:
    problems = []
    for key, eps in ds.missing_videos().items():
        files = sorted({str(ds.video_path(key, p)) for p, e in enumerate(ds.episodes) if e.index in set(eps)})
        problems.append(
            Problem(
                "missing_video",
                f"{ds.root}: {key!r} video files are missing for {len(eps)} episodes "
                f"({_episode_list([str(e) for e in eps])}); e.g. {files[0]}. Their frames cannot be read",
                key,
                tuple(eps),
            )
        )
    missing = {k: set(v) for k, v in ds.missing_videos().items()}
    for key in ds.video_keys:
        h, w, _ = ds.feature(key).shape
        by_file: dict[Path, list[int]] = {}
        for pos, ep in enumerate(ds.episodes):
            if ep.index not in missing.get(key, ()):
                by_file.setdefault(ds.video_path(key, pos), []).append(pos)
        for path, positions in by_file.items():
            eps = tuple(ds.episodes[p].index for p in positions)
            try:
                video = ds.open_video(key, positions[0])
            except DatasetError as e:
                problems.append(Problem("unreadable_video", str(e), key, eps))
                continue
            if (video.height, video.width) != (h, w):
                problems.append(
                    Problem(
                        "video_frames",
                        f"{path}: frames are {video.width}x{video.height}, meta/info.json declares {key!r} "
                        f"as {w}x{h}",
                        key,
                        eps,
                    )
                )
            for pos in positions:
                problems += _check_coverage(ds, key, pos, video)
                if decode:
                    ep = ds.episodes[pos]
                    try:
                        ds._read_visual(key, np.array([ep.start, ep.stop - 1]))
                    except DatasetError as e:
                        problems.append(Problem("video_frames", str(e), key, (ep.index,)))
    return problems


def _check_coverage(ds, key: str, pos: int, video) -> list[Problem]:
    ep = ds.episodes[pos]
    seg = ds.video_segment(key, pos)
    rel = ds.timestamps(np.arange(ep.start, ep.stop))
    _, err = video.nearest(seg.from_timestamp + rel)
    bad = np.nonzero(err > ds.tolerance_s)[0]
    if not bad.size:
        return []
    first = int(bad[0])
    return [
        Problem(
            "video_frames",
            f"{seg.path}: episode {ep.index}, key {key!r}: {bad.size} of {ep.length} frames have no video frame "
            f"within tolerance_s={ds.tolerance_s} (first at timestamp {rel[first]:.6f} s, off by "
            f"{err[first]:.6f} s; the file ends at {video.times[-1]:.6f} s)",
            key,
            (ep.index,),
        )
    ]
