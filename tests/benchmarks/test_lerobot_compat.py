"""The LeRobot compatibility harness: its comparison logic (no LeRobot needed) and, opt-in, a real run.

The real run needs a LeRobot venv: set LEROBOT_PYTHON (see benchmarks/setup_lerobot_venv.sh); it is marked slow.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.benchmarks.bench_modules import BENCH, load_bench

compat = load_bench("lerobot_compat")


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"max_abs": 3.0, "max_mean": 0.5, **kw})


def _side(frames: np.ndarray, state: np.ndarray, pad: np.ndarray) -> tuple[dict, dict]:
    meta = {
        "ok": True,
        "fps": 10,
        "num_frames": 4,
        "num_episodes": 1,
        "lengths": [4],
        "starts": [0],
        "episode_indices": [0],
        "tasks": ["t"],
        "features": {
            "observation.image": {"dtype": "video", "shape": [2, 2, 3]},
            "observation.state": {"dtype": "float32", "shape": [2]},
        },
        "stats": {},
    }
    arrays = {
        "anchors": np.array([0, 3]),
        "all/observation.state": state,
        "win/observation.image": frames,
        "win/observation.image_is_pad": pad,
        "allvis/observation.image": frames[:, 0],
    }
    return meta, arrays


def _statuses(rep) -> dict[str, str]:
    return {f"{r[0]}:{r[1]}": r[2] for r in rep.rows}


def test_pick_anchors_covers_both_ends_of_first_middle_and_last_episode():
    anchors = compat.pick_anchors([0, 10, 30], [10, 20, 5], samples=12, seed=0)
    for frame in (0, 1, 8, 9, 10, 11, 28, 29, 30, 31, 33, 34):
        assert frame in anchors
    assert anchors.min() >= 0 and anchors.max() <= 34
    assert np.all(np.diff(anchors) > 0)


def test_to_uint8_inverts_lerobot_float_frames_exactly():
    frames = np.arange(256, dtype=np.uint8).reshape(4, 4, 4, 4)
    assert np.array_equal(compat.to_uint8(frames.astype(np.float32) / 255), frames)


def test_window_plan_windows_cameras_and_observations_and_16_actions():
    plan = compat.window_plan(
        {
            "observation.image": {"dtype": "video"},
            "observation.state": {"dtype": "float32"},
            "action": {"dtype": "float32"},
            "next.reward": {"dtype": "float32"},
            "timestamp": {"dtype": "float32"},
        }
    )
    assert plan == {"observation.image": [-1, 0], "observation.state": [-1, 0], "action": list(range(16))}


def test_compare_passes_identical_sides_and_flags_each_difference():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 2, 3, 2, 2), dtype=np.uint8)
    state = rng.normal(size=(4, 2)).astype(np.float32)
    pad = np.array([[True, False], [False, False]])
    rep = compat.Report()
    compat.compare(_side(frames, state, pad), _side(frames.copy(), state.copy(), pad.copy()), _args(), rep)
    assert all(r[2] == "PASS" for r in rep.rows), rep.rows

    off_state = state.copy()
    off_state[2, 1] += 1e-6
    noisy = frames.astype(np.int16)
    noisy[0, 0, 0, 0, 0] = np.clip(noisy[0, 0, 0, 0, 0] + 40 * (1 if noisy[0, 0, 0, 0, 0] < 128 else -1), 0, 255)
    rp = _side(noisy.astype(np.uint8), off_state, ~pad)
    rp[0]["lengths"] = [3]
    rep = compat.Report()
    compat.compare(_side(frames, state, pad), rp, _args(), rep)
    got = _statuses(rep)
    assert got["meta:lengths"] == "FAIL"
    assert got["numeric:observation.state (all frames)"] == "FAIL"
    assert got["window:observation.image_is_pad"] == "FAIL"
    assert got["window:observation.image"] == "FAIL"
    assert got["decode:observation.image every frame vs robopolicy"] == "FAIL"
    detail = next(r[3] for r in rep.rows if r[1] == "observation.state (all frames)")
    assert "first [2]" in detail


@pytest.mark.slow
def test_lerobot_reads_the_shared_pusht_dataset_like_robopolicy(lerobot_pusht):
    lerobot_python = os.environ.get("LEROBOT_PYTHON")
    if not lerobot_python:
        pytest.skip("set LEROBOT_PYTHON to a LeRobot 0.4.4 venv (benchmarks/setup_lerobot_venv.sh) to run this")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "lerobot_compat.py"), str(lerobot_pusht), "--samples", "16"],
        capture_output=True,
        text=True,
        env={**os.environ, "LEROBOT_PYTHON": lerobot_python},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout
