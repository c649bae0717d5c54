"""PushT adapter: observation keys and shapes, the zarr's keypoints, exact resets to recorded states."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_pusht")

from robopolicy.sim.pusht_env import (
    SUCCESS_COVERAGE,
    ZARR_KEYPOINTS_LOCAL,
    PushTEnv,
    legacy_reset_state,
    resolve_observation,
    zarr_keypoints,
)

ALL_KEYS = {
    "state": (5,),
    "keypoint": (9, 2),
    "img": (3, 96, 96),
    "observation.state": (2,),
    "observation.image": (3, 96, 96),
    "observation.environment_state": (16,),
}


@pytest.fixture(scope="module")
def zarr_data(pusht_zarr):
    import zarr

    g = zarr.open_group(str(pusht_zarr), mode="r")
    ends = g["meta/episode_ends"][:]
    starts = np.concatenate([[0], ends[:-1]]).astype(int)
    return {
        "state": g["data/state"][:].astype(np.float64),
        "keypoint": g["data/keypoint"][:].astype(np.float64),
        "img": g["data/img"],
        "starts": starts,
    }


def test_observation_keys_shapes_and_dtypes():
    env = PushTEnv(ALL_KEYS)
    obs, info = env.reset(seed=3)
    assert set(obs) == set(ALL_KEYS) and info["is_success"] is False
    for key, shape in ALL_KEYS.items():
        expected = (shape[1], shape[2], 3) if len(shape) == 3 else shape
        assert obs[key].shape == expected, key
        assert obs[key].dtype == (np.uint8 if len(shape) == 3 else np.float32), key
    np.testing.assert_array_equal(obs["observation.state"], obs["state"][:2])
    np.testing.assert_array_equal(obs["img"], obs["observation.image"])
    assert 0 <= obs["state"][4] < 2 * np.pi
    # gym-pusht's 16-D environment_state: the T's 8 corners in its own order
    corners = env.unwrapped.get_keypoints(env.unwrapped._block_shapes).reshape(-1)
    np.testing.assert_allclose(obs["observation.environment_state"], corners, atol=1e-3)
    np.testing.assert_allclose(obs["keypoint"], zarr_keypoints(obs["state"][2:5]), atol=1e-3)
    assert env.render().shape == (384, 384, 3)
    env.close()


def test_seeded_reset_is_reproducible_and_step_reports_coverage():
    env = PushTEnv({"state": (5,)})
    a, _ = env.reset(seed=7)
    b, _ = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    np.testing.assert_array_equal(a["state"], b["state"])
    assert not np.array_equal(a["state"], c["state"])
    _, reward, terminated, truncated, info = env.step(np.array([256.0, 256.0]))
    assert reward == pytest.approx(min(1.0, info["coverage"] / SUCCESS_COVERAGE))
    assert terminated == info["is_success"] == (info["coverage"] > SUCCESS_COVERAGE) and truncated is False
    with pytest.raises(ValueError, match="2 finite numbers"):
        env.step(np.array([np.nan, 1.0]))


def test_block_at_goal_pose_is_a_success():
    env = PushTEnv({"state": (5,)})
    env.reset(options={"exact_state": [50.0, 50.0, 256.0, 256.0, np.pi / 4]})  # gym-pusht's goal pose
    _, reward, terminated, _, info = env.step(np.array([50.0, 50.0]))
    assert info["coverage"] > 0.999 and terminated and info["is_success"] and reward == 1.0


def test_unsupported_observations_are_clear_errors():
    assert resolve_observation("observation.state", (5,)) == "state"
    assert resolve_observation("keypoint", (18,)) == "keypoint_flat"
    with pytest.raises(KeyError, match="observation.environment_state"):
        resolve_observation("observation.environment_state", (18,))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        PushTEnv({"img": (96, 96, 3)})
    with pytest.raises(ValueError, match="one image size"):
        PushTEnv({"img": (3, 96, 96), "observation.image": (3, 64, 64)})


def test_keypoint_model_reproduces_the_zarr(zarr_data):
    """keypoint = R(angle) @ ZARR_KEYPOINTS_LOCAL + block position, on every frame of the 206 episodes."""
    pred = zarr_keypoints(zarr_data["state"][:, 2:5])
    err = np.abs(pred - zarr_data["keypoint"]).max(axis=(1, 2))
    assert np.median(err) < 1e-3
    assert np.mean(err < 0.02) > 0.9  # the rest: block moving between the state and keypoint records
    assert ZARR_KEYPOINTS_LOCAL.shape == (9, 2)


def test_exact_reset_to_zarr_states_reproduces_keypoints_and_image(zarr_data):
    """On frames where the block is at rest (same pose one step before and after; while it moves, the recorder's
    state and keypoints were taken at slightly different moments), across the whole dataset."""
    state = zarr_data["state"]
    still = np.all(np.abs(state[1:-1, 2:5] - state[:-2, 2:5]) < 1e-6, axis=1) & np.all(
        np.abs(state[2:, 2:5] - state[1:-1, 2:5]) < 1e-6, axis=1
    )
    frames = 1 + np.flatnonzero(still)
    assert len(frames) > 1000
    env = PushTEnv({"state": (5,), "keypoint": (9, 2), "img": (3, 96, 96)})
    for i in frames[:: len(frames) // 25]:
        s = zarr_data["state"][i]
        obs, _ = env.reset(options={"exact_state": s})
        np.testing.assert_allclose(obs["state"][:4], s[:4], atol=1e-3)
        assert np.cos(obs["state"][4] - s[4]) > 1 - 1e-9
        np.testing.assert_allclose(obs["keypoint"], zarr_data["keypoint"][i], atol=1e-3)
        assert np.abs(obs["img"].astype(np.float64) - zarr_data["img"][i]).mean() < 1.0  # of 255
    # gym-pusht's own reset_to_state moves the block (rotation about its centre of gravity)
    s = zarr_data["state"][0]
    legacy, _ = env.reset(options={"reset_to_state": s})
    assert np.abs(legacy["state"][2:4] - s[2:4]).max() > 50
    np.testing.assert_allclose(legacy_reset_state(s)[[0, 1, 4]], s[[0, 1, 4]])
    env.close()


def test_replaying_recorded_actions_from_an_exact_reset_reproduces_the_episode(zarr_data, pusht_zarr):
    """gym-pusht is the simulator the demonstrations were recorded in: replaying an episode's actions from its
    exact first state gives back every recorded agent and block position."""
    import zarr

    actions = zarr.open_group(str(pusht_zarr), mode="r")["data/action"]
    ends = np.append(zarr_data["starts"][1:], len(zarr_data["state"]))
    env = PushTEnv({"state": (5,)})
    for ep in (0, 50, 120):
        first, end = zarr_data["starts"][ep], ends[ep]
        env.reset(options={"exact_state": zarr_data["state"][first]})
        for t, action in zip(range(first, end - 1), actions[first : end - 1]):
            obs, *_ = env.step(action)
            np.testing.assert_allclose(obs["state"][:4], zarr_data["state"][t + 1, :4], atol=1e-3, err_msg=f"ep {ep}")
    env.close()


def test_a_policy_env_mismatch_is_bad_input_for_the_command_line():
    from robopolicy.cli.main import bad_input_errors
    from robopolicy.sim.errors import EnvMismatchError
    from robopolicy.sim.pusht_env import resolve_observation

    with pytest.raises(EnvMismatchError, match="PushT cannot provide observation 'gripper'") as err:
        resolve_observation("gripper", (3,))
    assert isinstance(err.value, bad_input_errors()) and isinstance(err.value, KeyError)
    assert str(err.value).startswith("PushT")  # not quoted like a plain KeyError
