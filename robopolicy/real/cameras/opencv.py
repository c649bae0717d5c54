"""OpenCV camera: a V4L2/USB device (index or /dev/video*) or a video file, captured on a background thread.

Devices are clocked by the hardware (``VideoCapture.read`` blocks until the next frame); the requested size and
fps are set on the device and verified. Video files are paced at ``fps`` (default: the file's own rate) with
absolute deadlines, resized to ``width`` x ``height`` when both are given, and loop at the end (``loop=False``:
readers get a CameraError saying the file ended).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from robopolicy.real.cameras.base import CameraError, FramePacer, ThreadedCamera


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "OpenCVCamera needs OpenCV: pip install 'robopolicy[real]' (or opencv-python-headless)"
        ) from exc
    return cv2


class OpenCVCamera(ThreadedCamera):
    """``source``: device index (0), device path (/dev/video0) or a video file path. Frames: RGB uint8 (H, W, 3)."""

    def __init__(
        self,
        source: int | str | os.PathLike,
        fps: float | None = None,
        width: int | None = None,
        height: int | None = None,
        *,
        name: str | None = None,
        loop: bool = True,
        color: str = "rgb",
        fourcc: str | None = None,
        read_failures: int = 10,
        warmup_timeout_s: float = 5.0,
    ):
        if color not in ("rgb", "bgr"):
            raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
        if (width is None) != (height is None):
            raise ValueError("give both width and height, or neither")
        source = os.fspath(source) if isinstance(source, os.PathLike) else source
        self.source = source
        self.is_file = isinstance(source, str) and not source.startswith("/dev/")
        super().__init__(name or f"opencv:{source}", width=width, height=height, fps=fps,
                         warmup_timeout_s=warmup_timeout_s)  # fmt: skip
        self.loop, self.color, self.fourcc = loop, color, fourcc
        self.read_failures = read_failures
        self._requested = (width, height, fps)
        self._capture = None
        self._pacer: FramePacer | None = None
        self._file_frames = 0

    def _open(self) -> None:
        cv2 = _cv2()
        width, height, fps = self._requested
        if self.is_file:
            if not Path(self.source).is_file():
                raise CameraError(f"camera {self.name!r}: video file {self.source} not found")
            capture = cv2.VideoCapture(self.source)
        else:
            backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
            capture = cv2.VideoCapture(self.source, backend)
        if not capture.isOpened():
            capture.release()
            raise CameraError(
                f"camera {self.name!r}: cannot open {self.source!r}; check the device index/path "
                "(`v4l2-ctl --list-devices`) and that no other process uses it"
            )
        if self.is_file:
            src_w = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
            src_h = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            file_fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            self.fps = fps or (file_fps if file_fps > 0 else 30.0)
            self.width, self.height = (width, height) if width else (src_w, src_h)
            self._resize = (width, height) if width and (width, height) != (src_w, src_h) else None
        else:
            if self.fourcc:
                capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
            if width:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            if fps:
                capture.set(cv2.CAP_PROP_FPS, fps)
            actual = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            actual_fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            if width and actual != (width, height):
                capture.release()
                raise CameraError(
                    f"camera {self.name!r}: requested {width}x{height}, the device delivers {actual[0]}x{actual[1]}"
                )
            if fps and actual_fps > 0 and abs(actual_fps - fps) > 0.5:
                capture.release()
                raise CameraError(f"camera {self.name!r}: requested {fps} fps, the device delivers {actual_fps}")
            self.width, self.height = actual
            self.fps = fps or (actual_fps if actual_fps > 0 else None)
            self._resize = None
        self._capture = capture
        self._file_frames = 0
        self._pacer = FramePacer(self.fps, self._stop) if self.is_file else None

    def _read_raw(self) -> np.ndarray:
        cv2 = _cv2()
        capture = self._capture
        failures = 0
        while True:
            ok, frame = capture.read()
            if ok and frame is not None:
                if self.is_file:
                    self._file_frames += 1
                return frame
            if self.is_file:
                if not self.loop:
                    raise CameraError(
                        f"camera {self.name!r}: video file {self.source} ended after {self._file_frames} frames "
                        "(loop=False)"
                    )
                if self._file_frames == 0:
                    raise CameraError(f"camera {self.name!r}: video file {self.source} has no decodable frames")
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                self._file_frames = 0
                ok, frame = capture.read()
                if ok and frame is not None:
                    self._file_frames += 1
                    return frame
                raise CameraError(f"camera {self.name!r}: video file {self.source} could not be rewound to loop")
            failures += 1
            if failures >= self.read_failures:
                raise CameraError(
                    f"camera {self.name!r}: {failures} consecutive read failures from {self.source!r} "
                    "(camera unplugged?)"
                )

    def _grab(self) -> np.ndarray:
        cv2 = _cv2()
        if self._pacer is not None and not self._pacer.wait():
            raise CameraError(f"camera {self.name!r}: stopped")
        frame = self._read_raw()
        if self._resize is not None:
            frame = cv2.resize(frame, self._resize, interpolation=cv2.INTER_AREA)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if self.color == "rgb":
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(frame)

    def _close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
