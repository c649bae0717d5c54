"""Does LeRobot 0.4.4 read a LeRobot v3 dataset exactly as robopolicy does? (opt-in; needs a LeRobot venv)

    LEROBOT_PYTHON=/work/lrvenv/bin/python python benchmarks/lerobot_compat.py DATASET_DIR
    /work/lrvenv/bin/python benchmarks/lerobot_compat.py DATASET_DIR

Two subprocesses read DATASET_DIR and hand arrays over through .npz files:
- LeRobot side (LEROBOT_PYTHON, default: this python if it has lerobot): LeRobot's own `LeRobotDataset`
  on the local root (offline: repo_id is any string, nothing is downloaded), PyAV video backend;
- robopolicy side (ROBOPOLICY_PYTHON, default: the repo's .venv/bin/python): `open_dataset` + `WindowSampler`.
It then prints a PASS/FAIL table: load errors (LeRobot's exact message), layout against LeRobot's expectations
(info.json, parquet schemas, episodes metadata, stats, video streams vs episode timestamps), same episodes /
frames / fps / tasks / features, numeric features exactly equal on every frame, windows (delta_timestamps
image/state [-1, 0] frames, action 0..15 frames) exactly equal incl. `<key>_is_pad`, decoded frames within
`--max-abs` / `--max-mean` uint8 levels, every frame decodable by LeRobot within its tolerance_s (datasets up
to `--all-frames-limit` frames), and loading a subset of episodes. Exit code 1 if any check FAILs.

LeRobot venv recipe (never the project venv): `bash benchmarks/setup_lerobot_venv.sh /work/lrvenv`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = REPO.parent / "shared" / "data" / "lerobot_v3_pusht"
OBS_DELTAS = [-1, 0]
ACTION_DELTAS = list(range(16))
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


# ----- helpers shared by both sides ---------------------------------------------------------------------
class Report:
    """Rows of (section, check, status, detail); status is PASS, FAIL, WARN or INFO."""

    def __init__(self):
        self.rows: list[list[str]] = []

    def add(self, section: str, check: str, ok: bool | None, detail: str = "") -> None:
        status = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append([section, check, status, detail])

    def warn(self, section: str, check: str, detail: str) -> None:
        self.rows.append([section, check, "WARN", detail])


def save_side(out: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    np.savez(out, __meta__=np.array(json.dumps(meta)), **{k: np.asarray(v) for k, v in arrays.items()})


def load_side(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(str(z["__meta__"]))
    return meta, arrays


def window_plan(features: dict[str, dict]) -> dict[str, list[int]]:
    """Frame offsets per windowed key: cameras and observation.* numeric [-1, 0]; action 0..15."""
    plan = {}
    for key, ft in features.items():
        if key in INDEX_KEYS or ft["dtype"] in ("string", "language"):
            continue
        if ft["dtype"] in ("video", "image") or key.startswith("observation."):
            plan[key] = OBS_DELTAS
        elif key == "action":
            plan[key] = ACTION_DELTAS
    return plan


def pick_anchors(starts: list[int], lengths: list[int], samples: int, seed: int) -> np.ndarray:
    """Global frames: both ends (and next to them) of the first, middle and last episode, plus random frames."""
    chosen = set()
    for e in sorted({0, len(starts) // 2, len(starts) - 1}):
        s, n = starts[e], lengths[e]
        chosen.update(i for i in (s, s + 1, s + n - 2, s + n - 1) if s <= i < s + n)
    total = starts[-1] + lengths[-1]
    rng = np.random.default_rng(seed)
    extra = rng.choice(total, size=min(total, max(samples - len(chosen), 0)), replace=False)
    chosen.update(int(i) for i in extra)
    return np.array(sorted(chosen), dtype=np.int64)


def _error_line(e: BaseException, n: int = 400) -> str:
    """`Type: message` on one line, cut to `n` characters."""
    text = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= n else text[: n - 3] + "..."


def to_uint8(frames) -> np.ndarray:
    """LeRobot frames (float32 in [0, 1]) -> uint8, exactly inverting its /255."""
    arr = frames.numpy() if hasattr(frames, "numpy") else np.asarray(frames)
    if arr.dtype == np.uint8:
        return arr
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


# ----- layout checks (run on the LeRobot side, against what LeRobot 0.4.4 reads) ---------------------------
def layout_checks(root: Path, reference: Path | None, rep: Report) -> None:
    """Files and keys LeRobot reads: info.json, tasks/episodes/data parquet, stats.json, video streams."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sec = "layout"
    info_path = root / "meta" / "info.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        rep.add(sec, "meta/info.json readable", False, f"{info_path}: {e}")
        return
    ref_info = json.loads((reference / "meta" / "info.json").read_text()) if reference else None
    required = [
        "codebase_version",
        "fps",
        "features",
        "total_episodes",
        "total_frames",
        "total_tasks",
        "chunks_size",
        "data_files_size_in_mb",
        "video_files_size_in_mb",
        "data_path",
        "video_path",
        "robot_type",
        "splits",
    ]
    missing = [k for k in required if k not in info]
    rep.add(sec, "info.json keys", not missing, f"missing {missing}" if missing else "all LeRobot keys present")
    if ref_info:
        extra = sorted(set(info) - set(ref_info))
        if extra:
            rep.warn(sec, "info.json extra keys", f"{extra} (ignored by LeRobot)")
    rep.add(
        sec,
        "info.json codebase_version",
        info.get("codebase_version") == "v3.0",
        f"expected 'v3.0', got {info.get('codebase_version')!r}",
    )
    rep.add(sec, "info.json fps is int", isinstance(info.get("fps"), int), f"got {info.get('fps')!r}")
    feats = info.get("features", {})
    defaults = {
        "timestamp": ("float32", [1]),
        "frame_index": ("int64", [1]),
        "episode_index": ("int64", [1]),
        "index": ("int64", [1]),
        "task_index": ("int64", [1]),
    }
    for key, (dtype, shape) in defaults.items():
        ft = feats.get(key)
        got = None if ft is None else (ft.get("dtype"), list(ft.get("shape", [])))
        rep.add(sec, f"info.json features[{key}]", got == (dtype, shape), f"expected {(dtype, shape)}, got {got}")
    for key, ft in feats.items():
        for field in ("dtype", "shape", "names"):
            if field not in ft:
                rep.add(sec, f"info.json features[{key}].{field}", False, "missing")
        if ft.get("dtype") == "video":
            ref_video = next((f for f in (ref_info or {}).get("features", {}).values() if f["dtype"] == "video"), None)
            want = set((ref_video or {}).get("info", {}))
            have = set(ft.get("info") or {})
            if want - have:
                rep.warn(sec, f"info.json features[{key}].info", f"missing {sorted(want - have)} (LeRobot writes them)")
            shape = ft.get("shape")
            names = ft.get("names")
            rep.add(
                sec,
                f"info.json features[{key}] shape/names",
                names == ["height", "width", "channels"] and isinstance(shape, list) and len(shape) == 3,
                f"expected names ['height','width','channels'] and (H,W,C), got names={names} shape={shape}",
            )
    # tasks.parquet: index named 'task' + column task_index (LeRobot: tasks.iloc[task_index].name)
    tasks_path = root / "meta" / "tasks.parquet"
    try:
        from lerobot.datasets.utils import load_tasks

        tasks = load_tasks(root)
        ok = "task_index" in tasks.columns and all(isinstance(t, str) for t in tasks.index)
        rep.add(
            sec,
            "meta/tasks.parquet",
            ok,
            "LeRobot reads it with pandas and takes the task string from the row's index label: expected a "
            f"string index + column 'task_index', got index {list(tasks.index)[:3]} columns {list(tasks.columns)}",
        )
        if ok:
            ordered = list(tasks.sort_values("task_index")["task_index"]) == list(range(len(tasks)))
            in_order = ordered and list(tasks["task_index"]) == list(range(len(tasks)))
            rep.add(
                sec, "meta/tasks.parquet task_index = 0..T-1 in row order", in_order, f"got {list(tasks['task_index'])}"
            )
    except Exception as e:
        rep.add(sec, "meta/tasks.parquet", False, f"{tasks_path}: {type(e).__name__}: {e}")
    # episodes parquet columns vs the reference written by LeRobot
    ep_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not ep_files:
        rep.add(sec, "meta/episodes/*/*.parquet", False, "no episodes parquet files")
    else:
        schemas = [pq.read_schema(f) for f in ep_files]
        for f, sch in zip(ep_files[1:], schemas[1:], strict=True):
            if sch.names != schemas[0].names:
                rep.warn(
                    sec,
                    "episodes parquet files share one schema",
                    f"{f.relative_to(root)} vs {ep_files[0].relative_to(root)}: only in the first "
                    f"{sorted(set(schemas[0].names) - set(sch.names))}, only in the second "
                    f"{sorted(set(sch.names) - set(schemas[0].names))}",
                )
        schema = schemas[0]
        cols = {f.name: f.type for f in schema}
        want = {
            "episode_index": "int64",
            "tasks": "list<element: string>",
            "length": "int64",
            "data/chunk_index": "int64",
            "data/file_index": "int64",
            "dataset_from_index": "int64",
            "dataset_to_index": "int64",
            "meta/episodes/chunk_index": "int64",
            "meta/episodes/file_index": "int64",
        }
        for key, ft in feats.items():
            if ft["dtype"] == "video":
                want.update(
                    {
                        f"videos/{key}/chunk_index": "int64",
                        f"videos/{key}/file_index": "int64",
                        f"videos/{key}/from_timestamp": "double",
                        f"videos/{key}/to_timestamp": "double",
                    }
                )
        for col, typ in want.items():
            got = str(cols[col]) if col in cols else None
            if got is None:
                rep.add(sec, f"episodes parquet column {col}", False, f"{ep_files[0].relative_to(root)}: missing")
            elif got != typ and not (typ.startswith("list") and "string" in got):
                rep.warn(sec, f"episodes parquet column {col}", f"type expected {typ}, got {got}")
        extra = sorted(c for c in cols if c not in want and not c.startswith("stats/"))
        if extra:
            rep.warn(
                sec,
                "episodes parquet extra columns",
                f"{extra}: not written by LeRobot (it ignores them; "
                "episodes LeRobot appends lack them, so the files' schemas diverge)",
            )
        stat_cols = [c for c in cols if c.startswith("stats/")]
        if not stat_cols:
            rep.warn(
                sec,
                "episodes parquet stats/* columns",
                "none (LeRobot writes per-episode stats; aggregate/merge tools read them)",
            )
        elif reference:
            ref_ep = sorted((reference / "meta" / "episodes").glob("*/*.parquet"))[0]
            ref_stats = {c.split("/")[-1] for c in pq.read_schema(ref_ep).names if c.startswith("stats/")}
            got_stats = {c.split("/")[-1] for c in stat_cols}
            if ref_stats - got_stats:
                rep.warn(sec, "episodes parquet stats/<key>/<stat>", f"missing stats {sorted(ref_stats - got_stats)}")
    # data parquet arrow types vs the HF features LeRobot casts to
    data_files = sorted((root / "data").glob("*/*.parquet"))
    if not data_files:
        rep.add(sec, "data/*/*.parquet", False, "no data parquet files")
    else:
        try:
            from lerobot.datasets.utils import get_hf_features_from_features, load_info

            expected = get_hf_features_from_features(load_info(root)["features"]).arrow_schema
            got = pq.read_schema(data_files[0])
            for field in expected:
                want = field.type.storage_type if isinstance(field.type, pa.ExtensionType) else field.type
                if field.name not in got.names:
                    rel = data_files[0].relative_to(root)
                    rep.add(sec, f"data parquet column {field.name}", False, f"{rel}: missing")
                elif got.field(field.name).type != want:
                    rep.warn(
                        sec,
                        f"data parquet column {field.name}",
                        f"type expected {want}, got {got.field(field.name).type} (LeRobot casts)",
                    )
            extra = sorted(set(got.names) - set(expected.names))
            if extra:
                rep.add(sec, "data parquet extra columns", False, f"{extra} not declared in info.json features")
            if b"huggingface" not in (got.metadata or {}):
                rep.warn(sec, "data parquet schema metadata", "no 'huggingface' features metadata (LeRobot writes it)")
        except Exception as e:
            rep.add(sec, "data parquet schema", False, _error_line(e))
    # stats.json: every feature, LeRobot's stat names
    stats_path = root / "meta" / "stats.json"
    if not stats_path.is_file():
        rep.warn(sec, "meta/stats.json", "absent (LeRobot policies need stats for normalization)")
    else:
        stats = json.loads(stats_path.read_text())
        ref_names = {"min", "max", "mean", "std", "count"}
        for key, ft in feats.items():
            if ft["dtype"] in ("string", "language"):
                continue
            if key not in stats:
                rep.warn(sec, f"stats.json[{key}]", "missing")
                continue
            names = set(stats[key])
            if ref_names - names:
                rep.add(sec, f"stats.json[{key}]", False, f"missing {sorted(ref_names - names)}")
            if ft["dtype"] in ("video", "image"):
                shape = np.asarray(stats[key].get("mean", [])).shape
                c = ft["shape"][-1]
                rep.add(sec, f"stats.json[{key}].mean shape", shape == (c, 1, 1), f"expected ({c},1,1), got {shape}")
        rep.add(sec, "meta/stats.json", None, f"{len(stats)} features")
    video_checks(root, info, rep)


def video_checks(root: Path, info: dict, rep: Report) -> None:
    """Each episode's frames sit at [from_timestamp, to_timestamp) of its video file, one per 1/fps."""
    import av
    import pyarrow.parquet as pq

    sec = "video"
    video_keys = [k for k, f in info.get("features", {}).items() if f["dtype"] == "video"]
    if not video_keys:
        return
    ep_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not ep_files:
        return
    import pyarrow as pa

    eps = pa.concat_tables([pq.read_table(f) for f in ep_files], promote_options="default").to_pylist()
    fps = info["fps"]
    for key in video_keys:
        ft = info["features"][key]
        files: dict[tuple[int, int], list[dict]] = {}
        for ep in eps:
            files.setdefault((ep[f"videos/{key}/chunk_index"], ep[f"videos/{key}/file_index"]), []).append(ep)
        bad: list[str] = []
        for (chunk, file), file_eps in sorted(files.items()):
            path = root / info["video_path"].format(video_key=key, chunk_index=chunk, file_index=file)
            rel = path.relative_to(root)
            if not path.is_file():
                bad.append(f"{rel}: missing")
                continue
            with av.open(str(path)) as c:
                s = c.streams.video[0]
                codec, pix_fmt = s.codec.canonical_name, s.codec_context.format.name
                h, w = s.codec_context.height, s.codec_context.width
                pts = np.array(sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None))
            vinfo = ft.get("info") or {}
            if vinfo.get("video.codec") not in (None, codec):
                bad.append(f"{rel}: info.json video.codec={vinfo.get('video.codec')!r}, stream is {codec!r}")
            if vinfo.get("video.pix_fmt") not in (None, pix_fmt):
                bad.append(f"{rel}: info.json video.pix_fmt={vinfo.get('video.pix_fmt')!r}, stream is {pix_fmt!r}")
            if [h, w] != list(ft["shape"][:2]):
                bad.append(f"{rel}: stream {h}x{w}, info.json shape {ft['shape']}")
            prev_to = 0.0
            for ep in sorted(file_eps, key=lambda e: e[f"videos/{key}/from_timestamp"]):
                frm, to = ep[f"videos/{key}/from_timestamp"], ep[f"videos/{key}/to_timestamp"]
                n = ep["length"]
                tag = f"{rel} episode {ep['episode_index']}"
                if abs(frm - prev_to) > 1e-6:
                    bad.append(f"{tag}: from_timestamp {frm} != previous to_timestamp {prev_to}")
                if abs((to - frm) - n / fps) > 1e-4:
                    bad.append(f"{tag}: to-from = {to - frm:.6f} s, length/fps = {n / fps:.6f} s")
                want = frm + np.arange(n) / fps
                inside = pts[(pts >= frm - 0.5 / fps) & (pts < to - 0.5 / fps)]
                if len(inside) != n or np.abs(inside - want).max(initial=0) >= 1e-4:
                    err = np.abs(inside - want).max(initial=0) if len(inside) == n else float("nan")
                    bad.append(
                        f"{tag}: {len(inside)} frames in [from,to) (expected {n}), max |pts - (from + i/fps)|"
                        f" = {err:.2e} s (LeRobot tolerance_s 1e-4)"
                    )
                prev_to = to
        rep.add(
            sec,
            f"{key}: streams match episodes metadata",
            not bad,
            "; ".join(bad[:6]) + (f"; ... {len(bad) - 6} more" if len(bad) > 6 else "")
            if bad
            else f"{len(files)} file(s), {len(eps)} episodes",
        )


# ----- LeRobot side --------------------------------------------------------------------------------------
def lerobot_side(args) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lerobot_runtime import lerobot_versions, prepare_lerobot

    prepare_lerobot(Path(args.out).parent / "hf_datasets_cache")
    rep, arrays, meta = Report(), {}, {"ok": False}
    root = Path(args.root)
    reference = Path(args.reference) if args.reference else None
    try:
        layout_checks(root, reference if reference and reference.resolve() != root.resolve() else None, rep)
    except Exception as e:
        rep.add("layout", "layout checks ran", False, _error_line(e))
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        meta["versions"] = lerobot_versions()
        ds = LeRobotDataset(repo_id=f"local/{root.name}", root=root, video_backend="pyav")
        rep.add("load", "LeRobotDataset(root) loads", True, f"{len(ds)} frames, {ds.num_episodes} episodes")
    except Exception as e:
        rep.add("load", "LeRobotDataset(root) loads", False, _error_line(e))
        meta.update(rows=rep.rows, traceback=traceback.format_exc())
        save_side(args.out, meta, arrays)
        return 0
    feats = {k: {"dtype": f["dtype"], "shape": list(f["shape"])} for k, f in ds.features.items()}
    eps = ds.meta.episodes
    starts = [int(x) for x in eps["dataset_from_index"]]
    lengths = [int(t - f) for f, t in zip(eps["dataset_from_index"], eps["dataset_to_index"], strict=True)]
    plan = window_plan(feats)
    meta.update(
        fps=ds.fps,
        num_frames=len(ds),
        num_episodes=ds.num_episodes,
        features=feats,
        starts=starts,
        lengths=lengths,
        episode_indices=[int(x) for x in eps["episode_index"]],
        tasks=[str(t) for t in ds.meta.tasks.sort_values("task_index").index],
        plan=plan,
        stats={k: {s: np.asarray(v).tolist() for s, v in st.items()} for k, st in (ds.meta.stats or {}).items()},
    )
    numeric = [k for k, f in feats.items() if f["dtype"] not in ("video", "image", "string", "language")]
    visual = [k for k, f in feats.items() if f["dtype"] in ("video", "image")]
    for key in numeric:
        col = ds.hf_dataset[key]
        arrays[f"all/{key}"] = np.stack([np.asarray(v) for v in col]).reshape(len(col), -1)
    anchors = pick_anchors(starts, lengths, args.samples, args.seed)
    arrays["anchors"] = anchors
    try:
        wds = LeRobotDataset(
            repo_id=f"local/{root.name}",
            root=root,
            video_backend="pyav",
            delta_timestamps={k: [d / ds.fps for d in v] for k, v in plan.items()},
        )
        items = [wds[int(a)] for a in anchors]
        for key in plan:
            vals = [to_uint8(it[key]) if key in visual else np.asarray(it[key]) for it in items]
            arrays[f"win/{key}"] = np.stack(vals)
            arrays[f"win/{key}_is_pad"] = np.stack([np.asarray(it[f"{key}_is_pad"]) for it in items])
        for key in ("index", "episode_index", "frame_index"):
            arrays[f"item/{key}"] = np.array([int(it[key]) for it in items])
        arrays["item/task"] = np.array([it["task"] for it in items])
        rep.add("load", "LeRobot windowed items (delta_timestamps)", True, f"{len(items)} anchors, keys {list(plan)}")
    except Exception as e:
        rep.add("load", "LeRobot windowed items (delta_timestamps)", False, _error_line(e))
    if visual and len(ds) <= args.all_frames_limit:
        frames = {k: [] for k in visual}
        failures = []
        for i in range(len(ds)):
            try:
                it = ds[i]
                for k in visual:
                    frames[k].append(to_uint8(it[k]))
            except Exception as e:
                failures.append((i, _error_line(e)))
                for k in visual:
                    frames[k].append(np.zeros((ds.features[k]["shape"][2], *ds.features[k]["shape"][:2]), np.uint8))
        rep.add(
            "decode",
            "LeRobot decodes every frame within tolerance_s",
            not failures,
            f"{len(failures)}/{len(ds)} failed (frames {[i for i, _ in failures[:8]]}...); first error: "
            f"{failures[0][1]}"
            if failures
            else f"{len(ds)} frames",
        )
        for k in visual:
            arrays[f"allvis/{k}"] = np.stack(frames[k])
        arrays["allvis_failed"] = np.array([i for i, _ in failures], dtype=np.int64)
    subset_check(root, ds, starts, lengths, rep)
    meta.update(ok=True, rows=rep.rows)
    save_side(args.out, meta, arrays)
    return 0


def subset_check(root: Path, ds, starts: list[int], lengths: list[int], rep: Report) -> None:
    """LeRobotDataset(episodes=[last]) serves that episode's frames (exercises the per-episode metadata)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    last = int(ds.meta.episodes["episode_index"][-1])
    try:
        sub = LeRobotDataset(repo_id=f"local/{root.name}", root=root, episodes=[last], video_backend="pyav")
        first, final = sub[0], sub[len(sub) - 1]
        ok = (
            len(sub) == lengths[-1]
            and int(first["index"]) == starts[-1]
            and int(first["episode_index"]) == last
            and int(final["frame_index"]) == lengths[-1] - 1
        )
        rep.add(
            "load",
            f"LeRobotDataset(episodes=[{last}])",
            ok,
            f"len {len(sub)} (expected {lengths[-1]}), first index {int(first['index'])} (expected {starts[-1]}),"
            f" last frame_index {int(final['frame_index'])}",
        )
    except Exception as e:
        rep.add("load", f"LeRobotDataset(episodes=[{last}])", False, _error_line(e))


# ----- robopolicy side -----------------------------------------------------------------------------------
def robopolicy_side(args) -> int:
    sys.path.insert(0, str(REPO))
    rep, arrays, meta = Report(), {}, {"ok": False}
    lr_meta, lr_arrays = load_side(Path(args.anchors))
    try:
        from robopolicy.data.dataset import open_dataset
        from robopolicy.data.sampler import WindowSampler

        ds = open_dataset(args.root)
    except Exception as e:
        rep.add("load", "robopolicy open_dataset loads", False, _error_line(e))
        meta.update(rows=rep.rows, traceback=traceback.format_exc())
        save_side(args.out, meta, arrays)
        return 0
    rep.add("load", "robopolicy open_dataset loads", True, repr(ds))
    stats = ds.stats or {}
    meta.update(
        fps=ds.fps,
        num_frames=ds.num_frames,
        num_episodes=ds.num_episodes,
        starts=[ep.start for ep in ds.episodes],
        lengths=[ep.length for ep in ds.episodes],
        episode_indices=[ep.index for ep in ds.episodes],
        tasks=list(ds.tasks),
        features={k: {"dtype": f.dtype, "shape": list(f.shape), "kind": f.kind} for k, f in ds.features.items()},
        stats={k: {s: np.asarray(v).tolist() for s, v in st.items()} for k, st in stats.items()},
    )
    everything = np.arange(ds.num_frames)
    for key in lr_meta.get("features", {}):
        if f"all/{key}" in lr_arrays and key in ds.features:
            try:
                vals = ds.read(key, everything)
                arrays[f"all/{key}"] = vals.reshape(len(vals), -1)
            except Exception as e:
                rep.add("read", f"robopolicy read({key})", False, _error_line(e))
    plan = {k: v for k, v in lr_meta.get("plan", {}).items() if k in ds.features}
    if "anchors" in lr_arrays and plan:
        try:
            sampler = WindowSampler(ds, plan)
            pos = np.searchsorted(sampler.anchors, lr_arrays["anchors"])
            batch = sampler.get_batch(pos)
            for key in plan:
                arrays[f"win/{key}"] = batch[key].numpy()
                arrays[f"win/{key}_is_pad"] = batch[f"{key}_is_pad"].numpy()
            for key in ("index", "episode_index", "frame_index"):
                arrays[f"item/{key}"] = batch[key].numpy()
            arrays["item/task"] = np.array(batch["task"])
        except Exception as e:
            rep.add("read", "robopolicy WindowSampler batch", False, _error_line(e))
    for key in lr_meta.get("features", {}):
        if f"allvis/{key}" in lr_arrays and key in ds.features:
            try:
                arrays[f"allvis/{key}"] = ds.read(key, everything)
            except Exception as e:
                rep.add("read", f"robopolicy read({key}) every frame", False, _error_line(e))
    ds.close()
    meta.update(ok=True, rows=rep.rows)
    save_side(args.out, meta, arrays)
    return 0


# ----- comparison ----------------------------------------------------------------------------------------
def frame_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a-b|, worst per-frame mean |a-b|) over uint8 frames (..., C, H, W)."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    per_frame = d.reshape(-1, *d.shape[-3:]).mean(axis=(1, 2, 3))
    return float(d.max(initial=0)), float(per_frame.max(initial=0))


def compare(lr: tuple[dict, dict], rp: tuple[dict, dict], args, rep: Report) -> None:
    (lm, la), (pm, pa) = lr, rp
    sec = "meta"
    for field in ("fps", "num_episodes", "num_frames", "lengths", "starts", "episode_indices", "tasks"):
        a, b = lm.get(field), pm.get(field)
        same = a == b if field != "fps" else (a is not None and b is not None and float(a) == float(b))
        detail = "" if same else f"LeRobot {_short(a)} vs robopolicy {_short(b)}"
        rep.add(sec, field, same, detail or _short(a))
    lf, pf = lm.get("features", {}), pm.get("features", {})
    only_lr = sorted(set(lf) - set(pf))
    only_rp = sorted(set(pf) - set(lf))
    rep.add(
        sec,
        "feature keys",
        not only_lr and not only_rp,
        f"only in LeRobot: {only_lr}; only in robopolicy: {only_rp}" if only_lr or only_rp else f"{len(lf)} keys",
    )
    for key in sorted(set(lf) & set(pf)):
        a, b = lf[key], pf[key]
        same = a["dtype"] == b["dtype"] and a["shape"] == b["shape"]
        if not same:
            rep.add(
                sec,
                f"feature {key}",
                False,
                f"LeRobot {a['dtype']} {a['shape']} vs robopolicy {b['dtype']} {b['shape']}",
            )
    ls, ps = lm.get("stats", {}), pm.get("stats", {})
    for key in sorted(set(ls) & set(ps)):
        bad = [
            s
            for s in ("mean", "std", "min", "max")
            if s in ls[key]
            and s in ps[key]
            and not np.allclose(
                np.asarray(ls[key][s], float).ravel(), np.asarray(ps[key][s], float).ravel(), rtol=1e-6, atol=1e-9
            )
        ]
        if bad:
            rep.add("stats", f"stats[{key}]", False, f"differ in {bad}")
    if ls or ps:
        rep.add(
            "stats",
            "stats keys",
            set(ls) == set(ps),
            f"only LeRobot {sorted(set(ls) - set(ps))}, only robopolicy {sorted(set(ps) - set(ls))}",
        )
    sec = "numeric"
    for name in sorted(k for k in la if k.startswith("all/")):
        key = name[4:]
        if name not in pa:
            rep.add(sec, f"{key} (all frames)", False, "not read by robopolicy (missing feature or read error)")
            continue
        a, b = la[name], pa[name]
        ok = a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
        detail = f"{a.shape[0]} frames, {a.dtype}"
        if not ok:
            detail = f"LeRobot {a.dtype}{a.shape} vs robopolicy {b.dtype}{b.shape}"
            if a.shape == b.shape:
                diff = np.flatnonzero((a != b).any(axis=1))
                detail += f"; {diff.size} frames differ, first {diff[:5].tolist()}"
                if diff.size:
                    detail += f": {a[diff[0]].tolist()} vs {b[diff[0]].tolist()}"
        rep.add(sec, f"{key} (all frames)", ok, detail)
    sec = "window"
    for name in sorted(k for k in la if k.startswith("win/")):
        key = name[4:]
        if name not in pa:
            rep.add(sec, key, False, "missing on the robopolicy side")
            continue
        a, b = la[name], pa[name]
        visual = lf.get(key, {}).get("dtype") in ("video", "image")
        if visual:
            if a.shape != b.shape:
                rep.add(sec, key, False, f"shape LeRobot {a.shape} vs robopolicy {b.shape} ({b.dtype})")
                continue
            mx, mean = frame_diff(a, b)
            rep.add(
                sec,
                key,
                mx <= args.max_abs and mean <= args.max_mean,
                f"{a.shape[0]}x{a.shape[1]} frames; max |d| {mx:.0f} (<= {args.max_abs}), worst frame mean |d| "
                f"{mean:.3f} (<= {args.max_mean}) uint8 levels",
            )
        else:
            a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
            ok = a2.shape == b2.shape and a2.dtype == b2.dtype and np.array_equal(a2, b2)
            detail = f"{a.shape}" if ok else f"LeRobot {a.dtype}{a.shape} vs robopolicy {b.dtype}{b.shape}"
            if ok and key.endswith("_is_pad"):
                detail += f", {int(a.sum())} padded positions"
            if not ok and a2.shape == b2.shape:
                rows = np.flatnonzero((a2 != b2).any(axis=1))
                detail += f"; anchors differ: {la['anchors'][rows[:5]].tolist()}"
            rep.add(sec, key, ok, detail)
    for name in ("item/index", "item/episode_index", "item/frame_index", "item/task"):
        if name in la:
            ok = name in pa and la[name].shape == pa[name].shape and np.array_equal(la[name], pa[name])
            rep.add(
                sec,
                name[5:] + " of anchors",
                ok,
                ""
                if ok
                else f"LeRobot {_short(la[name].tolist())} vs "
                f"robopolicy {_short(pa[name].tolist()) if name in pa else 'missing'}",
            )
    sec = "decode"
    failed = set(la.get("allvis_failed", np.zeros(0, np.int64)).tolist())
    for name in sorted(k for k in la if k.startswith("allvis/")):
        key = name[7:]
        if name not in pa:
            rep.add(sec, f"{key} every frame", False, "not read by robopolicy")
            continue
        a, b = la[name], pa[name]
        if a.shape != b.shape:
            rep.add(sec, f"{key} every frame", False, f"shape LeRobot {a.shape} vs robopolicy {b.shape}")
            continue
        keep = np.array([i not in failed for i in range(len(a))], dtype=bool)
        mx, mean = frame_diff(a[keep], b[keep])
        rep.add(
            sec,
            f"{key} every frame vs robopolicy",
            mx <= args.max_abs and mean <= args.max_mean,
            f"{int(keep.sum())} frames; max |d| {mx:.0f}, worst frame mean |d| {mean:.3f} uint8 levels",
        )


def _short(x, n: int = 160) -> str:
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [["section", "check", "status", ""], *rows]) for i in range(3)]
    widths[1] = min(widths[1], 58)
    print(f"{'section':<{widths[0]}}  {'check':<{widths[1]}}  {'status':<6}  detail")
    print("-" * (sum(widths) + 20))
    for sec, check, status, detail in rows:
        print(f"{sec:<{widths[0]}}  {check:<{widths[1]}}  {status:<6}  {detail}")
    counts = {s: sum(r[2] == s for r in rows) for s in ("PASS", "FAIL", "WARN")}
    print("-" * (sum(widths) + 20))
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['WARN']} warnings")


def find_lerobot_python() -> str:
    env = os.environ.get("LEROBOT_PYTHON")
    if env:
        return env
    if importlib.util.find_spec("lerobot") is not None:
        return sys.executable
    sys.exit(
        "no LeRobot: set LEROBOT_PYTHON=/path/to/lerobot-venv/bin/python "
        "(create it with `bash benchmarks/setup_lerobot_venv.sh /work/lrvenv`)"
    )


def find_robopolicy_python() -> str:
    env = os.environ.get("ROBOPOLICY_PYTHON")
    if env:
        return env
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def run_side(python: str, side: str, args, out: Path, extra: list[str], rep: Report) -> tuple[dict, dict] | None:
    cmd = [
        python,
        str(Path(__file__).resolve()),
        str(args.root),
        "--side",
        side,
        "--out",
        str(out),
        "--samples",
        str(args.samples),
        "--seed",
        str(args.seed),
        "--all-frames-limit",
        str(args.all_frames_limit),
        *extra,
    ]
    if args.reference:
        cmd += ["--reference", str(args.reference)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        tail = " | ".join(proc.stderr.strip().splitlines()[-4:])
        rep.add("load", f"{side} side ran", False, f"exit {proc.returncode}: {tail}")
        return None
    meta, arrays = load_side(out)
    rep.rows.extend(meta.get("rows", []))
    if meta.get("traceback") and args.verbose:
        print(f"--- {side} traceback ---\n{meta['traceback']}", file=sys.stderr)
    return meta, arrays


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="LeRobot v3 dataset directory")
    p.add_argument("--samples", type=int, default=48, help="window anchors compared (default 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-abs", type=float, default=3.0, help="max |uint8 difference| allowed for decoded frames")
    p.add_argument("--max-mean", type=float, default=0.5, help="max per-frame mean |uint8 difference| allowed")
    p.add_argument(
        "--all-frames-limit",
        type=int,
        default=3000,
        help="decode and compare every frame when the dataset has at most this many (default 3000)",
    )
    p.add_argument(
        "--reference",
        type=Path,
        default=DEFAULT_REFERENCE if DEFAULT_REFERENCE.exists() else None,
        help="a dataset written by LeRobot to compare the layout with (default ../shared/data/lerobot_v3_pusht)",
    )
    p.add_argument("--keep", type=Path, default=None, help="keep the exchanged .npz files in this directory")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of load failures")
    p.add_argument("--side", choices=["lerobot", "robopolicy"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--anchors", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side == "lerobot":
        return lerobot_side(args)
    if args.side == "robopolicy":
        return robopolicy_side(args)
    if not (args.root / "meta" / "info.json").is_file():
        sys.exit(f"{args.root}: no meta/info.json; pass a LeRobot v3 dataset directory")
    rep = Report()
    workdir = Path(tempfile.mkdtemp(prefix="lerobot_compat_")) if args.keep is None else args.keep
    workdir.mkdir(parents=True, exist_ok=True)
    lr = run_side(find_lerobot_python(), "lerobot", args, workdir / "lerobot.npz", [], rep)
    rp = None
    if lr is not None and "anchors" in lr[1]:
        rp = run_side(
            find_robopolicy_python(),
            "robopolicy",
            args,
            workdir / "robopolicy.npz",
            ["--anchors", str(workdir / "lerobot.npz")],
            rep,
        )
    if lr is not None and rp is not None and lr[0].get("ok") and rp[0].get("ok"):
        compare(lr, rp, args, rep)
    print(f"dataset: {args.root}")
    if lr is not None and lr[0].get("versions"):
        print("LeRobot side: " + ", ".join(f"{k} {v}" for k, v in lr[0]["versions"].items()))
    print_table(rep.rows)
    if args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r[2] == "FAIL" for r in rep.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
