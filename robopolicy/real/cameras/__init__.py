"""Cameras with a background capture thread: OpenCV devices / video files and simulated renderers."""

from __future__ import annotations

from collections.abc import Callable

from robopolicy.real.cameras.base import Camera, CameraError, StaleFrameError, ThreadedCamera
from robopolicy.real.cameras.opencv import OpenCVCamera
from robopolicy.real.cameras.sim import SimCamera

__all__ = ["Camera", "CameraError", "OpenCVCamera", "SimCamera", "StaleFrameError", "ThreadedCamera", "make_camera"]


def make_camera(config, *, render: Callable | None = None) -> Camera:
    """A camera from a ``robots.config.CameraConfig``; ``type: sim`` needs ``render(width, height)``."""
    if config.type == "opencv":
        return OpenCVCamera(config.source, config.fps, config.width, config.height, name=config.name)
    if config.type == "sim":
        if render is None:
            raise ValueError(
                f"camera {config.name!r} is a sim camera: pass render=<callable(width, height)> "
                "(e.g. MujocoArmBackend.render) or give the robot a cameras= mapping"
            )
        if config.width is None or config.height is None:
            raise ValueError(f"sim camera {config.name!r} needs width and height")
        return SimCamera(render, width=config.width, height=config.height, fps=config.fps or 30.0, name=config.name)
    raise ValueError(f"camera {config.name!r}: unknown type {config.type!r} (opencv or sim)")
