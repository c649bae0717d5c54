"""Write LeRobot v3.0 datasets (the layout LeRobot 0.4+ writes and loads; see docs/lerobot.md).

On disk, exactly as LeRobot: meta/info.json, meta/stats.json, meta/tasks.parquet, meta/episodes/chunk-XXX/
file-XXX.parquet, data/chunk-XXX/file-XXX.parquet (snappy, one row group per episode, LeRobot's column
names and arrow types), videos/<key>/chunk-XXX/file-XXX.mp4 (episodes concatenated). Files roll over at
data_files_size_in_mb / video_files_size_in_mb, and file_index rolls into chunk_index at chunks_size.

Visual features are stored as video (AV1 via libsvtav1 when available, else H.264; the codec actually in
the file is probed into info.json) or, with video=False, as lossless PNG `image` columns in the parquet.
`save_episode(videos={key: PacketSource})` takes an episode's video packets from another mp4 instead of
encoding its frames (lossless edits; the frames still feed the stats); `video_copy_problem` says beforehand why
it could not. A video file holds packets of one stream signature (codec, size, pix_fmt, codec header): an episode
whose packets differ starts the next file.

Per-episode success flags go into an extra, nullable bool column `success` of the episodes metadata
parquet: LeRobot loads that parquet with `datasets` and keeps unknown columns, while info.json's features
(which LeRobot validates every frame against) stay untouched, and no fake per-frame column appears in
training batches.

Crash safety: frames are buffered in memory until save_episode, and each save is one journaled transaction
(robopolicy.data.journal): every file it changes (the episode's mp4 and the encoder's attempt files, the
video file it is appended to, the data parquet, the episodes parquet, tasks.parquet, stats.json, the stats
sketch) is written as a recorded temp file and os.replace()d through the journal, and meta/info.json last
(the commit point). A failed save restores every file; a killed one is rolled back (or confirmed, when
info.json was already replaced) by the next writer opened with append=True. Readers only trust what
info.json's totals cover, so leftovers of older versions (rows, video beyond to_timestamp) are ignored, and
appending keeps only the committed rows of the data file it continues.
"""

from __future__ import annotations

import io
import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robopolicy.data.errors import DatasetError
from robopolicy.data.features import INDEX_KEYS, SUCCESS_COLUMN, Feature
from robopolicy.data.journal import Journal
from robopolicy.data.stats import DEFAULT_BINS, STAT_NAMES, RunningStats, array_stats, stats_to_json
from robopolicy.data.video_encode import (
    PacketSource,
    StreamSignature,
    VideoOptions,
    append_video,
    choose_codec,
    copy_packets,
    encode_video,
    encoder_codec,
    packet_problem,
    probe_video,
    stream_signature,
)
from robopolicy.data.writer import LOCK_FILE, MARKER_FILE, EpisodeWriter

CODEBASE_VERSION = "v3.0"

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
SKETCH_FILE = "meta/robopolicy_stats_sketch.npz"  # mergeable stats state, so append keeps exact stats
INDEX_DTYPES = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}
CODEC_TO_ENCODER = {"av1": "libsvtav1", "h264": "libx264", "hevc": "libx265", "mpeg4": "mpeg4"}


@dataclass
class _Cursor:
    """Position of the file being filled: chunk/file indices and how much it holds."""

    chunk: int = 0
    file: int = 0
    used: float = 0.0  # rows (data, episodes meta) or seconds (video) already in the file

    def advance(self, chunks_size: int) -> None:
        if self.file >= chunks_size - 1:
            self.chunk, self.file = self.chunk + 1, 0
        else:
            self.file += 1
        self.used = 0.0


class _Rows(list):
    """Episodes-metadata rows of the current file. Rows are never changed once appended, so the snapshot a
    save takes for its rollback (copy.deepcopy of the writer's transactional state) copies the list only:
    deep-copying every row's stats lists cost a third of a save."""

    def __deepcopy__(self, memo) -> _Rows:
        return _Rows(self)


# ----- small file helpers (every write goes through the save's journal) -----------------------------
def _write_json(journal: Journal, path: Path, obj) -> None:
    journal.write_bytes(path, json.dumps(obj, indent=4).encode())


def _write_tables(path: Path, tables: list[pa.Table], schema: pa.Schema) -> None:
    """Write `tables` as a new parquet file at `path` (one row group each, snappy)."""
    with pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=True) as w:
        for t in tables:
            w.write_table(t, row_group_size=max(1, t.num_rows))


def _write_parquet(journal: Journal, path: Path, tables: list[pa.Table], schema: pa.Schema) -> None:
    journal.write_with(path, lambda tmp: _write_tables(tmp, tables, schema))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez_compressed(f, **arrays)


def _committed_row_groups(path: Path, rows: int) -> list[pa.Table]:
    """The row groups holding the first `rows` rows of `path` (rows beyond, left by an interrupted save of
    an older version, are dropped)."""
    pf = pq.ParquetFile(path)
    try:
        tables, have = [], 0
        for i in range(pf.num_row_groups):
            if have >= rows:
                break
            t = pf.read_row_group(i)
            tables.append(t.slice(0, rows - have) if have + t.num_rows > rows else t)
            have += tables[-1].num_rows
    finally:
        pf.close()
    if have < rows:
        raise DatasetError(f"{path}: holds {have} rows but the episodes metadata says {rows}; cannot append to it")
    return tables


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else 0.0


# ----- arrow types (LeRobot / HF datasets conventions) ----------------------------------------------
def _arrow_type(feat_dtype: str, shape: tuple[int, ...]) -> tuple[pa.DataType, dict]:
    """Arrow type and HF `datasets` feature JSON of a non-video feature column."""
    if feat_dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())]), {"_type": "Image"}
    if feat_dtype in ("string", "language"):
        return pa.string(), {"dtype": "string", "_type": "Value"}
    value = pa.from_numpy_dtype(np.dtype(feat_dtype))
    if len(shape) <= 1 and int(np.prod(shape)) == 1:
        return value, {"dtype": feat_dtype, "_type": "Value"}
    if len(shape) == 1:
        hf = {"feature": {"dtype": feat_dtype, "_type": "Value"}, "length": int(shape[0]), "_type": "List"}
        return pa.list_(value, int(shape[0])), hf
    t = value
    for _ in shape:
        t = pa.list_(t)
    return t, {"shape": list(shape), "dtype": feat_dtype, "_type": f"Array{len(shape)}D"}


def _column(values: np.ndarray, feat_dtype: str, shape: tuple[int, ...]) -> pa.Array:
    """Arrow column of N per-frame values (N, *shape)."""
    t, _ = _arrow_type(feat_dtype, shape)
    n = len(values)
    if feat_dtype in ("string", "language"):
        return pa.array([str(v) for v in values], t)
    if pa.types.is_fixed_size_list(t):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)), int(shape[0]))
    if pa.types.is_list(t):
        arr = pa.array(np.ascontiguousarray(values).reshape(-1))
        for size in reversed(shape):
            count = len(arr) // size
            arr = pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * size), arr)
        return arr
    return pa.array(np.asarray(values).reshape(n), t)


def _png_column(frames: np.ndarray) -> pa.Array:
    """HF `Image` struct column (PNG bytes) of uint8 (N, H, W, C) frames."""
    from PIL import Image

    blobs = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    return pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array([None] * len(blobs), pa.string())], names=["bytes", "path"]
    )


def _stats_arrow_type(stat: str, ndim: int, integer_minmax: bool) -> pa.DataType:
    if stat == "count":
        return pa.list_(pa.int64())
    t = pa.int64() if (integer_minmax and stat in ("min", "max")) else pa.float64()
    for _ in range(max(ndim, 1)):
        t = pa.list_(t)
    return t


def _tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet as pandas writes it: column task_index, index `__index_level_0__` (the task)."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    schema = pa.schema(
        [("task_index", pa.int64()), ("__index_level_0__", pa.large_string())],
        metadata={b"pandas": json.dumps(pandas_meta).encode()},
    )
    return pa.table([pa.array(range(len(tasks)), pa.int64()), pa.array(tasks, pa.large_string())], schema=schema)


class LeRobotWriter(EpisodeWriter):
    """EpisodeWriter for LeRobot v3.0 (see module docstring).

    video: True = visual features as mp4, False = lossless PNG `image` columns, None = per feature dtype
      ("image" -> PNG, anything else -> video).
    vcodec/crf/g/preset/pix_fmt: video encoder settings (VideoOptions); vcodec="auto" picks AV1 or H.264.
    """

    format = "lerobot"
    _transactional = (
        "info", "tasks", "_episode_rows", "_data_cursor", "_meta_cursor", "_video_cursors", "_global",
        "_codecs", "_video_info",
    )  # fmt: skip

    def __init__(
        self,
        root: str | Path,
        features: Mapping[str, Feature],
        fps: float,
        *,
        overwrite: bool = False,
        append: bool = False,
        video: bool | None = None,
        vcodec: str = "auto",
        crf: int | None = None,
        g: int = 2,
        preset: int | str | None = None,
        pix_fmt: str = "yuv420p",
        robot_type: str | None = None,
        chunks_size: int = 1000,
        data_files_size_in_mb: float = 100,
        video_files_size_in_mb: float = 200,
        stats_bins: int = DEFAULT_BINS,
    ):
        if not isinstance(fps, numbers.Real) or isinstance(fps, bool) or not np.isfinite(fps) or fps <= 0:
            raise ValueError(f"{root}: LeRobot datasets need a positive fps, got {fps!r}")
        clash = sorted(set(features) & set(INDEX_KEYS))
        if clash:
            raise ValueError(f"{root}: {clash} are filled in by the writer; remove them from `features`")
        super().__init__(root, features, fps)
        self.video_options = VideoOptions(codec=vcodec, pix_fmt=pix_fmt, g=g, crf=crf, preset=preset)
        self.stats_bins = stats_bins
        self._codecs: dict[str, str] = {}
        self._encoder = None  # a process that encodes the videos once background saving starts
        self._video_info: dict[str, dict] = {}
        self._copy_next: dict[str, PacketSource] = {}  # video packets the episode being saved takes, per key
        continuing = self._open_root(overwrite=overwrite, append=append)
        try:
            if continuing and (self.root / "meta/info.json").exists():
                self._open_existing()
            else:
                self._create(video, robot_type, chunks_size, data_files_size_in_mb, video_files_size_in_mb)
        except BaseException:
            self._release_lock()
            raise

    def _create(
        self,
        video: bool | None,
        robot_type: str | None,
        chunks_size: int,
        data_files_size_in_mb: float,
        video_files_size_in_mb: float,
    ) -> None:
        """A new, empty dataset: info.json with zero episodes (committed through a journal)."""
        leftovers = [p.name for p in self.root.iterdir() if p.name not in (MARKER_FILE, LOCK_FILE)]
        if leftovers:  # append=True on a directory that is not a LeRobot dataset
            raise DatasetError(
                f"{self.root}: cannot append, meta/info.json is missing (not a LeRobot dataset; it holds "
                f"{sorted(leftovers)[:5]})"
            )
        fps = self.fps
        self._store: dict[str, str] = {}
        for key, feat in self.features.items():
            if feat.is_visual:
                as_video = video if video is not None else feat.dtype != "image"
                self._store[key] = "video" if as_video else "image"
            else:
                self._store[key] = feat.dtype
        self.info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": int(chunks_size),
            "data_files_size_in_mb": data_files_size_in_mb,
            "video_files_size_in_mb": video_files_size_in_mb,
            "fps": int(fps) if float(fps).is_integer() else float(fps),
            "splits": {},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if "video" in self._store.values() else None,
            "features": self._info_features(),
        }
        self.tasks: list[str] = []
        self._episode_rows = _Rows()  # rows of the current episodes-metadata file
        self._data_cursor = _Cursor()
        self._meta_cursor = _Cursor()
        self._video_cursors = {k: _Cursor() for k in self._video_keys}
        self._global = {k: RunningStats(self._stats_dim(k), self.stats_bins) for k in self._stats_keys}
        with Journal.begin(self.root, self._commit_file()) as journal:
            _write_json(journal, self.root / "meta/info.json", self.info)

    # ----- feature bookkeeping ----------------------------------------------------------------------
    @property
    def _video_keys(self) -> list[str]:
        return [k for k, s in self._store.items() if s == "video"]

    @property
    def _stats_keys(self) -> list[str]:
        keys = [k for k, s in self._store.items() if s not in ("string", "language")]
        return [*keys, *INDEX_KEYS]

    def _is_visual(self, key: str) -> bool:
        return self._store.get(key) in ("video", "image")

    def _shape(self, key: str) -> tuple[int, ...]:
        return (1,) if key in INDEX_DTYPES else tuple(self.features[key].shape)

    def _stats_dim(self, key: str) -> int:
        shape = self._shape(key)
        return shape[-1] if self._is_visual(key) else int(np.prod(shape))

    def _info_features(self) -> dict:
        out = {}
        for key, feat in self.features.items():
            entry = {"dtype": self._store[key], "shape": list(feat.shape)}
            if feat.is_visual:
                entry["names"] = feat.names if feat.names is not None else ["height", "width", "channels"]
                if key in self._video_info:
                    entry["info"] = self._video_info[key]
            else:
                entry["names"] = feat.names
            out[key] = entry
        for key, dtype in INDEX_DTYPES.items():
            out[key] = {"dtype": dtype, "shape": [1], "names": None}
        return out

    def _data_schema(self) -> pa.Schema:
        fields, hf = [], {}
        for key in [*self.features, *INDEX_DTYPES]:
            store = INDEX_DTYPES.get(key) or self._store[key]
            if store == "video":
                continue
            t, hf_feat = _arrow_type(store, self._shape(key))
            fields.append((key, t))
            hf[key] = hf_feat
        return pa.schema(fields, metadata={b"huggingface": json.dumps({"info": {"features": hf}}).encode()})

    def _episodes_schema(self) -> pa.Schema:
        fields = [
            ("episode_index", pa.int64()),
            ("tasks", pa.list_(pa.string())),
            ("length", pa.int64()),
            ("data/chunk_index", pa.int64()),
            ("data/file_index", pa.int64()),
            ("dataset_from_index", pa.int64()),
            ("dataset_to_index", pa.int64()),
        ]
        for key in self._video_keys:
            fields += [
                (f"videos/{key}/chunk_index", pa.int64()),
                (f"videos/{key}/file_index", pa.int64()),
                (f"videos/{key}/from_timestamp", pa.float64()),
                (f"videos/{key}/to_timestamp", pa.float64()),
            ]
        for key in self._stats_keys:
            visual = self._is_visual(key)
            ndim = 3 if visual else len(self._shape(key))
            dtype = INDEX_DTYPES.get(key) or self._store[key]
            integer = not visual and np.dtype(dtype).kind in "biu"
            fields += [(f"stats/{key}/{s}", _stats_arrow_type(s, ndim, integer)) for s in STAT_NAMES]
        fields += [
            ("meta/episodes/chunk_index", pa.int64()),
            ("meta/episodes/file_index", pa.int64()),
            (SUCCESS_COLUMN, pa.bool_()),
        ]
        return pa.schema(fields)

    # ----- append: reload the committed state (an interrupted save was recovered by _open_root) ------------
    def _open_existing(self) -> None:
        meta = self.root / "meta"
        try:
            self.info = json.loads((meta / "info.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"{meta / 'info.json'}: cannot read ({e}); cannot append") from e
        if not str(self.info.get("codebase_version", "")).startswith("v3"):
            raise DatasetError(
                f"{self.root}: can only append to LeRobot v3.0 datasets, found {self.info.get('codebase_version')!r}"
            )
        if float(self.info["fps"]) != float(self.fps):
            raise DatasetError(f"{self.root}: cannot append at fps={self.fps}, the dataset has fps={self.info['fps']}")
        on_disk = {k: v for k, v in self.info["features"].items() if k not in INDEX_DTYPES}
        if set(on_disk) != set(self.features):
            raise DatasetError(
                f"{self.root}: cannot append, features differ: dataset has {sorted(on_disk)}, "
                f"writer has {sorted(self.features)}"
            )
        self._store = {}
        for key, feat in self.features.items():
            disk = on_disk[key]
            visual_disk = disk["dtype"] in ("video", "image")
            if (
                visual_disk != feat.is_visual
                or tuple(disk["shape"]) != tuple(feat.shape)
                or (not visual_disk and disk["dtype"] != feat.dtype)
            ):
                raise DatasetError(
                    f"{self.root}: cannot append, feature {key!r} is {disk['dtype']} {disk['shape']} "
                    f"in the dataset, writer has {feat.dtype} {list(feat.shape)}"
                )
            self._store[key] = disk["dtype"]
            if disk["dtype"] == "video" and "info" in disk:
                self._video_info[key] = disk["info"]
                enc = disk["info"].get("video.encoder") or CODEC_TO_ENCODER.get(disk["info"].get("video.codec", ""))
                if enc:
                    self._codecs[key] = enc
        # The reader checks the metadata (totals, indices, timestamps, dtypes) before anything is appended.
        from robopolicy.data.lerobot_format import LeRobotDataset

        with LeRobotDataset(self.root) as ds:
            self.tasks = list(ds.tasks)
            committed = [e.index for e in ds.episodes]
        n_eps = int(self.info["total_episodes"])
        if committed != list(range(n_eps)):
            raise DatasetError(
                f"{self.root}: episode indices are not 0..{n_eps - 1} (got {committed[:5]}...); cannot append"
            )
        rows = []
        for f in sorted((meta / "episodes").glob("chunk-*/file-*.parquet")):
            rows += [r for r in pq.read_table(f).to_pylist() if r["episode_index"] < n_eps]
        rows.sort(key=lambda r: r["episode_index"])
        self._data_cursor, self._meta_cursor = _Cursor(), _Cursor()
        self._video_cursors = {k: _Cursor() for k in self._video_keys}
        self._episode_rows = _Rows()
        if rows:
            last = rows[-1]
            self._meta_cursor = _Cursor(last["meta/episodes/chunk_index"], last["meta/episodes/file_index"])
            self._episode_rows = _Rows(
                r
                for r in rows
                if (r["meta/episodes/chunk_index"], r["meta/episodes/file_index"])
                == (self._meta_cursor.chunk, self._meta_cursor.file)
            )
            for r in self._episode_rows:
                r.setdefault(SUCCESS_COLUMN, None)
            self._meta_cursor.used = len(self._episode_rows)
            self._data_cursor = _Cursor(last["data/chunk_index"], last["data/file_index"])
            self._data_cursor.used = sum(
                r["length"]
                for r in rows
                if (r["data/chunk_index"], r["data/file_index"]) == (self._data_cursor.chunk, self._data_cursor.file)
            )
            for key in self._video_keys:
                self._video_cursors[key] = _Cursor(
                    last[f"videos/{key}/chunk_index"],
                    last[f"videos/{key}/file_index"],
                    last[f"videos/{key}/to_timestamp"],
                )
            self._drop_stale_files()
        self._global = self._load_global_stats()

    def _drop_stale_files(self) -> None:
        """Remove what a killed save of a pre-journal version left: temp files, chunk files after the last
        committed episode's (a save that had rolled a file over) and tasks beyond total_tasks. Journaled."""
        folders = {self.root / "data": self._data_cursor, self.root / "meta/episodes": self._meta_cursor}
        folders.update({self.root / "videos" / k: c for k, c in self._video_cursors.items()})
        stale = [p for p in (self.root / "meta").glob(".*.tmp")]
        for folder, cursor in folders.items():
            stale += [*folder.glob(".*.tmp"), *folder.glob(".episode-*.mp4"), *folder.glob("chunk-*/.*.tmp")]
            for f in folder.glob("chunk-*/file-*.*"):
                try:
                    idx = (int(f.parent.name.split("-")[1]), int(f.stem.split("-")[1]))
                except (IndexError, ValueError):
                    continue
                if idx > (cursor.chunk, cursor.file):
                    stale.append(f)
        tasks_path = self.root / "meta/tasks.parquet"
        extra_tasks = tasks_path.exists() and pq.read_metadata(tasks_path).num_rows > len(self.tasks)
        if not stale and not extra_tasks:
            return
        with Journal.begin(self.root, self._commit_file()) as journal:
            for f in stale:
                journal.remove(f)
            if extra_tasks:  # a task only the lost episode had
                table = _tasks_table(self.tasks)
                _write_parquet(journal, tasks_path, [table], table.schema)

    def _load_global_stats(self) -> dict[str, RunningStats]:
        sketch_path = self.root / SKETCH_FILE
        total = int(self.info["total_frames"])
        if total == 0:
            return {k: RunningStats(self._stats_dim(k), self.stats_bins) for k in self._stats_keys}
        if sketch_path.exists():
            with np.load(sketch_path) as z:
                if int(z["total_frames"]) == total:
                    return {k: _sketch_from_npz(z, k) for k in self._stats_keys}
        # No (or stale) sketch: recompute from the data (exact, reads every frame once).
        from robopolicy.data.dataset import open_dataset
        from robopolicy.data.stats import iter_key_chunks

        out = {}
        with open_dataset(self.root) as ds:
            for key in self._stats_keys:
                sketch = RunningStats(self._stats_dim(key), self.stats_bins)
                for chunk in iter_key_chunks(ds, key, 256):
                    sketch.merge(array_stats(chunk, visual=self._is_visual(key), channel_axis=1))
                out[key] = sketch
        return out

    # ----- copied video packets ---------------------------------------------------------------------
    def save_episode(self, task: str | None = None, success: bool | None = None, *,
                     videos: Mapping[str, PacketSource] | None = None) -> int:
        """EpisodeWriter.save_episode; `videos` ({video key: PacketSource}) gives keys whose packets are copied
        from another file instead of encoding the buffered frames (which must be what those packets decode to:
        they make the stats). ValueError when a packet copy is refused (see `video_copy_problem`)."""
        if not videos:
            return super().save_episode(task=task, success=success)
        if unknown := sorted(set(videos) - set(self._video_keys)):
            raise KeyError(f"{self.root}: save_episode: {unknown} are not video features; video keys: "
                           f"{self._video_keys}")
        self.wait_saves()  # background saves first, so the packets go to this episode only
        self._copy_next = dict(videos)
        try:
            return super().save_episode(task=task, success=success)
        finally:
            self._copy_next = {}

    def video_copy_problem(self, key: str, src: PacketSource) -> str | None:
        """Why the packets of `src` cannot be episode video of `key` here (None: they can): the codec this
        writer encodes `key` with, its pix_fmt and the feature's size must be the stream's; see packet_problem."""
        if key not in self._video_keys:
            return f"{key!r} is not stored as video here"
        h, w = self.features[key].shape[:2]
        if key not in self._codecs:
            self._codecs[key] = choose_codec(self.video_options, w, h)
        want = StreamSignature(encoder_codec(self._codecs[key]), int(w), int(h), self.video_options.pix_fmt, b"")
        return packet_problem(src, float(self.fps), want)

    # ----- EpisodeWriter ----------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return int(self.info["total_episodes"])

    def _commit_file(self) -> str:
        return "meta/info.json"

    def _write_episode(
        self, data: dict[str, np.ndarray], task: str | None, success: bool | None, journal: Journal
    ) -> int:
        task = task if task is not None else ""
        n = len(next(iter(data.values())))
        ep_index = self.num_episodes
        start = int(self.info["total_frames"])
        new_task = task not in self.tasks
        task_index = self.tasks.index(task) if not new_task else len(self.tasks)
        data["timestamp"] = (np.arange(n) / self.fps).astype(np.float32)
        data["frame_index"] = np.arange(n, dtype=np.int64)
        data["episode_index"] = np.full(n, ep_index, dtype=np.int64)
        data["index"] = np.arange(start, start + n, dtype=np.int64)
        data["task_index"] = np.full(n, task_index, dtype=np.int64)

        ep_stats = {}
        for key in self._stats_keys:
            try:
                ep_stats[key] = array_stats(data[key], visual=self._is_visual(key), bins=self.stats_bins)
            except ValueError as e:
                raise ValueError(f"{self.root}: episode {ep_index}, feature {key!r}: {e}") from e

        row = {"episode_index": ep_index, "tasks": [task], "length": n}
        row.update(self._write_videos(ep_index, data, n, journal))
        row = {**row, **self._write_data(data, start, n, journal)}
        for key, st in ep_stats.items():
            res = st.result(self._shape(key), visual=self._is_visual(key))
            row.update({f"stats/{key}/{s}": np.asarray(res[s]).tolist() for s in STAT_NAMES})
        for key, st in ep_stats.items():
            self._global[key].merge(st)

        # metadata: episodes file, tasks, stats, and info.json last (commit point)
        self._commit_episode_row(row, success, journal)
        if new_task:
            self.tasks.append(task)
            table = _tasks_table(self.tasks)
            _write_parquet(journal, self.root / "meta/tasks.parquet", [table], table.schema)
        self._write_stats(journal)
        total_eps = ep_index + 1
        self.info.update(
            total_episodes=total_eps,
            total_frames=start + n,
            total_tasks=len(self.tasks),
            splits={"train": f"0:{total_eps}"},
            features=self._info_features(),
        )
        _write_json(journal, self.root / "meta/info.json", self.info)  # the commit point: last
        return ep_index

    def _start_background(self) -> None:
        """Background saves encode in a separate (niced) process: encoding in a thread of the recording process
        competes with its control loop (and in-process servo emulators) for the interpreter."""
        from robopolicy.data.encode_worker import EncoderProcess

        self._encoder = EncoderProcess()

    def _stop_background(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None

    def _encode(self, frames: np.ndarray, path: Path, fps: float, codec: str, options: VideoOptions, *,
                scratch) -> None:
        if self._encoder is None:
            encode_video(frames, path, fps, codec, options, scratch=scratch)
        else:
            self._encoder.encode(frames, path, fps, codec, options, scratch=scratch)

    def _write_videos(self, ep_index: int, data: dict[str, np.ndarray], n: int, journal: Journal) -> dict:
        cols = {}
        duration = n / self.fps
        limit = float(self.info["video_files_size_in_mb"])
        for key in self._video_keys:
            frames = data.pop(key)
            h, w, _ = frames.shape[1:]
            if key not in self._codecs:
                self._codecs[key] = choose_codec(self.video_options, w, h)
            codec = self._codecs[key]
            cursor = self._video_cursors[key]
            # the episode alone first (its size decides the rollover), then appended to the shared file
            ep_file = self.root / "videos" / key / f".episode-{ep_index:06d}.mp4"
            source = self._copy_next.get(key)
            if source is not None:
                if source.frames != n:
                    raise ValueError(f"{key}: {n} frames buffered, the packets to copy hold {source.frames}")
                journal.write_with(ep_file, lambda tmp, source=source: copy_packets(source, tmp, float(self.fps)))
            else:
                journal.write_with(
                    ep_file,
                    lambda tmp, frames=frames, codec=codec: self._encode(
                        frames, tmp, self.fps, codec, self.video_options, scratch=journal.temp_path
                    ),
                )
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=cursor.chunk, file_index=cursor.file)
            if cursor.used > 0 and (
                _size_mb(path) + _size_mb(ep_file) >= limit or stream_signature(path) != stream_signature(ep_file)
            ):
                cursor.advance(int(self.info["chunks_size"]))
                path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=cursor.chunk, file_index=cursor.file)
            existing = path if cursor.used > 0 else None
            journal.write_with(
                path,
                lambda tmp, existing=existing, keep=cursor.used, ep_file=ep_file: append_video(
                    existing, keep, ep_file, tmp, duration
                ),
            )
            journal.remove(ep_file)
            if key not in self._video_info:
                info = probe_video(path)
                info["video.encoder"] = codec
                info.update(
                    {
                        f"video.{k}": int(v) if v.lstrip("-").isdigit() else v  # ints, as LeRobot writes them
                        for k, v in self.video_options.encoder_options(codec).items()
                        if k in ("g", "crf", "preset", "qscale")
                    }
                )
                self._video_info[key] = info
            from_ts = cursor.used
            cursor.used = from_ts + duration
            cols.update(
                {
                    f"videos/{key}/chunk_index": cursor.chunk,
                    f"videos/{key}/file_index": cursor.file,
                    f"videos/{key}/from_timestamp": from_ts,
                    f"videos/{key}/to_timestamp": cursor.used,
                }
            )
        return cols

    def _write_data(self, data: dict[str, np.ndarray], start: int, n: int, journal: Journal) -> dict:
        schema = self._data_schema()
        columns = []
        for name in schema.names:
            store = INDEX_DTYPES.get(name) or self._store[name]
            if store == "image":
                columns.append(_png_column(data[name]))
            else:
                columns.append(_column(data[name], store, self._shape(name)))
        table = pa.Table.from_arrays(columns, schema=schema)
        cursor = self._data_cursor
        path = self.root / DATA_PATH.format(chunk_index=cursor.chunk, file_index=cursor.file)
        if cursor.used > 0 and _size_mb(path) + table.nbytes / 2**20 >= float(self.info["data_files_size_in_mb"]):
            cursor.advance(int(self.info["chunks_size"]))
            path = self.root / DATA_PATH.format(chunk_index=cursor.chunk, file_index=cursor.file)
        tables = _committed_row_groups(path, int(cursor.used)) if cursor.used > 0 else []
        _write_parquet(journal, path, [*tables, table], schema)
        cursor.used += n
        return {
            "data/chunk_index": cursor.chunk,
            "data/file_index": cursor.file,
            "dataset_from_index": start,
            "dataset_to_index": start + n,
        }

    def _commit_episode_row(self, row: dict, success: bool | None, journal: Journal) -> None:
        cursor = self._meta_cursor
        path = self.root / EPISODES_PATH.format(chunk_index=cursor.chunk, file_index=cursor.file)
        if cursor.used > 0 and _size_mb(path) >= float(self.info["data_files_size_in_mb"]):
            cursor.advance(int(self.info["chunks_size"]))
            self._episode_rows = _Rows()
            path = self.root / EPISODES_PATH.format(chunk_index=cursor.chunk, file_index=cursor.file)
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = cursor.chunk, cursor.file
        row[SUCCESS_COLUMN] = None if success is None else bool(success)
        self._episode_rows.append(row)
        cursor.used = len(self._episode_rows)
        schema = self._episodes_schema()
        _write_parquet(journal, path, [pa.Table.from_pylist(self._episode_rows, schema=schema)], schema)

    def _write_stats(self, journal: Journal) -> None:
        stats = {k: s.result(self._shape(k), visual=self._is_visual(k)) for k, s in self._global.items() if s.n}
        _write_json(journal, self.root / "meta/stats.json", stats_to_json(stats))
        arrays = {"total_frames": np.array(self._global["index"].frames)}
        for key, s in self._global.items():
            arrays.update({f"{key}::{name}": np.asarray(getattr(s, name)) for name in _SKETCH_FIELDS})
        journal.write_with(self.root / SKETCH_FILE, lambda tmp: _save_npz(tmp, arrays))


_SKETCH_FIELDS = ("frames", "n", "integer", "mean", "m2", "min", "max", "log2w", "lo", "counts")


def _sketch_from_npz(z, key: str) -> RunningStats:
    counts = z[f"{key}::counts"]
    s = RunningStats(counts.shape[0], counts.shape[1])
    for name in _SKETCH_FIELDS:
        value = z[f"{key}::{name}"]
        setattr(s, name, value.item() if value.ndim == 0 else value)
    s.frames, s.n, s.integer = int(s.frames), int(s.n), bool(s.integer)
    return s
