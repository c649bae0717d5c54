"""Convert datasets between Zarr (diffusion-policy layout) and LeRobot v3.0, streaming episode by episode.

Numeric features are copied exactly. Visual features go through video (lossy, AV1/H.264) unless
`lossless=True` (LeRobot: PNG `image` columns; Zarr always stores raw uint8).

Default key names follow each ecosystem: diffusion-policy PushT `img` / `image` <-> `observation.image`,
`state` <-> `observation.state`; everything else (action, keypoint, ...) keeps its name. `key_map`
({source_key: target_key}) overrides or extends the defaults. LeRobot's bookkeeping columns (timestamp,
frame_index, episode_index, index, task_index) are regenerated, never copied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from robopolicy.data.dataset import Dataset, open_dataset
from robopolicy.data.errors import DatasetError
from robopolicy.data.features import INDEX_KEYS, Feature
from robopolicy.data.writer import create_writer

ZARR_TO_LEROBOT = {"img": "observation.image", "image": "observation.image", "state": "observation.state"}
LEROBOT_TO_ZARR = {"observation.image": "img", "observation.state": "state"}
FORMATS = ("lerobot", "zarr")


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
    **writer_options,
) -> Path:
    """Convert `src_uri` (any dataset `open_dataset` reads) to `dst` in format `to` ("lerobot" or "zarr").

    fps: needed when the source has none (diffusion-policy zarr); must match the source's fps otherwise.
    task: task string for episodes the source gives none. episodes: positions to convert (default all).
    progress: called with each converted episode's frame count. Returns the destination path.
    """
    if to not in FORMATS:
        raise ValueError(f"unknown target format {to!r}; use one of {FORMATS}")
    with open_dataset(src_uri) as ds:
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
        positions = range(ds.num_episodes) if episodes is None else episodes
        with create_writer(dst, writer_features, fps, format=to, overwrite=overwrite, **writer_options) as writer:
            for pos in positions:
                ep = ds.episodes[pos]
                frames = {}
                for key, feat in features.items():
                    values = ds.read_episode(key, pos)
                    frames[feat.name] = values.transpose(0, 2, 3, 1) if ds.features[key].is_visual else values
                for i in range(ep.length):
                    writer.add_frame({k: v[i] for k, v in frames.items()})
                ok = success[pos] if success is not None and pos < len(success) else None
                writer.save_episode(task=ep.tasks[0] if ep.tasks else task, success=ok)
                if progress is not None:
                    progress(ep.length)
    return Path(dst)


def parse_renames(items: list[str] | None) -> dict[str, str]:
    """["a=b", ...] -> {"a": "b"} with a clear error for malformed items."""
    out = {}
    for item in items or []:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise ValueError(f"--rename expects SRC=DST, got {item!r}")
        out[src] = dst
    return out
