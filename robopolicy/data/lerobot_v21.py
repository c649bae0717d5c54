"""Read-only reader for LeRobot v2.1 (and v2.0) datasets.

Layout: meta/info.json, meta/episodes.jsonl ({episode_index, tasks, length} per line), meta/tasks.jsonl
({task_index, task}), meta/episodes_stats.jsonl ({episode_index, stats: {key: {min, max, mean, std, count}}},
v2.1) or meta/stats.json (v2.0), data/chunk-XXX/episode_XXXXXX.parquet (one file per episode),
videos/chunk-XXX/<key>/episode_XXXXXX.mp4 (one file per episode and camera, starting at t=0).
Chunk of an episode = episode_index // chunks_size. Everything else (row checks at open, video decoding,
missing-video handling) is shared with the v3.0 reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.data.errors import DatasetError
from robopolicy.data.lerobot_format import EpisodeSource, LeRobotReader, VideoSegment, _ordered_tasks, load_stats

DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing; restore it from the dataset's source")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{n}: not valid JSON ({e}); restore the file") from e
    return rows


def aggregate_stats(per_episode: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, np.ndarray]]:
    """Pool per-episode {key: {min, max, mean, std, count}} into dataset stats (count-weighted mean, pooled std)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    keys = sorted({k for stats in per_episode for k in stats})
    for key in keys:
        eps = [s[key] for s in per_episode if key in s]
        counts = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in eps])
        total = counts.sum()
        w = (counts / total).reshape(-1, *([1] * np.asarray(eps[0]["mean"]).ndim))
        means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in eps])
        stds = np.stack([np.asarray(s["std"], dtype=np.float64) for s in eps])
        mean = (w * means).sum(0)
        var = (w * (stds**2 + (means - mean) ** 2)).sum(0)
        out[key] = {
            "min": np.min(np.stack([np.asarray(s["min"]) for s in eps]), axis=0),
            "max": np.max(np.stack([np.asarray(s["max"]) for s in eps]), axis=0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.array([int(total)]),
        }
    return out


class LeRobotV21Dataset(LeRobotReader):
    """A LeRobot v2.1 / v2.0 directory, read only (convert to v3.0 to write)."""

    format = "lerobot_v2.1"

    def _load_tasks(self) -> list[str]:
        path = self.root / "meta" / "tasks.jsonl"
        if not path.is_file() and not self.info.get("total_tasks", 0):
            return []
        rows = read_jsonl(path)
        try:
            return _ordered_tasks([r["task_index"] for r in rows], [r["task"] for r in rows], path)
        except KeyError as e:
            raise DatasetError(f"{path}: each line needs `task_index` and `task` (missing {e})") from None

    def _load_stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        stats = load_stats(self.root / "meta" / "stats.json")
        if stats is not None:
            return stats
        path = self.root / "meta" / "episodes_stats.jsonl"
        if not path.is_file():
            return None
        rows = read_jsonl(path)
        try:
            return aggregate_stats([r["stats"] for r in rows])
        except (KeyError, ValueError, IndexError) as e:
            raise DatasetError(f"{path}: malformed episode stats ({e!r}); restore the file") from e

    def _episode_sources(self) -> list[EpisodeSource]:
        path = self.root / "meta" / "episodes.jsonl"
        chunks_size = int(self.info.get("chunks_size", 1000))
        data_tpl = self.info.get("data_path") or DATA_PATH
        video_tpl = self.info.get("video_path") or VIDEO_PATH
        sources = []
        for n, row in enumerate(read_jsonl(path), 1):
            try:
                ep, length = int(row["episode_index"]), int(row["length"])
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetError(f"{path}:{n}: needs integer `episode_index` and `length` ({e!r})") from None
            chunk = ep // chunks_size
            videos = {
                key: VideoSegment(
                    self.root / video_tpl.format(episode_chunk=chunk, video_key=key, episode_index=ep), 0.0
                )
                for key in self.video_keys
            }
            sources.append(
                EpisodeSource(
                    index=ep,
                    length=length,
                    tasks=tuple(row.get("tasks") or ()),
                    data_file=self.root / data_tpl.format(episode_chunk=chunk, episode_index=ep),
                    index_range=None,
                    videos=videos,
                )
            )
        return sources
