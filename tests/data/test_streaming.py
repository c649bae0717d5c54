"""Streaming a LeRobot v3 dataset through fsspec (open_dataset(streaming=True)): the same frames and windows as the
local reader, only part of the bytes read for one episode, a block cache that serves a second read without the
remote, clear errors for missing / truncated remote files, and hf:// through a stand-in for HfFileSystem (nothing
here touches the network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError, MissingVideoError
from robopolicy.data.features import Feature
from robopolicy.data.sampler import WindowSampler, make_dataloader
from robopolicy.data.storage import BlockCache, FsspecStorage
from robopolicy.data.video import VideoFile
from robopolicy.data.writer import create_writer
from tests.data.lerobot_fixtures import CAM, TASKS, encode_video, frame_image

LENGTHS = (80, 66, 94, 76, 82, 72, 88, 78)  # 636 frames, 8 episodes: one file each for data and video
DATA = "data/chunk-000/file-000.parquet"
VIDEO = f"videos/{CAM}/chunk-000/file-000.mp4"
WINDOWS = {"observation.state": [-1, 0], CAM: [-1, 0], "action": list(range(-1, 7))}


class CountingFS(DirFileSystem):
    """A local directory seen through fsspec (the "remote"), counting the bytes read from each file."""

    cachable = False  # fsspec would otherwise hand back one shared instance (and its counts)

    def __init__(self, root: Path):
        super().__init__(path=str(root), fs=LocalFileSystem())
        self.read_bytes: Counter[str] = Counter()
        self.opens = 0
        self.fail_with: Exception | None = None

    def open(self, path, mode="rb", **kwargs):
        if self.fail_with is not None:
            raise self.fail_with
        self.opens += 1
        return _Counted(super().open(path, mode, **kwargs), self.read_bytes, path)

    @property
    def total_read(self) -> int:
        return sum(self.read_bytes.values())


class _Counted:
    def __init__(self, f, counts: Counter, path: str):
        self._f, self._counts, self._path = f, counts, path

    def read(self, n=-1):
        data = self._f.read(n)
        self._counts[self._path] += len(data)
        return data

    def seek(self, *args):
        return self._f.seek(*args)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """8 episodes written by robopolicy's LeRobot writer (AV1 or H.264 video, 64x96), under remote/ds. A wide
    random feature and noisy frames make the files large enough (data ~380 KB, video ~? KB) that the fixed costs of
    opening them (pyarrow reads the last 64 KB for the footer, FFmpeg reads 32 KB ahead) are not all of them."""
    root = tmp_path_factory.mktemp("remote") / "ds"
    features = {
        CAM: Feature(CAM, "video", (64, 96, 3), "video"),
        "observation.state": Feature("observation.state", "float32", (2,), "state"),
        "observation.effort": Feature("observation.effort", "float32", (96,), "state"),
        "action": Feature("action", "float32", (2,), "action"),
    }
    rng = np.random.default_rng(0)
    with create_writer(root, features, 10, format="lerobot") as w:
        g = 0
        for e, n in enumerate(LENGTHS):
            for _ in range(n):
                noisy = frame_image(g, 64, 96) + rng.integers(0, 40, (64, 96, 3), dtype=np.uint8)
                w.add_frame({CAM: noisy, "observation.state": [g, g + 0.5], "action": [-g, 2 * g],
                             "observation.effort": rng.standard_normal(96, dtype=np.float32)})
                g += 1
            w.save_episode(task=TASKS[e % 2])
    return root


def stream(root: Path, cache: Path, **kwargs):
    """(dataset read through a CountingFS over root's parent, that filesystem)."""
    fs = CountingFS(root.parent)
    return open_dataset(root.name, filesystem=fs, cache_dir=cache, block_size=4096, **kwargs), fs


def test_every_frame_and_window_equals_the_local_reader(dataset, tmp_path):
    local = open_dataset(dataset)
    ds, _ = stream(dataset, tmp_path / "cache")
    assert (ds.num_episodes, ds.num_frames, ds.fps, ds.tasks) == (local.num_episodes, local.num_frames, 10, local.tasks)
    assert ds.episodes == local.episodes and ds.features == local.features
    assert str(ds.root).startswith("dir://") and str(ds.root).endswith("ds")
    every = np.arange(local.num_frames)
    for key in local.features:
        a, b = local.read(key, every), ds.read(key, every)
        assert a.dtype == b.dtype and np.array_equal(a, b), key
    np.testing.assert_array_equal(ds.timestamps(every), local.timestamps(every))
    for name in ds.stats:
        for stat, value in ds.stats[name].items():
            np.testing.assert_array_equal(value, local.stats[name][stat])
    a = WindowSampler(local, WINDOWS).get_batch(range(local.num_frames))
    ds2, _ = stream(dataset, tmp_path / "cache2")  # fresh: windows in shuffled order, straight from the remote
    order = np.random.default_rng(0).permutation(local.num_frames)
    b = WindowSampler(ds2, WINDOWS).get_batch(order)
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value[order], b[key]), key
        else:
            assert [value[i] for i in order] == b[key], key


def test_one_episode_reads_only_part_of_the_files(dataset, tmp_path):
    ds, fs = stream(dataset, tmp_path / "cache")
    opened = fs.total_read  # metadata: info, stats, tasks, episodes parquet
    assert fs.read_bytes.keys() <= {f"ds/meta/{f}" for f in ("info.json", "stats.json", "tasks.parquet")} | {
        "ds/meta/episodes/chunk-000/file-000.parquet"
    }
    for key in ds.features:
        ds.read_episode(key, 3)
    for rel in (DATA, VIDEO):
        size = (dataset / rel).stat().st_size
        got = fs.read_bytes[f"ds/{rel}"]
        assert 0 < got < 0.5 * size, (rel, got, size)  # parquet: 64 KB footer read + the episode's row group
    assert ds.storage.cache.fetched_bytes == fs.total_read
    before = fs.total_read
    for key in ds.features:  # the same episode again: from RAM and the block cache
        ds.read_episode(key, 3)
    assert fs.total_read == before > opened


def test_the_cache_serves_a_second_read_without_the_remote(dataset, tmp_path):
    first, fs1 = stream(dataset, tmp_path / "cache")
    expected = {key: first.read_episode(key, 5) for key in first.features}
    assert fs1.total_read > 0
    second, fs2 = stream(dataset, tmp_path / "cache")  # a new process would see the same: blocks are files
    for key, value in expected.items():
        np.testing.assert_array_equal(second.read_episode(key, 5), value)
    assert fs2.total_read == 0 and fs2.opens == 0  # only the file list came from the remote
    assert second.storage.cache.disk_bytes() == fs1.total_read


def test_a_bounded_cache_stays_under_its_bound_and_reads_stay_exact(dataset, tmp_path):
    local = open_dataset(dataset)
    bound = 24 * 4096
    ds, fs = stream(dataset, tmp_path / "cache", cache_gb=bound / 1e9)
    for e in range(ds.num_episodes):
        for key in ds.features:
            np.testing.assert_array_equal(ds.read_episode(key, e), local.read_episode(key, e))
    assert ds.storage.cache.disk_bytes() <= bound < fs.total_read


def test_dataloader_workers_read_the_same_windows(dataset, tmp_path):
    local, (ds, _) = open_dataset(dataset), stream(dataset, tmp_path / "cache")
    ds.read_episode(CAM, 0)  # the parent has open decoders and parquet files before the fork
    want = WindowSampler(local, WINDOWS).get_batch(range(local.num_frames))
    loader = make_dataloader(WindowSampler(ds, WINDOWS), 53, shuffle=False, num_workers=2, drop_last=False)
    got = list(loader)
    for key in (CAM, "action", "action_is_pad"):
        assert torch.equal(torch.cat([b[key] for b in got]), want[key]), key


def test_missing_and_truncated_remote_files_are_errors_naming_them(dataset, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(dataset, tmp_path / name / "ds"))

    root = copy("novideo")
    (root / VIDEO).unlink()
    ds, _ = stream(root, tmp_path / "c1")
    assert ds.read_episode("action", 0).shape == (LENGTHS[0], 2)  # tabular features still load
    with pytest.raises(MissingVideoError, match=f"dir://.*ds/{VIDEO}: video file of key"):
        ds.read_episode(CAM, 0)

    root = copy("nodata")
    (root / DATA).unlink()
    with pytest.raises(DatasetError, match=f"ds/{DATA}: data file of episodes .* is missing"):
        stream(root, tmp_path / "c2")

    root = copy("cutdata")
    data = (root / DATA).read_bytes()
    (root / DATA).write_bytes(data[: len(data) // 2])
    ds, _ = stream(root, tmp_path / "c3")
    with pytest.raises(DatasetError, match=f"ds/{DATA}: not a readable parquet file"):
        ds.read_episode("action", 0)

    root = copy("cutvideo")
    video = (root / VIDEO).read_bytes()
    (root / VIDEO).write_bytes(video[: len(video) // 2])
    ds, _ = stream(root, tmp_path / "c4")
    with pytest.raises(MissingVideoError, match=f"ds/{VIDEO}: .*(truncated|corrupt)"):
        ds.read_episode(CAM, 7)

    root = copy("shrinks")  # listed whole, then cut on the remote before its bytes were read
    ds, _ = stream(root, tmp_path / "c5")
    (root / VIDEO).write_bytes(video[: len(video) // 2])
    with pytest.raises(DatasetError, match=f"ds/{VIDEO}: truncated — the remote returned"):
        ds.read_episode(CAM, 7)


def test_remote_failures_and_wrong_datasets_are_clear(dataset, tmp_path, pusht_zarr, monkeypatch):
    monkeypatch.setattr("robopolicy.data.storage.time.sleep", lambda s: None)
    fs = CountingFS(dataset.parent)
    fs.fail_with = ConnectionError("connection reset by peer")
    with pytest.raises(DatasetError, match=r"ds/meta/info.json: cannot read bytes .* after 3 attempts"):
        open_dataset("ds", filesystem=fs, cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match="no such dataset"):
        open_dataset("nothing-here", filesystem=CountingFS(dataset.parent), cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match="streaming reads LeRobot v3.0 datasets; this one is zarr"):
        open_dataset(pusht_zarr, streaming=True, cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match="cache bound must be > 0"):
        open_dataset(dataset, streaming=True, cache_dir=tmp_path / "c", cache_gb=0)


@pytest.fixture
def hub(dataset, tmp_path, monkeypatch):
    """huggingface_hub.HfFileSystem replaced by a CountingFS over a local tree laid out as the hub's paths."""
    import huggingface_hub

    base = tmp_path / "hub"
    shutil.copytree(dataset, base / "datasets" / "someone" / "demo")
    shutil.copytree(dataset, base / "datasets" / "someone" / "demo@v1")
    made: list[CountingFS] = []

    def fake_hf_filesystem(*args, **kwargs):
        made.append(CountingFS(base))
        return made[-1]

    monkeypatch.setattr(huggingface_hub, "HfFileSystem", fake_hf_filesystem)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return made


def test_hf_uri_streams_through_the_hub_file_system(dataset, hub, tmp_path):
    local = open_dataset(dataset)
    for uri, prefix in (("hf://someone/demo", "datasets/someone/demo/"),
                        ("hf://someone/demo@v1", "datasets/someone/demo@v1/")):  # fmt: skip
        ds = open_dataset(uri, streaming=True, cache_dir=tmp_path / "cache", block_size=4096)
        assert str(ds.root) == "hf://" + prefix.rstrip("/")
        np.testing.assert_array_equal(ds.read_episode(CAM, 2), local.read_episode(CAM, 2))
        assert set(hub[-1].read_bytes) >= {prefix + VIDEO, prefix + DATA}
    with pytest.raises(DatasetError, match="hf://datasets/someone/absent: no such dataset"):
        open_dataset("hf://someone/absent", streaming=True, cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError, match="expected hf://<owner>/<name>"):
        open_dataset("hf://no-owner", streaming=True, cache_dir=tmp_path / "cache")


def test_block_cache_reads_ranges_across_blocks(tmp_path):
    blob = bytes(range(256)) * 40  # 10240 bytes
    calls = []

    def fetch(a, b):
        calls.append((a, b))
        return blob[a:b]

    cache = BlockCache(tmp_path, block_size=1000, memory_bytes=2000)
    assert cache.read("k", len(blob), 990, 2010, fetch) == blob[990:2010]
    assert calls == [(0, 3000)]  # one request for the run of three missing blocks
    assert cache.read("k", len(blob), 2500, 5500, fetch) == blob[2500:5500]
    assert calls[1:] == [(3000, 6000)]
    assert cache.read("k", len(blob), 10000, 20000, fetch) == blob[10000:]
    assert cache.read("k", len(blob), 0, len(blob), fetch) == blob
    assert calls[3:] == [(6000, 10000)]
    assert BlockCache(tmp_path, block_size=1000).read("k", len(blob), 0, len(blob), fetch) == blob  # from disk
    assert len(calls) == 4


@pytest.mark.parametrize("codec, bframes", [("libx264", 0), ("libx264", 2), ("mpeg4", 2)])
def test_videos_decode_the_same_streamed_with_or_without_frame_reordering(tmp_path, codec, bframes):
    """No B-frames: the container's index is used (the file is not read whole); B-frames: a full demux."""
    frames = np.stack([frame_image(g, 64, 96) for g in range(120)])
    encode_video(tmp_path / "remote" / "v.mp4", frames, 10, codec=codec, gop=10, bframes=bframes)
    local = VideoFile(tmp_path / "remote" / "v.mp4")
    storage = FsspecStorage(LocalFileSystem(), str(tmp_path / "remote"), BlockCache(tmp_path / "cache", block_size=512))
    streamed = VideoFile(storage.root / "v.mp4", storage=storage)
    np.testing.assert_array_equal(streamed.times, local.times)
    picks = np.array([57, 3, 119, 58, 0, 90])
    np.testing.assert_array_equal(streamed.decode(picks), local.decode(picks))
    size = (tmp_path / "remote" / "v.mp4").stat().st_size
    assert (storage.cache.fetched_bytes < size) == (bframes == 0), (storage.cache.fetched_bytes, size)
    np.testing.assert_array_equal(streamed.decode_all(), local.decode_all())


def test_train_streams_with_the_cli_flag(dataset, tmp_path, capsys):
    from robopolicy.cli.main import main

    args = [
        "--policy.type=diffusion", "--policy.denoiser.unet.down_dims=[32,64]",
        "--policy.denoiser.unet.step_embed_dim=32", "--data.input_keys=[observation.state]", "--train.batch_size=16",
        "--train.tensorboard=false", "--train.progress=false", "--optim.warmup_steps=1", "--train.steps=2",
        "--data.streaming=true", f"--data.stream_cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    run = tmp_path / "run"
    # a fresh process: importing diffusers' triton after a test rendered with Mesa's llvmpipe in this one crashes
    cli = [sys.executable, "-m", "robopolicy.cli.main", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([*cli, f"--data.uri={dataset}", f"--train.output_dir={run}"], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert (run / "checkpoints" / "last").exists() and any((tmp_path / "cache").rglob("0"))
    # bad input fails in open_dataset, before any head is built: in this process
    assert main(["train", *args, f"--data.uri={tmp_path / 'absent'}", f"--train.output_dir={tmp_path / 'r2'}"]) != 0
    err = capsys.readouterr().err
    assert "robopolicy train: error:" in err and "absent: no such dataset" in err and "Traceback" not in err
