"""The one `Dataset` interface every on-disk format implements, plus `open_dataset(uri)`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from robopolicy.data.errors import DatasetError
from robopolicy.data.features import Feature
from robopolicy.data.storage import DEFAULT_BLOCK_SIZE, DEFAULT_CACHE_GB, LOCAL, Storage


@dataclass(frozen=True)
class Episode:
    """One episode: rows [start, start + length) of the dataset's global frame order."""

    index: int
    length: int
    start: int
    tasks: tuple[str, ...] = ()

    @property
    def stop(self) -> int:
        return self.start + self.length


class FrameCache:
    """Decoded visual frames kept in RAM (uint8, C,H,W), so each frame is decoded at most once.

    Allocated lazily per key; a key whose frames would exceed `max_bytes` in total is not cached.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._frames: dict[str, np.ndarray] = {}
        self._filled: dict[str, np.ndarray] = {}
        self._used = 0

    def enabled_for(self, key: str, num_frames: int, frame_shape: tuple[int, ...]) -> bool:
        if key in self._frames:
            return True
        need = int(num_frames * np.prod(frame_shape))
        if self._used + need > self.max_bytes:
            return False
        self._frames[key] = np.empty((num_frames, *frame_shape), dtype=np.uint8)
        self._filled[key] = np.zeros(num_frames, dtype=bool)
        self._used += need
        return True

    def missing(self, key: str, indices: np.ndarray) -> np.ndarray:
        return np.unique(indices[~self._filled[key][indices]])

    def put(self, key: str, indices: np.ndarray, frames: np.ndarray) -> None:
        self._frames[key][indices] = frames
        self._filled[key][indices] = True

    def get(self, key: str, indices: np.ndarray) -> np.ndarray:
        return self._frames[key][indices]


class Dataset(ABC):
    """A recorded dataset: features, episodes, fps, tasks and stats over one global frame order.

    Frames are addressed by global index in [0, num_frames). Episodes are contiguous ranges of it.
    Visual features are returned as uint8 (N, C, H, W); numeric ones as (N, *shape) in their dtype.
    """

    format: str = ""

    def __init__(self, root: str | PurePath, *, cache_mb: float = 0.0):
        self.root = root if isinstance(root, PurePath) else Path(root)  # a RemotePath when streaming
        self._cache = FrameCache(int(cache_mb * 2**20))
        self._ends_cache: np.ndarray | None = None

    # ----- metadata every format provides -------------------------------------------------------
    fps: float | None
    features: dict[str, Feature]
    episodes: list[Episode]
    tasks: list[str]

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        """Stats stored with the dataset (LeRobot's meta/stats.json), or None if there are none."""
        return None

    @property
    def episode_success(self) -> list[bool | None] | None:
        """Per-episode success flags when the recorder stored them (robopolicy writers do), else None."""
        return None

    @property
    def num_frames(self) -> int:
        return sum(ep.length for ep in self.episodes)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def episode_ends(self) -> np.ndarray:
        """Exclusive global end index of each episode, int64 (E,)."""
        if self._ends_cache is None:
            self._ends_cache = np.array([ep.stop for ep in self.episodes], dtype=np.int64)
        return self._ends_cache

    def episode_of(self, indices: np.ndarray) -> np.ndarray:
        """Position in `self.episodes` of the episode holding each global frame index."""
        return np.searchsorted(self.episode_ends, np.asarray(indices), side="right")

    def feature(self, key: str) -> Feature:
        try:
            return self.features[key]
        except KeyError:
            raise KeyError(
                f"{self.root}: no feature {key!r}; available: {sorted(self.features)}"
            ) from None

    # ----- frame access --------------------------------------------------------------------------
    def read(self, key: str, indices: np.ndarray | list[int]) -> np.ndarray:
        """Values of `key` at global frame `indices` (any order, repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64)
        feat = self.feature(key)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_frames):
            raise IndexError(f"{self.root}: frame index out of range [0, {self.num_frames}) for {key!r}")
        if not feat.is_visual:
            return self._read_numeric(key, indices)
        h, w, c = feat.shape
        if not self._cache.enabled_for(key, self.num_frames, (c, h, w)):
            return self._read_visual(key, indices)
        missing = self._cache.missing(key, indices)
        if missing.size:
            self._cache.put(key, missing, self._read_visual(key, missing))
        return self._cache.get(key, indices)

    def read_episode(self, key: str, episode: int) -> np.ndarray:
        ep = self.episodes[episode]
        return self.read(key, np.arange(ep.start, ep.stop))

    def iter_chunks(self, key: str, chunk_frames: int = 1024) -> Iterator[np.ndarray]:
        """Stream `key` in chunks of frames (for stats and conversion without loading everything)."""
        for start in range(0, self.num_frames, chunk_frames):
            yield self.read(key, np.arange(start, min(start + chunk_frames, self.num_frames)))

    @abstractmethod
    def _read_numeric(self, key: str, indices: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _read_visual(self, key: str, indices: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) frames, bypassing the cache."""

    def frame_tasks(self, indices: np.ndarray) -> list[str]:
        """The task string of each frame ("" when the dataset has no tasks)."""
        if not self.tasks:
            return [""] * len(indices)
        if "task_index" in self.features:
            ti = self._read_numeric("task_index", np.asarray(indices)).reshape(-1)
            return [self.tasks[int(t)] for t in ti]
        eps = self.episode_of(indices)
        return [self.episodes[e].tasks[0] if self.episodes[e].tasks else "" for e in eps]

    def close(self) -> None:
        """Release open files and decoders."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, episodes={self.num_episodes}, "
            f"frames={self.num_frames}, fps={self.fps}, features={list(self.features)})"
        )


def _hf_repo(uri: str) -> tuple[str, str]:
    """`hf://<owner>/<name>[@revision]` -> (repo id, revision or "")."""
    repo_id, _, revision = uri[len("hf://") :].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise DatasetError(f"{uri}: expected hf://<owner>/<name>[@revision]")
    return repo_id, revision


def _resolve_hf(uri: str) -> Path:
    """Download (or find in the local HF cache) `hf://<repo_id>[@revision]` and return its directory."""
    from huggingface_hub import snapshot_download

    repo_id, revision = _hf_repo(uri)
    try:
        return Path(snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision or None))
    except Exception as e:  # offline, unknown repo or revision, auth: huggingface_hub raises many types
        raise DatasetError(
            f"{uri}: cannot fetch the dataset ({type(e).__name__}: {' '.join(str(e).split())[:300]}); check the repo "
            "id and revision, the network and your token, or use a local path"
        ) from e


def detect_format(path: PurePath, storage: Storage = LOCAL) -> str:
    """Return "zarr", "lerobot_v3", "lerobot_v2.1" or "libero_hdf5" for a dataset (directory or file) on `storage`."""
    from robopolicy.data.libero_hdf5 import is_libero_hdf5

    if not storage.exists(path):
        raise DatasetError(f"{path}: no such dataset (expected a zarr store, a LeRobot directory or LIBERO .hdf5)")
    if storage.exists(path / ".zgroup") or storage.exists(path / "zarr.json"):
        return "zarr"
    if storage.local and is_libero_hdf5(Path(path)):
        return "libero_hdf5"
    info = path / "meta" / "info.json"
    if storage.exists(info):
        from robopolicy.data.metadata_checks import load_json, raise_problems

        doc, problems = load_json(info, "info", storage)
        raise_problems(problems)
        if not isinstance(doc, dict):
            raise DatasetError(f"{info}: must be a JSON object, found {type(doc).__name__}; restore it from the source")
        version = doc.get("codebase_version", "")
        if not isinstance(version, str):
            raise DatasetError(
                f"{info}: codebase_version must be a string like \"v3.0\", found {version!r}; fix the key"
            )
        if version.startswith("v3"):
            return "lerobot_v3"
        if version.startswith("v2"):
            return "lerobot_v2.1"
        raise DatasetError(f"{info}: unsupported codebase_version {version!r} (supported: v2.1 read, v3.0)")
    if storage.is_dir(path / "meta") or storage.is_dir(path / "data"):
        raise DatasetError(
            f"{path}: looks like a LeRobot dataset but meta/info.json is missing; "
            "restore it from the source or re-run `finalize()` on the writer"
        )
    raise DatasetError(f"{path}: not a dataset (no zarr group metadata and no meta/info.json)")


def open_dataset(
    uri: str | Path,
    *,
    streaming: bool = False,
    filesystem=None,
    cache_dir: str | Path | None = None,
    cache_gb: float | None = DEFAULT_CACHE_GB,
    block_size: int = DEFAULT_BLOCK_SIZE,
    **kwargs,
) -> Dataset:
    """Open a local zarr store, a local LeRobot v3.0 / v2.1 directory, LIBERO's HDF5 demonstrations (a file or a
    directory of them, robopolicy.data.libero_hdf5), or `hf://<repo_id>[@rev]` (downloaded whole).

    streaming=True reads a LeRobot v3.0 dataset in place instead, fetching only the bytes that are read
    (robopolicy.data.storage): `hf://<repo_id>[@rev]` through huggingface_hub's HfFileSystem, any fsspec URL
    (`s3://...`, `memory://...`), a local path, or `uri` as a path on the fsspec `filesystem` given. Fetched
    blocks of `block_size` bytes are kept under `cache_dir` (default robopolicy.data.storage.default_cache_dir()),
    at most `cache_gb` GB of them (None: unbounded).

    kwargs go to the format's reader (e.g. `cache_mb` for a RAM cache of decoded frames,
    `tolerance_s` for video timestamps).
    """
    uri = str(uri)
    if streaming or filesystem is not None:
        return _open_streaming(uri, filesystem, cache_dir, cache_gb, block_size, **kwargs)
    path = _resolve_hf(uri) if uri.startswith("hf://") else Path(uri).expanduser()
    fmt = detect_format(path)
    if fmt == "zarr":
        from robopolicy.data.zarr_format import ZarrDataset

        return ZarrDataset(path, **kwargs)
    if fmt == "lerobot_v3":
        from robopolicy.data.lerobot_format import LeRobotDataset

        return LeRobotDataset(path, **kwargs)
    if fmt == "libero_hdf5":
        from robopolicy.data.libero_hdf5 import LiberoHDF5Dataset

        return LiberoHDF5Dataset(path, **kwargs)
    from robopolicy.data.lerobot_v21 import LeRobotV21Dataset

    return LeRobotV21Dataset(path, **kwargs)


def _open_streaming(uri: str, filesystem, cache_dir, cache_gb: float | None, block_size: int, **kwargs) -> Dataset:
    """open_dataset(streaming=True): a LeRobot v3.0 reader over an FsspecStorage."""
    from urllib.parse import quote

    from robopolicy.data.storage import BlockCache, FsspecStorage, default_cache_dir

    if cache_gb is not None and cache_gb <= 0:
        raise DatasetError(f"{uri}: the streaming cache bound must be > 0 GB (or None for unbounded), got {cache_gb}")
    if filesystem is not None:
        fs, root = filesystem, uri
        protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        scheme = f"{protocol}://"
    elif uri.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        repo_id, revision = _hf_repo(uri)
        fs, root, scheme = HfFileSystem(), f"datasets/{repo_id}", "hf://"
        if revision:
            root += "@" + quote(revision, safe="")
    elif "://" in uri:
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:
            raise DatasetError(f"{uri}: no fsspec filesystem for this URL ({e}); install its fsspec package") from e
        scheme = uri.split("://", 1)[0] + "://"
    else:
        from fsspec.implementations.local import LocalFileSystem

        fs, root, scheme = LocalFileSystem(), str(Path(uri).expanduser().resolve()), ""
    cache = BlockCache(
        Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        block_size=block_size,
        max_bytes=None if cache_gb is None else int(cache_gb * 1e9),
    )
    storage = FsspecStorage(fs, root, cache, scheme=scheme)
    fmt = detect_format(storage.root, storage)
    if fmt != "lerobot_v3":
        raise DatasetError(
            f"{storage.root}: streaming reads LeRobot v3.0 datasets; this one is {fmt} — open it without streaming "
            "(it is downloaded whole), or convert it with `robopolicy convert`"
        )
    from robopolicy.data.lerobot_format import LeRobotDataset

    return LeRobotDataset(storage.root, storage=storage, **kwargs)
