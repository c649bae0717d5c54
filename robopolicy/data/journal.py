"""All-or-nothing file updates inside a dataset directory: one `save_episode` is one transaction.

Every file a transaction changes goes through it. Before a file is replaced or removed, it is hard-linked
into `<root>/.robopolicy-journal/` (the old bytes survive, no copy); a file that did not exist is recorded as
created. The record is appended to `<root>/.robopolicy-journal/log` *before* the change, so a process killed
at any point leaves a log that names everything it may have touched.

The commit point is the replacement of one file named at `begin` (LeRobot: meta/info.json; zarr: the
episode_ends array metadata). `commit()` then drops the backups. `rollback()` (a failed save) and
`recover()` (the next writer after a kill) put every backup back and delete every created file, unless the
commit file was already replaced: then the transaction happened and only the backups are dropped. The
commit file is recognised by its inode: os.replace gives it a new one, and its backup keeps the old inode
alive, so the number cannot be reused while the journal exists.

Writes are atomic per file (temp file in the same folder + os.replace); there is no fsync, so this protects
against killed processes and failed writes, not against power loss.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

JOURNAL_DIR = ".robopolicy-journal"
_LOG = "log"


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


class Journal:
    """One open transaction on `root`. Use `with Journal.begin(root, commit_file) as journal:` (or call
    `commit()` / `rollback()` yourself); inside, `replace`, `write_bytes`, `write_with`, `remove`."""

    def __init__(self, root: Path, commit_file: str):
        self.root = Path(root)
        self.dir = self.root / JOURNAL_DIR
        self.commit_file = commit_file
        self._backed_up: set[str] = set()
        self._created: set[str] = set()
        self._count = 0
        self._log = None

    @classmethod
    def begin(cls, root: str | Path, commit_file: str) -> Journal:
        """Start a transaction; an interrupted one left by a killed process is recovered first."""
        root = Path(root)
        recover(root)
        journal = cls(root, commit_file)
        journal.dir.mkdir()
        journal._log = open(journal.dir / _LOG, "a", encoding="utf-8")  # noqa: SIM115 (closed at commit/rollback)
        journal._record({"op": "begin", "commit": commit_file, "inode": _inode(root / commit_file)})
        return journal

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """`with Journal.begin(root, commit_file) as journal:` commits on success, rolls back on any exception."""
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    # ----- writing -------------------------------------------------------------------------------------
    def _rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def _record(self, entry: dict) -> None:
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()

    def _before_change(self, rel: str) -> None:
        """Back up (or note as created) the file at `rel` before its first change in this transaction."""
        if rel in self._backed_up or rel in self._created:
            return
        target = self.root / rel
        if target.exists():
            self._count += 1
            backup = f"b{self._count:06d}"
            self._record({"op": "backup", "path": rel, "backup": backup})
            os.link(target, self.dir / backup)
            self._backed_up.add(rel)
        else:
            self._record({"op": "create", "path": rel})
            self._created.add(rel)

    def temp_path(self, path: str | Path) -> Path:
        """A temp file beside `path` for a caller that writes it itself (recorded, removed on rollback)."""
        path = Path(path)
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        self._before_change(self._rel(tmp))
        return tmp

    def _make_parents(self, path: Path) -> None:
        """Create the missing folders above `path`, recorded so a rollback removes them."""
        missing = [p for p in Path(path).parents if not p.exists()]
        for folder in reversed(missing):
            self._record({"op": "mkdir", "path": self._rel(folder)})
            folder.mkdir()

    def replace(self, tmp: str | Path, path: str | Path) -> None:
        """os.replace(tmp, path), backing up what `path` held."""
        path = Path(path)
        self._make_parents(path)
        self._before_change(self._rel(path))
        os.replace(tmp, path)

    def write_with(self, path: str | Path, write: Callable[[Path], None]) -> None:
        """Atomically replace `path` with what `write(tmp_path)` writes."""
        path = Path(path)
        self._make_parents(path)
        tmp = self.temp_path(path)
        try:
            write(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.replace(tmp, path)

    def write_bytes(self, path: str | Path, data: bytes | memoryview) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        self.write_with(path, write)

    def remove(self, path: str | Path) -> None:
        """Delete `path` (kept as a backup until commit)."""
        path = Path(path)
        if not path.exists():
            return
        self._before_change(self._rel(path))
        path.unlink()

    # ----- ending ---------------------------------------------------------------------------------------
    def commit(self) -> None:
        """The commit file has been replaced: drop the backups."""
        self._close()
        shutil.rmtree(self.dir)

    def rollback(self) -> None:
        """Put the files back as they were at `begin`."""
        self._close()
        _undo(self.root, force=True)

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _read_log(directory: Path) -> list[dict]:
    entries = []
    try:
        lines = (directory / _LOG).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return entries
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line: its change was never made
            break
    return entries


def _undo(root: Path, *, force: bool) -> str:
    """Roll back the journal in `root` (always when `force`, else only if it did not commit)."""
    directory = root / JOURNAL_DIR
    entries = _read_log(directory)
    committed = False
    if entries and entries[0].get("op") == "begin" and not force:
        committed = _inode(root / entries[0]["commit"]) != entries[0]["inode"]
    if not committed:
        for entry in reversed(entries):
            target = root / entry.get("path", "")
            if entry["op"] == "backup":
                backup = directory / entry["backup"]
                if backup.exists():
                    os.replace(backup, target)
            elif entry["op"] == "create":
                target.unlink(missing_ok=True)
            elif entry["op"] == "mkdir":
                with contextlib.suppress(OSError):  # not empty: something else lives there now
                    target.rmdir()
    shutil.rmtree(directory, ignore_errors=True)
    return "committed" if committed else "rolled back"


def recover(root: str | Path) -> str | None:
    """Finish what a killed save left: None when no journal; else "committed" or "rolled back"."""
    root = Path(root)
    if not (root / JOURNAL_DIR).exists():
        return None
    return _undo(root, force=False)


def pending(root: str | Path) -> bool:
    """True when a save was interrupted (or is running) in `root`."""
    return (Path(root) / JOURNAL_DIR).exists()
