"""Zarr store faults: failed and killed saves, lost and damaged chunk files, empty stores, kill -9 loop.

Every frame carries values that encode its global position t (actions [t, -t], image pixels from t), so a
frame that lands in the wrong row or episode is visible, not only a crash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from robopolicy.cli.main import main
from robopolicy.data.convert import convert
from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import CorruptChunkError, DatasetError, MissingChunkError
from robopolicy.data.features import Feature
from robopolicy.data.journal import JOURNAL_DIR, Journal, pending
from robopolicy.data.writer import EpisodeSaveError, create_writer
from robopolicy.data.zarr_writer import JournaledStore, ZarrWriter

REPO = Path(__file__).resolve().parents[2]
FORMATS = [2, 3]
FEATURES = {
    "img": Feature("img", "uint8", (4, 6, 3), "image"),
    "state": Feature("state", "float32", (3,), "state"),
    "action": Feature("action", "float64", (2,), "action"),
}


def _frame(t: int) -> dict[str, np.ndarray]:
    img = np.full((4, 6, 3), t % 251, np.uint8)
    img[0, 0] = [t % 256, (t // 256) % 256, 7]
    return {"img": img, "state": np.array([t, t + 0.5, -t], np.float32), "action": np.array([t, -t], np.float64)}


def _add(writer, ts) -> None:
    for t in ts:
        writer.add_frame(_frame(int(t)))


def _writer(root: Path, zarr_format: int = 2, **kw) -> ZarrWriter:
    return create_writer(root, FEATURES, 10, format="zarr", zarr_format=zarr_format, **kw)


def _check(root: Path, episodes: list[list[int]]) -> None:
    """The store at `root` holds exactly `episodes` (lists of frame values t), every feature."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = open_dataset(root)
    assert [e.length for e in ds.episodes] == [len(e) for e in episodes]
    ts = [t for e in episodes for t in e]
    idx = np.arange(len(ts))
    want = [_frame(t) for t in ts]
    np.testing.assert_array_equal(ds.read("action", idx), np.stack([f["action"] for f in want]).reshape(-1, 2))
    np.testing.assert_array_equal(ds.read("state", idx), np.stack([f["state"] for f in want]).reshape(-1, 3))
    np.testing.assert_array_equal(
        ds.read("img", idx), np.stack([f["img"] for f in want]).reshape(-1, 4, 6, 3).transpose(0, 3, 1, 2)
    )


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _validate_clean(root: Path) -> None:
    from robopolicy.data.validate import validate_dataset

    assert validate_dataset(root) == []


# ----- a save failing part way -------------------------------------------------------------------


def _count_store_writes(monkeypatch) -> list[int]:
    calls = [0]
    original = JournaledStore._hold

    def counting(self, key, value):
        calls[0] += self._pending is not None
        return original(self, key, value)

    monkeypatch.setattr(JournaledStore, "_hold", counting)
    return calls


def _store_failing_at(k: int):
    """JournaledStore._hold raising at the k-th zarr write inside a save (a codec or store error)."""
    seen = [0]
    original = JournaledStore._hold

    def failing(self, key, value):
        if self._pending is not None:
            seen[0] += 1
            if seen[0] == k:
                raise ValueError(f"cannot store {key}")
        return original(self, key, value)

    return failing


def _journal_failing_at(k: int):
    """Journal.write_bytes writing half the file, then failing with ENOSPC, at its k-th call."""
    seen = [0]
    original = Journal.write_bytes

    def failing(self, path, data):
        seen[0] += 1
        if seen[0] == k:

            def half(tmp: Path) -> None:
                tmp.write_bytes(bytes(data)[: len(data) // 2])
                raise OSError(28, "No space left on device")

            return self.write_with(path, half)
        return original(self, path, data)

    return failing


def _probe(tmp_path: Path, zarr_format: int, monkeypatch) -> tuple[int, int]:
    """(zarr writes, journaled file writes) of the second save of the scenario below."""
    writer = _writer(tmp_path / "probe", zarr_format)
    _add(writer, range(3))
    writer.save_episode(task="a")
    _add(writer, range(10, 15))
    store_calls = _count_store_writes(monkeypatch)
    file_calls = [0]
    original = Journal.write_bytes

    def counting(self, path, data):
        file_calls[0] += 1
        return original(self, path, data)

    monkeypatch.setattr(Journal, "write_bytes", counting)
    writer.save_episode(task="b")
    monkeypatch.undo()
    writer.finalize()
    return store_calls[0], file_calls[0]


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_a_save_failing_at_any_write_changes_nothing_and_recording_goes_on(tmp_path, zarr_format, monkeypatch):
    store_writes, file_writes = _probe(tmp_path, zarr_format, monkeypatch)
    assert store_writes >= 5 and file_writes >= 4
    cases = [("store", k, _store_failing_at(k)) for k in range(1, store_writes + 1)]
    cases += [("file", k, _journal_failing_at(k)) for k in range(1, file_writes + 1)]
    for where, k, failing in cases:
        root = tmp_path / f"{where}{k}"
        writer = _writer(root, zarr_format)
        _add(writer, range(3))
        writer.save_episode(task="a")
        before, ends, attrs = _tree(root), writer._ends.copy(), repr(writer._attrs)
        _add(writer, range(10, 15))
        if where == "store":
            monkeypatch.setattr(JournaledStore, "_hold", failing)
        else:
            monkeypatch.setattr(Journal, "write_bytes", failing)
        with pytest.raises(EpisodeSaveError, match="cannot store|No space left") as err:
            writer.save_episode(task="b")
        monkeypatch.undo()
        assert "5 buffered frames are kept" in str(err.value)
        assert _tree(root) == before, f"{where} write {k}: files changed by a failed save"
        assert writer._ends.tolist() == ends.tolist() and repr(writer._attrs) == attrs
        assert writer.frames_in_episode == 5 and writer.num_episodes == 1
        assert writer.save_episode(task="b") == 1  # the kept frames
        _add(writer, range(20, 23))
        assert writer.save_episode(task="c") == 2
        writer.finalize()
        _check(root, [[0, 1, 2], [10, 11, 12, 13, 14], [20, 21, 22]])
        with open_dataset(root) as ds:
            assert ds.tasks == ["a", "b", "c"] and ds.frame_tasks(np.array([0, 3, 8])) == ["a", "b", "c"]
        assert not (root / JOURNAL_DIR).exists()
    _validate_clean(root)


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_no_zarr_write_reaches_disk_outside_a_save(tmp_path, zarr_format):
    writer = _writer(tmp_path / "d", zarr_format)
    with pytest.raises(RuntimeError, match="outside save_episode"):
        zarr.open_group(writer._store, mode="r+").attrs["x"] = 1
    writer.finalize()


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_every_chunk_is_written_even_all_zero(tmp_path, zarr_format):
    root = tmp_path / "z"
    writer = _writer(root, zarr_format)
    _add(writer, [0, 0, 0])  # all-zero actions and images: zarr 3 skips such chunks by default
    writer.save_episode()
    writer.finalize()
    with open_dataset(root) as ds:
        assert ds.missing_chunks() == []
    g = zarr.open_group(str(root), mode="r")
    for key in FEATURES:
        assert g[f"data/{key}"].nchunks_initialized == g[f"data/{key}"].nchunks


# ----- a killed save (simulated in-process: no rollback, lock dropped) ---------------------------


class _Killed(BaseException):
    """Stands for SIGKILL: the base class passes BaseException on without a traceback of its own."""


def _kill_at(monkeypatch, k: int) -> None:
    """Die at the k-th journaled file write (half of it written), or after the last one when k = 0."""
    seen = [0]
    original = Journal.write_bytes

    def dying(self, path, data):
        seen[0] += 1
        if seen[0] == k:
            self.temp_path(path).write_bytes(bytes(data)[: len(data) // 2])
            raise _Killed
        return original(self, path, data)

    monkeypatch.setattr(Journal, "write_bytes", dying)
    monkeypatch.setattr(Journal, "rollback", lambda self: self._close())  # a dead process undoes nothing
    if k == 0:

        def commit(self):
            raise _Killed

        monkeypatch.setattr(Journal, "commit", commit)


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_a_kill_at_any_point_of_a_save_leaves_a_readable_store_that_append_continues(
    tmp_path, zarr_format, monkeypatch
):
    _, file_writes = _probe(tmp_path, zarr_format, monkeypatch)
    for k in [*range(1, file_writes + 1), 0]:
        root = tmp_path / f"k{k}"
        writer = _writer(root, zarr_format)
        _add(writer, range(3))
        writer.save_episode(task="a")
        _add(writer, range(10, 15))
        _kill_at(monkeypatch, k)
        with pytest.raises(_Killed):
            writer.save_episode(task="b")
        monkeypatch.undo()
        writer._lock.release()  # the process is gone
        writer._lock = None
        committed = k == 0  # killed after the commit file was replaced
        expected = [[0, 1, 2], [10, 11, 12, 13, 14]] if committed else [[0, 1, 2]]
        assert pending(root)
        with pytest.warns(UserWarning, match="a save was interrupted"):
            ds = open_dataset(root)
        assert ds.num_episodes == len(expected) and ds.tasks == ["a", "b"][: len(expected)]
        _check(root, expected)
        again = _writer(root, append=True)  # finishes or undoes the interrupted save by itself
        assert not pending(root) and again.num_episodes == len(expected)
        _add(again, range(30, 32))
        assert again.save_episode(task="c") == len(expected)
        again.finalize()
        _check(root, [*expected, [30, 31]])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing left to warn about
            assert open_dataset(root).tasks == (["a", "b", "c"] if committed else ["a", "c"])
    _validate_clean(root)


def test_a_real_kill_inside_save_episode(tmp_path):
    """SIGKILL from inside the journal's file writes of a child process (os._exit: no cleanup at all)."""
    root = tmp_path / "kill.zarr"
    script = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_zarr_faults import _writer, _add\n"
        "from robopolicy.data.journal import Journal\n"
        "from pathlib import Path\n"
        "w = _writer(Path(sys.argv[1]), 3)\n"
        "_add(w, range(4)); w.save_episode()\n"
        "orig = Journal.write_bytes\n"
        "calls = [0]\n"
        "def dying(self, path, data):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 3: os.kill(os.getpid(), 9)\n"
        "    return orig(self, path, data)\n"
        "Journal.write_bytes = dying\n"
        "_add(w, range(10, 16)); w.save_episode()\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
    assert pending(root)
    _check(root, [[0, 1, 2, 3]])
    writer = _writer(root, append=True)
    _add(writer, range(20, 25))
    assert writer.save_episode() == 1
    writer.finalize()
    _check(root, [[0, 1, 2, 3], [20, 21, 22, 23, 24]])


# ----- chunk files lost or damaged ---------------------------------------------------------------


def _store_with_chunks(root: Path, zarr_format: int) -> Path:
    """A store whose arrays have several chunks (small chunk sizes)."""
    import robopolicy.data.zarr_writer as zw

    saved = zw.IMAGE_CHUNK_BYTES, zw.NUMERIC_CHUNK_BYTES
    zw.IMAGE_CHUNK_BYTES, zw.NUMERIC_CHUNK_BYTES = 4 * 6 * 3 * 4, 4 * 8  # 4-frame image chunks, 2-4 rows
    try:
        writer = _writer(root, zarr_format)
        for e in range(3):
            _add(writer, range(e * 10, e * 10 + 5))
            writer.save_episode()
        writer.finalize()
    finally:
        zw.IMAGE_CHUNK_BYTES, zw.NUMERIC_CHUNK_BYTES = saved
    return root


def _chunk(root: Path, key: str, index: int) -> Path:
    arr = zarr.open_group(str(root), mode="r")[key]
    coords = (index,) + (0,) * (arr.ndim - 1)
    return root / key / arr.metadata.encode_chunk_key(coords)


def _cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.mark.parametrize("zarr_format", FORMATS)
@pytest.mark.parametrize("key", ["data/action", "data/img"])
def test_a_missing_chunk_is_an_error_naming_the_file(tmp_path, zarr_format, key, capsys):
    root = _store_with_chunks(tmp_path / "s.zarr", zarr_format)
    lost = _chunk(root, key, 1)
    rel = lost.relative_to(root).as_posix()
    lost.unlink()
    with open_dataset(root) as ds:
        assert ds.missing_chunks() == [rel]
        other = "state"
        ds.read(other, np.arange(ds.num_frames))  # the other arrays still read
        with pytest.raises(MissingChunkError, match=f"{key}: chunk file {rel} is missing.*copy it again"):
            ds.read(key.split("/")[1], np.arange(ds.num_frames))
    with open_dataset(root, missing_chunks="fill") as ds:  # the opt-in for sparse foreign stores
        values = ds.read(key.split("/")[1], np.arange(ds.num_frames))
        assert (values == 0).any()
    rc, text = _cli(capsys, "stats", str(root))
    assert rc == 2 and rel in text and "Traceback" not in text
    rc, text = _cli(capsys, "validate", str(root))
    assert rc == 1 and rel in text and "no problems found" not in text


@pytest.mark.parametrize("zarr_format", FORMATS)
@pytest.mark.parametrize("key", ["data/action", "data/img", "meta/episode_ends"])
def test_a_corrupt_chunk_is_an_error_naming_the_file(tmp_path, zarr_format, key):
    root = _store_with_chunks(tmp_path / "s.zarr", zarr_format)
    bad = _chunk(root, key, 0 if key == "meta/episode_ends" else 1)
    rel = bad.relative_to(root).as_posix()
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, bad.stat().st_size, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptChunkError, match=f"{key}: chunk file {rel} cannot be decoded"), open_dataset(root) as ds:
        ds.read(key.split("/")[1], np.arange(ds.num_frames))


def test_a_flipped_bit_in_a_zarr3_chunk_is_an_error(tmp_path):
    """zarr 3 stores carry a crc32c per chunk: damage that still decompresses is caught too."""
    root = _store_with_chunks(tmp_path / "s.zarr", 3)
    for key in ("data/action", "data/img"):
        chunk = _chunk(root, key, 1)
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0x10
        chunk.write_bytes(bytes(data))
        with pytest.raises(CorruptChunkError, match=f"{chunk.relative_to(root)} cannot be decoded"):
            open_dataset(root).read(key.split("/")[1], np.arange(15))


def _writable_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return dst


def test_the_real_store_has_every_chunk_and_names_a_lost_or_damaged_one(pusht_zarr, tmp_path):
    with open_dataset(pusht_zarr) as ds:
        assert ds.missing_chunks() == []  # diffusion_policy (zarr 2) wrote every chunk
    root = _writable_copy(pusht_zarr, tmp_path / "pusht.zarr")
    (root / "data/action/3.0").unlink()
    (root / "data/img/17.0.0.0").unlink()
    with open_dataset(root) as ds:
        assert sorted(ds.missing_chunks()) == ["data/action/3.0", "data/img/17.0.0.0"]
        ds.read("state", np.arange(ds.num_frames))
        with pytest.raises(MissingChunkError, match=r"data/action: chunk file data/action/3.0 is missing, so rows 483"):
            ds.read("action", np.arange(ds.num_frames))
        with pytest.raises(MissingChunkError, match="data/img/17.0.0.0"):
            ds.read("img", np.array([17 * 161 + 5]))
        assert ds.read("img", np.array([0])).shape == (1, 3, 96, 96)
    state = root / "data/state/2.0"
    state.write_bytes(os.urandom(state.stat().st_size))
    with open_dataset(root) as ds, pytest.raises(CorruptChunkError, match="data/state/2.0 cannot be decoded"):
        ds.read("state", np.arange(10))


# ----- readers next to an interrupted save, empty stores -----------------------------------------


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_an_uncommitted_saves_attributes_are_not_served(tmp_path, zarr_format, monkeypatch):
    """Killed after the group attributes (a new task) were written but before the commit."""
    root = tmp_path / "a.zarr"
    writer = _writer(root, zarr_format)
    _add(writer, range(3))
    writer.save_episode(task="a", success=True)
    _add(writer, range(5))
    attrs_file = "zarr.json" if zarr_format == 3 else ".zattrs"
    original = Journal.write_bytes

    def dying(self, path, data):
        original(self, path, data)
        if Path(path).relative_to(root).as_posix() == attrs_file:
            raise _Killed

    monkeypatch.setattr(Journal, "write_bytes", dying)
    monkeypatch.setattr(Journal, "rollback", lambda self: self._close())
    with pytest.raises(_Killed):
        writer.save_episode(task="new task", success=False)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="interrupted"), open_dataset(root) as ds:
        assert ds.tasks == ["a"] and ds.episode_success == [True] and ds.num_episodes == 1


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_a_store_with_no_episodes_opens_and_converts(tmp_path, zarr_format, capsys):
    root = tmp_path / "empty.zarr"
    _writer(root, zarr_format).finalize()
    with open_dataset(root) as ds:
        assert ds.num_episodes == 0 and ds.num_frames == 0 and ds.missing_chunks() == []
        assert ds.read("action", np.arange(0)).shape == (0, 2)
        assert ds.read("img", np.arange(0)).shape == (0, 3, 4, 6)
    for to in ("zarr", "lerobot"):  # an empty copy, or a clear refusal; never a crash
        try:
            convert(root, tmp_path / to, to=to)
        except DatasetError as e:
            assert "no episodes" in str(e)
        else:
            with open_dataset(tmp_path / to) as ds:
                assert ds.num_episodes == 0
    rc, text = _cli(capsys, "stats", str(root))
    assert rc == 2 and "no frames" in text and "Traceback" not in text
    again = _writer(root, append=True)
    _add(again, range(4))
    assert again.save_episode() == 0
    again.finalize()
    _check(root, [[0, 1, 2, 3]])


def test_a_foreign_store_whose_episode_ends_disagrees_is_still_an_error(tmp_path):
    root = zarr.open_group(str(tmp_path / "f.zarr"), mode="w", zarr_format=2)
    root.create_group("data").create_array("a", shape=(4,), dtype="float32")[:] = np.arange(1, 5)
    meta = root.create_group("meta").create_array("episode_ends", shape=(2,), dtype="int64")
    meta[:] = [2, 6]
    with pytest.raises(DatasetError, match="data/a has 4 rows but meta/episode_ends ends at 6"):
        open_dataset(tmp_path / "f.zarr")


# ----- the kill -9 loop (benchmarks/bench_kill_save.py, small) -----------------------------------


def test_kill_loop_small(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/bench_kill_save.py"), "--format", "zarr", "--kills", "8",
         "--seed", "1", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = [line for line in out.stdout.splitlines() if line.startswith("zarr:")]
    assert summary, out.stdout
    counts = summary[-1].split(":", 1)[1].split(" (")[0]
    fields = dict(part.strip().rsplit(" ", 1) for part in counts.split(","))
    assert int(fields["kills"]) == 8 and int(fields["failures"]) == 0
    assert int(fields["readable after"]) == 8 and int(fields["inside save_episode"]) >= 4
