"""Write the diffusion-policy Zarr layout: `data/<key>` arrays (T, ...) + `meta/episode_ends` (int64).

zarr_format=2 by default (diffusion_policy's ReplayBuffer reads it with zarr 2), 3 on request. Images are
uint8 (T, H, W, C) chunked by frames; everything is Blosc/zstd compressed. Group attribute `robopolicy`
holds fps, tasks, episode_tasks, episode_success, kinds and names (read by `ZarrDataset`).

Commit order of `save_episode`: data arrays grow, then the attributes, then `meta/episode_ends` last, so
readers never see a half episode. If a crash hits inside that short window the arrays are longer than
episode_ends; `ZarrWriter(..., append=True)` trims them back to the last committed episode.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numcodecs
import numpy as np
import zarr

from robopolicy.data.errors import DatasetError
from robopolicy.data.features import Feature
from robopolicy.data.journal import Journal
from robopolicy.data.writer import EpisodeWriter
from robopolicy.data.zarr_format import ATTRS_KEY

IMAGE_CHUNK_BYTES = 4 * 2**20
NUMERIC_CHUNK_BYTES = 1 * 2**20
MAX_NUMERIC_CHUNK_FRAMES = 1 << 16
EPISODE_ENDS_CHUNK = 1024


class ZarrWriter(EpisodeWriter):
    """EpisodeWriter for a zarr store (see module docstring). fps may be None (unknown)."""

    format = "zarr"
    _transactional = ("_ends", "_attrs")

    def __init__(
        self,
        root: str | Path,
        features: Mapping[str, Feature],
        fps: float | None,
        *,
        overwrite: bool = False,
        append: bool = False,
        zarr_format: int = 2,
        compression_level: int = 5,
    ):
        super().__init__(root, features, fps)
        if zarr_format not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format}")
        for key in self.features:
            if "/" in key:
                raise ValueError(f"{self.root}: feature name {key!r} may not contain '/' in a zarr store")
        self.zarr_format = zarr_format
        self.compression_level = compression_level
        if self._open_root(overwrite=overwrite, append=append):
            self._open_existing()
        else:
            self._create()

    # ----- store setup ---------------------------------------------------------------------------
    def _compressor(self):
        if self.zarr_format == 2:
            return numcodecs.Blosc(cname="zstd", clevel=self.compression_level, shuffle=numcodecs.Blosc.BITSHUFFLE)
        return zarr.codecs.BloscCodec(cname="zstd", clevel=self.compression_level, shuffle="bitshuffle")

    def _create(self) -> None:
        # mode "a": "w" would delete the writer lock and the robopolicy marker already in the folder
        self._group = zarr.open_group(str(self.root), mode="a", zarr_format=self.zarr_format)
        data = self._group.create_group("data")
        meta = self._group.create_group("meta")
        for key, feat in self.features.items():
            dtype = np.dtype(np.uint8 if feat.is_visual else feat.dtype)
            frame_bytes = max(1, int(np.prod(feat.shape)) * dtype.itemsize)
            if feat.is_visual:
                frames = max(1, IMAGE_CHUNK_BYTES // frame_bytes)
            else:
                frames = min(MAX_NUMERIC_CHUNK_FRAMES, max(1, NUMERIC_CHUNK_BYTES // frame_bytes))
            data.create_array(
                key,
                shape=(0, *feat.shape),
                chunks=(frames, *feat.shape),
                dtype=dtype,
                compressors=self._compressor(),
            )
        meta.create_array(
            "episode_ends", shape=(0,), chunks=(EPISODE_ENDS_CHUNK,), dtype=np.int64, compressors=self._compressor()
        )
        self._attrs = {
            "fps": self.fps,
            "tasks": [],
            "episode_tasks": [],
            "episode_success": [],
            "kinds": {k: f.kind for k, f in self.features.items()},
            "names": {k: f.names for k, f in self.features.items() if f.names is not None},
        }
        self._group.attrs[ATTRS_KEY] = self._attrs
        self._ends = np.zeros(0, dtype=np.int64)

    def _open_existing(self) -> None:
        try:
            self._group = zarr.open_group(str(self.root), mode="r+")
            data, meta = self._group["data"], self._group["meta"]
            ends = np.asarray(meta["episode_ends"][:], dtype=np.int64)
        except Exception as e:
            raise DatasetError(f"{self.root}: cannot append, not a diffusion-policy zarr store ({e})") from e
        self.zarr_format = self._group.metadata.zarr_format
        existing = {k: data[k] for k in data.array_keys()}
        if set(existing) != set(self.features):
            raise DatasetError(
                f"{self.root}: cannot append, features differ: store has {sorted(existing)}, "
                f"writer has {sorted(self.features)}"
            )
        for key, feat in self.features.items():
            arr = existing[key]
            want = np.dtype(np.uint8 if feat.is_visual else feat.dtype)
            if tuple(arr.shape[1:]) != tuple(feat.shape) or np.dtype(arr.dtype) != want:
                raise DatasetError(
                    f"{self.root}: cannot append, data/{key} is {arr.dtype} {tuple(arr.shape[1:])}, "
                    f"writer has {want} {tuple(feat.shape)}"
                )
        attrs = dict(self._group.attrs).get(ATTRS_KEY, {})
        if attrs.get("fps") is not None and self.fps is not None and float(attrs["fps"]) != float(self.fps):
            raise DatasetError(f"{self.root}: cannot append at fps={self.fps}, the store records fps={attrs['fps']}")
        if self.fps is None:
            self.fps = attrs.get("fps")
        ends = _valid_prefix(ends, min(a.shape[0] for a in existing.values()))
        self._ends = ends
        total = int(ends[-1]) if ends.size else 0
        if meta["episode_ends"].shape[0] != ends.size:
            meta["episode_ends"].resize((ends.size,))
        for arr in existing.values():  # trim rows of an interrupted save
            if arr.shape[0] != total:
                arr.resize((total, *arr.shape[1:]))
        n = ends.size
        self._attrs = {
            "fps": self.fps,
            "tasks": list(attrs.get("tasks", [])),
            "episode_tasks": list(attrs.get("episode_tasks", []))[:n],
            "episode_success": list(attrs.get("episode_success", []))[:n],
            "kinds": {**attrs.get("kinds", {}), **{k: f.kind for k, f in self.features.items()}},
            "names": {**attrs.get("names", {}), **{k: f.names for k, f in self.features.items() if f.names}},
        }
        # Stores from diffusion_policy have no per-episode lists: pad them so indices line up.
        self._attrs["episode_tasks"] += [[] for _ in range(n - len(self._attrs["episode_tasks"]))]
        self._attrs["episode_success"] += [None] * (n - len(self._attrs["episode_success"]))
        self._group.attrs[ATTRS_KEY] = self._attrs

    # ----- EpisodeWriter --------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return int(self._ends.size)

    def _commit_file(self) -> str:
        return "meta/episode_ends/" + (".zarray" if self.zarr_format == 2 else "zarr.json")

    def _write_episode(
        self, data: dict[str, np.ndarray], task: str | None, success: bool | None, journal: Journal
    ) -> int:
        n = len(next(iter(data.values())))
        start = int(self._ends[-1]) if self._ends.size else 0
        for key, values in data.items():
            self._group["data"][key].append(values, axis=0)
        if task is not None and task not in self._attrs["tasks"]:
            self._attrs["tasks"].append(task)
        self._attrs["episode_tasks"].append([task] if task is not None else [])
        self._attrs["episode_success"].append(None if success is None else bool(success))
        self._group.attrs[ATTRS_KEY] = self._attrs
        self._group["meta/episode_ends"].append(np.array([start + n], dtype=np.int64))  # commit point
        self._ends = np.append(self._ends, start + n)
        return self.num_episodes - 1


def _valid_prefix(ends: np.ndarray, max_rows: int) -> np.ndarray:
    """Longest prefix of `ends` that is strictly increasing, positive and within the data arrays."""
    keep = 0
    prev = 0
    for e in ends:
        if e <= prev or e > max_rows:
            break
        prev, keep = int(e), keep + 1
    return ends[:keep].astype(np.int64)
