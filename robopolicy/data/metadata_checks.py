"""Metadata checks that need no opened dataset: what `validate` reports and the readers should refuse.

Every check returns a list of `Problem`s whose message names the file and the key; none raises on bad
input (wrong JSON types, unreadable files, values of the wrong kind). `check_metadata(root)` runs the
checks for the format on disk, file by file, before anything is opened. Readers call the single checks on
what they loaded (`load_json`, `read_parquet`, `check_info`, `check_stats_json`, `check_episodes_table`,
`check_column_types`, `check_task_index`, `check_video_spans`, `check_robopolicy_attrs`,
`check_zarr_metadata(root, chunks=False)`) and `raise_problems(...)` the result, so a lie is refused
when opening, not only reported by `robopolicy validate`.

Lies checked: fps that is not a positive finite number; an info.json dtype other than the parquet column's
arrow type (int8 declared for float32 data); task_index outside [0, number of tasks); video
from/to_timestamp that do not match the episode's length and fps, or spans of one file that overlap
(an episode served another episode's frames), leave gaps or do not start at 0.
"""

from __future__ import annotations

import itertools
import json
import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robopolicy.data.errors import DatasetError
from robopolicy.data.features import Feature
from robopolicy.data.storage import LOCAL, Storage

TEXT_DTYPES = ("string", "language")
VISUAL_DTYPES = ("video", "image")
# Bookkeeping columns and the arrow type family they must have.
INDEX_COLUMN_KINDS = {
    "timestamp": "float",
    "frame_index": "int",
    "episode_index": "int",
    "index": "int",
    "task_index": "int",
}
V3_TEMPLATE_FIELDS = {
    "data_path": {"chunk_index", "file_index"},
    "video_path": {"chunk_index", "file_index", "video_key"},
}
V2_TEMPLATE_FIELDS = {
    "data_path": {"episode_chunk", "episode_index"},
    "video_path": {"episode_chunk", "episode_index", "video_key"},
}
EPISODE_INT_COLUMNS = (
    "episode_index",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)
# Slack on video from/to timestamps (seconds): far below one frame, far above float rounding.
TIME_EPS = 1e-3
_LIST_LIMIT = 8


@dataclass(frozen=True)
class Problem:
    """One finding: `check` names the rule, `key` / `episodes` (episode indices) / `file` what it concerns."""

    check: str
    message: str
    key: str | None = None
    episodes: tuple[int, ...] = ()
    file: str | None = None

    def __str__(self) -> str:
        return self.message


def raise_problems(problems: Sequence[Problem]) -> None:
    """For readers: raise one DatasetError listing every problem (nothing when there are none)."""
    if problems:
        raise DatasetError("; ".join(p.message for p in problems))


# ----- small helpers ---------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(items: Iterable[Any]) -> str:
    items = list(items)
    more = f", ... ({len(items)} in total)" if len(items) > _LIST_LIMIT else ""
    return ", ".join(map(str, items[:_LIST_LIMIT])) + more


def load_json(path: PurePath, check: str, storage: Storage = LOCAL) -> tuple[Any, list[Problem]]:
    """(document, []) or (None, [problem]) for a missing, unreadable, non-UTF-8 or invalid JSON file."""
    if not storage.is_file(path):
        return None, [Problem(check, f"{path}: missing; restore it from the dataset's source", file=str(path))]
    try:
        return json.loads(storage.read_bytes(path).decode("utf-8")), []
    except OSError as e:
        why = f"cannot be read ({e})"
    except UnicodeDecodeError as e:
        why = f"is not text (not UTF-8: {e.reason} at byte {e.start}); it is corrupt"
    except (ValueError, RecursionError) as e:
        why = f"is not valid JSON ({e})"
    return None, [Problem(check, f"{path}: {why}; restore it from the dataset's source", file=str(path))]


def read_parquet(path: Path, check: str, columns: list[str] | None = None) -> tuple[pa.Table | None, list[Problem]]:
    """(table, []) or (None, [problem]) for a missing, truncated or corrupt parquet file."""
    if not path.is_file():
        return None, [Problem(check, f"{path}: missing; restore it from the dataset's source", file=str(path))]
    try:
        return pq.read_table(path, columns=columns), []
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ArrowNotImplementedError... for damaged files
        msg = f"{path}: not a readable parquet file ({type(e).__name__}: {e}); it is truncated or corrupt — restore it"
        return None, [Problem(check, msg, file=str(path))]


# ----- info.json ---------------------------------------------------------------------------------------------


def check_fps(fps: Any, where: Path | str) -> list[Problem]:
    """fps must be a finite number > 0 (LeRobot stores an int)."""
    if not _is_number(fps) or not math.isfinite(fps) or fps <= 0:
        shown = repr(fps) if _is_number(fps) else f"{fps!r} ({_type_name(fps)})"
        return [Problem("info", f"{where}: `fps` must be a positive number, got {shown}", "fps", file=str(where))]
    return []


def _check_template(value: Any, key: str, fields: set[str], where: Path) -> list[Problem]:
    def bad(why: str) -> list[Problem]:
        return [Problem("info", f"{where}: `{key}` {why}", key, file=str(where))]

    if not isinstance(value, str):
        return bad(f"must be a path template string, got {_type_name(value)}")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        unknown = sorted(names - fields)
        if unknown:
            return bad(f"= {value!r} uses unknown fields {unknown} (allowed: {sorted(fields)})")
        value.format(**{f: ("k" if f == "video_key" else 0) for f in fields})
    except (ValueError, IndexError, KeyError) as e:
        return bad(f"= {value!r} is not a valid path template ({e})")
    return []


def check_feature_spec(name: str, spec: Any, where: Path) -> list[Problem]:
    """One info.json feature: {dtype: str, shape: [int >= 0, ...], names?, info?}."""

    def bad(why: str) -> list[Problem]:
        return [Problem("info", f"{where}: feature {name!r} {why}", name, file=str(where))]

    if not isinstance(spec, dict):
        return bad(f"must be an object with `dtype` and `shape`, got {_type_name(spec)}")
    dtype, shape = spec.get("dtype"), spec.get("shape")
    if not isinstance(dtype, str):
        return bad(f"`dtype` must be a string, got {_type_name(dtype)}")
    if dtype not in VISUAL_DTYPES + TEXT_DTYPES:
        try:
            kind = np.dtype(dtype).kind
        except TypeError:
            kind = ""
        if kind not in "biuf" or not kind:
            return bad(f"has unknown dtype {dtype!r} (expected a numeric dtype, 'video', 'image' or 'string')")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        return bad(f"`shape` must be a list of non-negative integers, got {shape!r}")
    if dtype in VISUAL_DTYPES and len(shape) != 3:
        return bad(f"is {dtype} and must have shape [H, W, C], got {shape}")
    if spec.get("names") is not None and not isinstance(spec["names"], (list, dict)):
        return bad(f"`names` must be a list, an object or null, got {_type_name(spec['names'])}")
    if spec.get("info") is not None and not isinstance(spec["info"], dict):
        return bad(f"`info` must be an object, got {_type_name(spec['info'])}")
    return []


def check_info(info: Any, where: Path) -> list[Problem]:
    """meta/info.json of a LeRobot v3.0 / v2.x dataset: JSON types of every key the readers use."""

    def bad(key: str | None, why: str) -> Problem:
        return Problem("info", f"{where}: {why}", key, file=str(where))

    if not isinstance(info, dict):
        return [bad(None, f"must be a JSON object, got {_type_name(info)}; restore it from the dataset's source")]
    problems = []
    version = info.get("codebase_version")
    if not isinstance(version, str):
        problems.append(
            bad(
                "codebase_version",
                f"`codebase_version` must be a string like 'v3.0', got {version!r} ({_type_name(version)})",
            )
        )
        version = ""
    elif not version.startswith(("v2", "v3")):
        problems.append(
            bad("codebase_version", f"unsupported codebase_version {version!r} (supported: v2.1 read, v3.0)")
        )
    if "fps" not in info:
        problems.append(bad("fps", "`fps` is missing"))
    else:
        problems += check_fps(info["fps"], where)
    features = info.get("features")
    if not isinstance(features, dict) or not features:
        problems.append(bad("features", f"`features` must be a non-empty object, got {_type_name(features)}"))
        features = {}
    for name, spec in features.items():
        problems += check_feature_spec(name, spec, where)
    for key in ("total_episodes", "total_frames", "total_tasks", "chunks_size"):
        if key in info and not (_is_int(info[key]) and info[key] >= (1 if key == "chunks_size" else 0)):
            problems.append(
                bad(key, f"`{key}` must be a non-negative integer, got {info[key]!r} ({_type_name(info[key])})")
            )
    fields = V2_TEMPLATE_FIELDS if version.startswith("v2") else V3_TEMPLATE_FIELDS
    has_video = any(isinstance(s, dict) and s.get("dtype") == "video" for s in features.values())
    for key in ("data_path", "video_path"):
        if key == "video_path" and info.get(key) is None and not has_video:
            continue
        if key in info or (key == "video_path" and has_video and version.startswith("v3")):
            problems += _check_template(info.get(key), key, fields[key], where)
    return problems


# ----- stats.json --------------------------------------------------------------------------------------------


def check_stats_json(stats: Any, where: Path) -> list[Problem]:
    """meta/stats.json: {feature: {stat: number or nested list of numbers}}."""
    if not isinstance(stats, dict):
        return [
            Problem(
                "stats",
                f"{where}: must be a JSON object {{feature: {{stat: values}}}}, got {_type_name(stats)}",
                file=str(where),
            )
        ]
    problems = []
    for key, entry in stats.items():
        if not isinstance(entry, dict):
            msg = f"{where}: stats of {key!r} must be an object {{stat: values}}, got {_type_name(entry)}"
            problems.append(Problem("stats", msg, key, file=str(where)))
            continue
        for stat, values in entry.items():
            try:
                ok = isinstance(values, (list, int, float)) and not isinstance(values, bool)
                np.asarray(values, dtype=np.float64)
            except (ValueError, TypeError):
                ok = False
            if not ok:
                msg = (
                    f"{where}: {key!r} stat {stat!r} must be a number or a rectangular list of numbers, got "
                    f"{str(values)[:60]!r}; recompute the dataset stats"
                )
                problems.append(Problem("stats", msg, key, file=str(where)))
    return problems


# ----- parquet columns ---------------------------------------------------------------------------------------


def _leaf(t: pa.DataType) -> tuple[pa.DataType, list[int | None]]:
    """Innermost type of (nested) list types, and each level's fixed size (None when variable)."""
    sizes: list[int | None] = []
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        sizes.append(t.list_size if pa.types.is_fixed_size_list(t) else None)
        t = t.value_type
    return t, sizes


def _arrow_family(t: pa.DataType) -> str:
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return str(t)


def check_column_types(schema: pa.Schema, features: Mapping[str, Feature], where: Path) -> list[Problem]:
    """Each declared non-video feature is a column whose arrow type is the info.json dtype and shape."""
    problems = []

    def bad(key: str, why: str) -> None:
        problems.append(Problem("dtype", f"{where}: {why}", key, file=str(where)))

    for key, feat in features.items():
        if feat.dtype == "video":
            continue
        if key not in schema.names:
            msg = f"{where}: feature {key!r} is declared in meta/info.json but absent from this data file"
            problems.append(Problem("columns", msg, key, file=str(where)))
            continue
        column_type = schema.field(key).type
        leaf, sizes = _leaf(column_type)
        if feat.dtype == "image":
            ok = (
                pa.types.is_binary(leaf)
                or pa.types.is_large_binary(leaf)
                or (pa.types.is_struct(leaf) and leaf.get_field_index("bytes") >= 0)
            )
            if not ok:
                bad(key, f"{key!r} is an image feature in meta/info.json, but the column is {column_type}")
            continue
        if feat.dtype in TEXT_DTYPES:
            if _arrow_family(leaf) != "string":
                bad(key, f"{key!r} is {feat.dtype} in meta/info.json, but the column is {column_type}")
            continue
        try:
            want = pa.from_numpy_dtype(np.dtype(feat.dtype))
        except (TypeError, pa.ArrowNotImplementedError):
            bad(key, f"{key!r} has dtype {feat.dtype!r} in meta/info.json, which has no arrow type")
            continue
        if leaf != want:
            bad(
                key,
                f"{key!r} is {leaf} in the parquet, but meta/info.json declares dtype {feat.dtype}; "
                "the metadata lies about the stored values — fix info.json's dtype",
            )
            continue
        size = int(np.prod(feat.shape)) if feat.shape else 1
        if not sizes and size != 1:
            bad(key, f"{key!r} is a scalar column, but meta/info.json declares shape {list(feat.shape)}")
        elif sizes and None not in sizes and int(np.prod(sizes)) != size:
            bad(
                key,
                f"{key!r} holds {int(np.prod(sizes))} values per row, but meta/info.json declares shape "
                f"{list(feat.shape)}",
            )
    for key, family in INDEX_COLUMN_KINDS.items():
        if key in schema.names and key not in features:
            got = _arrow_family(schema.field(key).type)
            if got != family and not (family == "float" and got == "int"):
                bad(key, f"bookkeeping column {key!r} must be {family}, the parquet column is {schema.field(key).type}")
    return problems


def check_task_index(values: np.ndarray, num_tasks: int, where: Path | str) -> list[Problem]:
    """task_index values must lie in [0, num_tasks)."""
    values = np.asarray(values).reshape(-1)
    bad = np.nonzero((values < 0) | (values >= num_tasks))[0]
    if not bad.size:
        return []
    first = int(bad[0])
    return [
        Problem(
            "task_index",
            f"{where}: {bad.size} rows have task_index outside [0, {num_tasks}) (meta/tasks.parquet lists "
            f"{num_tasks} tasks; first at row {first}: task_index {int(values[first])}); their task is unknown",
            "task_index",
            file=str(where),
        )
    ]


# ----- video spans ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoSpan:
    """Where the episodes metadata says one episode of one camera lives."""

    episode: int
    length: int
    path: Path
    from_timestamp: float
    to_timestamp: float | None = None


def check_video_spans(key: str, spans: Sequence[VideoSpan], fps: float, where: Path | str) -> list[Problem]:
    """from/to_timestamp agree with length / fps; the spans of one file start at 0, tile it and never overlap.

    An episode serves the frames at from_timestamp + i / fps for i < length. to_timestamp may be the end of
    the last frame (LeRobot: from + length / fps) or its start (from + (length - 1) / fps).
    """
    problems = []

    def bad(eps: tuple[int, ...], why: str) -> None:
        col = f"videos/{key}/from_timestamp"
        problems.append(Problem("video_timestamps", f"{where}: {col}: {why}", key, eps, file=str(where)))

    frame = 1.0 / fps
    by_file: dict[Path, list[VideoSpan]] = {}
    for s in spans:
        if not math.isfinite(s.from_timestamp) or s.from_timestamp < -TIME_EPS:
            bad((s.episode,), f"episode {s.episode} starts at {s.from_timestamp} s; a time in the video must be >= 0")
            continue
        if s.to_timestamp is not None:
            d = s.to_timestamp - s.from_timestamp
            if not (math.isfinite(d) and (s.length - 1) * frame - TIME_EPS <= d <= (s.length + 1) * frame + TIME_EPS):
                bad(
                    (s.episode,),
                    f"episode {s.episode} spans {s.from_timestamp:.6g}..{s.to_timestamp:.6g} s = {d:.6g} "
                    f"s of video, but its {s.length} frames at fps={fps:g} last {s.length * frame:.6g} "
                    "s; the video location is wrong",
                )
                continue
        by_file.setdefault(s.path, []).append(s)
    for path, items in by_file.items():
        items = sorted(items, key=lambda s: s.from_timestamp)
        if items[0].from_timestamp > frame + TIME_EPS:
            bad(
                (items[0].episode,),
                f"the first episode in {path.name} ({items[0].episode}) starts at "
                f"{items[0].from_timestamp:.6g} s, not 0: its frames belong to nothing the "
                "metadata lists (a shifted from_timestamp?)",
            )
        for a, b in itertools.pairwise(items):
            end = a.from_timestamp + a.length * frame
            if b.from_timestamp < end - TIME_EPS:
                bad(
                    (a.episode, b.episode),
                    f"episodes {a.episode} and {b.episode} overlap in {path.name} "
                    f"({a.episode} covers {a.from_timestamp:.6g}..{end:.6g} s, {b.episode} "
                    f"starts at {b.from_timestamp:.6g} s): one serves the other's frames",
                )
            elif b.from_timestamp > end + frame + TIME_EPS:
                bad(
                    (a.episode, b.episode),
                    f"a gap of {b.from_timestamp - end:.6g} s between episodes {a.episode} "
                    f"and {b.episode} in {path.name}: frames no episode owns (a shifted "
                    "from_timestamp?)",
                )
    return problems


# ----- whole datasets ------------------------------------------------------------------------------------------


def check_metadata(root: Path) -> list[Problem]:
    """Every metadata problem of the local dataset at `root` (zarr store or LeRobot v3.0 / v2.x directory)."""
    root = Path(root)
    if not root.exists():
        return [Problem("open", f"{root}: no such dataset (expected a zarr store or a LeRobot directory)")]
    if not root.is_dir():
        return [Problem("open", f"{root}: not a directory (expected a zarr store or a LeRobot directory)")]
    if (root / ".zgroup").exists() or (root / "zarr.json").exists():
        return check_zarr_metadata(root)
    info_path = root / "meta" / "info.json"
    if info_path.exists():
        info, problems = load_json(info_path, "info")
        if problems:
            return problems
        problems = check_info(info, info_path)
        if problems:
            return problems
        if info["codebase_version"].startswith("v3"):
            return check_lerobot_v3(root, info)
        return _check_stats_file(root / "meta" / "stats.json", required=False)
    if any((root / d / m).exists() for d in ("data", "meta") for m in (".zgroup", "zarr.json")):
        return [
            Problem(
                "zarr",
                f"{root}/.zgroup: missing (and no zarr.json): the store's root group metadata is "
                'lost; restore it (a zarr v2 group holds {"zarr_format": 2})',
                file=str(root / ".zgroup"),
            )
        ]
    if (root / "meta").is_dir() or (root / "data").is_dir():
        return [
            Problem(
                "open",
                f"{info_path}: missing; this looks like a LeRobot dataset but meta/info.json is "
                "missing; restore it from the source or re-run `finalize()` on the writer",
                file=str(info_path),
            )
        ]
    return [Problem("open", f"{root}: not a dataset (no zarr group metadata and no meta/info.json)")]


def _check_stats_file(path: Path, *, required: bool) -> list[Problem]:
    if not path.exists():
        if not required:
            return []
        return [
            Problem(
                "stats",
                f"{path}: missing; every LeRobot v3.0 dataset has it (normalization needs it) — "
                "recompute it with `robopolicy stats --save`",
                file=str(path),
            )
        ]
    stats, problems = load_json(path, "stats")
    return problems or check_stats_json(stats, path)


def _features(info: dict, where: Path) -> dict[str, Feature]:
    from robopolicy.data.lerobot_format import parse_features

    return parse_features(info["features"], where)


def check_lerobot_v3(root: Path, info: dict) -> list[Problem]:
    """A v3.0 directory whose info.json passed `check_info`: stats, tasks, episodes metadata, data files."""
    meta = root / "meta"
    try:
        features = _features(info, meta / "info.json")
    except DatasetError as e:
        return [Problem("info", str(e), file=str(meta / "info.json"))]
    problems = _check_stats_file(meta / "stats.json", required=bool(info.get("total_episodes", 1)))
    num_tasks, task_problems = _check_tasks(meta / "tasks.parquet", info)
    problems += task_problems
    rows, episode_problems = _episode_rows(root, info, features)
    problems += episode_problems
    if episode_problems:
        return problems
    data_tpl = info.get("data_path") or "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    video_tpl = info.get("video_path")
    for key in [k for k, f in features.items() if f.dtype == "video"]:
        spans = [
            VideoSpan(
                int(r["episode_index"]),
                int(r["length"]),
                root
                / video_tpl.format(
                    video_key=key,
                    chunk_index=int(r[f"videos/{key}/chunk_index"]),
                    file_index=int(r[f"videos/{key}/file_index"]),
                ),
                float(r[f"videos/{key}/from_timestamp"]),
                None if r.get(f"videos/{key}/to_timestamp") is None else float(r[f"videos/{key}/to_timestamp"]),
            )
            for r, _ in rows
        ]
        problems += check_video_spans(key, spans, float(info["fps"]), _where(rows, meta))
    files: dict[Path, list[int]] = {}
    for r, _ in rows:
        path = root / data_tpl.format(chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"]))
        files.setdefault(path, []).append(int(r["episode_index"]))
    for path, eps in sorted(files.items()):
        if not path.is_file():
            problems.append(
                Problem(
                    "data_file",
                    f"{path}: data file of episodes [{_short(eps)}] is missing; restore it",
                    episodes=tuple(eps),
                    file=str(path),
                )
            )
            continue
        table, bad = read_parquet(path, "data_file")
        problems += bad
        if table is None:
            continue
        problems += check_column_types(table.schema, features, path)
        if num_tasks and "task_index" in table.column_names:
            ti = table.column("task_index")
            if pa.types.is_integer(ti.type) and not ti.null_count:
                problems += check_task_index(ti.to_numpy(), num_tasks, path)
    return problems


def _where(rows: list[tuple[dict, Path]], meta: Path) -> str:
    files = sorted({str(p) for _, p in rows})
    return files[0] if len(files) == 1 else f"{meta}/episodes"


def _check_tasks(path: Path, info: dict) -> tuple[int, list[Problem]]:
    """(number of tasks, problems) of meta/tasks.parquet."""
    declared = info.get("total_tasks", 0)
    if not path.exists():
        if declared:
            return 0, [
                Problem("tasks", f"{path}: missing although meta/info.json declares {declared} tasks", file=str(path))
            ]
        return 0, []
    table, problems = read_parquet(path, "tasks")
    if table is None:
        return 0, problems
    names = table.column_names
    index_cols = [c for c in ((table.schema.pandas_metadata or {}).get("index_columns") or []) if isinstance(c, str)]
    text = "task" if "task" in names else next((c for c in index_cols if c in names), None)
    if text is None or "task_index" not in names:
        msg = f"{path}: expected columns `task_index` and `task` (or a pandas index), got {names}"
        return 0, [Problem("tasks", msg, file=str(path))]
    ti = table.column("task_index")
    if not pa.types.is_integer(ti.type) or ti.null_count:
        return 0, [
            Problem("tasks", f"{path}: `task_index` must be integers, got {ti.type}", "task_index", file=str(path))
        ]
    if _arrow_family(table.column(text).type) != "string":
        return 0, [
            Problem("tasks", f"{path}: task strings ({text!r}) are {table.column(text).type}", text, file=str(path))
        ]
    values = sorted(ti.to_pylist())
    if values != list(range(len(values))):
        msg = f"{path}: task_index values must be 0..{len(values) - 1}, each once; got [{_short(values)}]"
        return 0, [Problem("tasks", msg, "task_index", file=str(path))]
    if _is_int(declared) and declared != len(values) and "total_tasks" in info:
        msg = f"{path}: lists {len(values)} tasks but meta/info.json declares total_tasks={declared}"
        return len(values), [Problem("tasks", msg, "total_tasks", file=str(path))]
    return len(values), []


def check_episodes_table(table: pa.Table, path: Path, video_keys: Sequence[str]) -> list[Problem]:
    """One meta/episodes parquet: the columns the readers use exist, are integers (timestamps: numbers), no nulls."""
    int_cols = list(EPISODE_INT_COLUMNS)
    float_cols: list[str] = []
    for key in video_keys:
        int_cols += [f"videos/{key}/chunk_index", f"videos/{key}/file_index"]
        float_cols += [f"videos/{key}/from_timestamp"]
    optional_float = [c.replace("from_", "to_") for c in float_cols]
    absent = [c for c in int_cols + float_cols if c not in table.column_names]
    if absent:
        msg = f"{path}: episodes metadata lacks columns {absent}; re-export the dataset"
        return [Problem("episodes", msg, file=str(path))]
    wrong = []
    for col in int_cols + float_cols + [c for c in optional_float if c in table.column_names]:
        family = _arrow_family(table.column(col).type)
        ok = family == "int" if col in int_cols else family in ("int", "float")
        if not ok or table.column(col).null_count:
            wrong.append(f"{col} ({table.column(col).type}, {table.column(col).null_count} nulls)")
    if "tasks" in table.column_names:
        leaf, sizes = _leaf(table.column("tasks").type)
        if len(sizes) != 1 or _arrow_family(leaf) != "string":
            wrong.append(f"tasks ({table.column('tasks').type}, expected a list of strings)")
    if wrong:
        msg = f"{path}: columns of the wrong type or with nulls: {wrong}; re-export the dataset"
        return [Problem("episodes", msg, file=str(path))]
    return []


def _episode_rows(
    root: Path, info: dict, features: Mapping[str, Feature]
) -> tuple[list[tuple[dict, Path]], list[Problem]]:
    """Rows of every meta/episodes parquet (with the file each came from), after checking their columns."""
    meta_dir = root / "meta" / "episodes"
    files = sorted(meta_dir.glob("chunk-*/file-*.parquet"))
    if not files and info.get("total_episodes") == 0:
        return [], []  # created and finalized without a single episode
    if not files:
        msg = (
            f"{meta_dir}/chunk-*/file-*.parquet: no episodes metadata; the dataset was not finalized — run the "
            "writer's finalize() or restore meta/episodes/"
        )
        return [], [Problem("episodes", msg, file=str(meta_dir))]
    video_keys = [k for k, f in features.items() if f.dtype == "video"]
    rows: list[tuple[dict, Path]] = []
    problems: list[Problem] = []
    for path in files:
        table, bad = read_parquet(path, "episodes")
        bad = bad or check_episodes_table(table, path, video_keys)
        problems += bad
        if bad:
            continue
        keep = [c for c in table.column_names if not c.startswith("stats/")]
        rows += [(r, path) for r in table.select(keep).to_pylist()]
    return rows, problems


# ----- zarr -----------------------------------------------------------------------------------------------------


_ZARR_META = (".zgroup", ".zarray", ".zattrs", "zarr.json")


def check_zarr_metadata(root: Path, *, chunks: bool = True) -> list[Problem]:
    """A diffusion-policy zarr store (v2 or v3): metadata files, the robopolicy attributes and (`chunks`)
    every chunk file present. Readers can call it with chunks=False (JSON files only, no listing)."""
    problems: list[Problem] = []
    docs: dict[Path, Any] = {}
    folders = [root] + [
        p for d in ("data", "meta") if (root / d).is_dir() for p in [root / d, *sorted((root / d).iterdir())]
    ]
    for folder in folders:
        if not folder.is_dir():
            continue
        present = [folder / m for m in _ZARR_META if (folder / m).exists()]
        if not any(p.name in (".zgroup", ".zarray", "zarr.json") for p in present):
            rel = folder.relative_to(root)
            kind = "group" if folder == root or folder.parent == root else "array"
            problems.append(
                Problem(
                    "zarr",
                    f"{folder}/{'.zarray' if kind == 'array' else '.zgroup'}: missing (and "
                    f"no zarr.json): the metadata of {kind} {str(rel)!r} is lost; restore it",
                    str(rel),
                    file=str(folder),
                )
            )
        for path in present:
            doc, bad = load_json(path, "zarr")
            if not bad and not isinstance(doc, dict):
                bad = [Problem("zarr", f"{path}: must be a JSON object, got {_type_name(doc)}", file=str(path))]
            problems += bad
            if not bad:
                docs[path] = doc
    for path, doc in docs.items():
        if path.name == ".zarray" or (path.name == "zarr.json" and doc.get("node_type") == "array"):
            problems += _check_zarr_array_doc(path, doc)
    for d in ("data", "meta"):
        if not (root / d).is_dir():
            problems.append(
                Problem(
                    "zarr",
                    f"{root}/{d}: missing; a diffusion-policy store needs data/ and meta/ groups",
                    d,
                    file=str(root / d),
                )
            )
    if not (root / "meta" / "episode_ends").is_dir() and (root / "meta").is_dir():
        problems.append(
            Problem(
                "zarr",
                f"{root}/meta/episode_ends: missing; the episode boundaries are lost",
                "episode_ends",
                file=str(root / "meta/episode_ends"),
            )
        )
    attrs = docs.get(root / ".zattrs")
    if attrs is None and root / "zarr.json" in docs:
        attrs = docs[root / "zarr.json"].get("attributes")
    if isinstance(attrs, dict) and "robopolicy" in attrs:
        where = root / (".zattrs" if (root / ".zattrs").exists() else "zarr.json")
        problems += check_robopolicy_attrs(attrs["robopolicy"], where)
    if problems or not chunks:
        return problems
    return _check_zarr_chunks_present(root)


def _check_zarr_array_doc(path: Path, doc: dict) -> list[Problem]:
    shape = doc.get("shape")
    chunks = doc.get("chunks")
    if chunks is None and isinstance(doc.get("chunk_grid"), dict):  # zarr v3
        chunks = (doc["chunk_grid"].get("configuration") or {}).get("chunk_shape")
    ok = (
        isinstance(shape, list)
        and all(_is_int(s) and s >= 0 for s in shape)
        and isinstance(chunks, list)
        and len(chunks) == len(shape)
        and all(_is_int(c) and c > 0 for c in chunks)
        and isinstance(doc.get("dtype", doc.get("data_type")), (str, list, dict))
    )
    if ok:
        return []
    msg = f"{path}: array metadata needs integer `shape`, positive `chunks` of the same length and a `dtype`; got {doc}"
    return [Problem("zarr", msg[:400], file=str(path))]


def check_robopolicy_attrs(attrs: Any, where: Path) -> list[Problem]:
    """The `robopolicy` group attribute of a zarr store: fps, tasks, episode_tasks, episode_success, kinds, names."""

    def bad(key: str | None, why: str) -> Problem:
        return Problem("zarr", f"{where}: attribute robopolicy{'.' + key if key else ''} {why}", key, file=str(where))

    if not isinstance(attrs, dict):
        return [bad(None, f"must be an object, got {_type_name(attrs)}")]
    problems = []
    if attrs.get("fps") is not None:
        problems += [bad("fps", p.message.split(": ", 1)[1]) for p in check_fps(attrs["fps"], where)]
    for key, kind in (
        ("tasks", list),
        ("episode_tasks", list),
        ("episode_success", list),
        ("kinds", dict),
        ("names", dict),
    ):
        if key in attrs and not isinstance(attrs[key], kind):
            problems.append(
                bad(key, f"must be {'a list' if kind is list else 'an object'}, got {_type_name(attrs[key])}")
            )
    if isinstance(attrs.get("tasks"), list) and not all(isinstance(t, str) for t in attrs["tasks"]):
        problems.append(bad("tasks", "must be a list of strings"))
    if isinstance(attrs.get("episode_tasks"), list) and not all(
        isinstance(t, list) and all(isinstance(s, str) for s in t) for t in attrs["episode_tasks"]
    ):
        problems.append(bad("episode_tasks", "must be a list of lists of task strings"))
    return problems


def _check_zarr_chunks_present(root: Path) -> list[Problem]:
    """Every chunk of every array exists (zarr silently serves fill values for a deleted chunk file)."""
    import zarr

    try:
        group = zarr.open_group(str(root), mode="r")
    except Exception as e:  # zarr raises several types for a broken store
        return [Problem("zarr", f"{root}: cannot open zarr group ({type(e).__name__}: {e})", file=str(root))]
    problems = []
    for d in ("data", "meta"):
        try:
            names = list(group[d].array_keys())
        except Exception as e:
            problems.append(
                Problem("zarr", f"{root}/{d}: cannot open group ({type(e).__name__}: {e})", d, file=str(root / d))
            )
            continue
        for name in names:
            where = root / d / name
            try:
                arr = group[d][name]
                missing = arr.nchunks - arr.nchunks_initialized
            except Exception as e:
                problems.append(
                    Problem("zarr", f"{where}: cannot open array ({type(e).__name__}: {e})", name, file=str(where))
                )
                continue
            if missing:
                coords = itertools.product(*(range(n) for n in arr.cdata_shape))
                absent = [p for p in (zarr_chunk_path(arr, root, c) for c in coords) if not p.exists()]
                shown = _short(str(p.relative_to(root)) for p in absent) if absent else "unknown"
                problems.append(
                    Problem(
                        "zarr",
                        f"{where}: {missing} of {arr.nchunks} chunk files are missing "
                        f"({shown}); zarr would silently serve fill values for those rows "
                        "— restore them",
                        name,
                        file=str(where),
                    )
                )
    return problems


def zarr_chunk_path(arr: Any, root: Path, coords: tuple[int, ...]) -> Path:
    """The file holding chunk `coords` of zarr array `arr` under store `root` (v2 and v3 key encodings)."""
    try:
        return root / arr.path / arr.metadata.encode_chunk_key(coords)
    except Exception:
        return root / arr.path / ".".join(map(str, coords))
