"""open_dataset on damaged metadata: a DatasetError naming the file, never AttributeError / ArrowInvalid / a silently
missing array."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[1, 2, 3]", "must be a JSON object, found list"),
        (b'"v3.0"', "must be a JSON object, found str"),
        (b"null", "must be a JSON object, found NoneType"),
        (b'{"codebase_version": 3.0}', "codebase_version must be a string"),
        (b'{"codebase_version": ["v3.0"]}', "codebase_version must be a string"),
        (b'{"codebase_version": "v9"}', "unsupported codebase_version 'v9'"),
        (b'{"codebase_version": "v3', "not valid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"", "not valid JSON"),
    ],
)
def test_a_damaged_info_json_is_a_dataset_error_naming_it(tmp_path, content, message):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_bytes(content)
    with pytest.raises(DatasetError, match=message) as err:
        open_dataset(tmp_path)
    assert str(tmp_path / "meta" / "info.json") in str(err.value)


SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _copy(name: str, tmp_path: Path) -> Path:
    src = SHARED / name
    if not src.exists():
        pytest.skip(f"real dataset not found at {src}")
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _read_all(root: Path) -> None:
    with open_dataset(root) as ds:
        for key, feat in ds.features.items():
            if not feat.is_visual:
                ds.read(key, np.arange(ds.num_frames))


@pytest.mark.parametrize("which", ["meta/tasks.parquet", "episodes", "data"])
@pytest.mark.parametrize("keep", [0, 100, -200])
def test_a_truncated_parquet_of_a_lerobot_dataset_is_named(tmp_path, which, keep):
    root = _copy("lerobot_v3_pusht", tmp_path)
    folder = {"episodes": root / "meta" / "episodes", "data": root / "data"}.get(which)
    path = next(folder.rglob("*.parquet")) if folder else root / which
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DatasetError, match="truncated or corrupt|not a readable parquet") as err:
        _read_all(root)
    assert str(path) in str(err.value)


def test_a_lost_zarr_array_metadata_file_is_named_not_dropped(tmp_path):
    root = _copy("pusht_cchi_v7_replay.zarr", tmp_path)
    (root / "data" / "action" / ".zarray").unlink()
    with pytest.raises(DatasetError, match=r"data/action/\.zarray: missing"):
        open_dataset(root)


@pytest.mark.parametrize("fps", ["10", -5, 0, [10]])
def test_zarr_attributes_that_lie_are_refused(tmp_path, fps):
    root = _copy("pusht_cchi_v7_replay.zarr", tmp_path)
    (root / ".zattrs").write_text(json.dumps({"robopolicy": {"fps": fps}}))
    with pytest.raises(DatasetError, match="fps"):
        open_dataset(root)
