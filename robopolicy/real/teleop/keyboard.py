"""Keyboard input: joint teleoperation and the record loop's control keys.

``KeyListener`` delivers key events to callbacks from one background source per process:

- ``pynput`` when a display exists (X11/Wayland, macOS, Windows): press *and* release events, so a held key
  moves a joint on every tick;
- otherwise the terminal: stdin in cbreak mode (no echo, no line buffering), read without blocking by a thread.
  A terminal reports no releases; holding a key produces the terminal's auto-repeat presses instead;
- ``manual``: no device, events come from ``inject`` (tests, GUIs).

Key names: single characters (lower case), "right", "left", "up", "down", "esc", "enter", "space", "tab",
"backspace".
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import select
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from robopolicy.real.robots.base import DeviceAlreadyConnectedError
from robopolicy.real.teleop.joint_targets import JointTargetTeleop

BACKENDS = ("auto", "pynput", "terminal", "manual")
# Terminal escape sequences (normal and application cursor mode) -> key names.
_SEQUENCES = {
    "\x1b[A": "up", "\x1b[B": "down", "\x1b[C": "right", "\x1b[D": "left",
    "\x1bOA": "up", "\x1bOB": "down", "\x1bOC": "right", "\x1bOD": "left",
}  # fmt: skip
_SINGLE = {
    "\x1b": "esc", "\n": "enter", "\r": "enter", " ": "space", "\t": "tab", "\x7f": "backspace", "\x08": "backspace",
}  # fmt: skip


@dataclass(frozen=True)
class KeyEvent:
    key: str
    pressed: bool = True  # False: release (pynput only)


def parse_terminal_input(text: str) -> list[str]:
    """Key names in a chunk of terminal input (escape sequences for arrows, a lone ESC for escape)."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        seq = text[i : i + 3]
        if seq in _SEQUENCES:
            keys.append(_SEQUENCES[seq])
            i += 3
            continue
        char = text[i]
        if char == "\x1b" and text[i + 1 : i + 2] == "[":  # an unknown CSI sequence: skip to its final byte
            j = i + 2
            while j < len(text) and not ("@" <= text[j] <= "~"):
                j += 1
            i = j + 1
            continue
        if char in _SINGLE:
            keys.append(_SINGLE[char])
        elif char.isprintable():
            keys.append(char.lower())
        i += 1
    return keys


def pynput_usable() -> bool:
    """pynput can listen: a display exists (Linux) and the module imports."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        from pynput import keyboard  # noqa: F401
    except Exception:
        return False
    return True


class KeyListener:
    """One keyboard source feeding any number of callbacks (called from the source's thread)."""

    def __init__(self, backend: str = "auto", *, stdin: Any = None):
        if backend not in BACKENDS:
            raise ValueError(f"keyboard backend must be one of {BACKENDS}, got {backend!r}")
        self.requested = backend
        self.backend: str | None = None
        self._stdin = stdin if stdin is not None else sys.stdin
        self._callbacks: list[Callable[[KeyEvent], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pynput_listener = None
        self._saved_termios = None

    @property
    def holds_keys(self) -> bool:
        """True when releases are reported (a held key stays down until its release event)."""
        return self.backend in ("pynput", "manual")

    @property
    def running(self) -> bool:
        return self.backend is not None

    def add_callback(self, callback: Callable[[KeyEvent], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[KeyEvent], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def inject(self, key: str, pressed: bool = True) -> None:
        """Deliver an event as if typed (any backend)."""
        self._dispatch(KeyEvent(key, pressed))

    def _dispatch(self, event: KeyEvent) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback(event)

    def start(self) -> None:
        if self.running:
            return
        backend = self.requested
        if backend == "auto":
            if pynput_usable():
                backend = "pynput"
            elif self._stdin is not None and self._stdin.isatty():
                backend = "terminal"
            else:
                raise RuntimeError(
                    "no keyboard available: no display for pynput (set DISPLAY) and stdin is not a terminal; "
                    "run in a terminal, or use KeyListener('manual') and inject() events"
                )
        if backend == "pynput":
            self._start_pynput()
        elif backend == "terminal":
            self._start_terminal()
        self._stop.clear()
        self.backend = backend

    def stop(self) -> None:
        self._stop.set()
        if self._pynput_listener is not None:
            self._pynput_listener.stop()
            self._pynput_listener = None
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        self._restore_terminal()
        self.backend = None

    # -- pynput
    def _start_pynput(self) -> None:
        try:
            from pynput import keyboard
        except Exception as exc:
            raise RuntimeError(f"pynput keyboard listener unavailable ({exc}); use the terminal backend") from exc
        special = {
            keyboard.Key.right: "right", keyboard.Key.left: "left", keyboard.Key.up: "up", keyboard.Key.down: "down",
            keyboard.Key.esc: "esc", keyboard.Key.enter: "enter", keyboard.Key.space: "space",
            keyboard.Key.tab: "tab", keyboard.Key.backspace: "backspace",
        }  # fmt: skip

        def name(key) -> str | None:
            if key in special:
                return special[key]
            char = getattr(key, "char", None)
            return char.lower() if char else None

        def on_press(key) -> None:
            if (n := name(key)) is not None:
                self._dispatch(KeyEvent(n, True))

        def on_release(key) -> None:
            if (n := name(key)) is not None:
                self._dispatch(KeyEvent(n, False))

        self._pynput_listener = keyboard.Listener(on_press=on_press, on_release=on_release)
        self._pynput_listener.start()

    # -- terminal
    def _start_terminal(self) -> None:
        import termios
        import tty

        fd = self._stdin.fileno()
        self._saved_termios = (fd, termios.tcgetattr(fd))
        tty.setcbreak(fd)
        atexit.register(self._restore_terminal)
        self._thread = threading.Thread(target=self._read_terminal, args=(fd,), name="keyboard-terminal", daemon=True)
        self._thread.start()

    def _read_terminal(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return
            if data == b"\x1b":  # ESC may be the start of a split sequence: give the rest 10 ms to arrive
                more, _, _ = select.select([fd], [], [], 0.01)
                if more:
                    data += os.read(fd, 64)
            for key in parse_terminal_input(data.decode(errors="ignore")):
                self._dispatch(KeyEvent(key, True))

    def _restore_terminal(self) -> None:
        if self._saved_termios is not None:
            import termios

            fd, attrs = self._saved_termios
            self._saved_termios = None
            with contextlib.suppress(termios.error):
                termios.tcsetattr(fd, termios.TCSADRAIN, attrs)

    def __enter__(self) -> KeyListener:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------- record keys

RECORD_KEYS = {"right": "next", "left": "rerecord", "esc": "stop"}


def attach_record_keys(listener: KeyListener, events: Any, keys: Mapping[str, str] = RECORD_KEYS):
    """Set the record loop's events from keys: right arrow -> ``events.next`` (end the phase early),
    left arrow -> ``events.rerecord``, Esc -> ``events.stop``. ``events`` has threading.Event attributes
    (e.g. ``robopolicy.real.record.RecordEvents``). Returns the callback (for ``listener.remove_callback``)."""
    for attribute in keys.values():
        if not hasattr(getattr(events, attribute, None), "set"):
            raise TypeError(f"events needs a threading.Event attribute {attribute!r}")

    def on_key(event: KeyEvent) -> None:
        if event.pressed and event.key in keys:
            getattr(events, keys[event.key]).set()

    listener.add_callback(on_key)
    return on_key


# ------------------------------------------------------------------------------------------ joint teleop

_KEY_PAIRS = [("q", "a"), ("w", "s"), ("e", "d"), ("r", "f"), ("t", "g"), ("y", "h"), ("u", "j"), ("i", "k"),
              ("o", "l")]  # fmt: skip


def default_key_map(joints: Sequence[str]) -> dict[str, tuple[str, float]]:
    """q/a, w/s, e/d, r/f, t/g, y/h, ... = + / - for joints 1, 2, 3, ..."""
    if len(joints) > len(_KEY_PAIRS):
        raise ValueError(f"the default key map covers {len(_KEY_PAIRS)} joints, got {len(joints)}: pass key_map")
    key_map: dict[str, tuple[str, float]] = {}
    for joint, (up, down) in zip(joints, _KEY_PAIRS):
        key_map[up] = (joint, 1.0)
        key_map[down] = (joint, -1.0)
    return key_map


class KeyboardTeleop(JointTargetTeleop):
    """Joint-space teleop from keys: each press (terminal) or each tick a key is held (pynput) moves a joint by
    ``step`` normalized units. Targets start at ``initial`` (call ``reset(robot.get_observation())`` to start
    from where the robot is) and are clamped to ``limits``.
    """

    def __init__(
        self,
        joints: Sequence[str],
        *,
        step: float | Mapping[str, float] = 2.0,
        limits: Mapping[str, tuple[float, float]] | None = None,
        key_map: Mapping[str, tuple[str, float]] | None = None,
        listener: KeyListener | None = None,
        initial: Mapping[str, float] | None = None,
        name: str = "keyboard",
    ):
        super().__init__(joints, limits=limits, initial=initial, name=name)
        self.key_map = dict(key_map) if key_map is not None else default_key_map(self.joints)
        unknown = {joint for joint, _ in self.key_map.values()} - set(self.joints)
        if unknown:
            raise ValueError(f"key map moves unknown joints {sorted(unknown)}; joints are {self.joints}")
        self.steps = {j: float(step[j] if isinstance(step, Mapping) else step) for j in self.joints}
        self.listener = listener if listener is not None else KeyListener()
        self._own_listener = listener is None
        self._queue: queue.SimpleQueue[KeyEvent] = queue.SimpleQueue()
        self._held: set[str] = set()
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = True) -> None:
        if self._connected:
            raise DeviceAlreadyConnectedError(f"{self.name} is already connected")
        self.listener.add_callback(self._queue.put)
        try:
            self.listener.start()
        except BaseException:
            self.listener.remove_callback(self._queue.put)
            raise
        self._connected = True

    def disconnect(self) -> None:
        self._require_connected()
        self.listener.remove_callback(self._queue.put)
        if self._own_listener:
            self.listener.stop()
        self._held.clear()
        self._connected = False

    def _move(self, key: str) -> None:
        joint, direction = self.key_map[key]
        self._nudge(joint, direction * self.steps[joint])

    def get_action(self) -> dict[str, float]:
        """Apply the key events since the last call (and keys still held), return the joint targets."""
        self._require_connected()
        pressed_now: set[str] = set()
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event.key not in self.key_map:
                continue
            if event.pressed:
                self._move(event.key)
                pressed_now.add(event.key)
                if self.listener.holds_keys:
                    self._held.add(event.key)
            else:
                self._held.discard(event.key)
        for key in self._held - pressed_now:
            self._move(key)
        return self._targets()


def wait_for_key(listener: KeyListener, keys: Sequence[str], timeout_s: float | None = None) -> str | None:
    """Block until one of ``keys`` is pressed (e.g. "enter" to start recording); None on timeout."""
    hit: queue.SimpleQueue[str] = queue.SimpleQueue()

    def on_key(event: KeyEvent) -> None:
        if event.pressed and event.key in keys:
            hit.put(event.key)

    listener.add_callback(on_key)
    try:
        return hit.get(timeout=timeout_s)
    except queue.Empty:
        return None
    finally:
        listener.remove_callback(on_key)
