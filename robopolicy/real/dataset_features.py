"""Map a robot's hardware features to dataset features and back (LeRobot's naming).

A robot reports `observation_features` / `action_features` as {"<joint>.pos": float, "<camera>": (h, w, 3)}.
In a dataset these become
  observation.state            float32 (n_joints,), names = joint keys in robot order
  observation.images.<camera>  video (h, w, 3)
  action                       float32 (n_joints,), names = action keys in robot order
so that policies trained on recorded data read `observation.state` / `observation.images.*` and predict
`action`, exactly as with LeRobot-recorded datasets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from robopolicy.data.features import Feature

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."


def _scalar_keys(features: Mapping[str, Any]) -> list[str]:
    return [k for k, v in features.items() if not isinstance(v, tuple)]


def _camera_keys(features: Mapping[str, Any]) -> list[str]:
    return [k for k, v in features.items() if isinstance(v, tuple)]


def dataset_features(observation_features: Mapping[str, Any], action_features: Mapping[str, Any],
                     *, video: bool = True) -> dict[str, Feature]:
    """Dataset features for recording a robot (state vector, one image feature per camera, action vector)."""
    state = _scalar_keys(observation_features)
    actions = _scalar_keys(action_features)
    features = {
        STATE_KEY: Feature(STATE_KEY, "float32", (len(state),), "state", names=state),
        ACTION_KEY: Feature(ACTION_KEY, "float32", (len(actions),), "action", names=actions),
    }
    for cam in _camera_keys(observation_features):
        key = IMAGE_PREFIX + cam
        kind = "video" if video else "image"
        shape = tuple(observation_features[cam])
        features[key] = Feature(key, kind, shape, kind, names=["height", "width", "channels"])
    return features


def observation_frame(observation_features: Mapping[str, Any], obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A robot observation {"<joint>.pos": float, "<camera>": HWC uint8} -> dataset keys."""
    missing = [k for k in observation_features if k not in obs]
    if missing:
        raise KeyError(f"robot observation is missing {missing}")
    frame = {STATE_KEY: np.array([obs[k] for k in _scalar_keys(observation_features)], dtype=np.float32)}
    for cam in _camera_keys(observation_features):
        frame[IMAGE_PREFIX + cam] = np.asarray(obs[cam], dtype=np.uint8)
    return frame


def action_vector(action_features: Mapping[str, Any], action: Mapping[str, float]) -> np.ndarray:
    """{"<joint>.pos": value} -> float32 (n_joints,) in the robot's action order."""
    keys = _scalar_keys(action_features)
    missing = [k for k in keys if k not in action]
    if missing:
        raise KeyError(f"action is missing {missing}")
    return np.array([action[k] for k in keys], dtype=np.float32)


def action_dict(action_features: Mapping[str, Any], vector: np.ndarray) -> dict[str, float]:
    """float (n_joints,) in the robot's action order -> {"<joint>.pos": value}."""
    keys = _scalar_keys(action_features)
    vector = np.asarray(vector, dtype=np.float64).reshape(-1)
    if vector.shape[0] != len(keys):
        raise ValueError(f"action vector has {vector.shape[0]} values, the robot takes {len(keys)}: {keys}")
    return {k: float(v) for k, v in zip(keys, vector)}
