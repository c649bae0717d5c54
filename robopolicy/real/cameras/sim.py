"""A camera over any render callable, e.g. ``MujocoArmBackend.render(width, height)`` of the simulated arm.

The callable is always invoked from the camera's own capture thread (OpenGL/EGL contexts belong to the thread
that created them), paced at ``fps`` with absolute deadlines, so record/deploy use simulated and real cameras
through the same interface and the control loop never waits for rendering.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from robopolicy.real.cameras.base import CameraError, FramePacer, ThreadedCamera


class SimCamera(ThreadedCamera):
    """``render(width, height) -> uint8 (height, width, 3)`` behind the Camera interface."""

    def __init__(
        self,
        render: Callable[[int, int], np.ndarray],
        *,
        width: int,
        height: int,
        fps: float = 30.0,
        name: str = "sim",
        warmup_timeout_s: float = 10.0,
    ):
        if width <= 0 or height <= 0 or fps <= 0:
            raise ValueError(f"SimCamera {name!r}: width, height and fps must be positive")
        super().__init__(name, width=width, height=height, fps=fps, warmup_timeout_s=warmup_timeout_s)
        self.render = render
        self._pacer: FramePacer | None = None

    def _open(self) -> None:
        self._pacer = FramePacer(self.fps, self._stop)

    def _grab(self) -> np.ndarray:
        if not self._pacer.wait():
            raise CameraError(f"camera {self.name!r}: stopped")
        frame = np.asarray(self.render(self.width, self.height))
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise CameraError(
                f"camera {self.name!r}: render returned {frame.dtype} {frame.shape}, expected uint8 "
                f"({self.height}, {self.width}, 3)"
            )
        return frame

    def _close(self) -> None:
        self._pacer = None
