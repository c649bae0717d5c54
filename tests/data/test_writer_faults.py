"""The writer contract under misuse and faults, for every format (robopolicy/data/writer.py, journal.py).

- add_frame refuses what it cannot store exactly and never keeps a reference to the caller's array;
- a save_episode that fails at any file write leaves every file byte-identical and the frames buffered;
- one writer per dataset; overwrite deletes only what robopolicy wrote.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from robopolicy.data import journal as journal_mod
from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError, DatasetExistsError
from robopolicy.data.features import Feature
from robopolicy.data.journal import JOURNAL_DIR, Journal, recover
from robopolicy.data.writer import DatasetLockedError, EpisodeSaveError, create_writer

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
FORMATS = ["zarr", "lerobot"]
FEATURES = {
    "observation.state": Feature("observation.state", "float32", (3, 2), "state"),
    "action": Feature("action", "float32", (2,), "action"),
    "count": Feature("count", "int8", (1,), "other"),
    "observation.image": Feature("observation.image", "video", (8, 8, 3), "video"),
}


def _frame(t: int) -> dict[str, np.ndarray]:
    """A frame whose every value encodes t, so misplaced frames are visible."""
    return {
        "observation.state": np.full((3, 2), t, np.float32) + np.arange(6, dtype=np.float32).reshape(3, 2) / 10,
        "action": np.array([t, -t], np.float32),
        "count": np.array([t % 100], np.int8),
        "observation.image": np.full((8, 8, 3), (t * 20) % 256, np.uint8),
    }


def _writer(root: Path, fmt: str, **kw):
    opts = {"video": False} if fmt == "lerobot" else {}
    return create_writer(root, FEATURES, 10, format=fmt, **opts, **kw)


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ----- add_frame -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("observation.state", np.zeros((2, 3), np.float32), "never reshaped"),
        ("observation.state", np.zeros(6, np.float32), "never reshaped"),
        ("observation.state", np.full((3, 2), 1e300), "beyond float32"),
        ("count", np.array([300]), r"range -128\.\.127"),
        ("count", np.array([-129]), r"range -128\.\.127"),
        ("count", np.array([2.5]), "non-integer"),
        ("count", np.array([np.inf]), "non-integer"),
        ("action", np.array(["a", "b"]), "numeric"),
        ("observation.image", np.zeros((8, 8, 3), np.float32), "uint8"),
        ("observation.image", np.zeros((3, 8, 8), np.uint8), "uint8"),
    ],
)
def test_add_frame_refuses_values_it_cannot_store_exactly(tmp_path, fmt, key, value, message):
    writer = _writer(tmp_path / "d", fmt)
    writer.add_frame(_frame(0))
    with pytest.raises(ValueError, match=message) as err:
        writer.add_frame({**_frame(1), key: value})
    assert repr(key) in str(err.value)
    assert writer.frames_in_episode == 1  # the refused frame left nothing behind
    writer.discard_episode()
    writer.finalize()


@pytest.mark.parametrize("fmt", FORMATS)
def test_add_frame_refuses_unknown_and_bookkeeping_keys(tmp_path, fmt):
    writer = _writer(tmp_path / "d", fmt)
    with pytest.raises(KeyError, match=r"\['gripper'\] are not features"):
        writer.add_frame({**_frame(0), "gripper": np.zeros(1)})
    with pytest.raises(KeyError, match="filled in by the writer"):
        writer.add_frame({**_frame(0), "timestamp": 0.0})
    with pytest.raises(KeyError, match="missing features"):
        writer.add_frame({"action": np.zeros(2, np.float32)})
    assert writer.frames_in_episode == 0
    writer.add_frame({**_frame(0), "task": "push"})  # LeRobot's convention: "task" in the frame
    writer.save_episode()
    writer.finalize()
    with open_dataset(tmp_path / "d") as ds:
        assert ds.frame_tasks(np.array([0])) == ["push"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_add_frame_copies_and_casts_what_it_buffers(tmp_path, fmt):
    root = tmp_path / "d"
    writer = _writer(root, fmt)
    reused = _frame(0)
    for t in range(4):  # a recorder that reuses its arrays in place
        reused["action"][:] = [t, -t]
        writer.add_frame({**reused, "count": 7, "observation.state": reused["observation.state"].astype(np.float64)})
    writer.save_episode()
    writer.finalize()
    with open_dataset(root) as ds:
        np.testing.assert_array_equal(ds.read("action", np.arange(4))[:, 0], [0, 1, 2, 3])
        count = ds.read("count", np.arange(4))
        assert count.dtype == np.int8 and count.ravel().tolist() == [7, 7, 7, 7]


# ----- save_episode as a transaction -----------------------------------------------------------------


def _count_writes(monkeypatch) -> list[int]:
    calls = [0]
    original = Journal._before_change

    def counting(self, rel):
        calls[0] += 1
        return original(self, rel)

    monkeypatch.setattr(Journal, "_before_change", counting)
    return calls


def _failing_at(k: int):
    """Journal._before_change that raises a disk-full error at its k-th call."""
    seen = [0]
    original = Journal._before_change

    def failing(self, rel):
        seen[0] += 1
        if seen[0] == k:
            raise OSError(28, "No space left on device")
        return original(self, rel)

    return failing


def _first_episode_then_five_frames(writer) -> dict[str, str]:
    """Save episode "first" (frames 0..2), buffer frames 10..14; returns the file tree between the two."""
    for t in range(3):
        writer.add_frame(_frame(t))
    writer.save_episode(task="first")
    tree = _tree(writer.root)
    for t in range(10, 15):
        writer.add_frame(_frame(t))
    return tree


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_save_failing_at_any_file_write_changes_nothing(tmp_path, fmt, monkeypatch):
    """Fail the k-th file change of a save, for every k: files identical, frames kept, later saves right."""
    probe = tmp_path / "probe"
    with _writer(probe, fmt) as w:  # the same saves as below, counting the file changes of the second
        _first_episode_then_five_frames(w)
        calls = _count_writes(monkeypatch)
        w.save_episode(task="second")
        monkeypatch.undo()
    writes = calls[0]
    assert writes >= 2, "the second save made no journaled file change"

    for k in range(1, writes + 1):
        root = tmp_path / f"k{k}"
        writer = _writer(root, fmt)
        before = _first_episode_then_five_frames(writer)
        monkeypatch.setattr(Journal, "_before_change", _failing_at(k))
        with pytest.raises(EpisodeSaveError, match="No space left") as err:
            writer.save_episode(task="second")
        monkeypatch.undo()
        assert "5 buffered frames are kept" in str(err.value)
        assert _tree(root) == before, f"write {k} of {writes}: files changed by a failed save"
        assert writer.frames_in_episode == 5 and writer.num_episodes == 1
        assert writer.save_episode(task="second") == 1  # the same frames, saved now
        for t in range(20, 22):
            writer.add_frame(_frame(t))
        assert writer.save_episode(task="third") == 2
        writer.finalize()
        with open_dataset(root) as ds:
            assert ds.num_episodes == 3 and ds.episode_ends.tolist() == [3, 8, 10]
            np.testing.assert_array_equal(ds.read("action", np.arange(10))[:, 0], [0, 1, 2, 10, 11, 12, 13, 14, 20, 21])
            images = ds.read("observation.image", np.arange(10))
            np.testing.assert_array_equal(images.reshape(10, -1).max(1), [0, 20, 40, 200, 220, 240, 4, 24, 144, 164])
            assert ds.frame_tasks(np.array([0, 3, 9])) == ["first", "second", "third"]
        assert not (root / JOURNAL_DIR).exists()


# ----- one writer at a time --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_second_writer_is_refused_while_the_first_is_open(tmp_path, fmt):
    root = tmp_path / "d"
    first = _writer(root, fmt)
    with pytest.raises(DatasetLockedError, match=f"pid {os.getpid()}"):
        _writer(root, fmt, append=True)
    with pytest.raises(DatasetLockedError):
        _writer(root, fmt, overwrite=True)
    first.add_frame(_frame(0))
    first.save_episode()
    first.finalize()
    second = _writer(root, fmt, append=True)  # released at finalize
    second.add_frame(_frame(1))
    assert second.save_episode() == 1
    second.finalize()
    assert not (root / ".robopolicy.lock").exists()


def test_a_writer_in_another_process_holds_the_lock(tmp_path):
    root = tmp_path / "d"
    child = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_writer_faults import _writer
        w = _writer(__import__("pathlib").Path({str(root)!r}), "zarr")
        print("open", flush=True)
        sys.stdin.readline()
        w.finalize()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        with pytest.raises(DatasetLockedError, match=f"pid {proc.pid}"):
            _writer(root, "zarr", append=True)
    finally:
        proc.communicate("\n", timeout=30)
    _writer(root, "zarr", append=True).finalize()


# ----- overwrite -------------------------------------------------------------------------------------


def _project(root: Path) -> None:
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".env").write_text("TOKEN=1\n")
    (root / "data").mkdir()
    (root / "data" / "runs.csv").write_text("a,b\n")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", ["project", "dot_only", "dataset_folders_only", "dataset_plus_notes"])
def test_overwrite_refuses_what_robopolicy_did_not_write(tmp_path, fmt, layout):
    root = tmp_path / "target"
    if layout == "project":
        _project(root)
    elif layout == "dot_only":
        root.mkdir()
        (root / ".env").write_text("TOKEN=1\n")
    elif layout == "dataset_folders_only":  # names a dataset uses, but not a robopolicy dataset
        for name in ("data", "meta", "images"):
            (root / name).mkdir(parents=True)
            (root / name / "keep.txt").write_text(name)
    else:
        with _writer(root, fmt) as w:
            w.add_frame(_frame(0))
            w.save_episode()
        (root / "notes.txt").write_text("mine")
    before = _tree(root)
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        _writer(root, fmt, overwrite=True)
    assert _tree(root) == before


def test_overwrite_refuses_a_lerobot_dataset_robopolicy_did_not_write(tmp_path):
    src = SHARED / "lerobot_v3_pusht"
    if not src.exists():
        pytest.skip(f"real dataset not found at {src}")
    root = tmp_path / "pusht"
    shutil.copytree(src, root)
    before = _tree(root)
    with pytest.raises(DatasetError, match="did not write|does not look like"):
        create_writer(root, FEATURES, 10, format="lerobot", overwrite=True)
    assert _tree(root) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_replaces_a_robopolicy_dataset(tmp_path, fmt):
    root = tmp_path / "d"
    with _writer(root, fmt) as w:
        for t in range(5):
            w.add_frame(_frame(t))
        w.save_episode()
    with pytest.raises(DatasetExistsError, match="not empty"):
        _writer(root, fmt)
    with _writer(root, fmt, overwrite=True) as w:
        w.add_frame(_frame(9))
        w.save_episode()
    with open_dataset(root) as ds:
        assert ds.num_frames == 1 and ds.read("action", [0])[0, 0] == 9


# ----- the journal itself ----------------------------------------------------------------------------


def _files(root: Path) -> None:
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text("old info")
    (root / "data.bin").write_bytes(b"old data")


def test_journal_rollback_restores_bytes_and_removes_what_it_created(tmp_path):
    _files(tmp_path)
    before = _tree(tmp_path)
    j = Journal.begin(tmp_path, "meta/info.json")
    j.write_bytes(tmp_path / "data.bin", b"new data")
    j.write_bytes(tmp_path / "data.bin", b"newer data")
    j.write_bytes(tmp_path / "new" / "deep" / "file.bin", b"x")
    j.remove(tmp_path / "meta" / "info.json")
    j.rollback()
    assert _tree(tmp_path) == before
    assert not (tmp_path / "new").exists() and not (tmp_path / JOURNAL_DIR).exists()


def test_journal_as_a_context_commits_or_rolls_back(tmp_path):
    _files(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(OSError, match="disk gone"), Journal.begin(tmp_path, "meta/info.json") as j:
        j.write_bytes(tmp_path / "data.bin", b"new data")
        raise OSError("disk gone")
    assert _tree(tmp_path) == before and not (tmp_path / JOURNAL_DIR).exists()
    with Journal.begin(tmp_path, "meta/info.json") as j:
        j.write_bytes(tmp_path / "meta" / "info.json", b"new info")
    assert (tmp_path / "meta/info.json").read_text() == "new info" and not (tmp_path / JOURNAL_DIR).exists()


_KILLED_CHILD = """
import os, sys
from pathlib import Path
from robopolicy.data.journal import Journal
root, stage = Path(sys.argv[1]), sys.argv[2]
j = Journal.begin(root, "meta/info.json")
j.write_bytes(root / "data.bin", b"new data")
j.write_bytes(root / "extra.bin", b"extra")
if stage == "after_commit_file":
    j.write_bytes(root / "meta" / "info.json", b"new info")
if stage == "torn_log":
    j._log.write('{"op": "backup", "pa')
    j._log.flush()
os._exit(9)  # killed: no commit, no rollback
"""


@pytest.mark.parametrize("stage", ["before_commit_file", "torn_log", "after_commit_file"])
def test_journal_recover_after_a_kill(tmp_path, stage):
    _files(tmp_path)
    before = _tree(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(tmp_path), stage], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    assert journal_mod.pending(tmp_path)
    outcome = recover(tmp_path)
    assert not journal_mod.pending(tmp_path)
    if stage == "after_commit_file":
        assert outcome == "committed"
        assert (tmp_path / "meta/info.json").read_text() == "new info"
        assert (tmp_path / "data.bin").read_bytes() == b"new data"
    else:
        assert outcome == "rolled back"
        assert _tree(tmp_path) == before
    assert recover(tmp_path) is None


# ----- a writer that dies in its constructor ------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_creation_interrupted_before_any_episode_is_started_again_by_append(tmp_path, fmt, monkeypatch):
    """The constructor fails after marking the folder (as a kill there would leave it): the lock is released,
    and a writer with append=True starts the dataset again instead of refusing it."""
    root = tmp_path / "d"
    probe = _writer(tmp_path / "probe", fmt)
    probe.finalize()
    writer_cls = type(probe)

    def dies(self, *args, **kwargs):
        (self.root / "meta").mkdir(exist_ok=True)
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(writer_cls, "_create", dies)
        with pytest.raises(OSError, match="No space"):
            _writer(root, fmt)
    assert (root / ".robopolicy-dataset").exists() and not (root / ".robopolicy.lock").exists()
    with pytest.warns(UserWarning, match="creation was interrupted before any episode"):
        writer = _writer(root, fmt, append=True)
    writer.add_frame(_frame(3))
    assert writer.save_episode() == 0
    writer.finalize()
    assert _matches_actions(root, [3])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_refused_append_releases_the_lock(tmp_path, fmt):
    root = tmp_path / "d"
    with _writer(root, fmt) as w:
        w.add_frame(_frame(0))
        w.save_episode()
    other = {**FEATURES, "extra": Feature("extra", "float32", (1,), "other")}
    opts = {"video": False} if fmt == "lerobot" else {}
    with pytest.raises(DatasetError, match="features differ"):
        create_writer(root, other, 10, format=fmt, append=True, **opts)
    _writer(root, fmt, append=True).finalize()  # not locked out by the refused writer


def test_append_never_restarts_a_folder_robopolicy_did_not_mark(tmp_path):
    root = tmp_path / "d"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError):
        _writer(root, "lerobot", append=True)
    assert (root / "meta" / "notes.txt").read_text() == "mine"


def _matches_actions(root: Path, values: list[int]) -> bool:
    with open_dataset(root) as ds:
        return ds.read("action", np.arange(ds.num_frames))[:, 0].tolist() == values
