"""ZarrWriter: diffusion-policy layout, attrs, overwrite/append rules, crash safety."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import zarr

from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError, DatasetExistsError
from robopolicy.data.features import Feature
from robopolicy.data.writer import create_writer

FEATURES = {
    "img": Feature("img", "uint8", (6, 8, 3), "image"),
    "state": Feature("state", "float32", (5,), "state", names=["a", "b", "c", "d", "e"]),
    "keypoint": Feature("keypoint", "float32", (9, 2), "state"),
    "action": Feature("action", "float64", (2,), "action"),
}


def _frames(rng, n):
    return [
        {
            "img": rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
            "state": rng.normal(size=5).astype(np.float32),
            "keypoint": rng.normal(size=(9, 2)).astype(np.float32),
            "action": rng.normal(size=2),
        }
        for _ in range(n)
    ]


def _write(root, episodes, **kw):
    w = create_writer(root, FEATURES, 10, format="zarr", **kw)
    for i, frames in enumerate(episodes):
        for f in frames:
            w.add_frame(f)
        w.save_episode(task=f"task {i % 2}", success=i % 2 == 1)
    w.finalize()
    return w


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_round_trip_layout_and_attrs(tmp_path, zarr_format):
    rng = np.random.default_rng(0)
    eps = [_frames(rng, n) for n in (4, 7, 3)]
    root = tmp_path / "out.zarr"
    _write(root, eps, zarr_format=zarr_format)
    g = zarr.open_group(str(root), mode="r")
    assert g.metadata.zarr_format == zarr_format
    if zarr_format == 2:  # what diffusion_policy's zarr-2 ReplayBuffer opens
        assert (root / ".zgroup").exists() and (root / "data/img/.zarray").exists()
        meta = json.loads((root / "data/img/.zarray").read_text())
        assert meta["compressor"]["id"] == "blosc" and meta["compressor"]["cname"] == "zstd"
    ends = g["meta/episode_ends"]
    assert ends.dtype == np.int64 and ends[:].tolist() == [4, 11, 14]
    assert g["data/img"].dtype == np.uint8 and g["data/img"].shape == (14, 6, 8, 3)
    assert g["data/img"].chunks[1:] == (6, 8, 3)
    attrs = g.attrs["robopolicy"]
    assert attrs["fps"] == 10 and attrs["tasks"] == ["task 0", "task 1"]
    assert attrs["episode_tasks"] == [["task 0"], ["task 1"], ["task 0"]]
    assert attrs["episode_success"] == [False, True, False]
    assert attrs["kinds"]["img"] == "image" and attrs["names"]["state"] == ["a", "b", "c", "d", "e"]

    ds = open_dataset(root)
    assert ds.fps == 10 and [e.length for e in ds.episodes] == [4, 7, 3]
    flat = [f for ep in eps for f in ep]
    for key in ("state", "keypoint", "action"):
        np.testing.assert_array_equal(ds.read(key, np.arange(14)), np.stack([f[key] for f in flat]))
    np.testing.assert_array_equal(
        ds.read("img", np.arange(14)), np.stack([f["img"] for f in flat]).transpose(0, 3, 1, 2)
    )
    assert ds.episode_success == [False, True, False]


def test_existing_directory_needs_overwrite_or_append(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "d.zarr"
    _write(root, [_frames(rng, 3)])
    with pytest.raises(DatasetExistsError, match=str(root)):
        create_writer(root, FEATURES, 10, format="zarr")
    _write(root, [_frames(rng, 5)], overwrite=True)
    assert open_dataset(root).num_frames == 5
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(DatasetError, match="does not look like a dataset"):
        create_writer(foreign, FEATURES, 10, format="zarr", overwrite=True)
    assert (foreign / "thesis.tex").exists()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_append_continues_and_checks_features(tmp_path, zarr_format):
    rng = np.random.default_rng(2)
    root = tmp_path / "a.zarr"
    first, second = _frames(rng, 4), _frames(rng, 6)
    _write(root, [first], zarr_format=zarr_format)
    w = create_writer(root, FEATURES, 10, format="zarr", append=True)
    for f in second:
        w.add_frame(f)
    assert w.save_episode(task="new", success=True) == 1
    w.finalize()
    ds = open_dataset(root)
    assert ds.episode_ends.tolist() == [4, 10] and ds.tasks == ["task 0", "new"]
    np.testing.assert_array_equal(ds.read("state", np.arange(4, 10)), np.stack([f["state"] for f in second]))
    bad = {**FEATURES, "state": Feature("state", "float32", (4,), "state")}
    with pytest.raises(DatasetError, match="data/state"):
        create_writer(root, bad, 10, format="zarr", append=True)
    with pytest.raises(DatasetError, match="fps"):
        create_writer(root, FEATURES, 30, format="zarr", append=True)


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from robopolicy.data.features import Feature
    from robopolicy.data.writer import create_writer
    fmt, root = sys.argv[1], sys.argv[2]
    feats = {"img": Feature("img", "uint8", (8, 8, 3), "image"), "state": Feature("state", "float32", (3,), "state")}
    w = create_writer(root, feats, 10, format=fmt)
    rng = np.random.default_rng(0)
    for ep, n in enumerate((5, 6, 7)):
        for i in range(n):
            w.add_frame({"img": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "state": np.full(3, ep, np.float32)})
        if ep < 2:
            w.save_episode(task="t")
    os._exit(3)  # killed mid-episode: no finalize, no cleanup
    """
)


def run_crash_script(fmt: str, root) -> None:
    out = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, fmt, str(root)], capture_output=True, text=True)
    assert out.returncode == 3, out.stderr


def test_crash_mid_episode_leaves_saved_episodes(tmp_path):
    root = tmp_path / "crash.zarr"
    run_crash_script("zarr", root)
    ds = open_dataset(root)
    assert ds.episode_ends.tolist() == [5, 11]
    assert ds.read("state", np.arange(11))[:, 0].tolist() == [0.0] * 5 + [1.0] * 6


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_older_interrupted_save_is_served_committed_and_repaired_by_append(tmp_path, zarr_format):
    """What an older version (or diffusion_policy) left when killed after the data grew but before
    meta/episode_ends did: readers serve the committed episodes (with a warning), append drops the rows."""
    rng = np.random.default_rng(3)
    root = tmp_path / "r.zarr"
    eps = [_frames(rng, 4), _frames(rng, 3)]
    _write(root, eps, zarr_format=zarr_format)
    g = zarr.open_group(str(root), mode="r+")
    for key in FEATURES:
        arr = g["data"][key]
        arr.append(np.ones((2, *arr.shape[1:]), dtype=arr.dtype))
    with pytest.warns(UserWarning, match=r"rows past meta/episode_ends \(7\)"):
        ds = open_dataset(root)
    assert ds.episode_ends.tolist() == [4, 7]
    np.testing.assert_array_equal(ds.read("action", np.arange(7)), np.stack([f["action"] for ep in eps for f in ep]))
    w = create_writer(root, FEATURES, 10, format="zarr", append=True)
    new = _frames(rng, 3)
    for f in new:
        w.add_frame(f)
    assert w.save_episode() == 2
    w.finalize()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = open_dataset(root)
    assert ds.episode_ends.tolist() == [4, 7, 10] and zarr.open_group(str(root))["data/img"].shape[0] == 10
    want = np.stack([f["img"] for f in new]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(ds.read("img", np.arange(7, 10)), want)


def test_an_episode_ends_with_a_torn_tail_is_repaired_by_append(tmp_path):
    """zarr's append writes .zarray before the chunk: a kill between them (older versions) left an
    episode_ends whose last entry reads as 0. The next append keeps the valid prefix."""
    rng = np.random.default_rng(4)
    root = tmp_path / "t.zarr"
    _write(root, [_frames(rng, 4), _frames(rng, 3)])
    meta = json.loads((root / "meta/episode_ends/.zarray").read_text())
    meta["shape"] = [3]
    (root / "meta/episode_ends/.zarray").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="strictly increasing"):
        open_dataset(root)
    w = create_writer(root, FEATURES, 10, format="zarr", append=True)
    for f in _frames(rng, 2):
        w.add_frame(f)
    assert w.save_episode() == 2
    w.finalize()
    assert open_dataset(root).episode_ends.tolist() == [4, 7, 9]
