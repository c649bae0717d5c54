"""LeRobot 0.4.4's own data loader throughput on a LeRobot v3 dataset (the reference robopolicy is compared to).

Runs INSIDE the LeRobot venv (recipe in `benchmarks/lerobot_compat.py`):

    /work/lrvenv/bin/python benchmarks/lerobot_loader_reference.py [--root DIR] [--batches 20] [--quick]

Workload (the one in ../shared/data/README.md): `LeRobotDataset` with delta_timestamps
{observation.image: [-0.1, 0], observation.state: [-0.1, 0], action: [0.0, 0.1, ..., 1.5]} (16 future actions
at 10 fps), PyAV video backend, torch DataLoader with batch 64, shuffled, num_workers 0 and 2.

Method per num_workers: build the dataset once (not timed); each run makes a fresh DataLoader (seed + run)
and times `--batches` batches from creating its iterator (worker start-up included, so that batches the
workers prefetched during a warm-up cannot inflate the rate); `first_batch_s` is reported separately.
The reported figure is the median samples/s over `--runs` runs (default 3).
Prints exactly one JSON line on stdout (progress goes to stderr) so another benchmark can run this as a
subprocess and print ratios side by side. Timings are noisy on a shared 2-core machine; with num_workers 0
torch's default intra-op threads (2 here) make the main process collapse when other processes load the cores
(measured 23-57 samples/s vs 128-145 with `--torch-threads 1`), so compare tools at the same setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from lerobot_runtime import lerobot_versions, prepare_lerobot

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lerobot_v3_pusht"
OBS_DELTAS_S = [-0.1, 0.0]
ACTION_DELTAS_S = [round(0.1 * i, 1) for i in range(16)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="LeRobot v3 dataset directory (read-only ok)")
    p.add_argument("--batches", type=int, default=20, help="timed batches per run (default 20)")
    p.add_argument("--runs", type=int, default=3, help="runs per setting; the median is reported (default 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", default="0,2", help="comma-separated DataLoader num_workers (default 0,2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads in the main process (default 0: torch's default; workers always use 1)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 3 batches, 1 run")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.runs = 3, 1
    if not (args.root / "meta" / "info.json").is_file():
        p.error(f"{args.root}: no meta/info.json; pass --root with a LeRobot v3 dataset directory")
    return args


def make_dataset(root: Path):
    """LeRobot's LeRobotDataset on a local root (no Hub), PyAV backend, the benchmark's delta_timestamps."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(
        repo_id=f"local/{root.name}",
        root=root,
        video_backend="pyav",
        delta_timestamps={
            "observation.image": OBS_DELTAS_S,
            "observation.state": OBS_DELTAS_S,
            "action": ACTION_DELTAS_S,
        },
    )


def time_run(dataset, *, batch_size: int, num_workers: int, batches: int, seed: int) -> dict:
    """One run: `batches` batches timed from iterator creation. Returns samples/s and the first batch's time."""
    import torch

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    first_batch_s = time.perf_counter() - t0
    expected = (batch_size, len(OBS_DELTAS_S), 3)
    if tuple(first["observation.image"].shape[:3]) != expected:
        raise RuntimeError(f"unexpected observation.image batch shape {tuple(first['observation.image'].shape)}")
    n = len(first["index"])
    for _ in range(batches - 1):
        n += len(next(it)["index"])
    elapsed = time.perf_counter() - t0
    del it
    return {"samples_per_s": n / elapsed, "seconds": elapsed, "first_batch_s": first_batch_s}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_lerobot()
    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    t0 = time.perf_counter()
    dataset = make_dataset(args.root)
    setup_s = time.perf_counter() - t0
    needed = args.batch_size * args.batches
    if len(dataset) < needed:
        print(f"{args.root}: {len(dataset)} frames < {needed} needed; lower --batches", file=sys.stderr)
        return 2
    results = {}
    for workers in worker_counts:
        runs = []
        for r in range(args.runs):
            res = time_run(
                dataset,
                batch_size=args.batch_size,
                num_workers=workers,
                batches=args.batches,
                seed=args.seed + r,
            )
            print(
                f"num_workers={workers} run {r + 1}/{args.runs}: {res['samples_per_s']:.1f} samples/s "
                f"(first batch {res['first_batch_s']:.2f} s)",
                file=sys.stderr,
            )
            runs.append(res)
        rates = [r["samples_per_s"] for r in runs]
        results[str(workers)] = {
            "samples_per_s": round(statistics.median(rates), 2),
            "runs_samples_per_s": [round(x, 2) for x in rates],
            "first_batch_s": [round(r["first_batch_s"], 3) for r in runs],
        }
    out = {
        "tool": "lerobot",
        "dataset": str(args.root),
        "frames": len(dataset),
        "episodes": dataset.num_episodes,
        "video_backend": "pyav",
        "batch_size": args.batch_size,
        "batches": args.batches,
        "runs": args.runs,
        "delta_timestamps": {
            "observation.image": OBS_DELTAS_S,
            "observation.state": OBS_DELTAS_S,
            "action": ACTION_DELTAS_S,
        },
        "setup_s": round(setup_s, 3),
        "torch_threads": torch.get_num_threads(),
        "num_workers": results,
        "versions": lerobot_versions(),
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
