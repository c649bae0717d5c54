"""Loader throughput streaming a LeRobot v3 dataset through fsspec against the local reader, side by side in one run.

Workload (bench_loader.py's): windows of image and state at frames [-1, 0] and 16 future actions, batch 64,
shuffled, one process, on ../shared/data/lerobot_v3_pusht (LeRobot's own AV1 96x96 PushT, 206 episodes). Every
batch is timed, the first one included (it is where a cold cache pays). Modes:
  local reader                    open_dataset(dir)
  streaming, cold cache           open_dataset(dir, streaming=True) through fsspec's LocalFileSystem, empty cache
  streaming, warm cache           the same with every block already in the cache directory (a previous pass)
  + latency, cold / warm          the same filesystem sleeping --latency-ms per request (opening a file for a
                                  range read, listing), a stand-in for the hub's round trips
Prints samples/s (median of --runs, each from a fresh dataset object and, for cold runs, an empty cache), the
ratio to the local reader, open time, and what the cold runs fetched.

Usage: python benchmarks/bench_streaming.py [--batches 60] [--runs 3] [--latency-ms 50] [--block-kb 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from robopolicy.data.dataset import open_dataset
from robopolicy.data.sampler import WindowSampler, make_dataloader

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BATCH = 64


class SlowFS(LocalFileSystem):
    """The local disk with a fixed delay per request (each range read opens the file once; listing is one)."""

    cachable = False

    def __init__(self, latency_s: float):
        super().__init__()
        self.latency_s = latency_s

    def open(self, *args, **kwargs):
        time.sleep(self.latency_s)
        return super().open(*args, **kwargs)

    def find(self, *args, **kwargs):
        time.sleep(self.latency_s)
        return super().find(*args, **kwargs)


def run(open_fn, batches: int, seed: int) -> dict:
    """Open, then time `batches` shuffled batches (the first included)."""
    t0 = time.perf_counter()
    ds = open_fn()
    opened = time.perf_counter() - t0
    windows = WindowSampler(ds, {"observation.image": [-1, 0], "observation.state": [-1, 0], "action": range(16)})
    it = iter(make_dataloader(windows, BATCH, shuffle=True, seed=seed))
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += len(next(it)["index"])
    out = {"open_s": opened, "samples_per_s": n / (time.perf_counter() - t0)}
    storage = getattr(ds, "storage", None)
    if storage is not None and not storage.local:
        out["fetched_mb"] = storage.cache.fetched_bytes / 1e6
        out["requests"] = storage.cache.requests
    ds.close()
    return out


def median_run(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": [r["samples_per_s"] for r in runs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA / "lerobot_v3_pusht")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--block-kb", type=int, default=1024)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    block = args.block_kb * 1024
    results: dict[str, dict] = {}
    fast, slow = LocalFileSystem(), SlowFS(args.latency_ms / 1000)
    modes: dict[str, tuple[object, bool]] = {
        "local reader": (None, False),
        "streaming, cold cache": (fast, True),
        "streaming, warm cache": (fast, False),
    }  # name: (filesystem or None for the local reader, cold)
    if args.latency_ms > 0:
        modes[f"+ {args.latency_ms:g} ms/request, cold"] = (slow, True)
        modes[f"+ {args.latency_ms:g} ms/request, warm"] = (slow, False)
    with tempfile.TemporaryDirectory() as tmp:
        def opener(fs, cache: Path):
            if fs is None:
                return lambda: open_dataset(args.data)
            return lambda: open_dataset(str(args.data.resolve()), filesystem=fs, cache_dir=cache, block_size=block)

        for fs in {fast, slow}:  # warm caches: every byte a window can need, read once through that filesystem
            with opener(fs, Path(tmp) / f"warm-{type(fs).__name__}")() as ds:
                for e in range(ds.num_episodes):
                    for key in ("observation.image", "observation.state", "action"):
                        ds.read_episode(key, e)
        for name, (fs, cold) in modes.items():
            runs = []
            for seed in range(args.runs):
                cache = Path(tmp) / (f"cold-{len(results)}-{seed}" if cold else f"warm-{type(fs).__name__}")
                runs.append(run(opener(fs, cache), args.batches, seed))
            results[name] = median_run(runs)
            print(f"{name}: {results[name]}", flush=True)
        episode = {}
        for fs in (fast, slow) if args.latency_ms > 0 else (fast,):  # one episode's windows from a cold cache
            t0 = time.perf_counter()
            with opener(fs, Path(tmp) / f"one-{type(fs).__name__}")() as ds:
                for key in ("observation.image", "observation.state", "action"):
                    ds.read_episode(key, ds.num_episodes // 2)
                total = sum(ds.storage.sizes().values())
                episode[type(fs).__name__] = (time.perf_counter() - t0, ds.storage.cache.fetched_bytes / 1e6,
                                              ds.storage.cache.requests, total / 1e6)  # fmt: skip
    local = results["local reader"]["samples_per_s"]
    print(f"\n{args.data.name}, batch {BATCH}, {args.batches} batches per run (first included), median of "
          f"{args.runs}, block {args.block_kb} KiB")
    print(f"{'mode':<30} {'open s':>7} {'samples/s':>10} {'vs local':>9} {'fetched MB':>11} {'requests':>9}")
    for name, r in results.items():
        fetched = f"{r['fetched_mb']:.2f}" if "fetched_mb" in r else ""
        requests = f"{r['requests']:.0f}" if "requests" in r else ""
        print(f"{name:<30} {r['open_s']:>7.2f} {r['samples_per_s']:>10,.0f} {r['samples_per_s'] / local:>9.2f} "
              f"{fetched:>11} {requests:>9}")
    for name, (seconds, fetched, requests, total) in episode.items():
        print(f"one episode (open + all its frames) through {name}, cold: {seconds:.2f} s, fetched {fetched:.2f} MB "
              f"of {total:.2f} MB in {requests} requests")
    if args.json:
        args.json.write_text(json.dumps({"modes": results, "one_episode": episode}, indent=2))


if __name__ == "__main__":
    main()
