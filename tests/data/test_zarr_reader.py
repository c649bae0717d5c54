"""ZarrDataset against the real PushT store and small stores built here with zarr directly."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError


def test_pusht_zarr_shape_and_episodes(pusht_zarr):
    ds = open_dataset(pusht_zarr)
    assert ds.format == "zarr"
    assert ds.num_episodes == 206
    assert ds.num_frames == 25650
    shapes = {k: f.shape for k, f in ds.features.items()}
    assert shapes == {"img": (96, 96, 3), "state": (5,), "keypoint": (9, 2), "action": (2,), "n_contacts": (1,)}
    kinds = {k: f.kind for k, f in ds.features.items()}
    assert kinds["img"] == "image" and kinds["action"] == "action" and kinds["state"] == "state"
    ends = zarr.open_group(str(pusht_zarr), mode="r")["meta/episode_ends"][:]
    np.testing.assert_array_equal(ds.episode_ends, ends)
    assert ds.episodes[0].length == 161 and ds.episodes[1].start == 161


def test_pusht_zarr_images_are_uint8_chw_and_exact(pusht_zarr):
    ds = open_dataset(pusht_zarr)
    raw = zarr.open_group(str(pusht_zarr), mode="r")["data/img"]
    idx = np.array([0, 5000, 25649, 5000])
    got = ds.read("img", idx)
    assert got.dtype == np.uint8 and got.shape == (4, 3, 96, 96)
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(got[j].transpose(1, 2, 0), raw[int(i)].astype(np.uint8))


def test_cache_returns_same_frames(pusht_zarr):
    plain = open_dataset(pusht_zarr)
    cached = open_dataset(pusht_zarr, cache_mb=1024)
    idx = np.array([3, 400, 3, 25000])
    np.testing.assert_array_equal(plain.read("img", idx), cached.read("img", idx))
    np.testing.assert_array_equal(plain.read("img", idx), cached.read("img", idx))  # served from cache


def _make_store(path, lengths, *, zarr_format=2, state_rows=None):
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    total = int(sum(lengths))
    data = root.create_group("data")
    state = data.create_array("state", shape=(state_rows or total, 3), dtype="float32", chunks=(4, 3))
    state[:] = np.arange((state_rows or total) * 3, dtype=np.float32).reshape(-1, 3)
    action = data.create_array("action", shape=(total, 2), dtype="float32", chunks=(4, 2))
    action[:] = np.arange(total * 2, dtype=np.float32).reshape(-1, 2)
    meta = root.create_group("meta")
    ends = meta.create_array("episode_ends", shape=(len(lengths),), dtype="int64")
    ends[:] = np.cumsum(lengths)
    return path


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_reads_zarr_v2_and_v3(tmp_path, zarr_format):
    path = _make_store(tmp_path / "s.zarr", [3, 5], zarr_format=zarr_format)
    ds = open_dataset(path)
    assert [ep.length for ep in ds.episodes] == [3, 5]
    np.testing.assert_array_equal(ds.read_episode("action", 1)[0], [6.0, 7.0])


def test_episode_ends_disagreeing_with_arrays_is_a_clear_error(tmp_path):
    path = _make_store(tmp_path / "bad.zarr", [3, 5], state_rows=7)
    with pytest.raises(DatasetError, match=r"data/state has 7 rows but meta/episode_ends ends at 8"):
        open_dataset(path)


def test_missing_episode_ends(tmp_path):
    root = zarr.open_group(str(tmp_path / "x.zarr"), mode="w", zarr_format=2)
    root.create_group("data").create_array("a", shape=(2,), dtype="float32")
    root.create_group("meta")
    with pytest.raises(DatasetError, match="episode_ends: missing"):
        open_dataset(tmp_path / "x.zarr")


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a dataset"):
        open_dataset(tmp_path / "empty")


def test_a_sparse_foreign_store_needs_missing_chunks_fill(tmp_path):
    """zarr-python 3 skips all-fill chunks by default: such a store is refused unless told it is sparse."""
    from robopolicy.data.errors import MissingChunkError

    path = _make_store(tmp_path / "sparse.zarr", [4, 4], zarr_format=3)
    action = zarr.open_group(str(path), mode="r+")["data/action"]
    action[4:8] = 0  # one chunk of zeros: zarr deletes its file
    assert not (path / "data/action/c/1/0").exists()
    with pytest.raises(MissingChunkError, match=r"data/action/c/1/0 is missing.*missing_chunks='fill'"):
        open_dataset(path).read("action", np.arange(8))
    ds = open_dataset(path, missing_chunks="fill")
    np.testing.assert_array_equal(ds.read("action", np.arange(8))[4:], np.zeros((4, 2)))
