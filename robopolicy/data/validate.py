"""Dataset validation: every problem of a dataset on disk, reported, never raised.

Order: first the metadata files, without opening the dataset (robopolicy.data.metadata_checks: JSON types
and required keys of info.json / stats.json, every parquet and zarr metadata file readable, and the
metadata that lies: fps, dtypes against the parquet's arrow types, task_index range, video from/to
timestamps). When that finds a structural problem, validation stops there: opening would fail or serve
wrong values. Otherwise the dataset is opened and the deep checks run, each guarded so that a failure
inside one becomes a Problem:
- zarr_chunks (zarr): every chunk of every array decodes;
- non_finite: NaN / inf in float features, reported per key and episode;
- timestamps: non-monotonic timestamps within an episode, or spacing off 1/fps by more than tolerance_s;
- frame_index: not 0..length-1 within an episode;
- task_index: values outside [0, number of tasks) (formats the metadata checks do not cover);
- stats: state / action features without stored stats, or stats of the wrong shape;
- missing_video / unreadable_video / video_frames (LeRobot): absent or truncated files, video frames that
  do not cover the episode's timestamps within tolerance_s (checked on the packet index, no decoding),
  frame size different from info.json; `decode=True` also decodes each episode's first and last frame.

`validate_dataset(ds_or_path) -> list[Problem]` never raises; `check_dataset(...)` raises
DatasetValidationError listing them all.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from robopolicy.data.dataset import Dataset, open_dataset
from robopolicy.data.errors import DatasetError
from robopolicy.data.lerobot_format import float32_time_slack
from robopolicy.data.metadata_checks import Problem, check_metadata, check_task_index, zarr_chunk_path

_LIST_LIMIT = 10
# Metadata problems after which the dataset is not opened (its reader would fail or serve wrong values).
# The others (stats, task_index, video_timestamps) leave the rest checkable.
_FATAL = {"open", "info", "episodes", "data_file", "columns", "dtype", "tasks", "zarr"}

__all__ = ["DatasetValidationError", "Problem", "check_dataset", "validate_dataset"]


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
    if isinstance(dataset, Dataset):
        root = dataset.root
        problems = _guarded("metadata", root, lambda: check_metadata(root)) if root.is_dir() else []
        return problems + _deep_checks(dataset, problems, videos, decode)
    try:
        root = _local_path(dataset)
    except Exception as e:
        return [Problem("open", _describe(e, dataset))]
    problems = _guarded("metadata", root, lambda: check_metadata(root))
    if any(p.check in _FATAL for p in problems):
        return problems
    try:
        ds = open_dataset(root, **open_kwargs)
    except Exception as e:  # the metadata checks passed; a reader error still names the file
        return [*problems, Problem("open", _describe(e, root))]
    try:
        return problems + _deep_checks(ds, problems, videos, decode)
    finally:
        _guarded("close", root, lambda: ds.close() or [])


def check_dataset(dataset: Dataset | str | Path, **kwargs) -> None:
    """Raise DatasetValidationError if `validate_dataset` finds anything."""
    problems = validate_dataset(dataset, **kwargs)
    if problems:
        where = str(dataset.root) if isinstance(dataset, Dataset) else str(dataset)
        raise DatasetValidationError(where, problems)


# ----- helpers -----------------------------------------------------------------------------------------


def _local_path(uri: str | Path) -> Path:
    from robopolicy.data.dataset import _resolve_hf

    text = str(uri)
    return _resolve_hf(text) if text.startswith("hf://") else Path(text).expanduser()


def _describe(error: Exception, where: object) -> str:
    """A one-line message; errors that do not name the dataset get its path and their type."""
    text = " ".join(str(error).split())
    if isinstance(error, DatasetError) and text:
        return text
    return f"{where}: {type(error).__name__}: {text or 'no message'}"


def _guarded(check: str, where: object, fn: Callable[[], list[Problem]]) -> list[Problem]:
    """fn(), with any exception turned into one Problem of `check`."""
    try:
        return fn()
    except Exception as e:
        return [Problem(check, f"{_describe(e, where)} (while running the {check} check)")]


def _deep_checks(ds: Dataset, found: list[Problem], videos: bool, decode: bool) -> list[Problem]:
    """The checks that need the opened dataset, each guarded."""
    if ds.format == "zarr":
        chunks = _guarded("zarr_chunks", ds.root, lambda: _check_zarr_chunks(ds))
        if chunks:  # every other check would read the same broken chunks
            return chunks
    if ds.num_frames == 0:  # an empty dataset (finalized without episodes): nothing to read
        return []
    checks: list[tuple[str, Callable[[], list[Problem]]]] = [
        ("non_finite", lambda: _check_non_finite(ds)),
        ("timestamps", lambda: _check_timestamps(ds)),
        ("frame_index", lambda: _check_frame_index(ds)),
        ("stats", lambda: _check_stats(ds)),
    ]
    if not any(p.check == "task_index" for p in found):
        checks.append(("task_index", lambda: _check_task_index(ds)))
    if videos and hasattr(ds, "missing_videos"):
        checks.append(("videos", lambda: _check_videos(ds, decode)))
    problems = []
    for name, fn in checks:
        problems += _guarded(name, ds.root, fn)
    return problems


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
                    ds,
                    "non_finite",
                    key,
                    bad,
                    "episode {e}: {n} frames from frame {f}",
                    f"{ds.root}: {key!r} has NaN/inf in {bad.size} frames ({{detail}}); "
                    "drop those episodes or fix the recording",
                )
            )
    return problems


def _check_timestamps(ds: Dataset) -> list[Problem]:
    if "timestamp" not in ds.features or ds.num_frames < 2:
        return []
    stored = _all(ds, "timestamp").reshape(-1)
    ts = stored.astype(np.float64)
    # float32 timestamps (as LeRobot stores them) are only that precise: past 2048 s one ulp exceeds 1e-4 s
    slack = float32_time_slack(ts) if stored.dtype == np.float32 else np.zeros_like(ts)
    diffs = np.diff(ts)
    same = _within_episode(ds)
    problems = []
    back = np.nonzero(same & (diffs <= 0))[0] + 1
    if back.size:
        problems.append(
            _frames_problem(
                ds,
                "timestamps",
                "timestamp",
                back,
                "episode {e} at frame {f}",
                f"{ds.root}: timestamps are not increasing within episodes ({{detail}}); "
                "video frames cannot be located — re-export those episodes",
            )
        )
    if ds.fps:
        tol = getattr(ds, "tolerance_s", 1e-4)
        step_tol = tol + slack[1:] + slack[:-1]
        off = np.nonzero(same & (diffs > 0) & (np.abs(diffs - 1.0 / ds.fps) > step_tol))[0] + 1
        if off.size:
            problems.append(
                _frames_problem(
                    ds,
                    "timestamps",
                    "timestamp",
                    off,
                    "episode {e}: {n} gaps from frame {f}",
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
            ds,
            "frame_index",
            "frame_index",
            bad,
            "episode {e} from frame {f}",
            f"{ds.root}: frame_index is not 0..length-1 ({{detail}}); rows are missing or out of order",
        )
    ]


def _check_zarr_chunks(ds: Dataset) -> list[Problem]:
    """Decode every chunk of every array of a zarr store, one chunk at a time."""
    import zarr

    group = zarr.open_group(str(ds.root), mode="r")
    problems = []
    for name in ("data", "meta"):
        for key in group[name].array_keys():
            arr = group[name][key]
            bad: list[tuple[tuple[int, ...], Exception]] = []
            for coords in itertools.product(*(range(n) for n in arr.cdata_shape)):
                try:
                    arr.blocks[coords]
                except Exception as e:  # numcodecs / blosc raise RuntimeError, ValueError, ...
                    bad.append((coords, e))
            if bad:
                coords, error = bad[0]
                path = zarr_chunk_path(arr, ds.root, coords)
                rows = coords[0] * arr.chunks[0], min((coords[0] + 1) * arr.chunks[0], arr.shape[0])
                problems.append(
                    Problem(
                        "zarr_chunks",
                        f"{path}: chunk of {name}/{key} (rows {rows[0]}..{rows[1] - 1}) cannot be decoded "
                        f"({type(error).__name__}: {' '.join(str(error).split())[:120]}); {len(bad)} of "
                        f"{arr.nchunks} chunks of {name}/{key} are corrupt — restore them from the source",
                        key,
                        file=str(path),
                    )
                )
    return problems


def _check_task_index(ds: Dataset) -> list[Problem]:
    if "task_index" not in ds.features or not ds.tasks or not ds.num_frames:
        return []
    return check_task_index(_all(ds, "task_index").reshape(-1), len(ds.tasks), ds.root)


def _stats_file(ds: Dataset) -> Path:
    for name in ("meta/stats.json", "meta/episodes_stats.jsonl"):
        if (ds.root / name).is_file():
            return ds.root / name
    return ds.root


def _check_stats(ds: Dataset) -> list[Problem]:
    stats = ds.stats
    if stats is None:
        return []
    where = _stats_file(ds)
    problems = []
    for key, feat in ds.features.items():
        if feat.kind not in ("state", "action") or not feat.is_numeric:
            continue
        if key not in stats or "mean" not in stats[key]:
            msg = f"{where}: no stats for {key!r}; recompute the dataset stats"
            problems.append(Problem("stats", msg, key, file=str(where)))
            continue
        shape = np.shape(stats[key]["mean"])
        if shape != feat.shape:
            msg = (f"{where}: {key!r} stat 'mean' has shape {list(shape)}, the feature {list(feat.shape)}; "
                   "recompute the dataset stats")  # fmt: skip
            problems.append(Problem("stats", msg, key, file=str(where)))
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
                        f"{path}: frames are {video.width}x{video.height}, meta/info.json declares {key!r} as {w}x{h}",
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
