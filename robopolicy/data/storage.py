"""Where a dataset's files are read from: the local disk, or any fsspec filesystem through a local block cache.

`Storage` (the local disk, `LOCAL`) is what every reader uses by default. `FsspecStorage` serves the same calls
from an fsspec filesystem (huggingface_hub's `HfFileSystem` for `hf://`, or any other): the dataset's file list
(names, sizes, versions) is fetched once when it is opened, and bytes are read on demand in blocks of
`block_size`, each fetched at most once and kept under a local cache directory (`BlockCache`), so a reader that
needs one episode reads that episode's row groups and video bytes plus the files' headers, never whole files.

Remote files are named by `RemotePath`s, pure paths whose str() is the URL (`hf://datasets/owner/name/...`), so
every error message names the remote file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path, PurePath, PurePosixPath
from typing import IO, Any, ClassVar

from robopolicy.data.errors import DatasetError

DEFAULT_BLOCK_SIZE = 1 << 20  # bytes per cached block (and the smallest remote request)
DEFAULT_CACHE_GB = 20.0  # bound of the block cache on disk


def default_cache_dir() -> Path:
    """$ROBOPOLICY_STREAM_CACHE, else $XDG_CACHE_HOME/robopolicy/stream (~/.cache/robopolicy/stream)."""
    if os.environ.get("ROBOPOLICY_STREAM_CACHE"):
        return Path(os.environ["ROBOPOLICY_STREAM_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "robopolicy" / "stream"


class Storage:
    """The local disk (paths are `pathlib.Path`s). Subclasses serve the same calls from elsewhere."""

    local: ClassVar[bool] = True

    def is_file(self, path: PurePath) -> bool:
        return Path(path).is_file()

    def is_dir(self, path: PurePath) -> bool:
        return Path(path).is_dir()

    def exists(self, path: PurePath) -> bool:
        return Path(path).exists()

    def glob(self, directory: PurePath, pattern: str) -> list[PurePath]:
        """Files under `directory` matching `pattern` ("chunk-*/file-*.parquet"), sorted."""
        return sorted(Path(directory).glob(pattern))

    def size(self, path: PurePath) -> int:
        return Path(path).stat().st_size

    def read_bytes(self, path: PurePath) -> bytes:
        return Path(path).read_bytes()

    def open(self, path: PurePath) -> IO[bytes]:
        """A seekable binary file object."""
        return open(path, "rb")

    def parquet_source(self, path: PurePath) -> Any:
        """What pyarrow.parquet reads `path` from: the path itself here, a file object elsewhere."""
        return path


LOCAL = Storage()


# ----- remote paths ---------------------------------------------------------------------------------------


class RemotePath(PurePosixPath):
    """A path on an fsspec filesystem: str() is `scheme` + the filesystem's path, `fs_path` the path alone."""

    scheme: ClassVar[str] = ""

    def __str__(self) -> str:
        return self.scheme + super().__str__()

    @property
    def fs_path(self) -> str:
        return super().__str__()

    def __reduce__(self):
        return remote_path, (self.scheme, self.fs_path)


_PATH_TYPES: dict[str, type[RemotePath]] = {}


def remote_path(scheme: str, path: str) -> RemotePath:
    """A RemotePath whose str() starts with `scheme` ("hf://", "memory://", "" for none)."""
    cls = _PATH_TYPES.get(scheme)
    if cls is None:
        cls = _PATH_TYPES.setdefault(scheme, type("RemotePath", (RemotePath,), {"scheme": scheme}))
    return cls(path)


# ----- the block cache --------------------------------------------------------------------------------------


class BlockCache:
    """Blocks of remote files on local disk: `<directory>/<file key>/<block number>`, `block_size` bytes each (the
    last block of a file is shorter).

    Blocks are written to a temp file and renamed, so processes (DataLoader workers, ranks) can share a directory.
    With `max_bytes`, the oldest-used blocks are deleted once the directory grows past it (each process rescans
    the directory when its own count of what it wrote passes the bound, so the bound holds within what the
    processes wrote between two scans). The last blocks read, up to `memory_bytes`, stay in RAM as well.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_bytes: int | None = None,
        memory_bytes: int = 64 << 20,
    ):
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0 bytes, got {block_size}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0 or None, got {max_bytes}")
        self.directory = Path(directory).expanduser()
        self.block_size = int(block_size)
        self.max_bytes = max_bytes
        self.memory_bytes = int(memory_bytes)
        self._memory: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._memory_used = 0
        self._lock, self._pid = threading.Lock(), os.getpid()
        self._used: int | None = None  # bytes on disk at the last scan plus what this process wrote since
        self.fetched_bytes = 0  # bytes this process fetched from the remote (for benchmarks and tests)
        self.requests = 0  # remote requests this process made

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_memory"], state["_memory_used"], state["_lock"] = OrderedDict(), 0, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock, self._pid = threading.Lock(), os.getpid()

    def _guard(self) -> threading.Lock:
        """The lock of the RAM blocks; a fresh one in a forked child (the parent's may have been held)."""
        if os.getpid() != self._pid:
            self._lock, self._pid = threading.Lock(), os.getpid()
        return self._lock

    def file_dir(self, key: str) -> Path:
        return self.directory / key[:2] / key

    def read(self, key: str, size: int, start: int, stop: int, fetch: Callable[[int, int], bytes]) -> bytes:
        """Bytes [start, stop) of the file `key` of `size` bytes; missing blocks come from `fetch(a, b)` (bytes
        [a, b) of the remote file), one call per run of consecutive missing blocks."""
        stop = min(stop, size)
        if start >= stop:
            return b""
        bs = self.block_size
        first, last = start // bs, (stop - 1) // bs
        blocks: dict[int, bytes] = {}
        missing = []
        for b in range(first, last + 1):
            data = self._load(key, b, size)
            if data is None:
                missing.append(b)
            else:
                blocks[b] = data
        for a, z in _runs(missing):
            lo, hi = a * bs, min((z + 1) * bs, size)
            data = fetch(lo, hi)
            self.requests += 1
            self.fetched_bytes += len(data)
            for b in range(a, z + 1):
                block = data[(b - a) * bs : (b - a + 1) * bs]
                self._store(key, b, block)
                blocks[b] = block
        if first == last:
            return blocks[first][start - first * bs : stop - first * bs]
        joined = b"".join(blocks[b] for b in range(first, last + 1))
        return joined[start - first * bs : stop - first * bs]

    def _expected(self, b: int, size: int) -> int:
        return min(self.block_size, size - b * self.block_size)

    def _remember(self, key: str, b: int, data: bytes) -> None:
        with self._guard():
            old = self._memory.pop((key, b), None)
            self._memory_used += len(data) - (0 if old is None else len(old))
            self._memory[(key, b)] = data
            while self._memory_used > self.memory_bytes and len(self._memory) > 1:
                self._memory_used -= len(self._memory.popitem(last=False)[1])

    def _load(self, key: str, b: int, size: int) -> bytes | None:
        with self._guard():
            data = self._memory.get((key, b))
            if data is not None:
                self._memory.move_to_end((key, b))
                return data
        path = self.file_dir(key) / str(b)
        try:
            data = path.read_bytes()
        except OSError:  # not cached (or evicted by another process meanwhile)
            return None
        if len(data) != self._expected(b, size):
            return None  # a block of an older version of the file, or damaged: fetch it again
        if self.max_bytes is not None:
            with contextlib.suppress(OSError):  # evicted meanwhile
                os.utime(path)  # mark it used: eviction deletes the oldest first
        self._remember(key, b, data)
        return data

    def _store(self, key: str, b: int, data: bytes) -> None:
        self._remember(key, b, data)
        directory = self.file_dir(key)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / f".{b}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, directory / str(b))
        except OSError as e:
            raise DatasetError(
                f"{directory}: cannot write to the streaming cache ({e}); free disk space, lower the cache bound "
                "or choose another cache directory"
            ) from e
        if self.max_bytes is not None:
            if self._used is None:
                self._used = self._scan_used()
            self._used += len(data)
            if self._used > self.max_bytes:
                self._evict()

    def _blocks(self) -> list[tuple[float, int, Path]]:
        out = []
        for top in _scandir(self.directory):
            for file_dir in _scandir(Path(top.path)):
                for entry in _scandir(Path(file_dir.path)):
                    if entry.name.isdigit():
                        try:
                            st = entry.stat()
                        except OSError:
                            continue
                        out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def _scan_used(self) -> int:
        return sum(size for _, size, _ in self._blocks())

    def _evict(self) -> None:
        """Delete the least recently used blocks until the directory holds at most 90% of max_bytes."""
        blocks = sorted(self._blocks())
        used = sum(size for _, size, _ in blocks)
        target = 0.9 * self.max_bytes
        for _, size, path in blocks:
            if used <= target:
                break
            try:
                path.unlink()
                used -= size
            except OSError:
                pass
        self._used = used

    def disk_bytes(self) -> int:
        """Bytes of blocks now in the cache directory."""
        return self._scan_used()


def _scandir(path: Path):
    try:
        return list(os.scandir(path))
    except OSError:
        return []


def _runs(items: list[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7, 8] -> [(1, 3), (7, 8)]."""
    runs: list[tuple[int, int]] = []
    for i in items:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


class CachedFile(io.RawIOBase):
    """A read-only, seekable file object over a remote file, read through a BlockCache (for pyarrow and PyAV)."""

    def __init__(self, cache: BlockCache, key: str, size: int, fetch: Callable[[int, int], bytes], name: str):
        super().__init__()
        self._cache, self._key, self._size, self._fetch = cache, key, int(size), fetch
        self.name = name
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"{self.name}: seek to a negative position {base + offset}")
        self._pos = base + offset
        return self._pos

    def size(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        stop = self._size if n is None or n < 0 else min(self._pos + n, self._size)
        data = self._cache.read(self._key, self._size, self._pos, stop, self._fetch)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


# ----- fsspec storage -----------------------------------------------------------------------------------------


class FsspecStorage(Storage):
    """A dataset directory `root` on the fsspec filesystem `fs`, read through `cache`.

    The file list is fetched once (`fs.find`); afterwards only reads of blocks that are not cached touch `fs`.
    scheme: what str() of the paths starts with (e.g. "hf://"); retries: attempts per remote read.
    """

    local: ClassVar[bool] = False

    def __init__(self, fs: Any, root: str, cache: BlockCache, *, scheme: str = "", retries: int = 3):
        self.fs, self.cache, self.retries = fs, cache, int(retries)
        self._root = root.rstrip("/")
        self.root = remote_path(scheme, self._root or ".")
        try:
            listing = fs.find(self._root, detail=True)
        except FileNotFoundError:
            listing = {}
        except Exception as e:  # network, auth, unknown repo or revision: the filesystems raise many types
            raise DatasetError(
                f"{self.root}: cannot list the dataset's files ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                "check the repo id and revision, the network and your token"
            ) from e
        prefix = self._root + "/" if self._root else ""
        self._files: dict[str, dict[str, Any]] = {}
        for name, info in listing.items():
            name = str(name)
            if name.startswith(prefix) and info.get("type", "file") == "file":
                self._files[name[len(prefix) :]] = info
        self._dirs = {str(PurePosixPath(rel).parent) for rel in self._files}
        self._dirs |= {str(p) for rel in self._dirs for p in PurePosixPath(rel).parents}
        if not self._files:
            raise DatasetError(f"{self.root}: no such dataset (no files there); check the repo id, revision or path")

    def _rel(self, path: PurePath) -> str:
        raw = path.fs_path if isinstance(path, RemotePath) else str(path)
        return str(PurePosixPath(raw).relative_to(self.root.fs_path))

    def fs_path(self, path: PurePath) -> str:
        rel = self._rel(path)
        return rel if not self._root else f"{self._root}/{rel}"

    def is_file(self, path: PurePath) -> bool:
        return self._rel(path) in self._files

    def is_dir(self, path: PurePath) -> bool:
        return self._rel(path) in self._dirs

    def exists(self, path: PurePath) -> bool:
        return self.is_file(path) or self.is_dir(path)

    def glob(self, directory: PurePath, pattern: str) -> list[PurePath]:
        base = PurePosixPath(self._rel(directory))
        want = pattern.split("/")
        out = []
        for rel in self._files:
            try:
                parts = PurePosixPath(rel).relative_to(base).parts
            except ValueError:
                continue
            if len(parts) == len(want) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, want)):
                out.append(directory / PurePosixPath(*parts))
        return sorted(out)

    def sizes(self) -> dict[str, int]:
        """{path relative to the root: size in bytes} of every file listed."""
        return {rel: int(info["size"]) for rel, info in self._files.items()}

    def _info(self, path: PurePath) -> dict[str, Any]:
        info = self._files.get(self._rel(path))
        if info is None:
            raise FileNotFoundError(f"{path}: no such file in the dataset's file list")
        return info

    def size(self, path: PurePath) -> int:
        return int(self._info(path)["size"])

    def cache_key(self, path: PurePath) -> str:
        """Names the cached blocks of `path`: its filesystem, path, size and version (content hash or mtime)."""
        info = self._info(path)
        lfs = info.get("lfs") if isinstance(info.get("lfs"), dict) else {}
        version = next(
            (str(v) for v in (lfs.get("sha256"), info.get("blob_id"), info.get("etag"), info.get("ETag"),
                              info.get("mtime"), info.get("created")) if v is not None),
            "",
        )  # fmt: skip
        ident = json.dumps([type(self.fs).__name__, self.fs_path(path), int(info["size"]), version])
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def open(self, path: PurePath) -> CachedFile:
        size = self.size(path)
        fs_path = self.fs_path(path)
        return CachedFile(self.cache, self.cache_key(path), size, lambda a, b: self._fetch(fs_path, path, a, b, size),
                          str(path))  # fmt: skip

    def read_bytes(self, path: PurePath) -> bytes:
        with self.open(path) as f:
            return f.read()

    def parquet_source(self, path: PurePath) -> Any:
        return self.open(path)

    def _fetch(self, fs_path: str, path: PurePath, start: int, stop: int, size: int) -> bytes:
        """Bytes [start, stop) of the remote file, retried `retries` times; a short answer is a DatasetError."""
        for attempt in range(max(1, self.retries)):
            try:
                with self.fs.open(fs_path, "rb", cache_type="none") as f:
                    f.seek(start)
                    data = f.read(stop - start)
                break
            except FileNotFoundError as e:
                raise DatasetError(
                    f"{path}: listed with {size} bytes but now missing on the remote ({e}); the dataset changed "
                    "while it was read — reopen it, or pin a revision (hf://owner/name@<commit>)"
                ) from e
            except Exception as e:  # network errors: retry, then report
                if attempt + 1 >= max(1, self.retries):
                    raise DatasetError(
                        f"{path}: cannot read bytes {start}..{stop} ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:300]}) after {attempt + 1} attempts; check the network"
                    ) from e
                time.sleep(0.5 * 2**attempt)
        if len(data) != stop - start:
            raise DatasetError(
                f"{path}: truncated — the remote returned {len(data)} bytes for bytes {start}..{stop} of a file "
                f"listed with {size} bytes; restore the file on the remote (or reopen the dataset if it changed)"
            )
        return data
