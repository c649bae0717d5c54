"""Convert datasets between Zarr (diffusion-policy layout) and LeRobot v3.0, streaming episode by episode.

Numeric features are copied exactly. Visual features go through video (lossy, AV1/H.264) unless
`lossless=True` (LeRobot: PNG `image` columns; Zarr always stores raw uint8).

Default key names follow each ecosystem: diffusion-policy PushT `img` / `image` <-> `observation.image`,
`state` <-> `observation.state`; everything else (action, keypoint, ...) keeps its name. `key_map`
({source_key: target_key}) overrides or extends the defaults. LeRobot's bookkeeping columns (timestamp,
frame_index, episode_index, index, task_index) are regenerated, never copied.

Safety: convert never writes into, over or around its source (DST equal to SRC, inside it or containing
it, symlinks resolved, is refused before anything is touched). It writes into a staging directory beside
DST (`<parent>/.<name>.partial-<pid>/dataset`, with a marker file naming the convert) and renames it to DST
only when every episode is written and the writer finalized, so an interrupted convert never leaves a
complete-looking DST. With overwrite=True the old DST (which must be a dataset robopolicy wrote, see
`writer.check_overwritable`) is moved aside, the new one renamed in, and only then the old one deleted: a
failed convert leaves the old dataset as it was. The next convert to the same DST deletes a staging
directory left by a killed one (only when its marker proves robopolicy made it and its process is gone)
and says so. A source with no episodes (or an empty `episodes` selection) raises NothingToConvertError
and creates nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

from robopolicy.data.dataset import Dataset, open_dataset
from robopolicy.data.errors import DatasetError, DatasetExistsError
from robopolicy.data.features import INDEX_KEYS, Feature
from robopolicy.data.video_encode import PacketSource
from robopolicy.data.writer import check_overwritable, create_writer

ZARR_TO_LEROBOT = {"img": "observation.image", "image": "observation.image", "state": "observation.state"}
LEROBOT_TO_ZARR = {"observation.image": "img", "observation.state": "state"}
FORMATS = ("lerobot", "zarr")
STAGING_MARKER = "robopolicy-convert.json"  # inside a staging directory: proves robopolicy made it
STAGING_KIND = "robopolicy convert staging"


class NothingToConvertError(DatasetError):
    """The source has no episodes (or none were selected); nothing was written."""


def default_key_map(source_keys: list[str], to: str) -> dict[str, str]:
    """Source key -> target key for the keys of a dataset converted to `to`."""
    table = ZARR_TO_LEROBOT if to == "lerobot" else LEROBOT_TO_ZARR
    out, taken = {}, set()
    for key in source_keys:
        target = table.get(key, key)
        if target in taken:  # e.g. both `img` and `image`: keep the second one's own name
            target = key
        out[key] = target
        taken.add(target)
    return out


def target_features(ds: Dataset, to: str, key_map: Mapping[str, str] | None, lossless: bool) -> dict[str, Feature]:
    """Features of the converted dataset, keyed by source key."""
    keys = [k for k, f in ds.features.items() if k not in INDEX_KEYS and (f.is_visual or f.is_numeric)]
    unknown = sorted(set(key_map or {}) - set(ds.features))
    if unknown:
        raise DatasetError(f"{ds.root}: cannot rename {unknown}: no such features (available: {sorted(keys)})")
    names = {**default_key_map(keys, to), **(key_map or {})}
    targets = [names[k] for k in keys]
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise DatasetError(f"{ds.root}: several features would be named {dupes}; fix the renames")
    out = {}
    for key in keys:
        f = ds.features[key]
        if f.is_visual:
            if len(f.shape) != 3:
                raise DatasetError(f"{ds.root}: visual feature {key!r} has shape {f.shape}, expected (H, W, C)")
            dtype = "uint8" if to == "zarr" else ("image" if lossless else "video")
            kind = "image" if to == "zarr" or lossless else "video"
        else:
            dtype, kind = f.dtype, f.kind
        out[key] = Feature(names[key], dtype, tuple(f.shape), kind, names=f.names)
    return out


def convert(
    src_uri: str | Path,
    dst: str | Path,
    to: str = "lerobot",
    fps: float | None = None,
    overwrite: bool = False,
    lossless: bool = False,
    key_map: Mapping[str, str] | None = None,
    *,
    task: str | None = None,
    episodes: list[int] | None = None,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
    **writer_options,
) -> Path:
    """Convert `src_uri` (any dataset `open_dataset` reads) to `dst` in format `to` ("lerobot" or "zarr").

    fps: needed when the source has none (diffusion-policy zarr); must match the source's fps otherwise.
    task: task string for episodes the source gives none. episodes: positions to convert (default all).
    progress: called with each converted episode's frame count. log: called with notes (a leftover staging
    directory cleaned; default: warnings.warn). Returns the destination path. See the module docstring for
    what is refused (DST around SRC, a non-robopolicy DST with overwrite) and NothingToConvertError.
    """
    if to not in FORMATS:
        raise ValueError(f"unknown target format {to!r}; use one of {FORMATS}")
    note = log or (lambda message: warnings.warn(message, stacklevel=3))
    dst = Path(os.path.abspath(Path(dst).expanduser()))
    if not str(src_uri).startswith("hf://"):
        check_paths(Path(src_uri).expanduser(), dst)
    with open_dataset(src_uri) as ds:
        check_paths(ds.root, dst)
        if fps is None:
            fps = ds.fps
        elif ds.fps is not None and abs(float(ds.fps) - float(fps)) > 1e-9:
            raise DatasetError(
                f"{src_uri}: records fps={ds.fps}; fps={fps} would relabel time without resampling. "
                "Omit --fps to keep the recorded rate"
            )
        if fps is None and to == "lerobot":
            raise DatasetError(
                f"{src_uri}: has no fps (diffusion-policy zarr stores do not record it); pass fps=... "
                "(CLI: --fps, e.g. --fps 10 for PushT)"
            )
        features = target_features(ds, to, key_map, lossless)
        writer_features = {f.name: f for f in features.values()}
        if to == "lerobot":
            writer_options.setdefault("video", not lossless)
        success = getattr(ds, "episode_success", None)
        positions = list(range(ds.num_episodes) if episodes is None else episodes)
        if not positions:
            what = "no episodes" if ds.num_episodes == 0 else "no episodes selected"
            raise NothingToConvertError(f"{src_uri}: {what}; nothing to convert, {dst} was not created")
        def fill(new: Path) -> None:
            with create_writer(new, writer_features, fps, format=to, **writer_options) as writer:
                for pos in positions:
                    n = copy_episode(ds, pos, features, writer, task=task, success=success)
                    if progress is not None:
                        progress(n)

        write_staged(dst, str(src_uri), fill, overwrite=overwrite, note=note)
    return dst


def write_staged(dst: Path, src: str, fill: Callable[[Path], None], *, overwrite: bool,
                 note: Callable[[str], None]) -> None:
    """fill(new) writes a whole dataset into a staging directory beside `dst`, which then replaces `dst` (see the
    module docstring); leftovers of interrupted writes to `dst` are cleaned first, with a `note` each."""
    check_destination(dst, overwrite)
    for message in clean_leftovers(dst):
        note(message)
    staging = make_staging(dst, src)
    try:
        new = staging / "dataset"
        fill(new)
        swap_in(new, dst, overwrite)
    finally:
        remove_staging(staging, missing_ok=True)


def copy_episode(ds: Dataset, pos: int, features: Mapping[str, Feature], writer, *, task: str | None = None,
                 success: list | None = None, visual: Callable | None = None,
                 videos: Mapping[str, PacketSource] | None = None) -> int:
    """Write episode `pos` of `ds` into `writer` as one episode, each source key as features[key].name (visual
    features (T, C, H, W) -> (T, H, W, C), through `visual` first when given), with its task (else `task`) and its
    flag from `success`; returns its length. videos: {output key: source packets} a LeRobot writer copies instead
    of encoding those frames (which must decode to what `ds` reads: no `visual`)."""
    ep = ds.episodes[pos]
    frames = {}
    for key, feat in features.items():
        values = ds.read_episode(key, pos)
        if ds.features[key].is_visual:
            values = (visual(values) if visual is not None else values).transpose(0, 2, 3, 1)
        frames[feat.name] = values
    for i in range(ep.length):
        writer.add_frame({k: v[i] for k, v in frames.items()})
    ok = success[pos] if success is not None and pos < len(success) else None
    if videos:
        writer.save_episode(task=ep.tasks[0] if ep.tasks else task, success=ok, videos=videos)
    else:
        writer.save_episode(task=ep.tasks[0] if ep.tasks else task, success=ok)
    return ep.length


# ----- destination safety --------------------------------------------------------------------------------


def check_paths(src: Path, dst: Path) -> None:
    """Refuse a DST that is SRC, lies inside it or contains it (symlinks resolved), or is a symlink."""
    s, d = Path(src).resolve(), Path(dst).resolve()
    hint = "choose a DST outside the source, e.g. a sibling directory"
    if d == s:
        raise DatasetError(f"{dst}: is the source dataset {src} itself (resolved: {s}); {hint}")
    if s in d.parents:
        raise DatasetError(f"{dst}: lies inside the source dataset {src} (resolved: {s}); {hint}")
    if d in s.parents:
        raise DatasetError(f"{dst}: contains the source dataset {src} (resolved: {s}); {hint}")
    if Path(dst).is_symlink():
        raise DatasetError(f"{dst}: is a symbolic link (to {d}); pass the directory itself")
    if not Path(dst).name:
        raise DatasetError(f"{dst}: not a usable destination directory")


def check_destination(dst: Path, overwrite: bool) -> None:
    """Before anything is written: DST absent or empty, or (overwrite) a dataset robopolicy wrote."""
    if dst.exists() and not dst.is_dir():
        raise DatasetExistsError(f"{dst}: exists and is not a directory")
    if not dst.exists() or not any(dst.iterdir()):
        return
    if not overwrite:
        raise DatasetExistsError(f"{dst}: directory is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
    check_overwritable(dst)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging_marker(path: Path, dst: Path) -> dict | None:
    """The marker of a staging directory robopolicy made for `dst`, or None when `path` is not provably one."""
    try:
        marker = json.loads((path / STAGING_MARKER).read_text())
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(marker, dict)
        and marker.get("kind") == STAGING_KIND
        and marker.get("dst") == str(dst)
        and isinstance(marker.get("pid"), int)
        and path.name.endswith(f"-{marker['pid']}")
    )
    return marker if ok else None


def clean_leftovers(dst: Path) -> list[str]:
    """Delete staging directories of killed converts to `dst`; notes on what was found (and left alone)."""
    notes = []
    for path in sorted(dst.parent.glob(f".{dst.name}.partial-*")):
        marker = _staging_marker(path, dst)
        if marker is None and _holds_nothing(path):  # killed before its marker was written: nothing to lose
            shutil.rmtree(path)
            notes.append(f"removed {path}: an empty staging directory of an interrupted convert")
            continue
        if marker is None:
            notes.append(f"{path}: named like a staging directory but has no valid {STAGING_MARKER}; left alone")
            continue
        if marker["pid"] != os.getpid() and _pid_alive(marker["pid"]):
            raise DatasetError(
                f"{dst}: another convert (pid {marker['pid']}, from {marker.get('src')}) is writing it in {path}; "
                "wait for it to finish, or delete that directory if that process is not a convert"
            )
        remove_staging(path)
        notes.append(f"removed {path}: the unfinished output of an interrupted convert (pid {marker['pid']})")
    for path in sorted(dst.parent.glob(f".{dst.name}.old-*")):
        notes.append(
            f"{path}: the previous {dst.name}, moved aside by a convert --overwrite that was interrupted; it was "
            "not deleted — delete it, or rename it back if the new dataset is not there"
        )
    return notes


def make_staging(dst: Path, src: str) -> Path:
    """Create `<dst parent>/.<dst name>.partial-<pid>/` with the marker that proves robopolicy made it."""
    staging = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    staging.mkdir(parents=True)
    marker = {"kind": STAGING_KIND, "pid": os.getpid(), "src": src, "dst": str(dst), "started": time.time()}
    tmp = staging / f".{STAGING_MARKER}.tmp"
    tmp.write_text(json.dumps(marker) + "\n")
    os.replace(tmp, staging / STAGING_MARKER)  # a kill leaves no marker or a whole one, never half of one
    return staging


def remove_staging(path: Path, missing_ok: bool = False) -> None:
    """Delete a staging directory with its marker last: a process killed while deleting leaves the marker
    (and what was not deleted yet), which the next convert recognises and removes, never an unprovable rest."""
    if missing_ok and not path.exists():
        return
    for child in path.iterdir():
        if child.name == STAGING_MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (path / STAGING_MARKER).unlink(missing_ok=True)
    path.rmdir()


def _holds_nothing(path: Path) -> bool:
    """A directory with no entries but (maybe) the marker's temp file."""
    return path.is_dir() and all(p.name == f".{STAGING_MARKER}.tmp" and p.is_file() for p in path.iterdir())


def swap_in(new: Path, dst: Path, overwrite: bool) -> None:
    """Rename the finished `new` dataset to `dst`; an old dataset there is deleted only after the rename."""
    if not dst.exists() or (dst.is_dir() and not any(dst.iterdir())):
        os.replace(new, dst)  # absent, or an empty directory (rename replaces it atomically)
        return
    if not overwrite:
        raise DatasetExistsError(f"{dst}: appeared while converting; the new dataset was not moved there")
    check_overwritable(dst)  # again: DST may have changed while converting
    aside = dst.parent / f".{dst.name}.old-{os.getpid()}"
    os.rename(dst, aside)
    try:
        os.rename(new, dst)
    except BaseException:
        os.rename(aside, dst)
        raise
    shutil.rmtree(aside)


def parse_renames(items: list[str] | None) -> dict[str, str]:
    """["a=b", ...] -> {"a": "b"} with a clear error for malformed items."""
    out = {}
    for item in items or []:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise ValueError(f"--rename expects SRC=DST, got {item!r}")
        out[src] = dst
    return out
