"""`robopolicy info URI`: what a dataset holds."""

from __future__ import annotations

import argparse
import json

import numpy as np

from robopolicy.data.dataset import open_dataset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="local zarr store, local LeRobot v3.0/v2.1 directory, or hf://<repo_id>[@rev]")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def summarize(uri: str) -> dict:
    with open_dataset(uri) as ds:
        lengths = np.array([ep.length for ep in ds.episodes])
        summary = {
            "uri": str(uri),
            "format": ds.format,
            "fps": ds.fps,
            "episodes": ds.num_episodes,
            "frames": ds.num_frames,
            "episode_length": {
                "min": int(lengths.min()) if lengths.size else 0,
                "mean": float(lengths.mean()) if lengths.size else 0.0,
                "max": int(lengths.max()) if lengths.size else 0,
            },
            "tasks": ds.tasks,
            "features": {
                k: {"dtype": f.dtype, "shape": list(f.shape), "kind": f.kind} for k, f in ds.features.items()
            },
        }
        success = ds.episode_success
        if success is not None:
            flags = [bool(s) for s in success if s is not None]
            summary["episode_success"] = {"successful": sum(flags), "recorded": len(flags)}
        missing = ds.missing_videos() if hasattr(ds, "missing_videos") else {}  # video formats only
        if any(missing.values()):
            summary["missing_videos"] = {k: v for k, v in missing.items() if v}
    return summary


def run(args: argparse.Namespace) -> int:
    s = summarize(args.uri)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    el = s["episode_length"]
    print(f"{s['uri']}  ({s['format']})")
    print(f"  fps: {s['fps']}   episodes: {s['episodes']}   frames: {s['frames']}")
    print(f"  episode length: min {el['min']}  mean {el['mean']:.1f}  max {el['max']}")
    if "episode_success" in s:
        es = s["episode_success"]
        print(f"  successful episodes: {es['successful']}/{es['recorded']}")
    for t in s["tasks"][:5]:
        print(f"  task: {t}")
    if len(s["tasks"]) > 5:
        print(f"  ... {len(s['tasks']) - 5} more tasks")
    print("  features:")
    for k, f in s["features"].items():
        print(f"    {k:<32} {f['kind']:<8} {f['dtype']:<8} {tuple(f['shape'])}")
    for k, eps in s.get("missing_videos", {}).items():
        print(f"  MISSING video files for {k}: {len(eps)} episodes (first: {eps[:10]})")
    return 0
