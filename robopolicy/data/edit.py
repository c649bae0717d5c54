"""Edit datasets the way `lerobot-edit-dataset` does, for LeRobot v3 and zarr: delete episodes, split, merge,
remove or rename features, re-encode video. Every operation writes a new dataset and never touches its sources.

    delete_episodes("data/pusht", "data/pusht_clean", [3, 17])
    split("data/pusht", {"train": 0.8, "val": 0.2}, "data/splits")        # data/splits/train, data/splits/val
    split("data/pusht", {"train": [0, 1, 2], "val": [3, 4]}, "data/splits")
    merge(["data/a", "data/b"], "data/ab")
    edit("data/pusht", "data/small", remove=["observation.images.wrist"], rename={"action": "action.joints"},
         video=VideoEdit(vcodec="libx264", crf=23, size=(96, 96)))

The output keeps its source's format (robopolicy convert changes formats). Numeric features are copied exactly,
each episode keeps its task and success flag, tasks are re-indexed from their strings, the bookkeeping columns
(index, frame_index, episode_index, task_index, timestamp) and the stats are written anew. zarr stores raw uint8,
so its frames stay exact. LeRobot v3 video is copied losslessly: the packets of each kept episode (between its
from/to timestamps) are remuxed into the new files, not decoded and re-encoded, when they start at a keyframe, are
in presentation order, hold one packet per frame at frame_index / fps and match the output's codec, pix_fmt and
size; an episode that fails one of these is re-encoded (one message per key names the first, with why), and so is
every episode with reencode_video=True or a VideoEdit (reencode: codec, crf, size). The frames are still decoded
once, for the stats. Re-encoding keeps the source's codec (and its pix_fmt, g, crf, preset where its info.json
records them) unless VideoEdit says otherwise. Crash safety is convert's: each
output is written in a staging directory beside it and appears only when complete; `overwrite` replaces only a
dataset robopolicy wrote, after the new one is in place.

Split fractions take episodes in order, as LeRobot does: split k gets int(E * fraction_k) episodes after the ones
before it, and when the fractions sum to 1 the last split takes the rounding remainder; a split left with no
episode is an error (give episode lists instead).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robopolicy.data.convert import check_paths, copy_episode, write_staged
from robopolicy.data.dataset import Dataset, open_dataset
from robopolicy.data.errors import DatasetError
from robopolicy.data.features import INDEX_KEYS, Feature
from robopolicy.data.lerobot_writer import CODEC_TO_ENCODER
from robopolicy.data.video_encode import PacketSource
from robopolicy.data.writer import create_writer


@dataclass(frozen=True)
class VideoEdit:
    """How visual features are written. vcodec: LeRobot encoder ("libsvtav1", "libx264", "auto"; None = the
    source's codec); crf: quality (None = the encoder's default); size: (height, width) to resize every frame to
    (bilinear with antialiasing; None = unchanged)."""

    vcodec: str | None = None
    crf: int | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self):
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"size must be (height, width) > 0, got {self.size}")
        if self.crf is not None and not 0 <= self.crf <= 63:
            raise ValueError(f"crf must be in 0..63, got {self.crf}")


def _is_dataset_format(ds: Dataset) -> str:
    """The writer format of `ds` ("lerobot" or "zarr"); DatasetError for formats robopolicy reads only."""
    if ds.format == "zarr":
        return "zarr"
    if ds.format in ("lerobot", "lerobot_v3"):
        return "lerobot"
    raise DatasetError(f"{ds.root}: {ds.format} datasets are read-only here; `robopolicy convert` it to LeRobot v3 "
                       "or zarr first, then edit that")


def _source_codec(feature: Feature) -> str | None:
    return (feature.info or {}).get("video.codec")


def edited_features(ds: Dataset, remove: Sequence[str] = (), rename: Mapping[str, str] | None = None,
                    video: VideoEdit | None = None) -> dict[str, Feature]:
    """Source key -> the output's Feature, after removing, renaming and resizing."""
    keys = [k for k, f in ds.features.items() if k not in INDEX_KEYS and (f.is_visual or f.is_numeric)]
    rename = dict(rename or {})
    if unknown := sorted((set(remove) | set(rename)) - set(keys)):
        raise DatasetError(f"{ds.root}: no feature(s) {unknown} to remove or rename; its features: {keys}")
    if not [k for k in keys if k not in remove]:
        raise DatasetError(f"{ds.root}: removing {sorted(remove)} leaves no feature")
    out = {}
    for key in keys:
        if key in remove:
            continue
        f = ds.features[key]
        name = rename.get(key, key)
        if name in INDEX_KEYS:
            raise DatasetError(f"{ds.root}: cannot rename {key!r} to {name!r}, a column the writer fills in")
        shape = tuple(f.shape)
        if f.is_visual and video is not None and video.size is not None:
            shape = (*video.size, shape[2])
        out[key] = Feature(name, f.dtype, shape, f.kind, names=f.names)
    names = [f.name for f in out.values()]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise DatasetError(f"{ds.root}: several features would be named {dupes}; fix --rename")
    return out


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, C, H, W) uint8 -> (T, C, h, w) uint8, bilinear with antialiasing."""
    import torch
    import torch.nn.functional as F

    if tuple(frames.shape[2:]) == tuple(size):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


def _changes_video(video: VideoEdit | None) -> bool:
    return video is not None and (video.vcodec is not None or video.crf is not None or video.size is not None)


# encoder settings a re-encoded episode inherits from the source's info.json when its packets are otherwise copied
_INHERITED = {"video.pix_fmt": "pix_fmt", "video.g": "g", "video.crf": "crf", "video.preset": "preset"}


def _writer_options(fmt: str, sources: list[Dataset], features: dict[str, Feature], video: VideoEdit | None,
                    copy: bool = False) -> dict:
    if fmt != "lerobot":
        return {}
    visual = [f for f in features.values() if f.is_visual]
    opts: dict = {"video": any(f.dtype == "video" for f in visual) or not visual}
    codecs = {c for ds in sources for f in ds.features.values() if f.dtype == "video" and (c := _source_codec(f))}
    vcodec = video.vcodec if video is not None and video.vcodec else None
    if vcodec is None and len(codecs) == 1:
        vcodec = CODEC_TO_ENCODER.get(codecs.pop(), "auto")
    opts["vcodec"] = vcodec or "auto"
    if video is not None and video.crf is not None:
        opts["crf"] = video.crf
    if copy:  # the fallback re-encodes like the source, and the copied packets match the pix_fmt
        info = next((f.info or {} for k, f in sources[0].features.items() if f.dtype == "video" and k in features), {})
        for name, option in _INHERITED.items():
            value = info.get(name)
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                opts.setdefault(option, value)
    return opts


def _packet_sources(ds: Dataset, pos: int, features: dict[str, Feature], writer,
                    refused: Callable[[str, int, str], None]) -> dict[str, PacketSource]:
    """{output key: the packets of episode `pos`} for the video keys of `ds` whose packets `writer` can copy; each
    other one goes to refused(key, episode index, why) and is re-encoded."""
    sources = getattr(ds, "sources", None)
    if ds.format != "lerobot_v3" or sources is None or not getattr(getattr(ds, "storage", None), "local", False):
        return {}
    ep, out = ds.episodes[pos], {}
    for key, feat in features.items():
        if ds.features[key].dtype != "video":
            continue
        seg = sources[pos].videos.get(key)
        if seg is None:
            refused(key, ep.index, "the episodes metadata gives no video location")
            continue
        to_s = seg.to_timestamp if seg.to_timestamp is not None else seg.from_timestamp + ep.length / float(ds.fps)
        src = PacketSource(Path(seg.path), float(seg.from_timestamp), float(to_s), ep.length,
                           float(getattr(ds, "tolerance_s", 1e-4)))
        problem = writer.video_copy_problem(feat.name, src)
        if problem is None:
            out[feat.name] = src
        else:
            refused(key, ep.index, problem)
    return out


def write_episodes(parts: list[tuple[Dataset, list[int]]], dst: str | Path, features: dict[str, Feature], *,
                   video: VideoEdit | None = None, reencode_video: bool = False, overwrite: bool = False,
                   progress: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Write the episodes `positions` of each dataset of `parts` (in that order) to the new dataset `dst`, each
    source key as features[key]; the format of the first source. LeRobot video packets are copied unless
    `reencode_video` or `video` changes them (see the module docstring). Staged and swapped in as convert does."""
    dst = Path(os.path.abspath(Path(dst).expanduser()))
    for ds, _ in parts:
        check_paths(ds.root, dst)
    sources = [ds for ds, _ in parts]
    fmt = _is_dataset_format(sources[0])
    fps = sources[0].fps
    if fps is None and fmt == "lerobot":
        raise DatasetError(f"{sources[0].root}: has no fps; a LeRobot dataset needs one")
    size = video.size if video is not None else None
    copy = fmt == "lerobot" and not reencode_video and not _changes_video(video)
    opts = _writer_options(fmt, sources, features, video, copy)
    note = log or (lambda m: warnings.warn(m, stacklevel=4))
    refused: dict[str, int] = {}  # key -> episodes re-encoded because their packets could not be copied

    def refuse(key: str, episode: int, why: str, root: Path) -> None:
        if key not in refused:
            note(f"{key}, episode {episode} of {root}: re-encoding its video, its packets cannot be copied: {why}"
                 f" (other episodes of {key} that cannot be copied are re-encoded without another message)")
        refused[key] = refused.get(key, 0) + 1

    def fill(new: Path) -> None:
        with create_writer(new, {f.name: f for f in features.values()}, fps, format=fmt, **opts) as writer:
            for ds, positions in parts:
                success = ds.episode_success
                for pos in positions:
                    videos = _packet_sources(ds, pos, features, writer,
                                             lambda k, e, why, root=ds.root: refuse(k, e, why, root)) if copy else None
                    n = copy_episode(ds, pos, features, writer, success=success,
                                     visual=(lambda x: _resize(x, size)) if size else None, videos=videos)
                    if progress is not None:
                        progress(n)

    write_staged(dst, ", ".join(str(ds.root) for ds in sources), fill, overwrite=overwrite, note=note)
    total = sum(len(positions) for _, positions in parts)
    for key, n in refused.items():
        if n > 1:
            note(f"{key}: {n} of {total} episodes re-encoded" + (", the others' video packets copied" if n < total
                                                                   else ""))
    return dst


def _episode_list(ds: Dataset, episodes: Sequence[int], what: str) -> list[int]:
    n = ds.num_episodes
    if bad := sorted({e for e in episodes if not 0 <= int(e) < n}):
        raise DatasetError(f"{ds.root}: {what} {bad} out of range; it has episodes 0..{n - 1}")
    if len(set(episodes)) != len(episodes):
        raise DatasetError(f"{ds.root}: {what} lists an episode twice: {list(episodes)}")
    return sorted(int(e) for e in episodes)


def edit(src: str | Path, dst: str | Path, *, keep: Sequence[int] | None = None, remove: Sequence[str] = (),
         rename: Mapping[str, str] | None = None, video: VideoEdit | None = None, reencode_video: bool = False,
         overwrite: bool = False, progress: Callable[[int], None] | None = None,
         log: Callable[[str], None] | None = None) -> Path:
    """A new dataset `dst` from `src`: only the episodes `keep` (default all, in order), without the features
    `remove`, with the features renamed by `rename` ({old: new}), visual features written as `video` says (video
    packets copied unless `video` changes them or `reencode_video`)."""
    with open_dataset(src) as ds:
        positions = list(range(ds.num_episodes)) if keep is None else _episode_list(ds, keep, "episodes to keep")
        if not positions:
            raise DatasetError(f"{src}: no episode would be left; nothing written")
        features = edited_features(ds, remove, rename, video)
        return write_episodes([(ds, positions)], dst, features, video=video, reencode_video=reencode_video,
                              overwrite=overwrite, progress=progress, log=log)


def delete_episodes(src: str | Path, dst: str | Path, episodes: Sequence[int], **kwargs) -> Path:
    """`src` without the episodes `episodes` (positions 0..E-1), into `dst`."""
    with open_dataset(src) as ds:
        drop = set(_episode_list(ds, episodes, "episodes to delete"))
        n = ds.num_episodes
    return edit(src, dst, keep=[e for e in range(n) if e not in drop], **kwargs)


def split_episodes(num_episodes: int, splits: Mapping[str, float | Sequence[int]]) -> dict[str, list[int]]:
    """{split name: episode positions} for fractions (in order, see the module docstring) or explicit lists."""
    if not splits:
        raise ValueError("give at least one split")
    lists = {k: v for k, v in splits.items() if not isinstance(v, (int, float))}
    fractions = {k: float(v) for k, v in splits.items() if isinstance(v, (int, float))}
    if lists and fractions:
        raise ValueError("give every split as a fraction or every split as an episode list, not a mix")
    if lists:
        seen: dict[int, str] = {}
        for name, eps in lists.items():
            for e in eps:
                if not 0 <= int(e) < num_episodes:
                    raise ValueError(f"split {name!r}: episode {e} out of range 0..{num_episodes - 1}")
                if int(e) in seen:
                    raise ValueError(f"episode {e} is in both split {seen[int(e)]!r} and {name!r}")
                seen[int(e)] = name
        return {name: sorted(int(e) for e in eps) for name, eps in lists.items()}
    if any(not (0 < f <= 1) or not math.isfinite(f) for f in fractions.values()):
        raise ValueError(f"split fractions must be in (0, 1], got {fractions}")
    total = sum(fractions.values())
    if total > 1 + 1e-9:
        raise ValueError(f"split fractions sum to {total:g} > 1")
    out, start = {}, 0
    names = list(fractions)
    for name in names:
        stop = start + int(num_episodes * fractions[name] + 1e-9)
        if name == names[-1] and math.isclose(total, 1.0):
            stop = num_episodes
        if stop == start:
            raise ValueError(f"split {name!r} ({fractions[name]:g} of {num_episodes} episodes) gets no episode; "
                             "give episode lists instead")
        out[name] = list(range(start, stop))
        start = stop
    return out


def split(src: str | Path, splits: Mapping[str, float | Sequence[int]], out_dir: str | Path,
          **kwargs) -> dict[str, Path]:
    """One dataset per split, out_dir/<split name>; returns {name: path}. Each is complete or absent."""
    with open_dataset(src) as ds:
        try:
            plan = split_episodes(ds.num_episodes, splits)
        except ValueError as e:
            raise DatasetError(f"{src}: {e}") from None
    return {name: edit(src, Path(out_dir) / name, keep=eps, **kwargs) for name, eps in plan.items()}


def check_mergeable(datasets: list[Dataset], vcodec: str | None) -> None:
    """Equal format, fps and features (names, dtypes, shapes) and, unless `vcodec` re-encodes them all, equal
    video codecs; DatasetError naming the first difference."""
    first = datasets[0]
    fmt = _is_dataset_format(first)

    def layout(ds: Dataset) -> dict:
        return {k: (f.dtype, tuple(f.shape)) for k, f in ds.features.items()
                if k not in INDEX_KEYS and (f.is_visual or f.is_numeric)}

    for ds in datasets[1:]:
        if _is_dataset_format(ds) != fmt:
            raise DatasetError(f"{ds.root} is {ds.format}, {first.root} {first.format}: merge datasets of one format "
                               "(robopolicy convert one of them first)")
        if ds.fps != first.fps:
            raise DatasetError(f"{ds.root} records {ds.fps} fps, {first.root} {first.fps}: frames of different rates "
                               "cannot share one dataset")
        a, b = layout(first), layout(ds)
        if a != b:
            only = sorted(set(a) ^ set(b))
            differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
            what = f"features only in one of them: {only}" if only else \
                f"{differ[0]} is {a[differ[0]]} in {first.root} and {b[differ[0]]} in {ds.root}"
            raise DatasetError(f"cannot merge {ds.root} into {first.root}: {what}; make them equal first (robopolicy "
                               "edit features --remove / --rename, robopolicy edit reencode --resize)")
        if vcodec is None:
            for k, f in first.features.items():
                if f.dtype == "video" and _source_codec(f) != _source_codec(ds.features[k]):
                    raise DatasetError(f"{k} is {_source_codec(f)} video in {first.root} and "
                                       f"{_source_codec(ds.features[k])} in {ds.root}; pass a codec (--vcodec) to "
                                       "re-encode both to it")


def merge(srcs: Sequence[str | Path], dst: str | Path, *, video: VideoEdit | None = None, reencode_video: bool = False,
          overwrite: bool = False, progress: Callable[[int], None] | None = None,
          log: Callable[[str], None] | None = None) -> Path:
    """One dataset `dst` with every episode of `srcs`, in order (see check_mergeable for what must match)."""
    if len(srcs) < 2:
        raise DatasetError("merge needs at least two datasets")
    with ExitStack() as stack:
        datasets = [stack.enter_context(open_dataset(s)) for s in srcs]
        check_mergeable(datasets, video.vcodec if video else None)
        features = edited_features(datasets[0], video=video)
        parts = [(ds, list(range(ds.num_episodes))) for ds in datasets]
        return write_episodes(parts, dst, features, video=video, reencode_video=reencode_video, overwrite=overwrite,
                              progress=progress, log=log)
