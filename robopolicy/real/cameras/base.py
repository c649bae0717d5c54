"""Camera contract and the background-thread frame buffer shared by every camera.

Frames are RGB uint8 arrays of shape (height, width, 3). A capture thread keeps the newest frame, its capture
time (``time.perf_counter``) and a sequence number under a lock; an Event wakes readers:

- ``read()``: blocks for the next new frame (a frame produced after the previous read).
- ``async_read(timeout_ms)``: the newest frame not yet consumed; waits up to ``timeout_ms``, else TimeoutError.
- ``read_latest(max_age_ms)``: never waits; the newest frame, consumed or not, if it is at most ``max_age_ms``
  old, else StaleFrameError naming the camera and the frame age. Control loops use this one, so the camera's
  frame rate never gates the loop.

If the capture thread fails (camera unplugged, video ended), every read raises CameraError with the cause.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod

import numpy as np


class CameraError(RuntimeError):
    """A camera failed to open or stopped delivering frames; the message names the camera."""


class StaleFrameError(CameraError):
    """read_latest found no frame younger than ``max_age_ms``."""

    def __init__(self, camera: str, age_ms: float | None, max_age_ms: float):
        self.camera, self.age_ms, self.max_age_ms = camera, age_ms, max_age_ms
        if age_ms is None:
            message = f"camera {camera!r}: no frame received yet (max age {max_age_ms:.0f} ms)"
        else:
            message = f"camera {camera!r}: newest frame is {age_ms:.0f} ms old (max age {max_age_ms:.0f} ms)"
        super().__init__(message + "; check that the camera is connected and delivering frames")


class Camera(ABC):
    """A camera with a background capture thread. ``width`` / ``height`` / ``fps`` are known after connect."""

    name: str
    width: int | None
    height: int | None
    fps: float | None

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    def connect(self, warmup: bool = True) -> None: ...

    @abstractmethod
    def read(self) -> np.ndarray: ...

    @abstractmethod
    def async_read(self, timeout_ms: float = 200.0) -> np.ndarray: ...

    @abstractmethod
    def read_latest(self, max_age_ms: float = 500.0) -> np.ndarray: ...

    @abstractmethod
    def disconnect(self) -> None: ...

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, 3), for observation_features."""
        if self.width is None or self.height is None:
            raise CameraError(f"camera {self.name!r}: frame size unknown until connect() (or give width/height)")
        return (self.height, self.width, 3)

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.is_connected:
            self.disconnect()


class ThreadedCamera(Camera):
    """Frame buffer + capture thread. Subclasses implement ``_open`` (sets width/height/fps), ``_grab`` (blocks
    until the next RGB frame; raises CameraError when the source is exhausted or broken) and ``_close``."""

    def __init__(self, name: str, *, width: int | None, height: int | None, fps: float | None,
                 warmup_timeout_s: float = 5.0):  # fmt: skip
        self.name, self.width, self.height, self.fps = name, width, height, fps
        self.warmup_timeout_s = warmup_timeout_s
        self._lock = threading.Lock()
        self._new_frame = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._frame: np.ndarray | None = None
        self._stamp = 0.0
        self._seq = 0
        self._consumed = 0
        self._error: BaseException | None = None
        self.frames_captured = 0

    # -- subclass hooks
    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _grab(self) -> np.ndarray: ...

    @abstractmethod
    def _close(self) -> None: ...

    # -- lifecycle
    @property
    def is_connected(self) -> bool:
        return self._thread is not None

    def connect(self, warmup: bool = True) -> None:
        """Open the source and start capturing; with ``warmup`` wait for the first frame."""
        if self.is_connected:
            raise CameraError(f"camera {self.name!r} is already connected")
        self._reset_buffer()
        self._stop.clear()
        self._new_frame.clear()
        self._open()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        if warmup:
            try:
                self._wait_new(self.warmup_timeout_s * 1000.0, consume=False)
            except BaseException:
                self.disconnect()
                raise

    def disconnect(self) -> None:
        if self._thread is None:
            raise CameraError(f"camera {self.name!r} is not connected")
        self._stop.set()
        self._thread.join(timeout=max(2.0, 3.0 / (self.fps or 30.0)))
        self._thread = None
        self._close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self._grab()
            except BaseException as exc:  # reported to readers
                with self._lock:
                    self._error = exc
                self._new_frame.set()
                return
            if self._stop.is_set():
                return
            stamp = time.perf_counter()
            with self._lock:
                self._frame, self._stamp = frame, stamp
                self._seq += 1
                self.frames_captured += 1
            self._new_frame.set()

    # -- reads
    def _require(self) -> None:
        if self._thread is None:
            raise CameraError(f"camera {self.name!r} is not connected; call connect() first")

    def _raise_error(self) -> None:
        err = self._error
        if isinstance(err, CameraError):
            raise err
        raise CameraError(f"camera {self.name!r} stopped: {err!r}") from err

    def _wait_new(self, timeout_ms: float, consume: bool = True) -> np.ndarray:
        deadline = time.perf_counter() + timeout_ms / 1000.0
        while True:
            with self._lock:
                if self._seq > self._consumed:
                    if consume:
                        self._consumed = self._seq
                    self._new_frame.clear()
                    return self._frame
                if self._error is not None:
                    self._raise_error()
                self._new_frame.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"camera {self.name!r}: no new frame within {timeout_ms:.0f} ms")
            self._new_frame.wait(remaining)

    def read(self) -> np.ndarray:
        """Block until a frame newer than the last one read arrives (at most ~10 frame periods, >= 1 s)."""
        self._require()
        return self._wait_new(max(1000.0, 10_000.0 / (self.fps or 30.0)))

    def async_read(self, timeout_ms: float = 200.0) -> np.ndarray:
        """The newest frame not consumed yet; waits up to ``timeout_ms`` (TimeoutError)."""
        self._require()
        return self._wait_new(timeout_ms)

    def read_latest(self, max_age_ms: float = 500.0) -> np.ndarray:
        """The newest frame without waiting; StaleFrameError if older than ``max_age_ms`` or none yet."""
        self._require()
        with self._lock:
            frame, stamp, error = self._frame, self._stamp, self._error
        if error is not None:
            self._raise_error()
        if frame is None:
            raise StaleFrameError(self.name, None, max_age_ms)
        age_ms = (time.perf_counter() - stamp) * 1000.0
        if age_ms > max_age_ms:
            raise StaleFrameError(self.name, age_ms, max_age_ms)
        return frame

    def frame_age_ms(self) -> float | None:
        """Age of the newest frame in ms (None before the first frame)."""
        with self._lock:
            return None if self._frame is None else (time.perf_counter() - self._stamp) * 1000.0


class FramePacer:
    """Absolute-deadline pacing for sources that are not clocked by hardware (video files, renderers)."""

    def __init__(self, fps: float, stop: threading.Event):
        self.period = 1.0 / fps
        self.stop = stop
        self.next = time.perf_counter()

    def wait(self) -> bool:
        """Sleep until the next frame time; False when stopped meanwhile. After an overrun, skip ahead."""
        now = time.perf_counter()
        if self.next > now and self.stop.wait(self.next - now):
            return False
        now = time.perf_counter()
        self.next += self.period
        if self.next < now:  # overrun: no burst of catch-up frames
            self.next = now + self.period
        return not self.stop.is_set()
