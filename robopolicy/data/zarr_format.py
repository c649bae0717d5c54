"""Reader for the diffusion-policy Zarr layout: `data/<key>` arrays (T, ...) + `meta/episode_ends`.

Works on zarr v2 and v3 stores. Optional group attribute `robopolicy` (written by our writer) carries fps,
tasks, per-episode tasks and success flags; stores written by diffusion_policy have none and get fps=None.

Nothing silently wrong:
- Only the committed rows (up to meta/episode_ends[-1]) are served. Longer data arrays are the rows of a save
  that was interrupted (ours or diffusion_policy's): they are ignored, with a warning. A store with a pending
  robopolicy journal (a killed or running save) is served the same way.
- zarr reads an absent chunk file as the fill value (zeros: actions of 0, black frames). Our writer and
  diffusion_policy (zarr 2, write_empty_chunks=True) write every chunk, so an absent chunk means a lost file:
  reading rows it holds raises `MissingChunkError` naming the array and the file. A foreign store written
  with write_empty_chunks=False (zarr-python 3's default), where an absent chunk means "all fill value", opens
  with `missing_chunks="fill"`. A chunk that cannot be decoded raises `CorruptChunkError` naming the file.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import zarr

from robopolicy.data.dataset import Dataset, Episode
from robopolicy.data.errors import CorruptChunkError, DatasetError, MissingChunkError
from robopolicy.data.features import Feature, infer_kind
from robopolicy.data.journal import pending
from robopolicy.data.metadata_checks import (
    check_robopolicy_attrs,
    check_zarr_metadata,
    raise_problems,
    zarr_chunk_path,
)

ATTRS_KEY = "robopolicy"


class ZarrDataset(Dataset):
    format = "zarr"

    def __init__(
        self,
        root: str | Path,
        *,
        cache_mb: float = 0.0,
        chunk_cache: int = 8,
        fps: float | None = None,
        missing_chunks: Literal["error", "fill"] = "error",
    ):
        super().__init__(Path(root), cache_mb=cache_mb)
        if missing_chunks not in ("error", "fill"):
            raise ValueError(f"missing_chunks must be 'error' or 'fill', got {missing_chunks!r}")
        self._fill_missing = missing_chunks == "fill"
        self._present: set[tuple[str, tuple[int, ...]]] = set()  # chunk files seen
        try:
            self._group = zarr.open_group(str(self.root), mode="r")
        except Exception as e:  # zarr raises several types for a broken store
            raise DatasetError(f"{self.root}: cannot open zarr group ({e})") from e
        raise_problems(check_zarr_metadata(self.root, chunks=False))  # a lost .zarray would drop its array
        if "data" not in self._group or "meta" not in self._group:
            raise DatasetError(f"{self.root}: not a diffusion-policy zarr store (needs data/ and meta/ groups)")
        try:
            ends_array = self._group["meta/episode_ends"]
        except KeyError:
            raise DatasetError(f"{self.root}: meta/episode_ends is missing") from None
        ends = np.asarray(self._checked_read("meta/episode_ends", ends_array, 0, ends_array.shape[0]), np.int64)
        self._interrupted = pending(self.root)
        if self._interrupted:
            warnings.warn(
                f"{self.root}: a save was interrupted (or is running): serving the {ends.size} committed "
                "episodes; the next writer opened with append=True finishes or undoes it",
                stacklevel=3,
            )
        raw_attrs = dict(self._group.attrs).get(ATTRS_KEY, {})
        raise_problems(check_robopolicy_attrs(raw_attrs, self.root))
        attrs = _committed_attrs(raw_attrs, ends.size)
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
        self._total = self._check_lengths(ends)
        ep_tasks = attrs.get("episode_tasks", [])
        starts = np.concatenate([[0], ends[:-1]])
        self.episodes = [
            Episode(i, int(e - s), int(s), tuple(ep_tasks[i]) if i < len(ep_tasks) else ())
            for i, (s, e) in enumerate(zip(starts, ends))
        ]
        self._numeric: dict[str, np.ndarray] = {}
        self._chunks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._chunk_cache = chunk_cache

    def _check_lengths(self, ends: np.ndarray) -> int:
        if ends.ndim != 1 or (ends.size and (np.any(np.diff(ends) <= 0) or ends[0] <= 0)):
            raise DatasetError(
                f"{self.root}: meta/episode_ends must be strictly increasing and positive, got "
                f"{ends.tolist()[:8]}{'...' if ends.size > 8 else ''}; a last entry of 0 is a save an older version "
                "was killed in: a writer opened with append=True keeps the valid episodes"
            )
        total = int(ends[-1]) if ends.size else 0
        longer = []
        for key, arr in self._arrays.items():
            if arr.shape[0] < total:
                raise DatasetError(
                    f"{self.root}: data/{key} has {arr.shape[0]} rows but meta/episode_ends ends at {total}; "
                    "the store is truncated or episode_ends is stale — re-export it or trim the arrays"
                )
            if arr.shape[0] > total:
                longer.append(f"data/{key} ({arr.shape[0]} rows)")
        if longer and not self._interrupted:
            warnings.warn(
                f"{self.root}: {', '.join(longer)} hold rows past meta/episode_ends ({total}), left by a save that "
                "was interrupted; they are ignored (a writer opened with append=True drops them)",
                stacklevel=4,
            )
        return total

    @property
    def episode_success(self) -> list[bool] | None:
        return self.attrs.get("episode_success")

    # ----- chunk files ----------------------------------------------------------------------------
    def _chunk_files(self, arr: zarr.Array, lo: int, hi: int) -> list[tuple[tuple[int, ...], Path]]:
        """(coords, file) of every chunk file holding rows [lo, hi) of `arr` (shard files for sharded v3)."""
        grid = tuple(arr.metadata.chunk_grid.chunk_shape)
        if hi <= lo:
            return []
        blocks = range(lo // grid[0], (hi - 1) // grid[0] + 1)
        others = [range(math.ceil(s / c)) for s, c in zip(arr.shape[1:], grid[1:])]
        return [(coords, zarr_chunk_path(arr, self.root, coords)) for coords in itertools.product(blocks, *others)]

    def _require_chunks(self, name: str, arr: zarr.Array, lo: int, hi: int) -> None:
        """Raise MissingChunkError unless every chunk file holding rows [lo, hi) exists."""
        if self._fill_missing:
            return
        files = [(c, path) for c, path in self._chunk_files(arr, lo, hi) if (name, c) not in self._present]
        for coords, path in files:
            if not path.is_file():
                grid = arr.metadata.chunk_grid.chunk_shape[0]
                fill = getattr(arr.metadata.fill_value, "item", lambda: arr.metadata.fill_value)()
                first, last = coords[0] * grid, min((coords[0] + 1) * grid, arr.shape[0]) - 1
                raise MissingChunkError(
                    f"{self.root}: {name}: chunk file {path.relative_to(self.root)} is missing, so rows "
                    f"{first}..{last} of {name} would read as {fill!r} (zeros, black frames); "
                    "the store is incomplete (an interrupted copy or sync?): copy it again from its source. "
                    "Only a store written with write_empty_chunks=False (zarr-python 3's default), where an "
                    "absent chunk means 'all fill value', may be opened with missing_chunks='fill'"
                )
        self._present.update((name, coords) for coords, _ in files)

    def _checked_read(self, name: str, arr: zarr.Array, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of `arr`: every chunk present, a chunk that cannot be decoded named."""
        self._require_chunks(name, arr, lo, hi)
        try:
            return arr[lo:hi]
        except Exception as e:  # numcodecs / zarr raise many types for bad bytes
            raise self._corrupt(name, arr, lo, hi, e) from e

    def _corrupt(self, name: str, arr: zarr.Array, lo: int, hi: int, error: Exception) -> DatasetError:
        """The CorruptChunkError naming the first chunk file in rows [lo, hi) that cannot be decoded."""
        grid = tuple(arr.metadata.chunk_grid.chunk_shape)
        for coords, path in self._chunk_files(arr, lo, hi):
            sel = tuple(slice(c * g, min((c + 1) * g, s)) for c, g, s in zip(coords, grid, arr.shape))
            try:
                arr[sel]
            except Exception as e:
                return CorruptChunkError(
                    f"{self.root}: {name}: chunk file {path.relative_to(self.root)} cannot be decoded "
                    f"({type(e).__name__}: {e}); the file is damaged: copy the store again from its source"
                )
        return CorruptChunkError(
            f"{self.root}: {name}: rows {lo}..{hi - 1} cannot be read ({type(error).__name__}: {error}); "
            "a chunk file is damaged: copy the store again from its source"
        )

    def missing_chunks(self) -> list[str]:
        """Every absent chunk file (relative path) that holds committed rows, for a validator."""
        out = []
        arrays = {f"data/{k}": a for k, a in self._arrays.items()}
        arrays["meta/episode_ends"] = self._group["meta/episode_ends"]
        for name, arr in arrays.items():
            rows = self.num_episodes if name == "meta/episode_ends" else self._total
            out += [str(p.relative_to(self.root)) for _, p in self._chunk_files(arr, 0, rows) if not p.is_file()]
        return out

    # ----- reading --------------------------------------------------------------------------------
    def _read_numeric(self, key: str, indices: np.ndarray) -> np.ndarray:
        if key not in self._numeric:
            self._numeric[key] = self._checked_read(f"data/{key}", self._arrays[key], 0, self._total)
        return self._numeric[key][indices]

    def _chunk(self, key: str, c: int) -> np.ndarray:
        arr = self._arrays[key]
        n = arr.chunks[0]
        hit = self._chunks.get((key, c))
        if hit is None:
            hit = _to_uint8_chw(self._checked_read(f"data/{key}", arr, c * n, min((c + 1) * n, self._total)))
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


def _committed_attrs(attrs: dict, num_episodes: int) -> dict:
    """`attrs` without what an uncommitted save added (its episode entries and the tasks only it used)."""
    attrs = dict(attrs)
    ep_tasks = list(attrs.get("episode_tasks", []))
    if len(ep_tasks) > num_episodes:
        used = {t for tasks in ep_tasks[:num_episodes] for t in tasks}
        extra = {t for tasks in ep_tasks[num_episodes:] for t in tasks} - used
        attrs["tasks"] = [t for t in attrs.get("tasks", []) if t not in extra]
        attrs["episode_tasks"] = ep_tasks[:num_episodes]
    if len(attrs.get("episode_success") or []) > num_episodes:
        attrs["episode_success"] = list(attrs["episode_success"])[:num_episodes]
    return attrs
