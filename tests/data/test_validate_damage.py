"""Damage sweep over copies of the real datasets: `robopolicy validate` never raises, exits 1 and names the file.

Each variant damages one file of a pristine copy (truncated at several offsets, random bytes, deleted, a
JSON document or key of the wrong type, metadata that lies), runs `robopolicy validate` in-process, then
restores the file. A variant passes when there is no exception, the exit status is 1 and the printed
problems name the damaged file (and the key, where one key was damaged).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from robopolicy.cli.main import main
from robopolicy.data.validate import validate_dataset
from tests.conftest import shared_dataset

INFO, STATS, TASKS = "meta/info.json", "meta/stats.json", "meta/tasks.parquet"
EPISODES, DATA0 = "meta/episodes/chunk-000/file-000.parquet", "data/chunk-000/file-000.parquet"
LEROBOT_FILES = (INFO, STATS, TASKS, EPISODES, DATA0)
# one value of each JSON type; a variant uses those whose type differs from the original value's
WRONG_VALUES: dict[str, object] = {
    "list": [1, 2], "string": "x", "number": 3.5, "null": None, "object": {}, "bool": True,
}  # fmt: skip
INFO_KEYS = (
    "codebase_version", "fps", "features", "total_episodes", "total_frames", "total_tasks", "chunks_size",
    "data_path", "video_path",
)  # fmt: skip
# name -> (video key, action key) of the real LeRobot datasets
LEROBOT = {
    "lerobot_v3_so101_record": ("observation.images.front", "action"),
    "lerobot_v3_pusht": ("observation.image", "action"),
    "lerobot_v3_open50": ("image", "actions"),
}
ZARR_FILES = (
    ".zgroup", ".zattrs", "data/.zgroup", "meta/.zgroup", "meta/episode_ends/.zarray", "meta/episode_ends/0",
    "data/action/.zarray", "data/action/0.0", "data/state/1.0", "data/img/0.0.0.0", "data/keypoint/.zarray",
)  # fmt: skip


@dataclass(frozen=True)
class Damage:
    """One damaged variant: `apply(root)` damages `target` (relative path); problems must mention `expect`."""

    id: str
    target: str
    apply: Callable[[Path], None]
    expect: tuple[str, ...] = ()
    harmless: bool = False  # the damage loses nothing (e.g. an optional empty file deleted): expect exit 0

    def must_mention(self) -> tuple[str, ...]:
        return self.expect or (self.target,)


def copy_writable(src: Path, dst: Path) -> Path:
    """Copy a dataset tree (the shared copies are read-only) into files and folders we may damage."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for folder, dirs, _ in os.walk(dst):
        os.chmod(folder, 0o755)
        for d in dirs:
            os.chmod(Path(folder) / d, 0o755)
    return dst


# ----- damage builders ------------------------------------------------------------------------------------


def _truncate(rel: str, at: float) -> Callable[[Path], None]:
    def fn(root: Path) -> None:
        data = (root / rel).read_bytes()
        n = int(at) if at >= 1 or at == 0 else int(len(data) * at)
        n = len(data) + n if at < 0 else n
        (root / rel).write_bytes(data[: max(0, min(n, len(data) - 1))])

    return fn


def _random_bytes(rel: str) -> Callable[[Path], None]:
    def fn(root: Path) -> None:
        size = max(64, (root / rel).stat().st_size)
        (root / rel).write_bytes(np.random.default_rng(len(rel)).integers(0, 256, size, dtype=np.uint8).tobytes())

    return fn


def _delete(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


def file_damages(files: tuple[str, ...]) -> list[Damage]:
    """Truncated at 0, 1 byte, half and one byte short; random bytes; deleted."""
    out = []
    for rel in files:
        for label, at in (("empty", 0), ("1byte", 1), ("half", 0.5), ("short1", -1)):
            out.append(Damage(f"{rel}:truncate-{label}", rel, _truncate(rel, at)))
        out.append(Damage(f"{rel}:random", rel, _random_bytes(rel)))
        out.append(Damage(f"{rel}:delete", rel, _delete(rel)))
    return out


def _edit_json(rel: str, edit: Callable[[object], object]) -> Callable[[Path], None]:
    def fn(root: Path) -> None:
        path = root / rel
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    return fn


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {list: "list", str: "string", dict: "object", type(None): "null"}[type(value)]


def _set(path: tuple[str, ...], value: object) -> Callable[[object], object]:
    def edit(doc: object) -> object:
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return doc

    return edit


def json_type_damages(root: Path, rel: str, key_paths: list[tuple[str, ...]], whole_doc: bool = True) -> list[Damage]:
    """The whole document (`whole_doc`), then each key path, replaced by a value of every other JSON type."""
    doc = json.loads((root / rel).read_text())
    out = [
        Damage(f"{rel}:doc-{t}", rel, _edit_json(rel, lambda _d, v=v: v))
        for t, v in WRONG_VALUES.items()
        if t != "object" and whole_doc
    ]
    for path in key_paths:
        node = doc
        for k in path:
            node = node[k]
        for t, v in WRONG_VALUES.items():
            if t != _json_type(node):
                out.append(Damage(f"{rel}:{'.'.join(path)}={t}", rel, _edit_json(rel, _set(path, v)), (rel, path[-1])))
    return out


def _rewrite(rel: str, fn: Callable[[pa.Table], pa.Table]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        table = pq.read_table(root / rel)
        pq.write_table(fn(table), root / rel)

    return apply


def _with_column(table: pa.Table, name: str, values: list) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, pa.array(values, table.schema.field(name).type))


def lie_damages(root: Path, video_key: str, action_key: str) -> list[Damage]:
    """Metadata that parses but lies: fps, dtype, task_index, video from/to timestamps."""
    info = json.loads((root / INFO).read_text())
    out = [
        Damage(f"fps={v!r}", INFO, _edit_json(INFO, _set(("fps",), v)), (INFO, "fps"))
        for v in (0, -10, "10", float("nan"))
    ]
    out.append(
        Damage(
            "dtype-int8-for-float32", INFO, _edit_json(INFO, _set(("features", action_key, "dtype"), "int8")),
            (action_key, "int8"),
        )
    )  # fmt: skip
    out.append(
        Damage("dtype-unknown", INFO, _edit_json(INFO, _set(("features", action_key, "dtype"), "float33")), (INFO,))
    )
    out.append(Damage("shape-wrong", INFO, _edit_json(INFO, _set(("features", action_key, "shape"), [3, 5])),
                      (action_key,)))  # fmt: skip
    num_tasks = int(info["total_tasks"])
    for v in (-1, num_tasks):
        first_row = _map_column("task_index", lambda values, v=v: [v, *values[1:]])
        out.append(Damage(f"task_index={v}", DATA0, _rewrite(DATA0, first_row), (DATA0, "task_index")))
    col = f"videos/{video_key}/from_timestamp"

    def onto_previous(t: pa.Table) -> pa.Table:  # episode 1 serves episode 0's frames (same file, same start)
        for c in (col, f"videos/{video_key}/chunk_index", f"videos/{video_key}/file_index"):
            v = t.column(c).to_pylist()
            t = _with_column(t, c, [v[0], v[0], *v[2:]])
        return t

    def both_shifted(t: pa.Table) -> pa.Table:  # from and to both moved by one episode duration
        frm, to = t.column(col).to_pylist(), t.column(col.replace("from_", "to_")).to_pylist()
        d = to[1] - frm[1]
        t = _with_column(t, col, [frm[0], frm[1] + d, *frm[2:]])
        return _with_column(t, col.replace("from_", "to_"), [to[0], to[1] + d, *to[2:]])

    out.append(Damage("from_timestamp-onto-previous", EPISODES, _rewrite(EPISODES, onto_previous), (EPISODES, col)))
    out.append(Damage("from_to-shifted", EPISODES, _rewrite(EPISODES, both_shifted), (EPISODES, video_key)))
    for key in ("timestamp", action_key):  # numbers stored as strings
        as_text = _map_column(key, lambda values: [str(x) for x in values], keep_type=False)
        out.append(Damage(f"string-column-{key}", DATA0, _rewrite(DATA0, as_text), (DATA0, key)))
    return out


def _map_column(name: str, fn: Callable[[list], list], keep_type: bool = True) -> Callable[[pa.Table], pa.Table]:
    """Table -> table with column `name` replaced by fn(its values) (in its arrow type when `keep_type`)."""

    def apply(table: pa.Table) -> pa.Table:
        i = table.schema.get_field_index(name)
        values = fn(table.column(name).to_pylist())
        return table.set_column(i, name, pa.array(values, table.schema.field(name).type if keep_type else None))

    return apply


def lerobot_damages(name: str, root: Path, full: bool) -> list[Damage]:
    """All variants for one LeRobot dataset; `full` adds the per-key JSON type sweep."""
    video_key, action_key = LEROBOT[name]
    out = [d for d in file_damages(LEROBOT_FILES) if d.id != f"{EPISODES}:delete"]
    # the only episodes file gone: nothing on disk says what it was called, the problem names the folder
    out.append(Damage(f"{EPISODES}:delete", EPISODES, _delete(EPISODES), ("meta/episodes/",)))
    out += json_type_damages(root, INFO, [(k,) for k in INFO_KEYS] if full else [("fps",), ("features",)])
    if full:
        feature_paths = [("features", action_key), ("features", action_key, "dtype"), ("features", action_key, "shape")]
        out += json_type_damages(root, INFO, feature_paths, whole_doc=False)
    stats_keys = [(action_key,), (action_key, "mean")] if full else [(action_key, "mean")]
    out += json_type_damages(root, STATS, stats_keys)
    out += lie_damages(root, video_key, action_key)
    return out


def zarr_damages() -> list[Damage]:
    out = [d for d in file_damages(ZARR_FILES) if d.id != ".zattrs:delete"]
    out.append(Damage(".zattrs:delete", ".zattrs", _delete(".zattrs"), harmless=True))  # optional and empty
    return out


# ----- running one variant --------------------------------------------------------------------------------


def run_variant(root: Path, damage: Damage, capsys, extra: tuple[str, ...] = ("--no-videos",)) -> None:
    path = root / damage.target
    saved = path.read_bytes()
    try:
        damage.apply(root)
        capsys.readouterr()
        rc = main(["validate", str(root), *extra])
        out = capsys.readouterr()
        text = out.out + out.err
    finally:
        path.write_bytes(saved)
    if damage.harmless:
        assert rc == 0, f"{damage.id}: {text}"
        return
    assert rc == 1, f"{damage.id}: exit {rc}\n{text}"
    for word in damage.must_mention():
        assert word in text, f"{damage.id}: problems do not mention {word!r}:\n{text}"


def small_pusht_zarr(src: Path, dst: Path, episodes: int = 3) -> Path:
    """The first `episodes` episodes of the diffusion-policy PushT store, same layout, chunks and codec."""
    source = zarr.open_group(str(src), mode="r")
    n = int(source["meta/episode_ends"][episodes - 1])
    out = zarr.open_group(str(dst), mode="w", zarr_format=2)
    for group in ("data", "meta"):
        g = out.create_group(group)
        for key in source[group].array_keys():
            arr = source[group][key]
            rows = episodes if key == "episode_ends" else n
            new = g.create_array(key, shape=(rows, *arr.shape[1:]), chunks=arr.chunks, dtype=arr.dtype,
                                 compressors=arr.compressors)  # fmt: skip
            new[:] = arr[:rows]
    return dst


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("damage")
    out = {name: copy_writable(shared_dataset(name), base / name) for name in LEROBOT}
    out["zarr"] = small_pusht_zarr(shared_dataset("pusht_cchi_v7_replay.zarr"), base / "small.zarr")
    return out


def _ids(damages: list[Damage]) -> list[str]:
    return [d.id for d in damages]


def test_pristine_copies_are_clean(copies):
    assert validate_dataset(copies["lerobot_v3_pusht"]) == []
    assert validate_dataset(copies["zarr"]) == []
    assert {p.check for p in validate_dataset(copies["lerobot_v3_so101_record"])} == {"missing_video"}


@pytest.mark.parametrize(
    "name", [n if n != "lerobot_v3_open50" else pytest.param(n, marks=pytest.mark.slow) for n in LEROBOT]
)
def test_lerobot_damage_sweep(copies, capsys, name):
    root = copies[name]
    damages = lerobot_damages(name, root, full=name == "lerobot_v3_so101_record")
    assert len(damages) >= 50
    for damage in damages:
        run_variant(root, damage, capsys)
    assert {p.check for p in validate_dataset(root, videos=False)} <= {"missing_video"}  # restored


def test_zarr_damage_sweep(copies, capsys):
    root = copies["zarr"]
    for damage in zarr_damages():
        run_variant(root, damage, capsys)
    assert validate_dataset(root) == []


@pytest.mark.slow
def test_damaged_real_zarr_chunk(tmp_path, capsys):
    """A corrupt image chunk of the full store is found (it is never read when training on state only)."""
    root = copy_writable(shared_dataset("pusht_cchi_v7_replay.zarr"), tmp_path / "pusht.zarr")
    run_variant(root, Damage("img chunk", "data/img/17.0.0.0", _truncate("data/img/17.0.0.0", 0.5)), capsys, ())
    run_variant(root, Damage("action chunk", "data/action/3.0", _random_bytes("data/action/3.0")), capsys, ())


def test_lies_with_videos_checked(copies, capsys):
    """The shifted-video variants with the video checks on (pusht: episodes concatenated in one file)."""
    root = copies["lerobot_v3_pusht"]
    for damage in lie_damages(root, *LEROBOT["lerobot_v3_pusht"]):
        if damage.target == EPISODES:
            run_variant(root, damage, capsys, ())


def test_missing_dataset_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope")]) == 2
    assert "no such dataset" in capsys.readouterr().err
