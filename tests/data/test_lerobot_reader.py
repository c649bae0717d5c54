"""LeRobot v3.0 / v2.1 readers: metadata, exact tabular values, frames at the right timestamps, missing and
truncated videos, against small fixtures and the three real datasets in ../shared/data."""

from __future__ import annotations

import json
import pickle
import shutil

import av
import numpy as np
import pyarrow as pa
import pytest
import torch
import zarr

from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError, FrameToleranceError, MissingVideoError
from robopolicy.data.features import Feature
from robopolicy.data.lerobot_format import LeRobotDataset, arrow_to_numpy
from robopolicy.data.lerobot_v21 import LeRobotV21Dataset, aggregate_stats
from robopolicy.data.sampler import WindowSampler, make_dataloader
from tests.data.lerobot_fixtures import CAM, TASKS, frame_image, rewrite_parquet, write_v3, write_v21

# Frames of the fixtures are encoded lossy (mpeg4, qscale 2, yuv420p at 48x32 with sharp edges): mean abs
# error per frame stays under this, while neighbouring source frames differ by far more (checked below).
FIXTURE_MAE = 12.0


def _source_frames(n: int) -> np.ndarray:
    return np.stack([frame_image(g) for g in range(n)]).transpose(0, 3, 1, 2).astype(np.int16)


def _assert_frames_identify(frames: np.ndarray, indices, n_source: int) -> None:
    """Each decoded frame is close to its own source frame and closer to it than to any other."""
    src = _source_frames(n_source)
    for frame, g in zip(frames, indices):
        mae = np.abs(src - frame.astype(np.int16)[None]).mean(axis=(1, 2, 3))
        assert mae[g] < FIXTURE_MAE and int(np.argmin(mae)) == g, (g, mae[g], int(np.argmin(mae)))


def _sequential_by_pts(path) -> dict[float, np.ndarray]:
    """Independent reference: decode the whole file in order, keyed by frame time rounded to 1e-6 s."""
    with av.open(str(path)) as c:
        return {round(float(f.pts * f.time_base), 6): f.to_ndarray(format="rgb24").transpose(2, 0, 1)
                for f in c.decode(video=0)}


# ----- synthetic v3.0 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    return write_v3(tmp_path_factory.mktemp("v3") / "ds", image=True)


def test_v3_metadata(v3):
    ds = open_dataset(v3)
    assert isinstance(ds, LeRobotDataset) and ds.fps == 10
    assert [(e.index, e.length, e.start) for e in ds.episodes] == [(0, 5, 0), (1, 7, 5), (2, 6, 12)]
    assert ds.num_frames == 18 and ds.tasks == TASKS
    assert ds.episodes[1].tasks == (TASKS[1],)
    kinds = {k: f.kind for k, f in ds.features.items()}
    assert kinds == {
        "observation.state": "state", "action": "action", CAM: "video", "observation.images.png": "image",
        "timestamp": "index", "frame_index": "index", "episode_index": "index", "index": "index",
        "task_index": "index",
    }
    assert ds.features[CAM].shape == (32, 48, 3)
    np.testing.assert_allclose(ds.stats["observation.state"]["mean"], [8.5, 9.0])
    assert isinstance(ds.stats["action"]["std"], np.ndarray)
    assert ds.missing_videos() == {}
    assert ds.frame_tasks(np.array([0, 5, 12])) == [TASKS[0], TASKS[1], TASKS[0]]


def test_v3_tabular_values_exact(v3):
    ds = open_dataset(v3)
    g = np.arange(18)
    np.testing.assert_array_equal(ds.read("observation.state", g), np.stack([g, g + 0.5], 1).astype(np.float32))
    np.testing.assert_array_equal(ds.read("action", g[::-1]), np.stack([-g, 2 * g], 1)[::-1].astype(np.float32))
    assert ds.read("action", g).dtype == np.float32
    assert ds.read("frame_index", g).shape == (18, 1)
    assert ds.read("frame_index", g).ravel().tolist() == [*range(5), *range(7), *range(6)]
    np.testing.assert_allclose(ds.read("timestamp", [5, 6]).ravel(), [0.0, 0.1], atol=1e-7)


def test_v3_video_frames_across_files(v3):
    """Episode 0 is file-000; episodes 1 and 2 share file-001 (episode 2 starts at from_timestamp 0.7 s)."""
    ds = open_dataset(v3)
    idx = np.array([17, 0, 4, 5, 11, 12, 13, 12, 3])
    frames = ds.read(CAM, idx)
    assert frames.dtype == np.uint8 and frames.shape == (9, 3, 32, 48)
    _assert_frames_identify(frames, idx, 18)
    ref1 = _sequential_by_pts(v3 / f"videos/{CAM}/chunk-000/file-001.mp4")
    np.testing.assert_array_equal(frames[5], ref1[round(0.7, 6)])  # global 12 = episode 2 frame 0
    np.testing.assert_array_equal(frames[6], ref1[round(0.8, 6)])
    np.testing.assert_array_equal(ds.read_episode(CAM, 2)[0], ref1[round(0.7, 6)])


def test_v3_png_image_feature_exact(v3):
    ds = open_dataset(v3)
    idx = np.array([0, 7, 17, 7])
    np.testing.assert_array_equal(ds.read("observation.images.png", idx), _source_frames(18)[idx].astype(np.uint8))


def test_v3_cache_decodes_once(v3):
    ds = open_dataset(v3, cache_mb=10)
    assert ds.prefill_cache() == [CAM, "observation.images.png"]
    ds._read_visual = None  # any further decode would fail
    frames = ds.read(CAM, [3, 17])
    _assert_frames_identify(frames, [3, 17], 18)


def test_v3_pickles_and_runs_in_workers(v3):
    ds = open_dataset(v3)
    ds.read(CAM, [1])  # an open decoder must not be pickled
    clone = pickle.loads(pickle.dumps(ds))
    _assert_frames_identify(clone.read(CAM, [2]), [2], 18)
    sampler = WindowSampler(ds, {CAM: [-1, 0], "action": list(range(3))})
    batches = list(make_dataloader(sampler, batch_size=6, num_workers=2, seed=0))
    assert len(batches) == 3
    for b in batches:
        anchors = b["index"].numpy()
        _assert_frames_identify(b[CAM][:, 1].numpy(), anchors, 18)


def test_frame_outside_tolerance_names_episode_key_timestamp(tmp_path):
    root = write_v3(tmp_path / "ds")
    path = root / "data/chunk-000/file-001.parquet"  # episode 2 only

    def shift(t):
        ts = t.column("timestamp").to_numpy().copy()
        ts[3] += 0.03
        return t.set_column(t.schema.get_field_index("timestamp"), "timestamp", pa.array(ts))

    rewrite_parquet(path, shift)
    ds = open_dataset(root)
    _assert_frames_identify(ds.read(CAM, [12, 14]), [12, 14], 18)  # other frames still fine
    with pytest.raises(FrameToleranceError, match=rf"episode 2, key '{CAM}'.*timestamp 0\.33\d* s") as e:
        ds.read(CAM, [15])
    assert "file-001.mp4" in str(e.value)
    assert open_dataset(root, tolerance_s=0.05).read(CAM, [15]).shape == (1, 3, 32, 48)


def test_v3_missing_video_file(tmp_path):
    root = write_v3(tmp_path / "ds")
    (root / f"videos/{CAM}/chunk-000/file-001.mp4").unlink()
    ds = open_dataset(root)
    assert ds.missing_videos() == {CAM: [1, 2]}
    _assert_frames_identify(ds.read(CAM, [0, 4]), [0, 4], 18)  # episode 0 lives in file-000
    np.testing.assert_array_equal(ds.read("action", [17]), [[-17, 34]])
    with pytest.raises(MissingVideoError, match=rf"file-001\.mp4: video file of key '{CAM}' is missing "
                                                r"\(requested episodes \[2\]; the file holds episodes \[1, 2\]\)"):
        ds.read(CAM, [13])


def test_v3_truncated_video_file(tmp_path):
    root = write_v3(tmp_path / "ds")
    path = root / f"videos/{CAM}/chunk-000/file-001.mp4"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = open_dataset(root)
    assert ds.missing_videos() == {}  # present, but unreadable: reported when read / validated
    with pytest.raises(MissingVideoError, match=rf"file-001\.mp4: cannot open video.*\[key '{CAM}', episodes \[1\]\]"):
        ds.read(CAM, [6])


def test_data_parquet_with_list_columns(tmp_path):
    """Variable-length list columns (as in open50) load like fixed_size_list ones."""
    root = write_v3(tmp_path / "ds", video_files=None)

    def to_list(t):
        for key in ("observation.state", "action"):
            i = t.schema.get_field_index(key)
            t = t.set_column(i, key, t.column(key).cast(pa.list_(pa.float32())))
        return t

    for f in sorted((root / "data").glob("*/*.parquet")):
        rewrite_parquet(f, to_list)
    ds = open_dataset(root)
    g = np.arange(18)
    np.testing.assert_array_equal(ds.read("observation.state", g), np.stack([g, g + 0.5], 1))


# ----- synthetic v2.1 -------------------------------------------------------------------------------


def test_v21_reader(tmp_path):
    root = write_v21(tmp_path / "ds", chunks_size=2)
    assert (root / f"videos/chunk-001/{CAM}/episode_000002.mp4").is_file()
    ds = open_dataset(root)
    assert isinstance(ds, LeRobotV21Dataset)
    assert [(e.index, e.length, e.start) for e in ds.episodes] == [(0, 5, 0), (1, 7, 5), (2, 6, 12)]
    assert ds.tasks == TASKS and ds.episodes[2].tasks == (TASKS[0],)
    g = np.arange(18)
    np.testing.assert_array_equal(ds.read("observation.state", g), np.stack([g, g + 0.5], 1).astype(np.float32))
    idx = np.array([0, 4, 5, 11, 12, 17])
    _assert_frames_identify(ds.read(CAM, idx), idx, 18)
    # stats pooled from episodes_stats.jsonl equal the stats of all frames
    v = np.stack([g, g + 0.5], 1).astype(np.float64)
    st = ds.stats["observation.state"]
    np.testing.assert_allclose(st["mean"], v.mean(0))
    np.testing.assert_allclose(st["std"], v.std(0))
    np.testing.assert_array_equal(st["min"], v.min(0))
    assert st["count"].tolist() == [18]
    (root / f"videos/chunk-000/{CAM}/episode_000001.mp4").unlink()
    ds = open_dataset(root)
    assert ds.missing_videos() == {CAM: [1]}
    with pytest.raises(MissingVideoError, match="episode_000001.mp4"):
        ds.read(CAM, [6])


def test_aggregate_stats_image_shapes():
    a = {"img": {"min": [[[0.0]]], "max": [[[1.0]]], "mean": [[[0.25]]], "std": [[[0.1]]], "count": [10]}}
    b = {"img": {"min": [[[0.1]]], "max": [[[0.9]]], "mean": [[[0.75]]], "std": [[[0.1]]], "count": [30]}}
    st = aggregate_stats([a, b])["img"]
    assert st["mean"].shape == (1, 1, 1)
    np.testing.assert_allclose(st["mean"], [[[0.625]]])
    np.testing.assert_allclose(st["std"] ** 2, [[[0.01 + (0.25 * 0.375**2 + 0.75 * 0.125**2)]]])


# ----- real data: lerobot_v3_pusht (written by LeRobot 0.4.4) -------------------------------------


@pytest.fixture(scope="module")
def pusht_pair(lerobot_pusht, pusht_zarr):
    return open_dataset(lerobot_pusht), zarr.open_group(str(pusht_zarr), mode="r")


def test_pusht_matches_zarr_exactly(pusht_pair):
    ds, g = pusht_pair
    assert ds.num_episodes == 206 and ds.num_frames == 25650 and ds.fps == 10
    ends = g["meta/episode_ends"][:]
    np.testing.assert_array_equal(ds.episode_ends, ends)
    assert [e.length for e in ds.episodes] == np.diff(np.concatenate([[0], ends])).tolist()
    every = np.arange(ds.num_frames)
    np.testing.assert_array_equal(ds.read("observation.state", every), g["data/state"][:, :2])
    np.testing.assert_array_equal(ds.read("action", every), g["data/action"][:])
    assert ds.tasks == ["Push the T-shaped block onto the T-shaped target."]
    assert ds.stats["observation.image"]["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(ds.stats["action"]["mean"], g["data/action"][:].mean(0), rtol=1e-4)


# Measured over all 25,650 frames of lerobot_v3_pusht vs the zarr (float 0..255 HWC): AV1 at crf 30 gives
# PSNR mean 36.8 dB / min 30.5 dB, mean abs error mean 0.90 / max 2.72 per pixel value. Asserted floors below.
# Consecutive PushT frames differ less than the codec noise, so the alignment check is on the average:
# decoded frames are closer to their own zarr frame than to the previous / next one (0.90 vs 1.22 / 1.28).
PUSHT_MIN_PSNR, PUSHT_MEAN_PSNR, PUSHT_MAX_MAE, PUSHT_MEAN_MAE = 29.5, 35.0, 3.0, 1.1


def test_pusht_frames_match_zarr_images(pusht_pair):
    ds, g = pusht_pair
    rng = np.random.default_rng(0)
    # 60 frames from each of 6 random zarr chunks (161 frames each) keeps the zarr reads short
    chunks = rng.choice(25650 // 161, 6, replace=False)
    idx = np.unique(np.concatenate([[1, 160, 161, 25648], *[c * 161 + 1 + rng.integers(0, 159, 60) for c in chunks]]))
    frames = ds.read("observation.image", idx).astype(np.float64)
    img = g["data/img"]
    ref = img.oindex[idx].transpose(0, 3, 1, 2)
    err = frames - ref
    mae = np.abs(err).mean(axis=(1, 2, 3))
    psnr = 10 * np.log10(255.0**2 / (err**2).mean(axis=(1, 2, 3)))
    assert psnr.min() >= PUSHT_MIN_PSNR and psnr.mean() >= PUSHT_MEAN_PSNR, (psnr.min(), psnr.mean())
    assert mae.max() <= PUSHT_MAX_MAE and mae.mean() <= PUSHT_MEAN_MAE, (mae.max(), mae.mean())
    for shift in (-1, 1):
        shifted = np.abs(frames - img.oindex[idx + shift].transpose(0, 3, 1, 2)).mean()
        assert mae.mean() < 0.85 * shifted, (shift, mae.mean(), shifted)


def test_pusht_window_sampler(pusht_pair):
    ds, g = pusht_pair
    sampler = WindowSampler(ds, {"observation.image": [-1, 0], "observation.state": [-1, 0], "action": range(16)})
    anchors = [0, 1, 160, 161, 150, 278, 25649, 12345]
    batch = sampler.get_batch(anchors)
    state, action, ends = g["data/state"][:, :2], g["data/action"][:], g["meta/episode_ends"][:]
    for j, a in enumerate(anchors):
        e = int(np.searchsorted(ends, a, side="right"))
        start, stop = (0 if e == 0 else int(ends[e - 1])), int(ends[e])
        q_obs, q_act = a + np.array([-1, 0]), a + np.arange(16)
        np.testing.assert_array_equal(batch["observation.state"][j].numpy(), state[np.clip(q_obs, start, stop - 1)])
        np.testing.assert_array_equal(batch["action"][j].numpy(), action[np.clip(q_act, start, stop - 1)])
        assert batch["observation.state_is_pad"][j].tolist() == (q_obs < start).tolist()
        assert batch["action_is_pad"][j].tolist() == (q_act >= stop).tolist()
        imgs = batch["observation.image"][j].numpy().astype(np.float64)
        for t, q in enumerate(np.clip(q_obs, start, stop - 1)):
            assert np.abs(imgs[t] - g["data/img"][int(q)].transpose(2, 0, 1)).mean() <= PUSHT_MAX_MAE
    assert batch["observation.image"].shape == (8, 2, 3, 96, 96) and batch["observation.image"].dtype == torch.uint8
    assert batch["observation.image_is_pad"][0].tolist() == [True, False]  # first frame of episode 0
    assert batch["action_is_pad"][2].tolist() == [False] + [True] * 15  # last frame of episode 0 (160)
    np.testing.assert_array_equal(batch["observation.image"][3, 0], batch["observation.image"][3, 1])  # padded copy


# ----- real data: so101 (video files absent) ----------------------------------------------------


def test_so101_tabular_loads_and_cameras_fail_clearly(so101_record):
    ds = open_dataset(so101_record)
    assert ds.num_frames == 1492 and ds.num_episodes == 4 and ds.fps == 30
    assert [e.length for e in ds.episodes] == [373, 374, 372, 373]
    assert ds.missing_videos() == {"observation.images.front": [0, 1, 2, 3], "observation.images.top": [0, 1, 2, 3]}
    state = ds.read("observation.state", np.arange(1492))
    assert state.shape == (1492, 6) and np.isfinite(state).all()
    assert ds.read("action", [0]).shape == (1, 6)
    assert ds.episode_of(np.array([372, 373])).tolist() == [0, 1]
    msg = (r"observation\.images\.front/chunk-000/file-000\.mp4: video file of key 'observation\.images\.front' "
           r"is missing \(requested episodes \[1\]")
    with pytest.raises(MissingVideoError, match=msg):
        ds.read("observation.images.front", [400])
    batch = WindowSampler(ds, {"observation.state": [-1, 0], "action": range(8)}).get_batch([0, 500])
    assert batch["action"].shape == (2, 8, 6)


# ----- real data: open50 (one data file per episode, only 3 videos, mpeg4 declared as h264) ---------


def test_open50_layout_and_missing(open50):
    ds = open_dataset(open50)
    assert ds.num_episodes == 50 and ds.num_frames == 20814
    assert ds.features["image"].info["video.codec"] == "h264"
    assert ds.open_video("image", 0).codec == "mpeg4"  # the stream decides, not the metadata
    assert ds.missing_videos() == {"image": [e for e in range(50) if e not in (0, 3, 4)]}
    # dataset_from_index is global: episode 1 starts at index 427, which is row 0 of data file-001
    assert ds.episodes[1].start == 427
    np.testing.assert_array_equal(ds.read("index", np.arange(ds.num_frames)).ravel(), np.arange(20814))
    assert ds.read("episode_index", [426, 427]).ravel().tolist() == [0, 1]
    assert ds.read("state", np.arange(20814)).shape == (20814, 34)
    with pytest.raises(MissingVideoError, match=r"file-007\.mp4.*requested episodes \[7\]"):
        ds.read("image", [ds.episodes[7].start])


def test_open50_frames_at_right_timestamps(open50):
    ds = open_dataset(open50)
    for e in (0, 3, 4):
        ep = ds.episodes[e]
        ref = _sequential_by_pts(open50 / f"videos/image/chunk-000/file-{e:03d}.mp4")
        assert len(ref) == ep.length
        rows = np.array([0, 1, 2, 11, 12, 13, ep.length // 2, ep.length - 2, ep.length - 1])
        rng = np.random.default_rng(e)
        rows = np.concatenate([rows, rng.integers(0, ep.length, 10)])
        frames = ds.read("image", ep.start + rows)
        ts = ds.read("timestamp", ep.start + rows).ravel().astype(np.float64)
        for f, t in zip(frames, ts):
            np.testing.assert_array_equal(f, ref[round(min(ref, key=lambda k: abs(k - t)), 6)])
            assert abs(min(ref, key=lambda k: abs(k - t)) - t) < 1e-4


def test_open50_truncated_copy(tmp_path, open50):
    root = tmp_path / "open50"
    shutil.copytree(open50 / "meta", root / "meta")
    shutil.copytree(open50 / "data", root / "data")
    (root / "videos/image/chunk-000").mkdir(parents=True)
    shutil.copyfile(open50 / "videos/image/chunk-000/file-000.mp4", root / "videos/image/chunk-000/file-000.mp4")
    src = (open50 / "videos/image/chunk-000/file-003.mp4").read_bytes()
    (root / "videos/image/chunk-000/file-003.mp4").write_bytes(src[: len(src) // 2])
    ds = open_dataset(root)
    assert ds.read("image", [5]).shape == (1, 3, 480, 640)
    with pytest.raises(MissingVideoError, match=r"file-003\.mp4: cannot open video .*truncated or corrupt.*\[3\]"):
        ds.read("image", [ds.episodes[3].start + 10])
    assert ds.missing_videos()["image"][:3] == [1, 2, 4]


def test_arrow_to_numpy_lists():
    feat = Feature("state", "float32", (2,), "state")
    sliced = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float64())).slice(1)
    out = arrow_to_numpy(sliced, feat, "x.parquet")
    assert out.dtype == np.float32 and out.tolist() == [[3.0, 4.0], [5.0, 6.0]]
    grid = Feature("grid", "int64", (2, 3), "state")
    nested = pa.array([[[1, 2, 3], [4, 5, 6]]], pa.list_(pa.list_(pa.int64())))
    assert arrow_to_numpy(nested, grid, "x.parquet").tolist() == [[[1, 2, 3], [4, 5, 6]]]
    with pytest.raises(DatasetError, match=r"x\.parquet: 'state' row 1 has 3 values at dimension 0"):
        arrow_to_numpy(pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]]), feat, "x.parquet")
    with pytest.raises(DatasetError, match="null"):
        arrow_to_numpy(pa.array([[1.0, 2.0], None]), feat, "x.parquet")


# ----- metadata that lies is refused at open, naming the file and the key ------------------------------------

_EPISODES = "meta/episodes/chunk-000/file-000.parquet"


def _edit_info(root, fn) -> None:
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    fn(info)
    path.write_text(json.dumps(info))


def _set_column(table: pa.Table, name: str, values: list) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, pa.array(values, table.schema.field(name).type))


def _set_first(name: str, value):
    return lambda t: _set_column(t, name, [value, *t.column(name).to_pylist()[1:]])


def test_declared_dtype_that_disagrees_with_the_column_is_refused(tmp_path):
    """int8 declared for float32 data: refused, not silently wrapped."""
    root = write_v3(tmp_path / "ds")
    _edit_info(root, lambda i: i["features"]["observation.state"].__setitem__("dtype", "int8"))
    with pytest.raises(DatasetError, match=r"file-000\.parquet: 'observation\.state' is float in the parquet, but "
                                           r"meta/info\.json declares dtype int8"):  # fmt: skip
        open_dataset(root)


def test_video_span_moved_onto_another_episode_is_refused(tmp_path):
    """Episodes 1 and 2 share file-001.mp4; episode 2's span moved onto episode 1's frames."""
    root = write_v3(tmp_path / "ds")
    col = f"videos/{CAM}/from_timestamp"

    def onto_episode_1(t):
        t = _set_column(t, col, [0.0, 0.0, 0.0])
        return _set_column(t, col.replace("from_", "to_"), [0.5, 0.7, 0.6])

    rewrite_parquet(root / _EPISODES, onto_episode_1)
    with pytest.raises(DatasetError, match=rf"episodes/chunk-000/file-000\.parquet: {col}: episodes 1 and 2 overlap "
                                           r"in file-001\.mp4"):  # fmt: skip
        open_dataset(root)


def test_video_from_timestamp_shifted_alone_is_refused(tmp_path):
    root = write_v3(tmp_path / "ds")
    col = f"videos/{CAM}/from_timestamp"
    rewrite_parquet(root / _EPISODES, lambda t: _set_column(t, col, [0.0, 0.0, 0.1]))
    with pytest.raises(DatasetError, match=rf"file-000\.parquet: {col}: episode 2 spans 0\.1\.\.1\.3 s"):
        open_dataset(root)


@pytest.mark.parametrize("value", [-1, 2, 99])
def test_task_index_outside_the_tasks_is_refused(tmp_path, value):
    """-1 would silently name the last task (Python indexing); 2 and more raised IndexError."""
    root = write_v3(tmp_path / "ds")
    rewrite_parquet(root / "data/chunk-000/file-001.parquet", _set_first("task_index", value))
    with pytest.raises(DatasetError, match=rf"file-001\.parquet \(episode 2\): 1 rows have task_index outside "
                                           rf"\[0, 2\).*task_index {value}\)"):  # fmt: skip
        open_dataset(root)


@pytest.mark.parametrize("fps", [0, -10, "10", None, 1e400])
def test_fps_that_is_not_a_positive_number_is_refused(tmp_path, fps):
    root = write_v3(tmp_path / "ds")
    _edit_info(root, lambda i: i.__setitem__("fps", fps))
    with pytest.raises(DatasetError, match=r"meta/info\.json: `fps` must be a positive number"):
        open_dataset(root)


@pytest.mark.parametrize(
    "key, delta, message",
    [
        ("total_frames", 5, r"total_frames=23 but the episodes metadata lengths sum to 18"),
        ("total_episodes", 1, r"total_episodes=4 but the episodes metadata lists 3 episodes"),
        ("total_episodes", -1, r"total_frames=18 but the episodes metadata lengths sum to 12 \(episodes 0\.\.1; "
                               r"1 more rows with episode_index >= total_episodes=2 are ignored"),
        ("total_frames", -100, r"`total_frames` must be a non-negative integer"),
    ],
)
def test_inconsistent_totals_are_refused(tmp_path, key, delta, message):
    root = write_v3(tmp_path / "ds")
    _edit_info(root, lambda i: i.__setitem__(key, i[key] + delta))
    with pytest.raises(DatasetError, match=r"meta/info\.json: " + message):
        open_dataset(root)


@pytest.mark.parametrize(
    "column", ["episode_index", "data/chunk_index", "data/file_index", f"videos/{CAM}/file_index", "length"]
)
def test_negative_indices_in_the_episodes_metadata_are_refused(tmp_path, column):
    root = write_v3(tmp_path / "ds")
    rewrite_parquet(root / _EPISODES, _set_first(column, -1))
    with pytest.raises(DatasetError, match=rf"file-000\.parquet: .*{column} = -1; it must be an integer >= 0"):
        open_dataset(root)


def test_rows_beyond_the_totals_are_ignored(tmp_path):
    """An interrupted save: the episodes metadata and data list one more episode than info.json."""
    root = write_v3(tmp_path / "ds")
    _edit_info(root, lambda i: i.update(total_episodes=2, total_frames=12))
    ds = open_dataset(root)
    assert ds.num_episodes == 2 and ds.num_frames == 12 and ds.tasks == TASKS
    assert ds.frame_tasks(np.array([0, 5])) == TASKS
    g = np.arange(12)
    np.testing.assert_array_equal(ds.read("observation.state", g), np.stack([g, g + 0.5], 1).astype(np.float32))
    _assert_frames_identify(ds.read(CAM, [0, 6, 11]), [0, 6, 11], 18)
