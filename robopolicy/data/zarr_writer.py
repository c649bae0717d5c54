"""Write the diffusion-policy Zarr layout: `data/<key>` arrays (T, ...) + `meta/episode_ends` (int64).

zarr_format=2 by default (diffusion_policy's ReplayBuffer reads it with zarr 2), 3 on request. Images are
uint8 (T, H, W, C) chunked by frames; everything is Blosc/zstd compressed. Group attribute `robopolicy`
holds fps, tasks, episode_tasks, episode_success, kinds and names (read by `ZarrDataset`).

`save_episode` is one journaled transaction (robopolicy.data.journal): zarr writes into a `JournaledStore`,
which holds every chunk and metadata write of the save in memory (zarr's reads see them), then hands them to
the journal with the metadata of `meta/episode_ends` last, the commit point. A failed save leaves every file
byte-identical; a killed one leaves a journal that the next writer (append=True) rolls back or confirms, and
readers in the meantime see the committed episodes only (the data arrays may be longer than episode_ends).

zarr 3 stores checksum every chunk (crc32c). zarr 2 stores cannot without changing what diffusion_policy's
readers expect: there a bit flip inside a chunk that still decompresses reads as wrong values.

Every chunk is written, even one equal to the fill value (zarr's write_empty_chunks=True, as zarr 2 did by
default), so an absent chunk file always means a lost file, which `ZarrDataset` reports.

Stores left by older versions or by diffusion_policy after a crash (arrays longer than episode_ends, or an
episode_ends whose tail is not increasing) are repaired by the first save of an append=True writer: it
resizes every array to the committed length plus the new episode, inside the same transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import LocalStore

from robopolicy.data.errors import DatasetError
from robopolicy.data.features import Feature
from robopolicy.data.journal import Journal
from robopolicy.data.writer import EpisodeWriter, written_by_robopolicy
from robopolicy.data.zarr_format import ATTRS_KEY

IMAGE_CHUNK_BYTES = 4 * 2**20
NUMERIC_CHUNK_BYTES = 1 * 2**20
MAX_NUMERIC_CHUNK_FRAMES = 1 << 16
EPISODE_ENDS_CHUNK = 1024
WRITE_CONFIG = {"write_empty_chunks": True}


class JournaledStore(LocalStore):
    """A LocalStore whose writes, between `begin()` and `end()`, are held in memory until `flush(journal)`.

    Reads (get / exists / list*) see the held writes. Outside a transaction, writes go to disk only while
    `direct` is True (creating the store); otherwise they are refused, so a zarr task still running after a
    failed save cannot touch a file.
    """

    def __init__(self, root: Path | str, *, read_only: bool = False):
        super().__init__(root, read_only=read_only)
        self._pending: dict[str, bytes | None] | None = None
        self.direct = False

    def with_read_only(self, read_only: bool = False) -> LocalStore:
        return LocalStore(self.root, read_only=read_only)

    # ----- the transaction ----------------------------------------------------------------------
    def begin(self) -> None:
        self._pending = {}

    def end(self) -> None:
        """Forget the held writes (after `flush`, or when the save failed)."""
        self._pending = None

    def flush(self, journal: Journal, commit_key: str) -> None:
        """Write the held changes through `journal`, `commit_key` last; unchanged files are skipped."""
        pending = self._pending
        if pending is None:
            raise RuntimeError("JournaledStore.flush outside a transaction")
        if pending.get(commit_key) is None:
            raise RuntimeError(f"{self.root}: the save did not write its commit file {commit_key}")
        writes = [k for k, v in pending.items() if v is not None and k != commit_key]
        deletes = [k for k, v in pending.items() if v is None]
        for key in writes:
            value = pending[key]
            assert value is not None
            path = self.root / key
            if not _same_bytes(path, value):
                journal.write_bytes(path, value)
        for key in deletes:
            journal.remove(self.root / key)
        journal.write_bytes(self.root / commit_key, pending[commit_key])  # type: ignore[arg-type]

    # ----- reads --------------------------------------------------------------------------------
    def _held(self, key: str) -> tuple[bool, bytes | None]:
        if self._pending is not None and key in self._pending:
            return True, self._pending[key]
        return False, None

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        held, value = self._held(key)
        if not held:
            return await super().get(key, prototype, byte_range)
        if value is None:
            return None
        prototype = prototype or default_buffer_prototype()
        return prototype.buffer.from_bytes(_slice(value, byte_range))

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        held, value = self._held(key)
        if not held:
            return super().get_sync(key, prototype=prototype, byte_range=byte_range)
        if value is None:
            return None
        prototype = prototype or default_buffer_prototype()
        return prototype.buffer.from_bytes(_slice(value, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        held, value = self._held(key)
        return value is not None if held else await super().exists(key)

    async def list(self) -> AsyncIterator[str]:
        async for key in self.list_prefix(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        keys = {k async for k in super().list_prefix(prefix)} if (self.root / prefix).exists() else set()
        for key, value in (self._pending or {}).items():
            if key.startswith(prefix):
                keys.add(key) if value is not None else keys.discard(key)
        for key in sorted(keys):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        names = {name async for name in super().list_dir(prefix)}
        base = prefix.rstrip("/") + "/" if prefix.rstrip("/") else ""
        for key, value in (self._pending or {}).items():
            if not key.startswith(base):
                continue
            rest = key[len(base) :]
            if value is not None:
                names.add(rest.split("/", 1)[0])
            elif "/" not in rest:
                names.discard(rest)
        for name in sorted(names):
            yield name

    # ----- writes -------------------------------------------------------------------------------
    def _hold(self, key: str, value: bytes | None) -> bool:
        """Hold a write (True) or let it go to disk (False); refuse it outside a transaction."""
        if self._pending is not None:
            self._pending[key] = value
            return True
        if self.direct:
            return False
        raise RuntimeError(f"{self.root}: zarr write of {key!r} outside save_episode (refused)")

    async def set(self, key: str, value: Buffer) -> None:
        if not self._hold(key, value.to_bytes()):
            await super().set(key, value)

    def set_sync(self, key: str, value: Buffer) -> None:
        if not self._hold(key, value.to_bytes()):
            super().set_sync(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not await self.exists(key):
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        if not self._hold(key, None):
            await super().delete(key)

    def delete_sync(self, key: str) -> None:
        if not self._hold(key, None):
            super().delete_sync(key)

    async def delete_dir(self, prefix: str) -> None:
        if self._pending is None:
            self._hold(prefix, None)  # refuses unless direct
            await super().delete_dir(prefix)
            return
        for key in [k async for k in self.list_prefix(prefix)]:
            self._pending[key] = None


def _slice(value: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return value
    if isinstance(byte_range, RangeByteRequest):
        return value[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return value[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return value[max(0, len(value) - byte_range.suffix) :]
    raise TypeError(f"unexpected byte_range {byte_range!r}")


def _same_bytes(path: Path, value: bytes) -> bool:
    """True when `path` already holds exactly `value` (its size is checked before reading it)."""
    try:
        if path.stat().st_size != len(value):
            return False
        return path.read_bytes() == value
    except OSError:
        return False


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
        continuing = self._open_root(overwrite=overwrite, append=append)
        try:
            self._store = JournaledStore(self.root)
            self._open_existing() if continuing else self._create()
        except BaseException:
            self._release_lock()
            raise

    # ----- store setup ---------------------------------------------------------------------------
    def _compressor(self):
        """Blosc/zstd; zarr 3 stores add a crc32c checksum of every chunk, so a flipped bit is an error, not
        wrong values (zarr 2 keeps diffusion_policy's plain Blosc: its readers know no checksum codec)."""
        if self.zarr_format == 2:
            return numcodecs.Blosc(cname="zstd", clevel=self.compression_level, shuffle=numcodecs.Blosc.BITSHUFFLE)
        blosc = zarr.codecs.BloscCodec(cname="zstd", clevel=self.compression_level, shuffle="bitshuffle")
        return [blosc, zarr.codecs.Crc32cCodec()]

    def _create(self) -> None:
        """Write the empty store (not journaled: a kill here leaves no episode to lose; episode_ends last)."""
        self._attrs = {
            "fps": self.fps,
            "tasks": [],
            "episode_tasks": [],
            "episode_success": [],
            "kinds": {k: f.kind for k, f in self.features.items()},
            "names": {k: f.names for k, f in self.features.items() if f.names is not None},
        }
        self._ends = np.zeros(0, dtype=np.int64)
        self._store.direct = True
        try:
            # not open_group(mode="w"): it would delete the writer lock and the marker already in the folder
            group = zarr.create_group(self._store, zarr_format=self.zarr_format)
            group.attrs[ATTRS_KEY] = self._attrs
            data = group.create_group("data")
            meta = group.create_group("meta")
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
                    config=WRITE_CONFIG,
                )
            meta.create_array(
                "episode_ends",
                shape=(0,),
                chunks=(EPISODE_ENDS_CHUNK,),
                dtype=np.int64,
                compressors=self._compressor(),
                config=WRITE_CONFIG,
            )
        finally:
            self._store.direct = False

    def _open_existing(self) -> None:
        """Check the store against the writer's features; nothing is written here (repairs happen in the
        first save, inside its transaction)."""
        try:
            group = zarr.open_group(self._store, mode="r+")
            data, meta = group["data"], group["meta"]
            ends = np.asarray(meta["episode_ends"][:], dtype=np.int64)
        except Exception as e:
            raise DatasetError(f"{self.root}: cannot append, not a diffusion-policy zarr store ({e})") from e
        self.zarr_format = group.metadata.zarr_format
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
        attrs = dict(group.attrs).get(ATTRS_KEY, {})
        if attrs.get("fps") is not None and self.fps is not None and float(attrs["fps"]) != float(self.fps):
            raise DatasetError(f"{self.root}: cannot append at fps={self.fps}, the store records fps={attrs['fps']}")
        if self.fps is None:
            self.fps = attrs.get("fps")
        self._ends = _valid_prefix(ends, min(a.shape[0] for a in existing.values()))
        n = self._ends.size
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

    # ----- EpisodeWriter --------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return int(self._ends.size)

    def _commit_file(self) -> str:
        return "meta/episode_ends/" + (".zarray" if self.zarr_format == 2 else "zarr.json")

    def _interrupted_creation(self) -> bool:  # the store on disk may be of the other zarr format
        ends = self.root / "meta" / "episode_ends"
        created = (ends / ".zarray").exists() or (ends / "zarr.json").exists()
        return written_by_robopolicy(self.root) and not created

    def _write_episode(
        self, data: dict[str, np.ndarray], task: str | None, success: bool | None, journal: Journal
    ) -> int:
        n = len(next(iter(data.values())))
        start = int(self._ends[-1]) if self._ends.size else 0
        self._store.begin()
        try:
            group = zarr.open_group(self._store, mode="r+")
            for key, values in data.items():
                arr = group[f"data/{key}"].with_config(WRITE_CONFIG)
                arr.resize((start + n, *arr.shape[1:]))  # also drops rows an interrupted old save left
                arr[start : start + n] = values
            if task is not None and task not in self._attrs["tasks"]:
                self._attrs["tasks"].append(task)
            self._attrs["episode_tasks"].append([task] if task is not None else [])
            self._attrs["episode_success"].append(None if success is None else bool(success))
            group.attrs[ATTRS_KEY] = self._attrs
            ends = group["meta/episode_ends"].with_config(WRITE_CONFIG)
            ends.resize((self._ends.size + 1,))
            ends[self._ends.size] = start + n
            self._store.flush(journal, self._commit_file())  # the commit file last
        finally:
            self._store.end()
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
