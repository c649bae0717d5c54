"""Small LeRobot v3.0 / v2.1 datasets written with pyarrow + PyAV for reader tests.

Values are known in closed form so tests can check them exactly:
  observation.state[g] = [g, g + 0.5], action[g] = [-g, 2g] for global frame g (float32),
  frames: `frame_image(g)` (uint8 H, W, 3), each visibly different from its neighbours.
Videos are encoded per file by concatenating episodes (v3) or one file per episode (v2.1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

H, W = 32, 48
CAM = "observation.images.cam"
TASKS = ["stack the cubes", "open the drawer"]


def frame_image(g: int, h: int = H, w: int = W) -> np.ndarray:
    """A frame that identifies global frame g: flat red level, moving green bar, blue gradient."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = (g * 23) % 200 + 30
    x = (g * 5) % (w - 8)
    img[:, x : x + 8, 1] = 220
    img[..., 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    return img


def encode_video(
    path: Path,
    frames: np.ndarray,
    fps: int,
    codec: str = "mpeg4",
    gop: int = 4,
    bframes: int = 0,
    faststart: bool = False,
) -> None:
    """Encode uint8 (N, H, W, 3) frames; frame i at time i / fps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "12", "bf": str(bframes), "preset": "ultrafast" if not bframes else "fast"}
        elif codec == "mpeg4":
            stream.options = {"qscale": "2"}
            stream.codec_context.max_b_frames = bframes
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def encode_png(img: np.ndarray) -> bytes:
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = img.shape[1], img.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(img, format="rgb24")) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def _features(video: bool, image: bool) -> dict:
    feats = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
    }
    if video:
        feats[CAM] = {
            "dtype": "video",
            "shape": [H, W, 3],
            "names": ["height", "width", "channels"],
            "info": {"video.codec": "h264", "video.fps": 10},  # deliberately wrong codec: trust the stream
        }
    if image:
        feats["observation.images.png"] = {
            "dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]
        }
    for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                  ("index", "int64"), ("task_index", "int64")):
        feats[k] = {"dtype": dt, "shape": [1], "names": None}
    return feats


def _frame_table(eps: Sequence[int], lengths: Sequence[int], starts: Sequence[int], fps: int, image: bool) -> pa.Table:
    g = np.concatenate([np.arange(starts[e], starts[e] + lengths[e]) for e in eps])
    fi = np.concatenate([np.arange(lengths[e]) for e in eps])
    ep = np.concatenate([np.full(lengths[e], e) for e in eps])
    state = np.stack([g, g + 0.5], 1).astype(np.float32)
    action = np.stack([-g, 2 * g], 1).astype(np.float32)
    cols = {
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), 2),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), 2),
    }
    if image:
        structs = [{"bytes": encode_png(frame_image(int(x))), "path": None} for x in g]
        cols["observation.images.png"] = pa.array(
            structs, pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        )
    cols |= {
        "timestamp": pa.array((fi / fps).astype(np.float32)),
        "frame_index": pa.array(fi.astype(np.int64)),
        "episode_index": pa.array(ep.astype(np.int64)),
        "index": pa.array(g.astype(np.int64)),
        "task_index": pa.array((ep % len(TASKS)).astype(np.int64)),
    }
    return pa.table(cols)


def write_v3(
    root: Path,
    lengths: Sequence[int] = (5, 7, 6),
    fps: int = 10,
    data_files: Sequence[Sequence[int]] = ((0, 1), (2,)),
    video_files: Sequence[Sequence[int]] | None = ((0,), (1, 2)),
    image: bool = False,
    codec: str = "mpeg4",
) -> Path:
    """A v3.0 dataset; episodes split over `data_files` and (independently) `video_files`."""
    root = Path(root)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
    n_eps = len(lengths)
    info = {
        "codebase_version": "v3.0",
        "robot_type": "test",
        "total_episodes": n_eps,
        "total_frames": int(sum(lengths)),
        "total_tasks": len(TASKS),
        "chunks_size": 1000,
        "fps": fps,
        "splits": {"train": f"0:{n_eps}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if video_files else None,
        "features": _features(video_files is not None, image),
    }
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    ep_rows: dict[str, list] = {k: [] for k in ("episode_index", "tasks", "length", "data/chunk_index",
                                                  "data/file_index", "dataset_from_index", "dataset_to_index")}
    data_file_of = {e: i for i, eps in enumerate(data_files) for e in eps}
    for i, eps in enumerate(data_files):
        path = root / f"data/chunk-000/file-{i:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_frame_table(eps, lengths, starts, fps, image), path)
    for e in range(n_eps):
        ep_rows["episode_index"].append(e)
        ep_rows["tasks"].append([TASKS[e % len(TASKS)]])
        ep_rows["length"].append(lengths[e])
        ep_rows["data/chunk_index"].append(0)
        ep_rows["data/file_index"].append(data_file_of[e])
        ep_rows["dataset_from_index"].append(int(starts[e]))
        ep_rows["dataset_to_index"].append(int(starts[e] + lengths[e]))
    if video_files:
        names = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
        vcols = {f"videos/{CAM}/{c}": [0.0] * n_eps for c in names}
        for i, eps in enumerate(video_files):
            frames, t = [], 0.0
            for e in eps:
                frames += [frame_image(int(g)) for g in range(starts[e], starts[e] + lengths[e])]
                vcols[f"videos/{CAM}/chunk_index"][e] = 0
                vcols[f"videos/{CAM}/file_index"][e] = i
                vcols[f"videos/{CAM}/from_timestamp"][e] = t
                t += lengths[e] / fps
                vcols[f"videos/{CAM}/to_timestamp"][e] = t
            encode_video(root / f"videos/{CAM}/chunk-000/file-{i:03d}.mp4", np.stack(frames), fps, codec)
        for c in ("chunk_index", "file_index"):
            vcols[f"videos/{CAM}/{c}"] = [int(v) for v in vcols[f"videos/{CAM}/{c}"]]
        ep_rows |= vcols
    ep_rows["meta/episodes/chunk_index"] = [0] * n_eps
    ep_rows["meta/episodes/file_index"] = [0] * n_eps
    ep_rows["stats/action/mean"] = [[0.0, 0.0]] * n_eps  # LeRobot stores per-episode stats columns too
    pq.write_table(pa.table(ep_rows), root / "meta/episodes/chunk-000/file-000.parquet")
    # LeRobot writes the task string as the pandas index column
    tasks = pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), "__index_level_0__": TASKS})
    pandas_meta = {"index_columns": ["__index_level_0__"], "columns": []}
    tasks = tasks.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    pq.write_table(tasks, root / "meta/tasks.parquet")
    (root / "meta/stats.json").write_text(json.dumps(_stats(int(sum(lengths)))))
    return root


def _stats(n: int) -> dict:
    g = np.arange(n, dtype=np.float64)
    out = {}
    for key, v in (("observation.state", np.stack([g, g + 0.5], 1)), ("action", np.stack([-g, 2 * g], 1))):
        out[key] = {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
                    "std": v.std(0).tolist(), "count": [n]}
    return out


def write_v21(root: Path, lengths: Sequence[int] = (5, 7, 6), fps: int = 10, chunks_size: int = 2) -> Path:
    """A v2.1 dataset: one parquet and one mp4 per episode, chunked by `chunks_size` episodes."""
    root = Path(root)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
    n_eps = len(lengths)
    info = {
        "codebase_version": "v2.1",
        "robot_type": "test",
        "total_episodes": n_eps,
        "total_frames": int(sum(lengths)),
        "total_tasks": len(TASKS),
        "total_videos": n_eps,
        "total_chunks": (n_eps + chunks_size - 1) // chunks_size,
        "chunks_size": chunks_size,
        "fps": fps,
        "splits": {"train": f"0:{n_eps}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": _features(True, False),
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    episodes, stats = [], []
    for e in range(n_eps):
        chunk = e // chunks_size
        path = root / f"data/chunk-{chunk:03d}/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = _frame_table([e], lengths, starts, fps, False)
        pq.write_table(table, path)
        frames = np.stack([frame_image(int(g)) for g in range(starts[e], starts[e] + lengths[e])])
        encode_video(root / f"videos/chunk-{chunk:03d}/{CAM}/episode_{e:06d}.mp4", frames, fps)
        episodes.append({"episode_index": e, "tasks": [TASKS[e % len(TASKS)]], "length": lengths[e]})
        g = np.arange(starts[e], starts[e] + lengths[e], dtype=np.float64)
        v = np.stack([g, g + 0.5], 1)
        stats.append({"episode_index": e, "stats": {"observation.state": {
            "min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
            "std": v.std(0).tolist(), "count": [lengths[e]]}}})
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in episodes))
    (root / "meta/tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS))
    )
    (root / "meta/episodes_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stats))
    return root


def rewrite_parquet(path: Path, fn) -> None:
    """Replace the table in `path` by fn(table)."""
    pq.write_table(fn(pq.read_table(path)), path)
