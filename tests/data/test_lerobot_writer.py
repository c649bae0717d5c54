"""LeRobotWriter: LeRobot v3.0 layout identical to LeRobot 0.4.4's, video/PNG storage, rollover, crash safety."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError, DatasetExistsError
from robopolicy.data.features import SUCCESS_COLUMN, Feature
from robopolicy.data.lerobot_writer import LeRobotWriter
from robopolicy.data.stats import STAT_NAMES
from robopolicy.data.writer import EpisodeSaveError, create_writer
from tests.data.test_zarr_writer import run_crash_script

TASK = "Push the T-shaped block onto the T-shaped target."
PSNR_FLOOR_DB = 28.0  # per frame, AV1 crf 30 / H.264 crf 18 on PushT 96x96 (measured min ~31 dB)
LEROBOT_PYTHON = Path(__file__).resolve().parents[2].parent / "lrvenv" / "bin" / "python"


def pusht_features(visual_dtype: str = "video") -> dict[str, Feature]:
    motors = {"motors": ["x", "y"]}
    return {
        "observation.image": Feature("observation.image", visual_dtype, (96, 96, 3), visual_dtype),
        "observation.state": Feature("observation.state", "float32", (2,), "state", names=motors),
        "action": Feature("action", "float32", (2,), "action", names=motors),
    }


def pusht_episodes(pusht_zarr: Path, count: int) -> list[dict[str, np.ndarray]]:
    """The first `count` PushT episodes as LeRobot's pusht has them (image HWC uint8, agent x,y, action)."""
    src = open_dataset(pusht_zarr)
    out = []
    for e in range(count):
        idx = np.arange(src.episodes[e].start, src.episodes[e].stop)
        out.append(
            {
                "observation.image": src.read("img", idx).transpose(0, 2, 3, 1),
                "observation.state": src.read("state", idx)[:, :2],
                "action": src.read("action", idx),
            }
        )
    return out


def write_episodes(root, features, episodes, **options) -> LeRobotWriter:
    w = create_writer(root, features, 10, format="lerobot", robot_type="2d pointer", **options)
    for i, ep in enumerate(episodes):
        n = len(next(iter(ep.values())))
        for t in range(n):
            w.add_frame({k: v[t] for k, v in ep.items()})
        w.save_episode(task=TASK, success=i % 2 == 0)
    w.finalize()
    return w


def decode_all(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with av.open(str(path)) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return np.array([t for t, _ in frames]), np.stack([f for _, f in frames])


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames (N, ...)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))


@pytest.fixture(scope="module")
def pusht3(pusht_zarr):
    return pusht_episodes(pusht_zarr, 3)


@pytest.fixture(scope="module")
def written(pusht3, tmp_path_factory):
    root = tmp_path_factory.mktemp("lr") / "pusht"
    write_episodes(root, pusht_features(), pusht3)
    return root


def test_layout_matches_lerobot_044(written, lerobot_pusht):
    ours = json.loads((written / "meta/info.json").read_text())
    ref = json.loads((lerobot_pusht / "meta/info.json").read_text())
    assert list(ours) == list(ref)
    assert list(ours["features"]) == list(ref["features"])
    for key, feat in ref["features"].items():
        assert ours["features"][key]["dtype"] == feat["dtype"] and ours["features"][key]["shape"] == feat["shape"]
        assert ours["features"][key]["names"] == feat["names"]
        assert set(feat.get("info", {})) <= set(ours["features"][key].get("info", {}))
    assert ours["total_episodes"] == 3 and ours["splits"] == {"train": "0:3"}
    assert ours["data_path"] == ref["data_path"] and ours["video_path"] == ref["video_path"]

    for rel in ("data/chunk-000/file-000.parquet", "meta/tasks.parquet"):
        a, b = pq.read_schema(written / rel), pq.read_schema(lerobot_pusht / rel)
        assert [(f.name, f.type) for f in a] == [(f.name, f.type) for f in b], rel
    ep_ours = pq.read_schema(written / "meta/episodes/chunk-000/file-000.parquet")
    ep_ref = pq.read_schema(lerobot_pusht / "meta/episodes/chunk-000/file-000.parquet")
    assert [(f.name, f.type) for f in ep_ours if f.name != SUCCESS_COLUMN] == [(f.name, f.type) for f in ep_ref]
    assert ep_ours.field(SUCCESS_COLUMN).type == "bool"

    data = pq.ParquetFile(written / "data/chunk-000/file-000.parquet")
    assert data.metadata.num_row_groups == 3  # one per episode
    assert data.metadata.row_group(0).column(0).compression == "SNAPPY"
    hf = json.loads(data.schema_arrow.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.state"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 2, "_type": "List"}
    tasks = pq.read_table(written / "meta/tasks.parquet").to_pylist()
    assert tasks == [{"task_index": 0, "__index_level_0__": TASK}]
    stats = json.loads((written / "meta/stats.json").read_text())
    assert set(stats) == set(ref["features"])
    assert all(set(v) == set(STAT_NAMES) for v in stats.values())
    assert np.asarray(stats["observation.image"]["mean"]).shape == (3, 1, 1)


def test_episode_metadata_and_video(written, pusht3):
    rows = pq.read_table(written / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    lengths = [len(ep["action"]) for ep in pusht3]
    assert [r["length"] for r in rows] == lengths
    assert [r["dataset_from_index"] for r in rows] == [0, lengths[0], lengths[0] + lengths[1]]
    assert [r[SUCCESS_COLUMN] for r in rows] == [True, False, True]
    to_ts = np.cumsum(lengths) / 10
    np.testing.assert_allclose([r["videos/observation.image/to_timestamp"] for r in rows], to_ts)
    np.testing.assert_allclose([r["videos/observation.image/from_timestamp"] for r in rows], [0, *to_ts[:-1]])
    np.testing.assert_allclose(rows[1]["stats/action/mean"], pusht3[1]["action"].astype(np.float64).mean(0))
    assert rows[1]["stats/observation.image/count"] == [lengths[1]]

    video = written / "videos/observation.image/chunk-000/file-000.mp4"
    info = json.loads((written / "meta/info.json").read_text())["features"]["observation.image"]["info"]
    with av.open(str(video)) as c:
        assert info["video.codec"] == c.streams.video[0].codec_context.codec.canonical_name
    assert info["video.codec"] in ("av1", "h264", "mpeg4") and info["video.pix_fmt"] == "yuv420p"
    times, frames = decode_all(video)
    np.testing.assert_allclose(times, np.arange(sum(lengths)) / 10, atol=1e-6)
    source = np.concatenate([ep["observation.image"] for ep in pusht3])
    p = psnr(frames, source)
    assert p.min() >= PSNR_FLOOR_DB, p.min()


def test_round_trip_through_reader(written, pusht3):
    ds = open_dataset(written)
    assert ds.fps == 10 and ds.num_episodes == 3 and ds.tasks == [TASK]
    for key in ("observation.state", "action"):
        np.testing.assert_array_equal(
            ds.read(key, np.arange(ds.num_frames)), np.concatenate([ep[key] for ep in pusht3])
        )
    frames = ds.read("observation.image", np.arange(ds.num_frames)).transpose(0, 2, 3, 1)
    assert psnr(frames, np.concatenate([ep["observation.image"] for ep in pusht3])).min() >= PSNR_FLOOR_DB


def test_lossless_images_round_trip_exactly(tmp_path, pusht3):
    root = tmp_path / "png"
    write_episodes(root, pusht_features(), pusht3[:2], video=False)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["observation.image"]["dtype"] == "image" and info["video_path"] is None
    assert not (root / "videos").exists()
    schema = pq.read_schema(root / "data/chunk-000/file-000.parquet")
    assert str(schema.field("observation.image").type) == "struct<bytes: binary, path: string>"
    ds = open_dataset(root)
    expected = np.concatenate([ep["observation.image"] for ep in pusht3[:2]])
    np.testing.assert_array_equal(
        ds.read("observation.image", np.arange(ds.num_frames)).transpose(0, 2, 3, 1), expected
    )


def test_files_roll_over_into_chunks(tmp_path):
    rng = np.random.default_rng(0)
    feats = {
        "cam": Feature("cam", "video", (16, 16, 3), "video"),
        "state": Feature("state", "float32", (4,), "state"),
        "grid": Feature("grid", "float32", (3, 2), "state"),
    }
    eps = [
        {
            "cam": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
            "state": rng.normal(size=(n, 4)).astype(np.float32),
            "grid": rng.normal(size=(n, 3, 2)).astype(np.float32),
        }
        for n in (5, 6, 7, 8, 9)
    ]  # fmt: skip
    root = tmp_path / "roll"
    # tiny limits: every episode starts a new file; 2 files per chunk
    write_episodes(root, feats, eps, data_files_size_in_mb=1e-4, video_files_size_in_mb=1e-4, chunks_size=2)
    data_files = sorted(p.relative_to(root).as_posix() for p in (root / "data").glob("*/*.parquet"))
    assert data_files == [
        "data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet", "data/chunk-001/file-000.parquet",
        "data/chunk-001/file-001.parquet", "data/chunk-002/file-000.parquet",
    ]  # fmt: skip
    assert len(list((root / "videos/cam").glob("*/*.mp4"))) == 5
    rows = []
    for f in sorted((root / "meta/episodes").glob("*/*.parquet")):
        rows += pq.read_table(f).to_pylist()
    assert [(r["data/chunk_index"], r["data/file_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert all(r["videos/cam/from_timestamp"] == 0 for r in rows)
    ds = open_dataset(root)
    np.testing.assert_array_equal(ds.read("grid", np.arange(ds.num_frames)), np.concatenate([e["grid"] for e in eps]))
    assert ds.read("cam", np.arange(ds.num_frames)).shape == (35, 3, 16, 16)


def test_existing_directory_rules_and_append(tmp_path, pusht3):
    root = tmp_path / "x"
    write_episodes(root, pusht_features(), pusht3[:1])
    with pytest.raises(DatasetExistsError, match=str(root)):
        create_writer(root, pusht_features(), 10, format="lerobot")
    bad = {**pusht_features(), "action": Feature("action", "float32", (3,), "action")}
    with pytest.raises(DatasetError, match="'action'"):
        create_writer(root, bad, 10, format="lerobot", append=True)
    w = create_writer(root, pusht_features(), 10, format="lerobot", append=True)
    ep = pusht3[1]
    for t in range(len(ep["action"])):
        w.add_frame({k: v[t] for k, v in ep.items()})
    assert w.save_episode(task="second task") == 1
    w.finalize()
    ds = open_dataset(root)
    assert ds.num_episodes == 2 and ds.tasks == [TASK, "second task"]
    np.testing.assert_array_equal(ds.read("index", np.arange(ds.num_frames)).ravel(), np.arange(ds.num_frames))
    np.testing.assert_array_equal(ds.read("action", np.arange(ds.episodes[1].start, ds.num_frames)), ep["action"])
    # stats.json after append covers both sessions exactly
    stats = json.loads((root / "meta/stats.json").read_text())
    both = np.concatenate([pusht3[0]["action"], ep["action"]]).astype(np.float64)
    np.testing.assert_allclose(stats["action"]["mean"], both.mean(0), rtol=1e-12)
    assert stats["action"]["count"] == [len(both)]
    write_episodes(root, pusht_features(), pusht3[2:3], overwrite=True)
    assert open_dataset(root).num_episodes == 1


def test_crash_mid_episode_leaves_saved_episodes(tmp_path):
    root = tmp_path / "crash"
    run_crash_script("lerobot", root)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["total_episodes"] == 2 and info["total_frames"] == 11
    # nothing but the dataset marker and the dead writer's lock file (no temp files, no journal)
    dotted = sorted(p.name for p in root.rglob("*") if p.name.startswith("."))
    assert dotted == [".robopolicy-dataset", ".robopolicy.lock"]
    ds = open_dataset(root)
    assert ds.read("state", np.arange(11))[:, 0].tolist() == [0.0] * 5 + [1.0] * 6
    assert ds.read("img", np.arange(11)).shape == (11, 3, 8, 8)


def test_failed_commit_leaves_the_dataset_as_before(tmp_path, monkeypatch, pusht3):
    """info.json (the commit point) cannot be written: the save is undone, the next writer appends."""
    import robopolicy.data.lerobot_writer as lw

    real = lw._write_json
    root = tmp_path / "cut"
    w = create_writer(root, pusht_features(), 10, format="lerobot")
    for i, ep in enumerate(pusht3):
        for t in range(len(ep["action"])):
            w.add_frame({k: v[t] for k, v in ep.items()})
        if i == 2:  # fails after data + video + episodes metadata, at info.json
            def fail_on_info(journal, path, obj):
                if path.name == "info.json":
                    raise OSError("disk gone")
                real(journal, path, obj)

            monkeypatch.setattr(lw, "_write_json", fail_on_info)
            with pytest.raises(EpisodeSaveError, match="disk gone"):
                w.save_episode(task=TASK)
            monkeypatch.undo()
        else:
            w.save_episode(task=TASK)
    w.discard_episode()
    w.finalize()
    committed = sum(len(ep["action"]) for ep in pusht3[:2])
    assert json.loads((root / "meta/info.json").read_text())["total_frames"] == committed
    assert pq.ParquetFile(root / "data/chunk-000/file-000.parquet").metadata.num_rows == committed
    assert len(pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")) == 2
    w2 = create_writer(root, pusht_features(), 10, format="lerobot", append=True)
    ep = pusht3[2]
    for t in range(len(ep["action"])):
        w2.add_frame({k: v[t] for k, v in ep.items()})
    assert w2.save_episode(task=TASK) == 2
    w2.finalize()
    ds = open_dataset(root)
    assert ds.num_frames == committed + len(ep["action"])
    np.testing.assert_array_equal(ds.read("action", np.arange(committed, ds.num_frames)), ep["action"])


@pytest.mark.skipif(not LEROBOT_PYTHON.exists(), reason=f"LeRobot venv not found at {LEROBOT_PYTHON} "
                    "(create it with benchmarks/setup_lerobot_venv.sh)")  # fmt: skip
@pytest.mark.parametrize("video", [True, False])
def test_lerobot_itself_loads_our_dataset(tmp_path, pusht3, video):
    root = tmp_path / "for_lerobot"
    write_episodes(root, pusht_features(), pusht3[:2], video=video)
    script = f"""
import sys, json
sys.path.insert(0, {str(Path(__file__).resolve().parents[2] / "benchmarks")!r})
from lerobot_runtime import prepare_lerobot
prepare_lerobot({str(tmp_path / "hf_cache")!r})
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/robopolicy", root={str(root)!r}, video_backend="pyav")
item = ds[ds.num_frames - 1]
print(json.dumps({{"frames": ds.num_frames, "episodes": ds.num_episodes, "image": list(item["observation.image"].shape),
    "action": item["action"].tolist(), "success": list(ds.meta.episodes["success"]), "task": item["task"]}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([str(LEROBOT_PYTHON), "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    n = sum(len(ep["action"]) for ep in pusht3[:2])
    assert got["frames"] == n and got["episodes"] == 2 and got["image"] == [3, 96, 96] and got["task"] == TASK
    np.testing.assert_allclose(got["action"], pusht3[1]["action"][-1])
    assert got["success"] == [True, False]


def test_stuck_encoder_is_retried_into_a_fresh_file(tmp_path, monkeypatch):
    """libsvtav1 can deadlock in send_picture; the watchdog abandons the stuck attempt and encodes again."""
    import threading

    import av

    from robopolicy.data import video_encode

    real = video_encode._encode_once
    calls = []
    never = threading.Event()

    def flaky(frames, path, *args):
        calls.append(path.name)
        if len(calls) == 1:
            never.wait()  # hang like the deadlocked encoder
        real(frames, path, *args)

    monkeypatch.setattr(video_encode, "_encode_once", flaky)
    frames = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    out = tmp_path / "ep.mp4"
    with pytest.warns(UserWarning, match="encoder stuck"):
        video_encode.encode_video(frames, out, 10, "mpeg4", video_encode.VideoOptions(), timeout_s=0.5)
    assert calls == ["ep.attempt0.mp4", "ep.attempt1.mp4"]
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 6
    never.set()



def _refuse_packet_3(video_encode, monkeypatch, attempts_refused: int) -> list[str]:
    """Make the muxer see a non-increasing dts at packet 3 of the first `attempts_refused` attempts."""
    real = video_encode._mux
    files: list[str] = []

    def mux(container, packet, path, muxed):
        if path.name not in files:
            files.append(path.name)
        if len(files) <= attempts_refused and len(muxed) == 3:
            packet.pts = packet.dts = muxed[-1][1]  # what the failing CI encode must have produced
        real(container, packet, path, muxed)

    monkeypatch.setattr(video_encode, "_mux", mux)
    return files


def test_a_refused_packet_is_encoded_again_into_a_fresh_file(tmp_path, monkeypatch):
    import av

    from robopolicy.data import video_encode

    files = _refuse_packet_3(video_encode, monkeypatch, attempts_refused=1)
    frames = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    out = tmp_path / "ep.mp4"
    with pytest.warns(UserWarning, match=r"ep.attempt0.mp4: the mp4 muxer refused packet 3 \(pts 2, dts 2"):
        video_encode.encode_video(frames, out, 10, "mpeg4", video_encode.VideoOptions())
    assert files == ["ep.attempt0.mp4", "ep.attempt1.mp4"] and sorted(p.name for p in tmp_path.iterdir()) == ["ep.mp4"]
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 8


def test_a_muxer_that_always_refuses_names_the_file_and_each_attempt(tmp_path, monkeypatch):
    from robopolicy.data import video_encode

    _refuse_packet_3(video_encode, monkeypatch, attempts_refused=3)
    frames = np.zeros((8, 16, 16, 3), np.uint8)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match=r"ep.mp4: the mpeg4 encoder failed 3 times") as e:
        video_encode.encode_video(frames, tmp_path / "ep.mp4", 10, "mpeg4", video_encode.VideoOptions())
    assert str(e.value).count("refused packet 3") == 3 and "video=False" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no attempt file is left behind

# ----- long episodes: float32 timestamps past 2048 s ---------------------------------------------------------
# timestamp is float32 on disk (as LeRobot writes it): its spacing is 2.4e-4 s past 2048 s and 4.9e-4 s past
# 4096 s, more than the default tolerance_s=1e-4. At 2 fps every i/2 is exact in float32, so the short test
# uses 3 fps (i/3 is not).

LONG_FEATURES = {
    "observation.state": Feature("observation.state", "float32", (2,), "state"),
    "cam": Feature("cam", "video", (16, 16, 3), "video"),
}


def _level(t: np.ndarray) -> np.ndarray:
    return (np.asarray(t) * 7) % 200 + 20


def _write_long(root: Path, fps: int, seconds: int) -> int:
    n = fps * seconds
    with create_writer(root, LONG_FEATURES, fps, format="lerobot") as w:
        for t in range(n):
            w.add_frame({"observation.state": np.array([t, t / fps], np.float32),
                         "cam": np.full((16, 16, 3), _level(t), np.uint8)})  # fmt: skip
        w.save_episode(task="long")
    return n


def _check_long(root: Path, fps: int, n: int) -> None:
    with open_dataset(root) as ds:  # default tolerance_s
        assert ds.tolerance_s == 1e-4 and ds.num_frames == n
        stored = ds.read("timestamp", [n - 1]).ravel()
        assert stored.dtype == np.float32 and abs(float(stored[0]) - (n - 1) / fps) > 1e-4  # the float32 error
        assert ds.timestamps(np.array([n - 1]))[0] == (n - 1) / fps  # read back exactly
        idx = np.unique(np.concatenate([np.arange(n - 8, n), np.linspace(0, n - 1, 40).astype(int)]))
        frames = ds.read("cam", idx).reshape(len(idx), -1).mean(1)
        assert np.abs(frames - _level(idx)).max() < 6
        np.testing.assert_array_equal(ds.read("observation.state", idx)[:, 0], idx.astype(np.float32))


@pytest.fixture(scope="module")
def long_5000s(tmp_path_factory) -> tuple[Path, int, int]:
    root = tmp_path_factory.mktemp("long") / "ep"
    return root, 3, _write_long(root, 3, 5000)


def test_long_episode_frames_read_with_the_default_tolerance(long_5000s):
    root, fps, n = long_5000s
    _check_long(root, fps, n)


def test_long_episode_validates_clean(long_5000s):
    from robopolicy.data.validate import validate_dataset

    assert [str(p) for p in validate_dataset(long_5000s[0])] == []


@pytest.mark.slow
def test_one_hour_episode_at_30_fps_round_trips(tmp_path):
    """108,000 frames (16x16 video and a state): write, open, read near the end, validate (~35 s)."""
    from robopolicy.data.validate import validate_dataset

    root = tmp_path / "hour"
    n = _write_long(root, 30, 3600)
    _check_long(root, 30, n)
    assert [str(p) for p in validate_dataset(root)] == []
