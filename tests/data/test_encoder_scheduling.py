"""libsvtav1 run as root moves the encoding thread and its workers to SCHED_FIFO 99 (seen here: every pytest or
record process that wrote AV1 ended up real-time, starving the rest of the machine); the writer undoes it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from robopolicy.data.video_encode import VideoOptions, _realtime_threads, available_encoder, encode_video

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setscheduler") or os.geteuid() != 0 or not available_encoder("libsvtav1"),
    reason="needs Linux, root (libsvtav1 only raises threads it may) and a libsvtav1 build of FFmpeg")


def _encode_in_thread(path: Path, realtime: int | None) -> dict:
    """Encode in a fresh thread (optionally SCHED_FIFO `realtime` first); what that thread and the process look like
    after it."""
    out: dict = {}

    def work():
        if realtime is not None:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime))
        frames = (np.random.default_rng(0).random((12, 64, 64, 3)) * 255).astype(np.uint8)
        encode_video(frames, path, 10, "libsvtav1", VideoOptions())
        out["policy"], out["priority"] = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
        out["others"] = {t: c for t, c in _realtime_threads().items() if t != threading.get_native_id()}

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    return out


def test_av1_encoding_leaves_no_real_time_threads(tmp_path):
    after = _encode_in_thread(tmp_path / "a.mp4", None)
    assert after["policy"] == os.SCHED_OTHER and after["others"] == {}


def test_a_real_time_caller_keeps_its_own_priority(tmp_path):
    after = _encode_in_thread(tmp_path / "b.mp4", 7)
    assert (after["policy"], after["priority"]) == (os.SCHED_FIFO, 7)  # not SVT-AV1's 99
    assert after["others"] == {}
