"""The data fault table: inject each class of dataset fault several times and classify what robopolicy does.

Every case runs in its own process (a hang is a timeout, a crash is a traceback), on fresh copies of the
real datasets in ../shared/data where the class needs one. Outcomes:
  clear      an error (or a validate report) that names what is wrong, data untouched
  ok         handled with no error and a correct result (e.g. an interrupted save undone by itself)
  traceback  an exception that is not a clear error, or a raw traceback from the command line
  hang       no answer within --timeout seconds
  silent     no error and a wrong result
  lost       data that was there before is gone or changed

Side by side with an older version (the before column of BENCHMARKS.md):
  python benchmarks/bench_data_faults.py --label after
  git worktree add /tmp/rp_before 91bcf86
  PYTHONPATH=/tmp/rp_before python benchmarks/bench_data_faults.py --label before
Uses only the public API that both versions have (create_writer, open_dataset, validate_dataset, the CLI).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CASES: dict[str, tuple[str, Callable[[Path, int], str], int]] = {}  # name -> (class, fn, repeats)


def case(klass: str, repeats: int = 1):
    def register(fn):
        CASES[fn.__name__] = (klass, fn, repeats)
        return fn

    return register


# ----- helpers ---------------------------------------------------------------------------------------
def _features():
    from robopolicy.data.features import Feature

    return {
        "observation.state": Feature("observation.state", "float32", (3, 2), "state"),
        "action": Feature("action", "float32", (2,), "action"),
        "count": Feature("count", "int8", (1,), "other"),
        "observation.image": Feature("observation.image", "video", (8, 8, 3), "video"),
    }


def _frame(t: int) -> dict[str, np.ndarray]:
    return {
        "observation.state": np.full((3, 2), t, np.float32),
        "action": np.array([t, -t], np.float32),
        "count": np.array([t % 100], np.int8),
        "observation.image": np.full((8, 8, 3), (t * 20) % 256, np.uint8),
    }


def _writer(root: Path, fmt: str, **kw):
    from robopolicy.data.writer import create_writer

    opts = {"video": False} if fmt == "lerobot" else {}
    return create_writer(root, _features(), 10, format=fmt, **opts, **kw)


def _record(writer, episodes: list[list[int]]) -> None:
    for ep in episodes:
        for t in ep:
            writer.add_frame(_frame(t))
        writer.save_episode()


def _matches(root: Path, episodes: list[list[int]]) -> bool:
    """The dataset holds exactly `episodes` (frame values t), images paired with their actions."""
    from robopolicy.data.dataset import open_dataset

    with open_dataset(root) as ds:
        if ds.num_episodes != len(episodes):
            return False
        want = np.array([t for ep in episodes for t in ep], np.float32)
        if ds.num_frames != want.size:
            return False
        idx = np.arange(want.size)
        action = ds.read("action", idx)[:, 0]
        image = ds.read("observation.image", idx).reshape(want.size, -1).max(1)
        lengths = np.diff(np.concatenate([[0], ds.episode_ends]))
        return (
            np.array_equal(action, want)
            and np.array_equal(image, (want.astype(int) * 20) % 256)
            and lengths.tolist() == [len(e) for e in episodes]
        )


def _tree(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _error_outcome(exc: BaseException, *names: str) -> str:
    from robopolicy.data.errors import DatasetError

    text = str(exc)
    named = any(n in text for n in names) if names else True
    if isinstance(exc, (DatasetError, ValueError, KeyError, TypeError, FileExistsError)) and named:
        return "clear"
    return "traceback"


def _cli(args: list[str], timeout: float = 120) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "robopolicy.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        cwd=tempfile.gettempdir(),  # not the checkout: `-m` puts the cwd first on sys.path
    )
    return proc.returncode, proc.stderr


def _cli_outcome(code: int, stderr: str, *, want_code: int | None = None) -> str:
    if "Traceback" in stderr:
        return "traceback"
    if code == 0:
        return "silent"
    if want_code is not None and code != want_code:
        return "traceback"
    return "clear"


def _small_dataset(root: Path, fmt: str, episodes=((0, 1, 2), (10, 11, 12, 13))) -> list[list[int]]:
    eps = [list(e) for e in episodes]
    w = _writer(root, fmt)
    _record(w, eps)
    w.finalize()
    return eps


# ----- a save that fails part way, then recording goes on -----------------------------------------------
def _failed_save(tmp: Path, fmt: str, k: int) -> str:
    """The k-th file replacement of the second save raises ENOSPC; the user discards and records on."""
    root = tmp / "d"
    w = _writer(root, fmt)
    _record(w, [[0, 1, 2]])
    for t in (10, 11, 12, 13):
        w.add_frame(_frame(t))
    real_replace, calls = os.replace, [0]

    def failing_replace(src, dst, **kw):
        calls[0] += 1
        if calls[0] == k:
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst, **kw)

    os.replace = failing_replace
    try:
        w.save_episode()
        raised = None
    except Exception as e:
        raised = e
    finally:
        os.replace = real_replace
    if raised is None:
        return "skip"  # fewer than k replacements in a save
    w.discard_episode()
    _record(w, [[20, 21], [30, 31, 32]])
    w.finalize()
    try:
        good = _matches(root, [[0, 1, 2], [20, 21], [30, 31, 32]])
    except Exception:
        return "lost"
    return _error_outcome(raised, "No space") if good else "silent"


for _fmt in ("zarr", "lerobot"):
    for _k in (1, 2, 3, 4, 5, 6):
        CASES[f"failed_save_{_fmt}_{_k}"] = (
            "failed save_episode, recording goes on",
            (lambda f, k: lambda tmp, i: _failed_save(tmp, f, k))(_fmt, _k),
            1,
        )


# ----- overwrite ------------------------------------------------------------------------------------
def _overwrite_foreign(tmp: Path, fmt: str, layout: str) -> str:
    root = tmp / "target"
    if layout == "project":
        (root / ".git").mkdir(parents=True)
        (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        (root / ".env").write_text("TOKEN=1\n")
        (root / "data").mkdir()
        (root / "data" / "runs.csv").write_text("a,b\n")
    elif layout == "dot_only":
        root.mkdir()
        (root / ".env").write_text("TOKEN=1\n")
    elif layout == "dataset_folders":
        for name in ("data", "meta", "images"):
            (root / name).mkdir(parents=True)
            (root / name / "keep.txt").write_text(name)
    elif layout == "lerobot_not_ours":
        if not (SHARED / "lerobot_v3_pusht").exists():
            return "skip"
        shutil.copytree(SHARED / "lerobot_v3_pusht", root)
    before = _tree(root)
    try:
        w = _writer(root, fmt, overwrite=True)
        w.finalize()
        raised = None
    except Exception as e:
        raised = e
    if _tree(root) != before:
        return "lost"
    return "silent" if raised is None else _error_outcome(raised, str(root))


for _fmt in ("zarr", "lerobot"):
    for _layout in ("project", "dot_only", "dataset_folders", "lerobot_not_ours"):
        CASES[f"overwrite_{_layout}_{_fmt}"] = (
            "--overwrite on what robopolicy did not write",
            (lambda f, la: lambda tmp, i: _overwrite_foreign(tmp, f, la))(_fmt, _layout),
            1,
        )


def _convert_over_source(tmp: Path, relation: str, to: str) -> str:
    src = tmp / "proj" / "src"
    eps = _small_dataset(src, "zarr" if to == "lerobot" else "lerobot")
    dst = {"same": src, "parent": src.parent, "child": src / "out"}[relation]
    before = _tree(src)
    code, err = _cli(["convert", str(src), str(dst), "--to", to, "--overwrite"])
    try:
        intact = _tree(src) == before or _matches(src, eps)
    except Exception:
        intact = False
    if not intact:
        return "lost"
    return _cli_outcome(code, err)


for _rel in ("same", "parent", "child"):
    for _to in ("zarr", "lerobot"):
        CASES[f"convert_overwrite_{_rel}_{_to}"] = (
            "convert --overwrite onto its own source",
            (lambda r, t: lambda tmp, i: _convert_over_source(tmp, r, t))(_rel, _to),
            1,
        )


# ----- zarr chunks ----------------------------------------------------------------------------------
def _zarr_store(tmp: Path, source: str) -> Path:
    if source == "real":
        if not (SHARED / "pusht_cchi_v7_replay.zarr").exists():
            raise FileNotFoundError("shared data missing")
        root = tmp / "pusht.zarr"
        shutil.copytree(SHARED / "pusht_cchi_v7_replay.zarr", root)
        return root
    root = tmp / "d.zarr"
    from robopolicy.data.writer import create_writer

    w = create_writer(root, _features(), 10, format="zarr", zarr_format=int(source[-1]))
    _record(w, [list(range(e * 100, e * 100 + 40)) for e in range(3)])
    w.finalize()
    return root


def _chunk_files(root: Path, key: str) -> list[Path]:
    folder = root / "data" / key
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "zarr.json")


def _missing_chunk(tmp: Path, source: str, damage: str, i: int) -> str:
    try:
        root = _zarr_store(tmp, source)
    except FileNotFoundError:
        return "skip"
    from robopolicy.data.dataset import open_dataset

    keys = [k for k in ("action", "observation.image", "img") if (root / "data" / k).exists()]
    key = keys[i % len(keys)]
    chunks = _chunk_files(root, key)
    target = chunks[i % len(chunks)]
    if damage == "missing":
        target.unlink()
    else:
        target.write_bytes(random.Random(i).randbytes(max(16, target.stat().st_size)))
    try:
        with open_dataset(root) as ds:
            values = ds.read(key, np.arange(ds.num_frames))
    except Exception as e:
        return _error_outcome(e, target.name)
    return "silent" if values is not None else "clear"


for _src in ("v2", "v3", "real"):
    for _damage in ("missing", "corrupt"):
        CASES[f"zarr_chunk_{_damage}_{_src}"] = (
            "missing or corrupt zarr chunk files",
            (lambda s, d: lambda tmp, i: _missing_chunk(tmp, s, d, i))(_src, _damage),
            2,
        )


# ----- kill -9 inside save_episode -------------------------------------------------------------------
_KILL_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
import numpy as np
import bench_data_faults as b
from pathlib import Path
root, fmt = Path(sys.argv[1]), sys.argv[2]
w = b._writer(root, fmt, append=root.exists())
ep = 0
while True:
    for t in range(ep * 1000, ep * 1000 + KILL_FRAMES):
        w.add_frame(b._frame(t))
    print("saving", ep, flush=True)
    start = time.perf_counter()
    w.save_episode()
    print("saved", ep, time.perf_counter() - start, flush=True)
    ep += 1
"""
KILL_FRAMES = 150


def _kill_in_save(tmp: Path, fmt: str, i: int) -> str:
    """SIGKILL a recorder at a random moment of a save; then read, then append with a new writer."""
    root = tmp / "d"
    rng = random.Random(1000 + i)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILL_CHILD.replace("KILL_FRAMES", str(KILL_FRAMES)),
            str(root),
            fmt,
            str(Path(__file__).parent),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    saved, durations, target = [], [], rng.randint(1, 3)
    while True:
        line = proc.stdout.readline().split()
        if not line:
            return "traceback"
        if line[0] == "saved":
            saved.append(int(line[1]))
            durations.append(float(line[2]))
        if line[0] == "saving" and int(line[1]) == target:  # kill inside this save (durations measured so far)
            time.sleep(rng.uniform(0.0, max(durations)))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
    episodes = [list(range(e * 1000, e * 1000 + KILL_FRAMES)) for e in saved]
    try:
        ok_read = _matches(root, episodes) or _matches(
            root, [*episodes, list(range(target * 1000, target * 1000 + KILL_FRAMES))]
        )
    except Exception as e:
        ok_read, read_error = False, e
    else:
        read_error = None
    try:
        w = _writer(root, fmt, append=True)
        _record(w, [[7, 8]])
        w.finalize()
        ok_append = True
    except Exception as e:
        ok_append = False
        print(f"append failed: {type(e).__name__}: {e}", file=sys.stderr)
    if read_error is not None:
        print(f"read failed: {type(read_error).__name__}: {read_error}", file=sys.stderr)
    if ok_read and ok_append:
        return "ok"
    if ok_append and read_error is not None:
        return "clear" if "append=True" in str(read_error) else "traceback"
    return "lost"


for _fmt in ("zarr", "lerobot"):
    CASES[f"kill_in_save_{_fmt}"] = (
        "kill -9 inside save_episode",
        (lambda f: lambda tmp, i: _kill_in_save(tmp, f, i))(_fmt),
        6,
    )


# ----- add_frame misuse -----------------------------------------------------------------------------
_BAD_FRAMES = {
    "reshape": ("observation.state", np.arange(6, dtype=np.float32).reshape(2, 3)),
    "unknown_key": ("gripper", np.zeros(1, np.float32)),
    "overflow_float": ("observation.state", np.full((3, 2), 1e300)),
    "wrap_int8": ("count", np.array([300])),
}


def _bad_frame(tmp: Path, fmt: str, kind: str) -> str:
    key, value = _BAD_FRAMES[kind]
    w = _writer(tmp / "d", fmt)
    try:
        w.add_frame({**_frame(0), key: value})
        w.save_episode()
        w.finalize()
    except Exception as e:
        return _error_outcome(e, key)
    return "silent"


for _fmt in ("zarr", "lerobot"):
    for _kind in _BAD_FRAMES:
        CASES[f"add_frame_{_kind}_{_fmt}"] = (
            "add_frame misuse",
            (lambda f, k: lambda tmp, i: _bad_frame(tmp, f, k))(_fmt, _kind),
            1,
        )


# ----- metadata that lies (LeRobot) -------------------------------------------------------------------
def _lerobot_video_dataset(root: Path) -> list[list[int]]:
    from robopolicy.data.writer import create_writer

    w = create_writer(root, _features(), 10, format="lerobot", vcodec="libx264")
    eps = [list(range(0, 20)), list(range(100, 130)), list(range(200, 225))]
    _record(w, eps)
    w.finalize()
    return eps


def _lying(tmp: Path, lie: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp / "d"
    eps = _lerobot_video_dataset(root)
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    if lie == "dtype_int8":
        info["features"]["action"]["dtype"] = "int8"
        info_path.write_text(json.dumps(info))
    elif lie == "fps_zero":
        info["fps"] = 0
        info_path.write_text(json.dumps(info))
    else:
        path = next((root / "meta/episodes").rglob("*.parquet"))
        table = pq.read_table(path)
        if lie == "from_timestamp":
            col = "videos/observation.image/from_timestamp"
            values = table[col].to_pylist()
            values[1] = values[2]  # episode 1 now points at episode 2's frames
            table = table.set_column(table.schema.get_field_index(col), col, pa.array(values, pa.float64()))
            pq.write_table(table, path)
        elif lie == "task_index":
            data = next((root / "data").rglob("*.parquet"))
            t = pq.read_table(data)
            ti = np.asarray(t["task_index"]).copy()
            ti[:] = -1
            t = t.set_column(t.schema.get_field_index("task_index"), "task_index", pa.array(ti, pa.int64()))
            pq.write_table(t, data)
    from robopolicy.data.dataset import open_dataset
    from robopolicy.data.validate import validate_dataset

    try:
        problems = validate_dataset(root)
    except Exception:
        return "traceback"
    if problems:
        return "clear"
    try:
        with open_dataset(root) as ds:
            idx = np.arange(ds.num_frames)
            ds.read("action", idx)
            ds.read("observation.image", idx)
            ds.frame_tasks(idx)
            ok = _matches(root, eps)
    except Exception as e:
        return _error_outcome(e)
    return "ok" if ok and lie != "fps_zero" and lie != "task_index" else "silent"


for _lie in ("dtype_int8", "fps_zero", "from_timestamp", "task_index"):
    CASES[f"lying_{_lie}"] = ("metadata that lies", (lambda la: lambda tmp, i: _lying(tmp, la))(_lie), 1)


# ----- validate on damaged metadata ------------------------------------------------------------------
def _validate_damage(tmp: Path, damage: str, i: int) -> str:
    src = SHARED / "lerobot_v3_pusht"
    if not src.exists():
        return "skip"
    root = tmp / "pusht"
    shutil.copytree(src, root)
    meta = root / "meta"
    if damage == "info_list":
        (meta / "info.json").write_text("[1, 2, 3]")
    elif damage == "info_string":
        (meta / "info.json").write_text('"v3.0"')
    elif damage == "codebase_numeric":
        info = json.loads((meta / "info.json").read_text())
        info["codebase_version"] = 3.0
        (meta / "info.json").write_text(json.dumps(info))
    elif damage == "episodes_truncated":
        f = next((meta / "episodes").rglob("*.parquet"))
        f.write_bytes(f.read_bytes()[: f.stat().st_size // (2 + i)])
    elif damage == "tasks_truncated":
        f = meta / "tasks.parquet"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // (2 + i)])
    elif damage == "stats_malformed":
        (meta / "stats.json").write_text('{"action": {"mean": [1, 2')
    code, err = _cli(["validate", str(root), "--no-videos"])
    return _cli_outcome(code, err, want_code=1)


for _damage in (
    "info_list", "info_string", "codebase_numeric", "episodes_truncated", "tasks_truncated", "stats_malformed"
):  # fmt: skip
    CASES[f"validate_{_damage}"] = (
        "validate on damaged metadata",
        (lambda d: lambda tmp, i: _validate_damage(tmp, d, i))(_damage),
        1,
    )


# ----- zero episodes, two writers ---------------------------------------------------------------------
def _zero_episodes(tmp: Path, fmt: str) -> str:
    root = tmp / "empty"
    _writer(root, fmt).finalize()
    from robopolicy.data.dataset import open_dataset

    try:
        with open_dataset(root) as ds:
            n = ds.num_episodes
    except Exception as e:
        return _error_outcome(e, "episodes") if "no episodes" in str(e) else "traceback"
    _, err = _cli(["convert", str(root), str(tmp / "out"), "--to", "lerobot" if fmt == "zarr" else "zarr"])
    if "Traceback" in err:
        return "traceback"
    return "ok" if n == 0 else "silent"


def _two_writers(tmp: Path, fmt: str) -> str:
    root = tmp / "d"
    _small_dataset(root, fmt, episodes=((0, 1),))
    a = _writer(root, fmt, append=True)
    try:
        b = _writer(root, fmt, append=True)
    except Exception as e:
        a.finalize()
        return _error_outcome(e, str(root))
    _record(a, [[10, 11]])
    _record(b, [[20, 21, 22]])
    a.finalize()
    b.finalize()
    try:
        both = _matches(root, [[0, 1], [10, 11], [20, 21, 22]]) or _matches(root, [[0, 1], [20, 21, 22], [10, 11]])
    except Exception:
        return "lost"
    return "ok" if both else "lost"


for _fmt in ("zarr", "lerobot"):
    CASES[f"zero_episodes_{_fmt}"] = (
        "zero-episode dataset",
        (lambda f: lambda tmp, i: _zero_episodes(tmp, f))(_fmt),
        1,
    )
    CASES[f"two_writers_{_fmt}"] = ("two writers at once", (lambda f: lambda tmp, i: _two_writers(tmp, f))(_fmt), 1)


# ----- driver -----------------------------------------------------------------------------------------
def _run_one(name: str, i: int, timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="rp_fault_") as tmp:
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--case", name, "--index", str(i), "--tmp", tmp],
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
        except subprocess.TimeoutExpired:
            return "hang"
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("OUTCOME ")]
        if lines:
            return lines[-1].split()[1]
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"traceback ({last[:150]})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default="this checkout")
    p.add_argument("--only", default=None, help="run the cases whose name contains this")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a case counts as a hang")
    p.add_argument("--json", type=Path, default=None, help="also write {class: {outcome: count}} here")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        outcome = CASES[args.case][1](args.tmp, args.index)
        print(f"OUTCOME {outcome}", flush=True)
        return
    import robopolicy

    print(f"robopolicy from {Path(robopolicy.__file__).parent} ({args.label})")
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    start = time.perf_counter()
    for name, (klass, _, repeats) in CASES.items():
        if args.only and args.only not in name:
            continue
        for i in range(repeats):
            outcome = _run_one(name, i, args.timeout)
            print(f"  {name}[{i}]: {outcome}", flush=True)
            if outcome != "skip":
                table[klass][outcome.split()[0]] += 1
    print(f"\n{'class':48s} cases  outcomes ({args.label})")
    for klass, counts in table.items():
        summary = ", ".join(f"{k} {v}" for k, v in counts.most_common())
        print(f"{klass:48s} {sum(counts.values()):5d}  {summary}")
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({k: dict(v) for k, v in table.items()}, indent=2))


if __name__ == "__main__":
    main()
