"""Kill -9 loop: SIGKILL a recording process at random moments (mostly inside save_episode) and check the data.

A child process records episodes in a loop into one dataset. Every frame encodes its episode id and frame
number (actions, state and image pixels), so each episode can be checked exactly. The child prints
`saving <id> <frames>` just before each save_episode and `saved <index> <id> <seconds>` after it returns;
the parent kills it after a random fraction (0..1.25) of the measured save time past a `saving` line (one
kill in ten lands in the writer's open instead, where an interrupted save is recovered). After each kill:

1. open_dataset: every logged episode is there, exactly as written, in order; one more episode is allowed
   only if it is the one being saved and it is complete and exact (committed, not yet logged); nothing else.
2. a writer with append=True adds one episode; the dataset is checked again.

Public API only (create_writer, open_dataset), so it runs on every format:

  python benchmarks/bench_kill_save.py --format zarr --kills 50 --seed 0
  python benchmarks/bench_kill_save.py --format lerobot --kills 50 --seed 0

Prints one summary line per format; exits 1 when anything failed. --keep-going (for older versions) goes on
after a failure: it appends with a new writer and takes the episodes it then finds (each checked) as the
truth, counting logged episodes that are gone as lost.
"""

from __future__ import annotations

import argparse
import collections
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

FPS = 10
PARENT_IDS = 900_000  # episode ids of the episodes the parent appends
LINE_TIMEOUT_S = 120.0


def features() -> dict:
    from robopolicy.data.features import Feature

    return {
        "observation.state": Feature("observation.state", "float32", (3,), "state"),
        "action": Feature("action", "float32", (2,), "action"),
        "observation.image": Feature("observation.image", "video", (8, 8, 3), "video"),
    }


def writer_options(fmt: str, zarr_format: int) -> dict:
    return {"video": False} if fmt == "lerobot" else {"zarr_format": zarr_format}


def episode_length(eid: int) -> int:
    return 2 + (eid * 7) % 11


def frame(eid: int, t: int) -> dict[str, np.ndarray]:
    """Frame t of episode `eid`: every value derived from both, exactly representable."""
    image = np.empty((8, 8, 3), np.uint8)
    image[..., 0] = eid % 256
    image[..., 1] = (eid // 256) % 256
    image[..., 2] = (t * 17 + np.arange(8)[None, :] * 3 + np.arange(8)[:, None]) % 256
    return {
        "observation.state": np.array([eid, t, eid % 1000 + t / 8], np.float32),
        "action": np.array([eid, -t], np.float32),
        "observation.image": image,
    }


# ----- the child: records until killed ------------------------------------------------------------------


def child(root: Path, fmt: str, run: int, zarr_format: int) -> None:
    from robopolicy.data.writer import create_writer

    print("open", flush=True)
    exists = root.exists() and any(p.name != ".robopolicy.lock" for p in root.iterdir())
    writer = create_writer(root, features(), FPS, format=fmt, append=exists, **writer_options(fmt, zarr_format))
    print("ready", flush=True)
    for seq in range(1000):
        eid = run * 1000 + seq
        for t in range(episode_length(eid)):
            writer.add_frame(frame(eid, t))
        print(f"saving {eid} {episode_length(eid)}", flush=True)
        start = time.perf_counter()
        index = writer.save_episode(task=f"task {eid % 3}")
        print(f"saved {index} {eid} {time.perf_counter() - start:.6f}", flush=True)
    writer.finalize()


# ----- the parent -----------------------------------------------------------------------------------------


def check_dataset(root: Path, expected: list[int], inflight: int | None) -> tuple[list[int], bool]:
    """Check every episode of `root` against `expected` ids; returns (ids now committed, adopted in-flight).

    Raises AssertionError (what is wrong) or the reader's error."""
    from robopolicy.data.dataset import open_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = open_dataset(root)
    with ds:
        n = ds.num_episodes
        adopted = False
        ids = list(expected)
        if n == len(expected) + 1 and inflight is not None:
            ids.append(inflight)  # committed before the kill, not yet logged: must be complete and exact
            adopted = True
        assert n == len(ids), f"{n} episodes, expected {len(expected)} (+1 in flight: {inflight is not None})"
        for i, eid in enumerate(ids):
            ep = ds.episodes[i]
            assert ep.length == episode_length(eid), f"episode {i} (id {eid}): {ep.length} frames"
            want = [frame(eid, t) for t in range(ep.length)]
            for key in ("action", "observation.state"):
                got = ds.read_episode(key, i)
                exp = np.stack([f[key] for f in want])
                assert np.array_equal(got, exp), f"episode {i} (id {eid}): {key} differs"
            got = ds.read_episode("observation.image", i)
            exp = np.stack([f["observation.image"] for f in want]).transpose(0, 3, 1, 2)
            assert np.array_equal(got, exp), f"episode {i} (id {eid}): images differ"
    return ids, adopted


def journal_left(root: Path) -> bool:
    """True when the kill left an interrupted transaction (versions without a journal: False)."""
    try:
        from robopolicy.data.journal import pending
    except ImportError:
        return False
    return pending(root)


def resync(root: Path) -> list[int]:
    """The ids of the episodes in `root`, each checked exactly against the id its first action names."""
    from robopolicy.data.dataset import open_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_dataset(root) as ds:
            ids = [int(ds.read_episode("action", i)[0, 0]) for i in range(ds.num_episodes)]
    return check_dataset(root, ids, None)[0]


class Lines:
    """The child's stdout lines with arrival times, read by a thread."""

    def __init__(self, proc: subprocess.Popen):
        self.queue: queue.Queue[tuple[float, str | None]] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.queue.put((time.perf_counter(), line.strip()))
        self.queue.put((time.perf_counter(), None))

    def next(self, timeout: float = LINE_TIMEOUT_S) -> str | None:
        _, line = self.queue.get(timeout=timeout)
        if line is not None:
            self.seen.append(line)
        return line

    def drain(self) -> None:
        while self.next() is not None:
            pass


def run_format(
    fmt: str, kills: int, seed: int, workdir: Path, zarr_format: int, verbose: bool, keep_going: bool = False
) -> int:
    from robopolicy.data.writer import create_writer

    rng = random.Random(seed)
    root = workdir / f"{fmt}.dataset"
    expected: list[int] = []
    counts = collections.Counter()
    save_s = collections.deque([0.05], maxlen=20)
    open_s = collections.deque([0.05], maxlen=20)
    failures: list[str] = []
    for k in range(kills):
        in_open = k > 0 and rng.random() < 0.1
        target = rng.randint(1, 3)
        fraction = rng.uniform(0.0, 1.25)
        err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (the child's stderr, read on a failure)
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(root), "--format", fmt, "--run", str(k + 1),
             "--zarr-format", str(zarr_format)],
            stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
        )  # fmt: skip
        lines = Lines(proc)
        saves = 0
        opened_at = None
        try:
            while True:
                line = lines.next()
                if line is None:
                    raise RuntimeError("the child exited by itself")
                if line == "open":
                    opened_at = time.perf_counter()
                    if in_open:
                        time.sleep(fraction * np.median(open_s))
                        break
                elif line == "ready":
                    open_s.append(time.perf_counter() - opened_at)
                elif line.startswith("saving"):
                    saves += 1
                    if saves == target:
                        time.sleep(fraction * np.median(save_s))
                        break
                elif line.startswith("saved"):
                    save_s.append(float(line.split()[3]))
        except (RuntimeError, queue.Empty) as e:
            err.seek(0)
            failures.append(f"kill {k}: {e} (hang or crash): {err.read()[-2000:]}")
            proc.kill()
            proc.wait()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        err.close()
        lines.drain()
        counts["kills"] += 1
        # what the child logged: committed saves, and the save in flight at the kill
        inflight = None
        landed = "other"
        for line in lines.seen:
            if line == "open":
                landed = "open"
            elif line == "ready":
                landed = "other"
            elif line.startswith("saving"):
                inflight, landed = int(line.split()[1]), "save"
            elif line.startswith("saved"):
                _, index, eid, _ = line.split()
                if int(index) != len(expected):
                    failures.append(f"kill {k}: save_episode returned {index}, expected {len(expected)}")
                expected.append(int(eid))
                inflight, landed = None, "other"
        counts["inside save_episode" if landed == "save" else "in writer open" if landed == "open" else "between"] += 1
        counts["journal left"] += journal_left(root)
        try:
            expected, adopted = check_dataset(root, expected, inflight)
            counts["readable after"] += 1
            counts["committed unlogged"] += adopted
            counts["episodes verified"] += len(expected)
            writer = create_writer(root, features(), FPS, format=fmt, append=True, **writer_options(fmt, zarr_format))
            eid = PARENT_IDS + k
            for t in range(episode_length(eid)):
                writer.add_frame(frame(eid, t))
            index = writer.save_episode(task="parent")
            writer.finalize()
            assert index == len(expected), f"append returned episode {index}, expected {len(expected)}"
            expected.append(eid)
            expected, _ = check_dataset(root, expected, None)
            counts["episodes verified"] += len(expected)
        except Exception as e:  # every failure is counted and reported
            failures.append(f"kill {k} ({landed}): {type(e).__name__}: {str(e)[:300]}")
            counts["wrong data" if isinstance(e, AssertionError) else "errors"] += 1
            if verbose:
                import traceback

                traceback.print_exc()
            if not keep_going:
                break  # the dataset is no longer known-good
            try:  # what the next writer makes of it (older versions repaired at append)
                options = writer_options(fmt, zarr_format)
                writer = create_writer(root, features(), FPS, format=fmt, append=True, **options)
                eid = PARENT_IDS + k
                for t in range(episode_length(eid)):
                    writer.add_frame(frame(eid, t))
                writer.save_episode(task="parent")
                writer.finalize()
                ids = resync(root)
            except Exception as e2:
                failures.append(f"kill {k}: after append: {type(e2).__name__}: {str(e2)[:300]}")
                break
            counts["episodes lost"] += len(set(expected) - set(ids))
            expected = ids
        if verbose:
            print(f"  kill {k}: {landed}, {len(expected)} episodes", flush=True)
    counts["failures"] = len(failures)
    order = ["kills", "inside save_episode", "in writer open", "between", "journal left", "readable after",
             "episodes verified", "committed unlogged", "failures"]  # fmt: skip
    order += [name for name in ("errors", "wrong data", "episodes lost") if counts[name]]
    extra = f" (zarr_format {zarr_format})" if fmt == "zarr" else ""
    print(f"{fmt}: " + ", ".join(f"{name} {counts[name]}" for name in order) + extra, flush=True)
    for failure in failures[:5]:
        print(f"  FAILED {failure}", flush=True)
    print(f"  median save_episode {np.median(save_s) * 1e3:.1f} ms, {len(expected)} episodes in the end", flush=True)
    return len(failures)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--format", choices=["zarr", "lerobot"], default="zarr")
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zarr-format", type=int, choices=[2, 3], default=2)
    p.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--keep-going", action="store_true", help="after a failure, append and go on (older versions)")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.child, args.format, args.run, args.zarr_format)
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        failed = run_format(
            args.format, args.kills, args.seed, Path(work), args.zarr_format, args.verbose, args.keep_going
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
