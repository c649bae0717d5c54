"""Cameras: OpenCV on a generated video file, SimCamera, freshness and non-blocking reads."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from robopolicy.real.cameras import (  # noqa: E402
    CameraError,
    OpenCVCamera,
    SimCamera,
    StaleFrameError,
    make_camera,
)
from robopolicy.real.robots.config import CameraConfig  # noqa: E402

pytestmark = pytest.mark.timeout(30)
N_FRAMES = 6


@pytest.fixture
def video(tmp_path):
    """A 6-frame 32x24 MJPG video whose red channel encodes the frame index (R = 40 * i), B = 200, G = 100."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (32, 24))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        frame = np.zeros((24, 32, 3), np.uint8)
        frame[..., 0], frame[..., 1], frame[..., 2] = 200, 100, 40 * i  # BGR
        writer.write(frame)
    writer.release()
    return path


def _index(frame: np.ndarray) -> int:
    return round(float(frame[..., 0].mean()) / 40)


def test_video_file_rgb_frames_in_order_and_loop(video):
    with OpenCVCamera(video, fps=200, name="front") as cam:
        assert (cam.width, cam.height, cam.fps) == (32, 24, 200)
        assert cam.shape == (24, 32, 3)
        frames = [cam.read() for _ in range(2 * N_FRAMES + 2)]
    for f in frames:
        assert f.dtype == np.uint8 and f.shape == (24, 32, 3) and f.flags.c_contiguous
        # RGB order: R encodes the index, G 100, B 200 (MJPG is lossy: a few levels of tolerance)
        assert abs(float(f[..., 1].mean()) - 100) < 6 and abs(float(f[..., 2].mean()) - 200) < 6
    indices = [_index(f) for f in frames]
    # read() returns the newest frame produced after the previous read: a reader slower than the file's 200 fps
    # (this thread descheduled on a loaded machine) skips frames, as with a live camera, but never repeats one
    # and never goes back; the file loops
    assert len({id(f) for f in frames}) == len(frames)  # never the same frame twice
    # frames advanced per read (a step of 0 is a whole lap of the file skipped)
    steps = [(b - a) % N_FRAMES or N_FRAMES for a, b in itertools.pairwise(indices)]
    assert sum(steps) <= cam.frames_captured - 1, (indices, cam.frames_captured)  # only frames really captured
    assert any(b < a for a, b in itertools.pairwise(indices)), indices  # it looped back towards frame 0
    if all(step == 1 for step in steps):  # the reader kept up (the idle case): every frame, in order, looping
        assert indices == [(indices[0] + k) % N_FRAMES for k in range(len(frames))]


def test_video_file_default_fps_and_resize(video):
    cam = OpenCVCamera(str(video), width=16, height=12)
    cam.connect()
    try:
        assert cam.fps == 30.0
        frame = cam.async_read(timeout_ms=1000)
        assert frame.shape == (12, 16, 3)
    finally:
        cam.disconnect()
    assert not cam.is_connected


def test_video_file_end_without_loop_is_a_clear_error(video):
    with OpenCVCamera(video, fps=500, loop=False, name="once") as cam:
        indices = []
        with pytest.raises(CameraError, match=rf"'once'.*ended after {N_FRAMES} frames"):
            for _ in range(N_FRAMES + 2):
                indices.append(_index(cam.read()))
        # every frame while the reader keeps up with 500 fps; a reader descheduled on a loaded machine skips some
        # (read() returns the newest), but the file never loops and the last frame is served before the error
        assert indices == sorted(set(indices)) and indices[-1] == N_FRAMES - 1, indices
        with pytest.raises(CameraError, match="ended"):
            cam.read_latest()


def test_async_read_returns_newest_unconsumed_then_times_out(video):
    with OpenCVCamera(video, fps=20) as cam:  # one frame per 50 ms
        time.sleep(0.12)  # two or three frames arrive; only the newest is returned
        first = cam.async_read(timeout_ms=100)
        assert _index(first) >= 1  # not the warm-up frame: newer ones replaced it
        # right after a read nothing new is there: the next read waits for the next frame. On a loaded machine
        # this thread can be descheduled past a frame time, so the wait is measured over several reads.
        waits, previous = [], first
        for _ in range(5):
            start = time.perf_counter()
            frame = cam.async_read(timeout_ms=1000)
            waited = time.perf_counter() - start
            waits.append(waited)
            step = (_index(frame) - _index(previous)) % N_FRAMES
            assert step >= 1  # the consumed frame is never served again
            if 0.005 < waited < 0.045:  # it waited, and for less than a frame period: exactly the next frame
                assert step == 1, (step, waited)
            previous = frame
        assert 0.005 < float(np.median(waits)) < 0.15, waits
        # a read right after a read times out (unless a frame arrived in that 1 ms: then it is newer; try again)
        for _ in range(5):
            cam.async_read(timeout_ms=1000)
            try:
                extra = cam.async_read(timeout_ms=1)
            except TimeoutError as exc:
                assert "no new frame within 1 ms" in str(exc)
                break
            assert extra is not None
        else:
            pytest.fail("async_read(timeout_ms=1) right after a read never timed out in 5 tries")


def test_missing_file_and_bad_args(tmp_path):
    with pytest.raises(CameraError, match="not found"):
        OpenCVCamera(tmp_path / "nope.mp4").connect()
    with pytest.raises(ValueError, match="width and height"):
        OpenCVCamera(0, width=640)
    cam = OpenCVCamera(tmp_path / "nope.mp4")
    with pytest.raises(CameraError, match="not connected"):
        cam.read_latest()


class _PausableRender:
    """A render callable whose frames carry a counter; ``pause`` blocks it like a frozen camera."""

    def __init__(self, delay_s: float = 0.0):
        self.count = 0
        self.delay_s = delay_s
        self.running = threading.Event()
        self.running.set()
        self.threads: set[str] = set()

    def __call__(self, width: int, height: int) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.running.wait(5)
        time.sleep(self.delay_s)
        self.count += 1
        return np.full((height, width, 3), self.count % 256, np.uint8)


def test_stale_frame_error_names_camera_and_age():
    render = _PausableRender()
    with SimCamera(render, width=8, height=6, fps=100, name="wrist") as cam:
        frame = cam.read_latest(max_age_ms=500)
        assert frame.shape == (6, 8, 3)
        render.running.clear()  # the source freezes
        time.sleep(0.25)
        pattern = r"camera 'wrist': newest frame is \d+ ms old \(max age 100 ms\)"
        with pytest.raises(StaleFrameError, match=pattern) as info:
            cam.read_latest(max_age_ms=100)
        assert info.value.camera == "wrist" and info.value.age_ms >= 200
        assert cam.read_latest(max_age_ms=5000) is not None  # generous bound still serves the old frame
        stale = cam.async_read(timeout_ms=10)  # the old frame was never consumed: served once
        assert stale is frame or stale[0, 0, 0] >= frame[0, 0, 0]
        render.running.set()  # recovers
        cam.async_read(timeout_ms=1000)
        assert cam.read_latest(max_age_ms=100) is not None
    assert render.threads == {"camera-wrist"}  # rendering only ever happens on the camera thread


def test_read_latest_never_waits_for_a_slow_camera():
    render = _PausableRender(delay_s=0.1)  # a 10 fps source
    with SimCamera(render, width=4, height=4, fps=10, name="slow") as cam:
        durations = []
        for _ in range(200):
            start = time.perf_counter()
            cam.read_latest(max_age_ms=1000)
            durations.append(time.perf_counter() - start)
        # a 30 Hz loop is never gated by the camera: a read waiting for the 10 fps source would take up to 100 ms,
        # and every read would; a loaded machine may deschedule this thread for a read or two
        assert sum(d > 0.01 for d in durations) <= 2, sorted(durations)[-5:]
        assert max(durations) < 0.09  # none waited for a frame (the source needs 100 ms per frame)
        assert np.median(durations) < 0.001


def test_no_frame_yet_is_stale():
    render = _PausableRender()
    render.running.clear()
    cam = SimCamera(render, width=4, height=4, fps=100, name="cold")
    cam.connect(warmup=False)
    try:
        with pytest.raises(StaleFrameError, match="no frame received yet"):
            cam.read_latest()
        with pytest.raises(TimeoutError):
            cam.async_read(timeout_ms=20)
    finally:
        render.running.set()
        cam.disconnect()


def test_sim_camera_bad_render_output():
    with pytest.raises(CameraError, match=r"'bad'.*expected uint8 \(4, 4, 3\)"):
        SimCamera(lambda w, h: np.zeros((h, w), np.float32), width=4, height=4, name="bad").connect()


def test_make_camera(video):
    cam = make_camera(CameraConfig(name="front", source=str(video), fps=50))
    assert isinstance(cam, OpenCVCamera) and cam.name == "front"
    sim = make_camera(CameraConfig(name="top", type="sim", width=8, height=6), render=_PausableRender())
    assert isinstance(sim, SimCamera) and sim.shape == (6, 8, 3)
    with pytest.raises(ValueError, match="render="):
        make_camera(CameraConfig(name="top", type="sim", width=8, height=6))
