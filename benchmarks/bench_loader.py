"""Loader throughput on the real PushT data, comparable with LeRobot 0.4.4's figures on the same machine.

Windows (as in the LeRobot reference runs): image and state at [-0.1 s, 0] (frames -1, 0), 16 future
actions (frames 0..15), batch 64, shuffled, every sample = one anchor frame. Prints samples/s, median of 3
runs, for:
  video streaming, 1 process        lerobot_v3_pusht, AV1 decoded on the fly, no cache
  video streaming, 2 workers        same, DataLoader num_workers=2
  video with cache                  decoded frames prefilled into the RAM FrameCache (decode each frame once)
  zarr low-dim                      pusht_cchi_v7_replay.zarr, state + action windows only
  zarr image (cache)                same zarr with img windows, frames prefilled into the RAM cache
and the sequential decode rate of the pusht mp4 (ours, and plain PyAV `to_ndarray(format="rgb24")`).

Usage: python benchmarks/bench_loader.py [--quick] [--data DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from robopolicy.data.dataset import Dataset, open_dataset
from robopolicy.data.sampler import WindowSampler, make_dataloader
from robopolicy.data.video import VideoFile

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BATCH = 64
OBS, ACT = [-1, 0], list(range(16))
# LeRobot 0.4.4 on lerobot_v3_pusht, same windows, 2-core machine (../shared/data/README.md)
LEROBOT = {"pyav_1proc": 75.0, "pyav_2workers": 134.0, "torchcodec_1proc": 202.0}


def samples_per_s(sampler: WindowSampler, num_workers: int, batches: int, seed: int) -> float:
    """Iterate `batches` shuffled batches after one warm-up batch (worker start-up is not timed)."""
    loader = make_dataloader(sampler, BATCH, shuffle=True, num_workers=num_workers, seed=seed)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += len(next(it)["index"])
    dt = time.perf_counter() - t0
    del it, loader
    return n / dt


def median_of(runs: int, fn: Callable[[int], float]) -> tuple[float, list[float]]:
    values = [fn(seed) for seed in range(runs)]
    return statistics.median(values), values


def sequential_decode(path: Path, frames: int) -> tuple[float, float]:
    """Frames/s decoding the first `frames` frames in order: ours (VideoFile) and plain PyAV to_ndarray."""
    with VideoFile(path) as video:
        t0 = time.perf_counter()
        video.decode(np.arange(min(frames, video.num_frames)))
        ours = min(frames, video.num_frames) / (time.perf_counter() - t0)
    with av.open(str(path)) as c:
        t0, n = time.perf_counter(), 0
        for frame in c.decode(video=0):
            frame.to_ndarray(format="rgb24")
            n += 1
            if n >= frames:
                break
        plain = n / (time.perf_counter() - t0)
    return ours, plain


def prefill(ds: Dataset, key: str) -> float:
    t0 = time.perf_counter()
    for _ in ds.iter_chunks(key, 4096):
        pass
    return time.perf_counter() - t0


def measure_lerobot(python: str, root: Path, batches: int, runs: int) -> dict[str, float]:
    """LeRobot 0.4.4's PyAV loader, 0 and 2 workers, via benchmarks/lerobot_loader_reference.py in its venv."""
    import subprocess
    import sys

    script = Path(__file__).with_name("lerobot_loader_reference.py")
    out = subprocess.run(
        [python, str(script), "--root", str(root), "--batches", str(batches), "--runs", str(runs)],
        capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])["num_workers"]
    print(out.stderr.strip(), file=sys.stderr)
    return {"pyav_1proc": res["0"]["samples_per_s"], "pyav_2workers": res["2"]["samples_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few batches per run (a smoke run, noisier)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding lerobot_v3_pusht and the zarr")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--lerobot-python", default=os.environ.get("LEROBOT_PYTHON"),
        help="python of a LeRobot 0.4.4 venv (benchmarks/setup_lerobot_venv.sh): measure LeRobot in the same run",
    )
    args = parser.parse_args()
    lerobot_dir, zarr_dir = args.data / "lerobot_v3_pusht", args.data / "pusht_cchi_v7_replay.zarr"
    for p in (lerobot_dir, zarr_dir):
        if not p.exists():
            raise SystemExit(f"{p} not found: pass --data pointing at the shared datasets folder")
    stream_batches, cached_batches = (8, 30) if args.quick else (60, 300)
    print(f"cores={os.cpu_count()} load={os.getloadavg()[0]:.2f} batch={BATCH} windows: image/state {OBS}, "
          f"action 0..15; median of {args.runs} runs; {stream_batches} batches per streaming run")

    results: dict[str, dict] = {}
    if args.lerobot_python:  # side by side: LeRobot first, on the same machine state, same windows and batch
        LEROBOT.update(measure_lerobot(args.lerobot_python, lerobot_dir, stream_batches // 2, args.runs))
        print(f"LeRobot 0.4.4 measured in this run: {LEROBOT}")

    def report(name: str, value: float, runs: list[float], ref: dict[str, float] | None = None) -> None:
        ratios = {k: value / v for k, v in (ref or {}).items()}
        results[name] = {"samples_per_s": value, "runs": runs, "ratios_vs_lerobot": ratios}
        extra = "  ".join(f"x{r:.1f} vs LeRobot {k} ({LEROBOT[k]:.0f})" for k, r in ratios.items())
        print(f"{name:<28} {value:>10.0f} samples/s   runs {[round(r) for r in runs]}  {extra}")

    video_keys = {"observation.image": OBS, "observation.state": OBS, "action": ACT}
    stream = WindowSampler(open_dataset(lerobot_dir), video_keys)
    med, runs = median_of(args.runs, lambda s: samples_per_s(stream, 0, stream_batches, s))
    report("video streaming, 1 process", med, runs, {k: LEROBOT[k] for k in ("pyav_1proc", "torchcodec_1proc")})
    med, runs = median_of(args.runs, lambda s: samples_per_s(stream, 2, stream_batches, s))
    report("video streaming, 2 workers", med, runs, {k: LEROBOT[k] for k in ("pyav_2workers", "torchcodec_1proc")})

    cached_ds = open_dataset(lerobot_dir, cache_mb=1024)
    fill_s = prefill(cached_ds, "observation.image")
    print(f"  (prefill of the video cache: {cached_ds.num_frames} frames in {fill_s:.1f} s)")
    cached = WindowSampler(cached_ds, video_keys)
    med, runs = median_of(args.runs, lambda s: samples_per_s(cached, 0, cached_batches, s))
    report("video with cache, 1 process", med, runs, {k: LEROBOT[k] for k in ("pyav_1proc", "torchcodec_1proc")})

    zarr_low = WindowSampler(open_dataset(zarr_dir), {"state": OBS, "action": ACT})
    med, runs = median_of(args.runs, lambda s: samples_per_s(zarr_low, 0, cached_batches, s))
    report("zarr low-dim, 1 process", med, runs)

    zarr_ds = open_dataset(zarr_dir, cache_mb=1024)
    fill_s = prefill(zarr_ds, "img")
    print(f"  (prefill of the zarr image cache: {zarr_ds.num_frames} frames in {fill_s:.1f} s)")
    zarr_img = WindowSampler(zarr_ds, {"img": OBS, "state": OBS, "action": ACT})
    med, runs = median_of(args.runs, lambda s: samples_per_s(zarr_img, 0, cached_batches, s))
    report("zarr image (cache), 1 proc", med, runs, {k: LEROBOT[k] for k in ("pyav_1proc", "torchcodec_1proc")})

    mp4 = lerobot_dir / "videos/observation.image/chunk-000/file-000.mp4"
    ours, plain = sequential_decode(mp4, 3000 if args.quick else 25650)
    results["sequential_decode_frames_per_s"] = {"ours": ours, "pyav_to_ndarray": plain}
    print(f"{'sequential decode (AV1 96x96)':<28} {ours:>10.0f} frames/s (ours)   {plain:.0f} frames/s "
          "(plain PyAV frame.to_ndarray(format='rgb24'))")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
