"""Reader for LeRobot v3.0 datasets, and the machinery the v2.1 reader shares.

v3.0 layout (docs/lerobot.md): meta/info.json, meta/stats.json, meta/tasks.parquet,
meta/episodes/chunk-*/file-*.parquet (one row per episode), data/chunk-*/file-*.parquet (one row per
frame, several episodes per file), videos/<key>/chunk-*/file-*.mp4 (several episodes per file).

Global frame order: episodes sorted by episode_index, each a contiguous range. The episodes metadata's
`dataset_from_index` / `dataset_to_index` are values of the global `index` column (end exclusive), i.e. row
positions in the concatenation of all data files — not row offsets inside the episode's own file:
lerobot_v3_open50 stores one episode per data file and its episode 1 (file-001, row 0) has
dataset_from_index 427. Rows are therefore located by their `index` values.

What is checked when a dataset is opened (cheap, metadata and bookkeeping columns only; the single checks
are robopolicy.data.metadata_checks', shared with `validate`): info.json (fps a positive number, totals,
path templates, feature specs), stats.json, the episodes metadata (episode_index, chunk and file indices,
lengths, index ranges), tasks, that every data file exists and its columns have the arrow types info.json
declares (int8 declared for float32 data is refused, not wrapped), that task_index values name a task, that
the rows agree with the episodes metadata (row counts, index ranges, episode_index), and that every video
span (from/to_timestamp) matches the episode's length and fps and no two spans of a file overlap.

info.json is the commit point of a writer: what lies beyond its totals (episode rows with episode_index >=
total_episodes, tasks with task_index >= total_tasks, data rows outside the committed episodes, video past
an episode's span), left by an interrupted save, is ignored. Fewer episodes or frames than the totals say
is an error.

Timestamps are float32 on disk (as LeRobot writes them): past 2048 s their spacing exceeds the default
tolerance. A stored timestamp that is frame_index / fps up to float32 precision is taken as that exact
float64 value (`exact_timestamps`); `float32_time_slack` gives the precision a float32 time has, for
checks that compare stored timestamps themselves.

Missing video files are recorded, not fatal: tabular features still load, `missing_videos()` lists the
affected episodes, and asking for their frames raises MissingVideoError. Deeper checks (NaN/inf, timestamp
spacing, video readability and coverage) are in `robopolicy.data.validate`.

Streaming (`storage` a robopolicy.data.storage.FsspecStorage, e.g. a hub dataset read through HfFileSystem):
the same reader over files read on demand. Opening reads the metadata files (info.json, stats.json,
tasks.parquet, the episodes parquet) and the file list; an episode's rows are located (the bookkeeping
columns of the row groups whose `index` statistics overlap its range, read and checked as above) when a
frame of it is first read, and numeric features are read by
parquet row group (those holding the frames asked for) instead of whole columns, into a RAM LRU of file
columns; videos read their headers and then the byte ranges of the frames asked for (robopolicy.data.video).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from robopolicy.data.dataset import Dataset, Episode
from robopolicy.data.errors import DatasetError, FrameToleranceError, MissingVideoError
from robopolicy.data.features import SUCCESS_COLUMN, Feature, infer_kind
from robopolicy.data.metadata_checks import (
    VideoSpan,
    check_column_types,
    check_info,
    check_stats_json,
    check_task_index,
    check_video_spans,
    load_json,
    raise_problems,
)
from robopolicy.data.storage import LOCAL, Storage
from robopolicy.data.video import DecoderConfig, VideoFile, decode_png

DEFAULT_TOLERANCE_S = 1e-4

# Decoders a forked worker inherited from its parent; never freed in the child (see LeRobotReader._video).
_INHERITED_FROM_PARENT: list = []


@dataclass(frozen=True)
class VideoSegment:
    """Where one episode of one camera lives: `path`, starting `from_timestamp` seconds into the file."""

    path: PurePath
    from_timestamp: float = 0.0
    to_timestamp: float | None = None


@dataclass(frozen=True)
class EpisodeSource:
    """Where one episode lives on disk.

    index_range: global `index` values [from, to) of its rows (v3.0), or None to take every row of
      `data_file` whose episode_index equals `index` (v2.1, one file per episode).
    """

    index: int
    length: int
    tasks: tuple[str, ...]
    data_file: PurePath
    index_range: tuple[int, int] | None
    videos: Mapping[str, VideoSegment] = field(default_factory=dict)
    meta_file: PurePath | None = None  # the metadata file that lists the episode


def float32_time_slack(t: np.ndarray | float) -> np.ndarray:
    """How far a time stored as float32 may be from the value meant: one float32 ulp at |t| (storing rounds
    by at most half of one; a whole one also covers times computed in float32). 1.2e-4 s past 1024 s,
    2.4e-4 s past 2048 s, 4.9e-4 s past 4096 s: add it to a tolerance that compares stored timestamps."""
    return np.spacing(np.abs(np.asarray(t, dtype=np.float32))).astype(np.float64)


def exact_timestamps(stored: np.ndarray, frame_index: np.ndarray, fps: float) -> np.ndarray:
    """float64 times: frame_index / fps where the stored (float32) timestamp is that value up to float32
    precision, else the stored value (a timestamp that really is off stays off)."""
    stored = np.asarray(stored, dtype=np.float64)
    exact = np.asarray(frame_index, dtype=np.float64) / float(fps)
    return np.where(np.abs(stored - exact) <= float32_time_slack(exact), exact, stored)


# ----- small readers shared by v3.0 and v2.1 --------------------------------------------------------


def read_json(path: PurePath, storage: Storage = LOCAL) -> Any:
    """A JSON metadata file, or a DatasetError naming it (missing, unreadable, not UTF-8, not JSON)."""
    doc, problems = load_json(path, "json", storage)
    raise_problems(problems)
    return doc


def _read_table(path: PurePath, storage: Storage = LOCAL, **kwargs) -> pa.Table:
    """pq.read_table, with a truncated or corrupt file reported as a DatasetError naming it."""
    return _parquet(lambda: pq.read_table(storage.parquet_source(path), **kwargs), path)


def _read_schema(path: PurePath, storage: Storage = LOCAL) -> pa.Schema:
    return _parquet(lambda: pq.read_schema(storage.parquet_source(path)), path)


def _parquet(read, path: PurePath):
    try:
        return read()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DatasetError(
            f"{path}: not a readable parquet file ({type(e).__name__}: {e}); it is truncated or corrupt — "
            "restore it from the dataset's source"
        ) from e


def parse_features(raw: Mapping[str, Any], where: Path) -> dict[str, Feature]:
    """info.json `features` -> {name: Feature}."""
    if not isinstance(raw, Mapping) or not raw:
        raise DatasetError(f"{where}: `features` is missing or empty")
    out = {}
    for name, spec in raw.items():
        try:
            dtype, shape = str(spec["dtype"]), tuple(int(s) for s in spec["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{where}: feature {name!r} needs `dtype` and an integer `shape` ({e})") from e
        if dtype in ("video", "image") and len(shape) != 3:
            raise DatasetError(f"{where}: visual feature {name!r} must have shape [H, W, C], got {list(shape)}")
        if dtype in ("video", "image") and spec.get("names") and list(spec["names"])[:1] == ["channels"]:
            shape = (shape[1], shape[2], shape[0])  # some old datasets declare [C, H, W]
        kind = infer_kind(name, dtype, shape)
        out[name] = Feature(name, dtype, shape, kind, names=spec.get("names"), info=dict(spec.get("info") or {}))
    return out


def load_stats(path: PurePath, storage: Storage = LOCAL) -> dict[str, dict[str, np.ndarray]] | None:
    """meta/stats.json -> {feature: {stat: array}}; None when the file is absent."""
    if not storage.is_file(path):
        return None
    raw = read_json(path, storage)
    raise_problems(check_stats_json(raw, path))
    return {key: {stat: np.asarray(v) for stat, v in stats.items()} for key, stats in raw.items()}


def arrow_to_numpy(array: pa.Array | pa.ChunkedArray, feature: Feature, where: str) -> np.ndarray:
    """A parquet column -> numpy (N, *feature.shape) in the feature's dtype.

    Handles scalar columns, fixed_size_list and (large_)list columns, nested for 2-D+ features.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    n = len(array)
    if feature.dtype in ("string", "language") or not (
        pa.types.is_integer(_leaf_type(array.type))
        or pa.types.is_floating(_leaf_type(array.type))
        or pa.types.is_boolean(_leaf_type(array.type))
    ):
        return np.array(array.to_pylist(), dtype=object)
    values, level = array, 0
    while (
        pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type)
    ):
        if values.null_count:
            raise DatasetError(f"{where}: {values.null_count} null rows in {feature.name!r}")
        if not pa.types.is_fixed_size_list(values.type) and level < len(feature.shape):
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            bad = np.nonzero(lengths != feature.shape[level])[0]
            if bad.size:
                raise DatasetError(
                    f"{where}: {feature.name!r} row {int(bad[0])} has {int(lengths[bad[0]])} values at "
                    f"dimension {level}, info.json declares shape {list(feature.shape)}"
                )
        values = values.flatten()
        level += 1
    if values.null_count:
        raise DatasetError(f"{where}: {values.null_count} null values in {feature.name!r}")
    flat = values.to_numpy(zero_copy_only=False)
    size = int(np.prod(feature.shape))
    if flat.size != n * size:
        raise DatasetError(
            f"{where}: {feature.name!r} holds {flat.size} values for {n} rows, expected shape "
            f"{list(feature.shape)} per row as declared in meta/info.json"
        )
    return flat.reshape(n, *feature.shape).astype(feature.dtype, copy=False)


def _leaf_type(t: pa.DataType) -> pa.DataType:
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return t


# ----- the shared reader ------------------------------------------------------------------------------


class LeRobotReader(Dataset):
    """Common reader for LeRobot v3.0 and v2.1 directories (subclasses list the episodes' sources).

    tolerance_s: max distance between a frame's requested timestamp and the decoded frame's (seconds).
    decoder: PyAV settings; max_open_videos: open video files kept (LRU) per process.
    storage: where the files are read from (the local disk by default; an FsspecStorage streams them, and
      then `root` is its `root` path); row_group_cache_mb: RAM for the columns read when streaming (a whole
      file's column is allocated when its first row group is read; least recently used files are dropped).
    """

    format = "lerobot"

    def __init__(
        self,
        root: str | PurePath,
        *,
        cache_mb: float = 0.0,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        decoder: DecoderConfig | None = None,
        max_open_videos: int = 16,
        storage: Storage = LOCAL,
        row_group_cache_mb: float = 256.0,
    ):
        super().__init__(root, cache_mb=cache_mb)
        self.storage = storage
        self._lazy = not storage.local  # streaming: map data files and read row groups on demand
        self._group_cache = _ByteLRU(int(row_group_cache_mb * 2**20))
        self._parquet_files: dict[int, pq.ParquetFile] = {}
        self._group_end_cache: dict[int, np.ndarray] = {}
        self._index_bounds_cache: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
        self._videos: OrderedDict[PurePath, VideoFile] = OrderedDict()
        self._images: OrderedDict[tuple[str, int], pa.Array] = OrderedDict()
        self._pid = os.getpid()
        self.tolerance_s = float(tolerance_s)
        self.decoder = decoder or DecoderConfig()
        self.max_open_videos = int(max_open_videos)
        self.info = read_json(self.root / "meta" / "info.json", storage)
        where = self.root / "meta" / "info.json"
        raise_problems(check_info(self.info, where))
        self.fps = self.info["fps"]
        self.features = parse_features(self.info.get("features"), where)
        self.tasks = self._committed_tasks(self._load_tasks())
        self._stats = self._load_stats()
        sources = self._committed_episodes(sorted(self._episode_sources(), key=lambda s: s.index))
        self._check_totals(sources)
        starts = np.concatenate([[0], np.cumsum([s.length for s in sources])[:-1]]).astype(np.int64)
        self.episodes = [Episode(s.index, s.length, int(st), s.tasks) for s, st in zip(sources, starts)]
        self.sources = sources
        self._columns: dict[str, np.ndarray] = {}
        self._map_rows(sources)
        self._map_videos(sources)

    # ----- what subclasses provide -------------------------------------------------------------
    def _episode_sources(self) -> list[EpisodeSource]:
        raise NotImplementedError

    def _load_tasks(self) -> list[str]:
        raise NotImplementedError

    def _load_stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        return load_stats(self.root / "meta" / "stats.json", self.storage)

    def _committed_tasks(self, tasks: list[str]) -> list[str]:
        """Tasks up to info.json's total_tasks (a task added by an interrupted save is ignored)."""
        total = self.info.get("total_tasks")
        if total is None or len(tasks) <= total:
            return tasks  # fewer: LeRobot datasets converted from v2.1 may count differently; not fatal
        return tasks[:total]

    def _committed_episodes(self, sources: list[EpisodeSource]) -> list[EpisodeSource]:
        """Drop episodes an interrupted save listed beyond info.json's total_episodes (episode_index >= it)."""
        total = self.info.get("total_episodes")
        self._ignored_episodes = 0
        if total is None or len(sources) <= total:
            return sources
        kept = [s for s in sources if s.index < total]
        self._ignored_episodes = len(sources) - len(kept)
        return kept

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        return self._stats

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.dtype == "video"]

    @property
    def tabular_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if not f.is_visual]

    # ----- checks and row mapping at open --------------------------------------------------------
    def _check_totals(self, sources: list[EpisodeSource]) -> None:
        where = self.root / "meta" / "info.json"
        total_eps, total_frames = self.info.get("total_episodes"), self.info.get("total_frames")
        frames = sum(s.length for s in sources)
        if total_eps is not None and int(total_eps) != len(sources):
            raise DatasetError(
                f"{where}: total_episodes={total_eps} but the episodes metadata lists {len(sources)} episodes; "
                "the dataset was not finalized or was partially copied"
            )
        if total_frames is not None and int(total_frames) != frames:
            ignored = getattr(self, "_ignored_episodes", 0)
            beyond = (
                f" (episodes 0..{total_eps - 1}; {ignored} more rows with episode_index >= total_episodes="
                f"{total_eps} are ignored as an uncommitted save)"
                if ignored
                else ""
            )
            raise DatasetError(
                f"{where}: total_frames={total_frames} but the episodes metadata lengths sum to {frames}{beyond}; "
                "the dataset was not finalized or was partially copied, or info.json's totals are wrong"
            )
        seen = [s.index for s in sources]
        if len(set(seen)) != len(seen):
            dupes = sorted({i for i in seen if seen.count(i) > 1})
            raise DatasetError(f"{self.root}: the episodes metadata lists episode_index {_short(dupes)} more than once")
        for s in sources:
            if s.index < 0 or s.length < 0:
                raise DatasetError(
                    f"{s.meta_file or self.root}: episode_index {s.index} has length {s.length}; episode indices "
                    "and lengths must be >= 0 — the episodes metadata is corrupt"
                )

    def _map_rows(self, sources: list[EpisodeSource]) -> None:
        """Locate every episode's rows in its data file; check them against the episodes metadata. Streaming, a
        file is only checked to exist here, and an episode is mapped when a frame of it is first read
        (`_ensure_rows`), from the row groups whose `index` statistics overlap its index range."""
        n = self.num_frames
        self._row_file = np.empty(n, dtype=np.int32)  # data file id of each global frame
        self._row_in_file = np.empty(n, dtype=np.int64)  # its row inside that file
        self._timestamps = np.empty(n, dtype=np.float64)
        self._data_files = sorted({s.data_file for s in sources})
        file_id = {p: i for i, p in enumerate(self._data_files)}
        self._file_positions: list[list[int]] = [[] for _ in self._data_files]
        self._episode_file = np.array([file_id[s.data_file] for s in sources], dtype=np.int64)
        for pos, ep in enumerate(self.episodes):
            self._file_positions[self._episode_file[pos]].append(pos)
            self._row_file[ep.start : ep.stop] = self._episode_file[pos]
        self._mapped = np.zeros(len(sources), dtype=bool)  # episodes whose rows are located
        self._file_columns: dict[int, list[str]] = {}  # bookkeeping columns of each data file, once checked
        for path in dict.fromkeys(s.data_file for s in sources):  # in episode order
            if self._lazy:
                self._check_data_file_exists(file_id[path])
            else:
                self._map_file(file_id[path])
        self._all_mapped = bool(self._mapped.all())

    def _check_data_file_exists(self, fid: int) -> None:
        path = self._data_files[fid]
        if not self.storage.is_file(path):
            eps = [self.sources[p].index for p in self._file_positions[fid]]
            raise DatasetError(f"{path}: data file of episodes {_short(eps)} is missing; restore it")

    def _bookkeeping_columns(self, fid: int, schema: pa.Schema) -> list[str]:
        """Check data file `fid`'s schema against info.json; the bookkeeping columns it has."""
        if fid in self._file_columns:
            return self._file_columns[fid]
        path = self._data_files[fid]
        absent = [k for k, f in self.features.items() if f.dtype != "video" and k not in schema.names]
        if absent:
            raise DatasetError(
                f"{path}: features {absent} are declared in meta/info.json but absent from this data file; "
                "remove them from info.json or re-export the dataset"
            )
        raise_problems(check_column_types(schema, self.features, path))
        wanted = ("episode_index", "index", "timestamp", "frame_index", "task_index")
        cols = [c for c in wanted if c in schema.names]
        if "episode_index" not in cols:
            raise DatasetError(f"{path}: no `episode_index` column; this is not a LeRobot data file")
        self._file_columns[fid] = cols
        return cols

    def _map_file(self, fid: int) -> None:
        """Read the schema and bookkeeping columns of data file `fid`; fill its episodes' rows and timestamps."""
        path = self._data_files[fid]
        self._check_data_file_exists(fid)
        cols = self._bookkeeping_columns(fid, _read_schema(path, self.storage))
        table = _read_table(path, self.storage, columns=cols)
        self._fill_rows(fid, self._file_positions[fid], table, None)

    def _ensure_rows(self, indices: np.ndarray) -> None:
        """Map the episodes holding global frames `indices` (streaming; a no-op once every episode is mapped)."""
        if self._all_mapped:
            return
        todo = [int(p) for p in np.unique(self.episode_of(indices)) if not self._mapped[p]]
        for fid in sorted({int(self._episode_file[p]) for p in todo}):
            self._map_episodes(fid, [p for p in todo if self._episode_file[p] == fid])
        self._all_mapped = bool(self._mapped.all())

    def _map_episodes(self, fid: int, positions: list[int]) -> None:
        """Streaming: read the bookkeeping columns of the row groups of data file `fid` that may hold episodes
        `positions` (one read) and map them."""
        path, pf = self._data_files[fid], self._parquet_file(fid)
        cols = self._bookkeeping_columns(fid, pf.schema_arrow)
        groups = sorted({g for p in positions for g in self._candidate_groups(fid, self.sources[p].index_range)})
        ends = self._group_ends(fid)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        table = _parquet(lambda: pf.read_row_groups(groups, columns=cols), path)
        file_rows = np.concatenate([np.arange(starts[g], ends[g]) for g in groups] or [np.zeros(0, np.int64)])
        self._fill_rows(fid, positions, table, file_rows)

    def _candidate_groups(self, fid: int, index_range: tuple[int, int] | None) -> list[int]:
        """Row groups of data file `fid` whose `index` min/max statistics overlap `index_range` (all of them
        when the file has no such statistics)."""
        bounds = self._index_bounds(fid)
        if index_range is None or bounds is None:
            return list(range(len(self._group_ends(fid))))
        lo, hi = index_range
        return np.nonzero((bounds[0] < hi) & (bounds[1] >= lo))[0].tolist()

    def _index_bounds(self, fid: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(min, max) of the `index` column per row group of data file `fid` from its footer, or None."""
        if fid not in self._index_bounds_cache:
            meta = self._parquet_file(fid).metadata
            leaf = next((c for c in range(meta.num_columns) if meta.schema.column(c).path == "index"), None)
            lows, highs = [], []
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(leaf).statistics if leaf is not None else None
                if stats is None or not stats.has_min_max:
                    lows = None
                    break
                lows.append(stats.min)
                highs.append(stats.max)
            bounds = None if lows is None else (np.asarray(lows, np.int64), np.asarray(highs, np.int64))
            self._index_bounds_cache[fid] = bounds
        return self._index_bounds_cache[fid]

    def _fill_rows(self, fid: int, positions: list[int], table: pa.Table, file_rows: np.ndarray | None) -> None:
        """Locate episodes `positions` in `table` (bookkeeping columns of data file `fid`, whole or the row groups
        whose file rows are `file_rows`), check them and fill their rows, timestamps and task checks."""
        path, sources = self._data_files[fid], self.sources
        cols = table.column_names
        ep_col = _int_column(table, "episode_index", path)
        idx_col = _int_column(table, "index", path) if "index" in cols else None
        order = np.argsort(idx_col, kind="stable") if idx_col is not None else None
        ts_col = table.column("timestamp").to_numpy().astype(np.float64) if "timestamp" in self.features else None
        fi_col = _int_column(table, "frame_index", path) if "frame_index" in cols else None
        ti_col = _int_column(table, "task_index", path) if "task_index" in cols and self.tasks else None
        for pos in positions:
            src, ep = sources[pos], self.episodes[pos]
            rows = self._episode_rows(path, src, ep_col, idx_col, order)
            self._row_in_file[ep.start : ep.stop] = rows if file_rows is None else file_rows[rows]
            frame_index = fi_col[rows] if fi_col is not None else np.arange(ep.length)
            if ts_col is not None:
                self._timestamps[ep.start : ep.stop] = exact_timestamps(ts_col[rows], frame_index, self.fps)
            else:
                self._timestamps[ep.start : ep.stop] = frame_index / float(self.fps)
            if ti_col is not None:
                raise_problems(check_task_index(ti_col[rows], len(self.tasks), f"{path} (episode {src.index})"))
            self._mapped[pos] = True

    def _parquet_file(self, fid: int) -> pq.ParquetFile:
        """The open ParquetFile of data file `fid` (streaming: its footer is read once)."""
        self._after_fork()
        pf = self._parquet_files.get(fid)
        if pf is None:
            path = self._data_files[fid]
            pf = _parquet(lambda: pq.ParquetFile(self.storage.parquet_source(path)), path)
            self._parquet_files[fid] = pf
        return pf

    def _episode_rows(
        self, path: Path, src: EpisodeSource, ep_col: np.ndarray, idx_col: np.ndarray | None, order
    ) -> np.ndarray:
        if src.index_range is None:
            rows = np.nonzero(ep_col == src.index)[0]
            what = f"rows with episode_index == {src.index}"
        else:
            lo, hi = src.index_range
            if hi - lo != src.length:
                raise DatasetError(
                    f"{self.root}/meta/episodes: episode {src.index} has length {src.length} but "
                    f"dataset_from_index={lo}, dataset_to_index={hi} span {hi - lo} frames; the metadata is corrupt"
                )
            if idx_col is None:
                raise DatasetError(f"{path}: no `index` column; cannot locate episode {src.index}")
            sorted_idx = idx_col[order]
            a, b = np.searchsorted(sorted_idx, lo), np.searchsorted(sorted_idx, hi)
            rows = order[a:b]  # in `index` order, whatever the row order in the file
            what = f"rows with index in [{lo}, {hi})"
        if len(rows) != src.length:
            raise DatasetError(
                f"{path}: episode {src.index} has length {src.length} in the episodes metadata but the data file "
                f"has {len(rows)} {what}; the data and metadata disagree — re-export the dataset"
            )
        wrong = np.nonzero(ep_col[rows] != src.index)[0]
        if wrong.size:
            raise DatasetError(
                f"{path}: {what} (episode {src.index} in the episodes metadata) include {wrong.size} rows with "
                f"episode_index {int(ep_col[rows][wrong[0]])}; the data and metadata disagree — re-export the dataset"
            )
        return rows

    def _map_videos(self, sources: list[EpisodeSource]) -> None:
        """Per video key: file id and start time of each episode, and which files are missing."""
        self._video_files: dict[str, list[Path]] = {}
        self._video_file_of: dict[str, np.ndarray] = {}
        self._video_from: dict[str, np.ndarray] = {}
        self._video_missing: dict[str, np.ndarray] = {}
        for key in self.video_keys:
            paths = sorted({s.videos[key].path for s in sources if key in s.videos})
            if len(paths) == 0 and sources:
                raise DatasetError(f"{self.root}: the episodes metadata has no video location for {key!r}")
            ids = {p: i for i, p in enumerate(paths)}
            file_of = np.full(len(sources), -1, dtype=np.int64)
            start = np.zeros(len(sources), dtype=np.float64)
            for pos, s in enumerate(sources):
                seg = s.videos.get(key)
                if seg is None:
                    raise DatasetError(f"{self.root}: episode {s.index} has no video location for {key!r}")
                file_of[pos], start[pos] = ids[seg.path], seg.from_timestamp
            segs = [(s, s.videos[key]) for s in sources]
            spans = [VideoSpan(s.index, s.length, v.path, v.from_timestamp, v.to_timestamp) for s, v in segs]
            raise_problems(check_video_spans(key, spans, float(self.fps), self._metadata_where(sources)))
            self._video_files[key] = paths
            self._video_file_of[key] = file_of
            self._video_from[key] = start
            self._video_missing[key] = np.array([not self.storage.is_file(p) for p in paths], dtype=bool)

    def _metadata_where(self, sources: list[EpisodeSource]) -> str:
        files = sorted({str(s.meta_file) for s in sources if s.meta_file is not None})
        return files[0] if len(files) == 1 else f"{self.root}/meta/episodes"

    # ----- public extras -------------------------------------------------------------------------
    def missing_videos(self) -> dict[str, list[int]]:
        """{video key: episode indices whose video file is absent}; keys with every file present are left out."""
        out = {}
        for key, missing in self._video_missing.items():
            eps = [self.episodes[p].index for p in np.nonzero(missing[self._video_file_of[key]])[0]]
            if eps:
                out[key] = eps
        return out

    def video_path(self, key: str, episode: int) -> PurePath:
        """The video file holding `episode` (position in `self.episodes`) of camera `key`."""
        return self._video_files[key][int(self._video_file_of[key][episode])]

    def video_segment(self, key: str, episode: int) -> VideoSegment:
        return VideoSegment(self.video_path(key, episode), float(self._video_from[key][episode]))

    def timestamps(self, indices: np.ndarray) -> np.ndarray:
        """Per-frame timestamps in seconds relative to the episode start, float64."""
        indices = np.asarray(indices, dtype=np.int64)
        self._ensure_rows(indices)
        return self._timestamps[indices]

    def open_video(self, key: str, episode: int) -> VideoFile:
        """The (cached) open decoder of the file holding `episode`; MissingVideoError names key and episodes."""
        return self._video(key, int(self._video_file_of[key][episode]), [self.episodes[episode].index])

    def prefill_cache(self, keys: list[str] | None = None, chunk_frames: int = 4096) -> list[str]:
        """Decode every frame of the visual `keys` (default: all) once, sequentially, into the RAM cache.

        Returns the keys that fit in `cache_mb`. Prefill before creating DataLoader workers so they share it.
        """
        filled = []
        for key in keys if keys is not None else [k for k, f in self.features.items() if f.is_visual]:
            h, w, c = self.feature(key).shape
            if self._cache.enabled_for(key, self.num_frames, (c, h, w)):
                for _ in self.iter_chunks(key, chunk_frames):
                    pass
                filled.append(key)
        return filled

    # ----- reading -------------------------------------------------------------------------------
    def _column(self, key: str) -> np.ndarray:
        col = self._columns.get(key)
        if col is None:
            feat = self.feature(key)
            col = None
            for fid, path in enumerate(self._data_files):
                dest = np.nonzero(self._row_file == fid)[0]
                if dest.size == 0:
                    continue
                values = arrow_to_numpy(_read_table(path, self.storage, columns=[key]).column(0), feat, f"{path}")
                if col is None:
                    col = np.empty((self.num_frames, *values.shape[1:]), dtype=values.dtype)
                col[dest] = values[self._row_in_file[dest]]
            if col is None:
                col = np.empty((0, *feat.shape), dtype=feat.dtype if feat.is_numeric else object)
            self._columns[key] = col
        return col

    def _read_numeric(self, key: str, indices: np.ndarray) -> np.ndarray:
        self._ensure_rows(indices)
        if self._lazy:
            return self._read_row_groups(key, indices)
        return self._column(key)[indices]

    def _read_row_groups(self, key: str, indices: np.ndarray) -> np.ndarray:
        """Streaming: `key` at global frames `indices`, reading only the parquet row groups that hold them (each
        file's column is filled in group by group, and kept in a RAM LRU bounded by row_group_cache_mb)."""
        feat = self.feature(key)
        files, rows = self._row_file[indices], self._row_in_file[indices]
        out = None
        for fid in np.unique(files).tolist():
            sel = np.nonzero(files == fid)[0]
            values = self._file_column(key, fid, rows[sel])[rows[sel]]
            if out is None:
                out = np.empty((len(indices), *values.shape[1:]), dtype=values.dtype)
            out[sel] = values
        if out is None:
            out = np.empty((0, *feat.shape), dtype=feat.dtype if feat.is_numeric else object)
        return out

    def _group_ends(self, fid: int) -> np.ndarray:
        """Exclusive end row of each row group of data file `fid`, int64 (G,)."""
        ends = self._group_end_cache.get(fid)
        if ends is None:
            meta = self._parquet_file(fid).metadata
            ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], dtype=np.int64)
            self._group_end_cache[fid] = ends
        return ends

    def _file_column(self, key: str, fid: int, rows: np.ndarray) -> np.ndarray:
        """Column `key` of data file `fid` as (rows in file, *shape), with at least the row groups holding
        `rows` read (the others are left unfilled)."""
        ends = self._group_ends(fid)
        hit = self._group_cache.get((key, fid))
        if hit is None:
            hit = (None, np.zeros(len(ends), dtype=bool))
        column, loaded = hit
        groups = np.unique(np.searchsorted(ends, rows, side="right"))
        missing = groups[~loaded[groups]].tolist()
        if missing:
            path, pf = self._data_files[fid], self._parquet_file(fid)
            table = _parquet(lambda: pf.read_row_groups(missing, columns=[key]), path)
            values = arrow_to_numpy(table.column(0), self.feature(key), f"{path} (row groups {_short(missing)})")
            if column is None:
                column = np.empty((int(ends[-1]), *values.shape[1:]), dtype=values.dtype)
            starts = np.concatenate([[0], ends[:-1]])
            at = 0
            for g in missing:
                n = int(ends[g] - starts[g])
                column[starts[g] : ends[g]] = values[at : at + n]
                at += n
            loaded[missing] = True
            self._group_cache.put((key, fid), (column, loaded), column.nbytes)
        return column

    def _read_visual(self, key: str, indices: np.ndarray) -> np.ndarray:
        self._ensure_rows(indices)
        feat = self.feature(key)
        if feat.dtype == "image":
            return self._read_images(key, indices)
        h, w, c = feat.shape
        out = np.empty((len(indices), c, h, w), dtype=np.uint8)
        if not len(indices):
            return out
        ep_pos = self.episode_of(indices)
        file_of = self._video_file_of[key][ep_pos]
        rel = self._timestamps[indices]
        t = self._video_from[key][ep_pos] + rel
        for fid in np.unique(file_of):
            sel = np.nonzero(file_of == fid)[0]
            eps = sorted({self.episodes[p].index for p in ep_pos[sel]})
            video = self._video(key, int(fid), eps)
            frames, err = video.nearest(t[sel])
            bad = np.nonzero(err > self.tolerance_s + float32_time_slack(rel[sel]))[0]
            if bad.size:
                b = sel[bad[0]]
                msg = self._tolerance_message(key, video, int(ep_pos[b]), rel[b], t[b], err[bad[0]])
                raise FrameToleranceError(msg)
            if (video.height, video.width) != (h, w):
                raise DatasetError(
                    f"{video.path}: frames are {video.width}x{video.height} but meta/info.json declares {key!r} "
                    f"as {w}x{h}; fix info.json (shape [H, W, C]) or re-encode the video"
                )
            out[sel] = video.decode(frames, channels=c)
        return out

    def _tolerance_message(self, key: str, video: VideoFile, pos: int, rel: float, t: float, err: float) -> str:
        ep = self.episodes[pos].index
        msg = (
            f"{video.path}: episode {ep}, key {key!r}: no frame within tolerance_s={self.tolerance_s} of timestamp "
            f"{rel:.6f} s (file time {t:.6f} s); the nearest frame is {err:.6f} s away. "
        )
        if t > video.times[-1]:
            return msg + f"The video ends at {video.times[-1]:.6f} s: it is shorter than the episode (truncated?)."
        return msg + "The parquet timestamps and the video disagree: re-encode the episode or raise tolerance_s."

    def _after_fork(self) -> None:
        if os.getpid() != self._pid:  # forked into a DataLoader worker: never share decoders across processes
            # Freeing the parent's decoders here would wait forever on FFmpeg thread-pool locks whose threads
            # did not survive the fork; keep them referenced (a few KB) instead.
            _INHERITED_FROM_PARENT.append(self._videos)
            self._videos = OrderedDict()
            self._images = OrderedDict()
            self._parquet_files = {}
            self._pid = os.getpid()

    def _video(self, key: str, fid: int, episodes: list[int]) -> VideoFile:
        self._after_fork()
        path = self._video_files[key][fid]
        video = self._videos.get(path)
        if video is not None:
            self._videos.move_to_end(path)
            return video
        if self._video_missing[key][fid] and not self.storage.is_file(path):
            affected = [self.episodes[p].index for p in np.nonzero(self._video_file_of[key] == fid)[0]]
            raise MissingVideoError(
                f"{path}: video file of key {key!r} is missing (requested episodes {_short(episodes)}; the file holds "
                f"episodes {_short(affected)}). Restore the videos/ folder, read only tabular keys "
                f"({', '.join(self.tabular_keys)}), or skip these episodes; ds.missing_videos() lists them all."
            )
        try:
            video = VideoFile(path, self.decoder, self.storage)
        except MissingVideoError as e:
            raise MissingVideoError(f"{e} [key {key!r}, episodes {_short(episodes)}]") from e
        self._videos[path] = video
        if len(self._videos) > self.max_open_videos:
            self._videos.popitem(last=False)[1].close()
        return video

    def _read_images(self, key: str, indices: np.ndarray) -> np.ndarray:
        """`image` features: PNG bytes stored in the parquet ({bytes, path} struct or plain binary)."""
        h, w, c = self.feature(key).shape
        out = np.empty((len(indices), c, h, w), dtype=np.uint8)
        files = self._row_file[indices]
        for fid in np.unique(files):
            sel = np.nonzero(files == fid)[0]
            column = self._image_column(key, int(fid))
            path = self._data_files[fid]
            for j in sel:
                row = int(self._row_in_file[indices[j]])
                data = column[row].as_py()
                if data is None:
                    raise DatasetError(f"{path}: {key!r} row {row} has no image bytes")
                img = decode_png(data, c, where=f"{path}: {key!r} row {row}")
                if img.shape != (c, h, w):
                    raise DatasetError(
                        f"{path}: {key!r} row {row} is {img.shape[2]}x{img.shape[1]}x{img.shape[0]} (WxHxC), "
                        f"meta/info.json declares {w}x{h}x{c}"
                    )
                out[j] = img
        return out

    def _image_column(self, key: str, fid: int) -> pa.Array:
        hit = self._images.get((key, fid))
        if hit is None:
            col = _read_table(self._data_files[fid], self.storage, columns=[key]).column(0).combine_chunks()
            hit = col.field("bytes") if pa.types.is_struct(col.type) else col
            self._images[(key, fid)] = hit
            if len(self._images) > 4:
                self._images.popitem(last=False)
        return hit

    def close(self) -> None:
        for video in self._videos.values():
            video.close()
        self._videos.clear()
        self._images.clear()
        self._parquet_files.clear()
        self._group_cache.clear()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_videos"] = OrderedDict()
        state["_images"] = OrderedDict()
        state["_parquet_files"] = {}
        state["_group_cache"] = _ByteLRU(self._group_cache.max_bytes)
        return state


class _ByteLRU:
    """A dict that drops its least recently used values once their sizes sum past `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._used = 0

    def get(self, key):
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key, value, nbytes: int) -> None:
        old = self._items.pop(key, None)
        self._used += int(nbytes) - (0 if old is None else old[1])
        self._items[key] = (value, int(nbytes))
        while self._used > self.max_bytes and len(self._items) > 1:
            _, (_, size) = self._items.popitem(last=False)
            self._used -= size

    def clear(self) -> None:
        self._items.clear()
        self._used = 0


def _short(items: list[int], limit: int = 12) -> str:
    items = list(items)
    if len(items) <= limit:
        return str(items)
    return f"[{', '.join(map(str, items[:limit]))}, ... ({len(items)} in total)]"


# ----- v3.0 --------------------------------------------------------------------------------------------


class LeRobotDataset(LeRobotReader):
    """A LeRobot v3.0 directory (`open_dataset(path)` picks it when info.json says codebase_version v3.x)."""

    format = "lerobot_v3"

    def _load_tasks(self) -> list[str]:
        path = self.root / "meta" / "tasks.parquet"
        if not self.storage.is_file(path):
            if self.info.get("total_tasks", 0):
                raise DatasetError(f"{path}: missing although info.json declares {self.info['total_tasks']} tasks")
            return []
        table = _read_table(path, self.storage)
        names = table.column_names
        meta = table.schema.pandas_metadata or {}
        index_cols = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
        # LeRobot writes the task string as the pandas index ("__index_level_0__"); others write a `task` column.
        text_col = "task" if "task" in names else next((c for c in index_cols if c in names), None)
        if text_col is None or "task_index" not in names:
            raise DatasetError(f"{path}: expected columns `task_index` and `task` (or a pandas index), got {names}")
        return _ordered_tasks(table.column("task_index").to_pylist(), table.column(text_col).to_pylist(), path)

    @property
    def episode_success(self) -> list[bool | None] | None:
        """Per-episode success flags written by robopolicy (episodes-metadata column `success`), else None."""
        if not self._success:
            return None
        return [self._success.get(ep.index) for ep in self.episodes]

    def _episode_sources(self) -> list[EpisodeSource]:
        meta_dir = self.root / "meta" / "episodes"
        files = self.storage.glob(meta_dir, "chunk-*/file-*.parquet")
        if not files and self.info.get("total_episodes") == 0:
            self._success = {}
            return []  # created and finalized without a single save_episode
        if not files:
            raise DatasetError(
                f"{meta_dir}: no episodes metadata (chunk-*/file-*.parquet); the dataset was not finalized — "
                "run the writer's finalize() or restore meta/episodes/"
            )
        data_tpl = self.info.get("data_path") or "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
        video_tpl = self.info.get("video_path")
        if self.video_keys and not video_tpl:
            raise DatasetError(f"{self.root}/meta/info.json: video features but no `video_path` template")
        sources = []
        self._success: dict[int, bool | None] = {}
        for path in files:
            schema = _read_schema(path, self.storage)
            cols = [c for c in schema.names if not c.startswith("stats/")]
            need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
            need += ["dataset_from_index", "dataset_to_index"]
            for key in self.video_keys:
                need += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
            absent = [c for c in need if c not in cols]
            if absent:
                raise DatasetError(f"{path}: episodes metadata lacks columns {absent}; re-export the dataset")
            try:
                rows = _read_table(path, self.storage, columns=cols).to_pylist()
            except (pa.ArrowException, OSError) as e:
                raise DatasetError(f"{path}: not a readable parquet file ({e}); restore it") from e
            for r in rows:
                ints = _episode_ints(r, need, path)
                if SUCCESS_COLUMN in r:
                    self._success[ints["episode_index"]] = r[SUCCESS_COLUMN]
                videos = {}
                for key in self.video_keys:
                    to_ts = r.get(f"videos/{key}/to_timestamp")
                    videos[key] = VideoSegment(
                        self.root
                        / video_tpl.format(
                            video_key=key,
                            chunk_index=ints[f"videos/{key}/chunk_index"],
                            file_index=ints[f"videos/{key}/file_index"],
                        ),
                        _finite(r[f"videos/{key}/from_timestamp"], f"videos/{key}/from_timestamp", r, path),
                        None if to_ts is None else _finite(to_ts, f"videos/{key}/to_timestamp", r, path),
                    )
                data_file = self.root / data_tpl.format(
                    chunk_index=ints["data/chunk_index"], file_index=ints["data/file_index"]
                )
                sources.append(
                    EpisodeSource(
                        index=ints["episode_index"],
                        length=ints["length"],
                        tasks=tuple(r.get("tasks") or ()),
                        data_file=data_file,
                        index_range=(ints["dataset_from_index"], ints["dataset_to_index"]),
                        videos=videos,
                        meta_file=path,
                    )
                )
        return sources


def _int_column(table: pa.Table, name: str, path: Path) -> np.ndarray:
    col = table.column(name)
    if not pa.types.is_integer(col.type) or col.null_count:
        raise DatasetError(f"{path}: bookkeeping column {name!r} must be integers without nulls, it is {col.type} "
                           f"with {col.null_count} nulls; this is not a valid LeRobot data file")  # fmt: skip
    return col.to_numpy().astype(np.int64)


def _episode_ints(row: dict, columns: list[str], path: Path) -> dict[str, int]:
    """The integer columns of one episodes-metadata row; indices used in paths and ranges must be >= 0."""
    out = {}
    for col in columns:
        if col.endswith("_timestamp"):
            continue
        value = row[col]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            where = f"episode {row.get('episode_index')!r}" if col != "episode_index" else "a row"
            raise DatasetError(
                f"{path}: {where} has {col} = {value!r}; it must be an integer >= 0 — the episodes metadata is corrupt"
            )
        out[col] = int(value)
    return out


def _finite(value, col: str, row: dict, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise DatasetError(f"{path}: episode {row.get('episode_index')!r} has {col} = {value!r}; it must be a number")
    return float(value)


def _ordered_tasks(task_index: list, text: list, where: Path) -> list[str]:
    """Tasks as a list indexed by task_index (which must be 0..T-1, each once)."""
    ti = [int(t) for t in task_index]
    if sorted(ti) != list(range(len(ti))):
        raise DatasetError(f"{where}: task_index values must be 0..{len(ti) - 1}, each once; got {sorted(ti)}")
    out = [""] * len(ti)
    for i, t in zip(ti, text):
        out[i] = str(t)
    return out
