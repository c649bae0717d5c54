"""A tiny real policy (UNet flow / diffusion head on a 5-d state, 2-d actions) for runtime tests."""

from __future__ import annotations

import numpy as np
import torch

from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.policy import Policy, make_normalizer
from robopolicy.policies.registry import get_config_class

STATE_DIM, ACTION_DIM = 5, 2


def tiny_policy(name: str = "flow", seed: int = 0) -> Policy:
    cfg = get_config_class(name).for_tests({"observation.state": FeatureSpec((STATE_DIM,), "state")},
                                           {"action": FeatureSpec((ACTION_DIM,), "action")})
    stats = {k: {"min": np.zeros(n), "max": np.full(n, 512.0), "mean": np.full(n, 256.0), "std": np.full(n, 100.0)}
             for k, n in (("observation.state", STATE_DIM), ("action", ACTION_DIM))}
    torch.manual_seed(seed)
    return Policy(cfg, make_normalizer(cfg, stats)).eval()


def tiny_obs(policy: Policy, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    shape = (batch, policy.config.n_obs_steps, STATE_DIM)
    return {"observation.state": (g.random(shape) * 512).astype(np.float32)}
