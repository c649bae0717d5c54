"""Peak memory of streaming image stats on PushT (first 50 episodes vs all 206): it must not grow with size.

Each size runs in a fresh subprocess; reports tracemalloc peak (Python + numpy allocations during
compute_stats) and the process's peak RSS. Usage: .venv/bin/python benchmarks/bench_stats_memory.py [zarr]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

DEFAULT_ZARR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pusht_cchi_v7_replay.zarr"


def measure(zarr_path: str, num_episodes: int) -> dict:
    from robopolicy.data.dataset import open_dataset
    from robopolicy.data.stats import compute_stats

    ds = open_dataset(zarr_path)
    episodes = list(range(min(num_episodes, ds.num_episodes)))
    frames = ds.episodes[episodes[-1]].stop
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    compute_stats(ds, ["img"], episodes=episodes)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "episodes": len(episodes),
        "frames": frames,
        "image_bytes_mb": frames * 96 * 96 * 3 / 2**20,
        "tracemalloc_peak_mb": peak / 2**20,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before,
        "seconds": seconds,
    }


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]))))
        return 0
    zarr_path = sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_ZARR)
    if not Path(zarr_path).exists():
        print(f"PushT zarr not found at {zarr_path}", file=sys.stderr)
        return 2
    print(
        f"{'episodes':>8} {'frames':>7} {'uint8 data MB':>13} {'tracemalloc peak MB':>20} {'peak RSS MB':>12} {'s':>6}"
    )
    for n in (50, 206):
        out = subprocess.run(
            [sys.executable, __file__, "--child", zarr_path, str(n)], capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{r['episodes']:>8} {r['frames']:>7} {r['image_bytes_mb']:>13.1f} {r['tracemalloc_peak_mb']:>20.1f} "
            f"{r['rss_peak_mb']:>12.1f} {r['seconds']:>6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
