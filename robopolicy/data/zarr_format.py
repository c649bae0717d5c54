"""Reader for the diffusion-policy Zarr layout: `data/<key>` arrays (T, ...) + `meta/episode_ends`.

Works on zarr v2 and v3 stores. Optional group attribute `robopolicy` (written by our writer) carries fps,
tasks, per-episode tasks and success flags; stores written by diffusion_policy have none and get fps=None.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import zarr

from robopolicy.data.dataset import Dataset, Episode
from robopolicy.data.errors import DatasetError
from robopolicy.data.features import Feature, infer_kind

ATTRS_KEY = "robopolicy"


class ZarrDataset(Dataset):
    format = "zarr"

    def __init__(self, root: str | Path, *, cache_mb: float = 0.0, chunk_cache: int = 8, fps: float | None = None):
        super().__init__(Path(root), cache_mb=cache_mb)
        try:
            self._group = zarr.open_group(str(self.root), mode="r")
        except Exception as e:  # zarr raises several types for a broken store
            raise DatasetError(f"{self.root}: cannot open zarr group ({e})") from e
        if "data" not in self._group or "meta" not in self._group:
            raise DatasetError(f"{self.root}: not a diffusion-policy zarr store (needs data/ and meta/ groups)")
        try:
            ends = np.asarray(self._group["meta/episode_ends"][:], dtype=np.int64)
        except KeyError:
            raise DatasetError(f"{self.root}: meta/episode_ends is missing") from None
        attrs = dict(self._group.attrs).get(ATTRS_KEY, {})
        self.fps = fps if fps is not None else attrs.get("fps")
        self.tasks = list(attrs.get("tasks", []))
        self.attrs = attrs
        kinds = attrs.get("kinds", {})
        self._arrays = {k: self._group["data"][k] for k in self._group["data"].array_keys()}
        self.features = {}
        for key, arr in self._arrays.items():
            shape = tuple(int(s) for s in arr.shape[1:])
            kind = kinds.get(key) or infer_kind(key, str(arr.dtype), shape)
            self.features[key] = Feature(key, str(arr.dtype), shape, kind, names=attrs.get("names", {}).get(key))
        self._check_lengths(ends)
        ep_tasks = attrs.get("episode_tasks", [])
        starts = np.concatenate([[0], ends[:-1]])
        self.episodes = [
            Episode(i, int(e - s), int(s), tuple(ep_tasks[i]) if i < len(ep_tasks) else ())
            for i, (s, e) in enumerate(zip(starts, ends))
        ]
        self._numeric: dict[str, np.ndarray] = {}
        self._chunks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._chunk_cache = chunk_cache

    def _check_lengths(self, ends: np.ndarray) -> None:
        if ends.ndim != 1 or (ends.size and (np.any(np.diff(ends) <= 0) or ends[0] <= 0)):
            raise DatasetError(f"{self.root}: meta/episode_ends must be strictly increasing and positive")
        total = int(ends[-1]) if ends.size else 0
        for key, arr in self._arrays.items():
            if arr.shape[0] != total:
                raise DatasetError(
                    f"{self.root}: data/{key} has {arr.shape[0]} rows but meta/episode_ends ends at {total}; "
                    "the store is truncated or episode_ends is stale — re-export it or trim the arrays"
                )

    @property
    def episode_success(self) -> list[bool] | None:
        return self.attrs.get("episode_success")

    def _read_numeric(self, key: str, indices: np.ndarray) -> np.ndarray:
        if key not in self._numeric:
            self._numeric[key] = self._arrays[key][:]
        return self._numeric[key][indices]

    def _chunk(self, key: str, c: int) -> np.ndarray:
        arr = self._arrays[key]
        n = arr.chunks[0]
        hit = self._chunks.get((key, c))
        if hit is None:
            hit = _to_uint8_chw(arr[c * n : min((c + 1) * n, arr.shape[0])])
            self._chunks[(key, c)] = hit
            if len(self._chunks) > self._chunk_cache:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end((key, c))
        return hit

    def _read_visual(self, key: str, indices: np.ndarray) -> np.ndarray:
        h, w, c = self.features[key].shape
        out = np.empty((len(indices), c, h, w), dtype=np.uint8)
        n = self._arrays[key].chunks[0]
        chunk_ids = indices // n
        for cid in np.unique(chunk_ids):
            sel = np.nonzero(chunk_ids == cid)[0]
            out[sel] = self._chunk(key, int(cid))[indices[sel] - cid * n]
        return out


def _to_uint8_chw(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 or float (0..255, as diffusion_policy stores PushT) -> uint8 (N, C, H, W)."""
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
