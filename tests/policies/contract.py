"""Every registered head (built-in and the test-only plugin) as a tiny policy, for tests that iterate them all."""

from __future__ import annotations

import numpy as np
import torch

import tests.plugin_heads.configuration  # noqa: F401  (the plugin head is registered too)
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.policy import Policy, make_normalizer
from robopolicy.policies.registry import available_policies, get_config_class

HEADS = available_policies()
STATE = {"observation.state": FeatureSpec((5,), "state")}
IMAGE = {"observation.image": FeatureSpec((3, 32, 32), "image")}
ACTION = {"action": FeatureSpec((2,), "action")}
STATE_ONLY = {"mlp_flow_plugin"}  # the plugin's MLP takes state vectors only


def contract_policy(name: str) -> Policy:
    """A tiny eval-mode policy of head `name` on a 5-d state (+ a 32x32 camera where the head takes images)."""
    features = STATE if name in STATE_ONLY else {**STATE, **IMAGE}
    cfg = get_config_class(name).for_tests(features, ACTION)
    stats = {k: {"min": np.zeros(n), "max": np.full(n, 4.0), "mean": np.full(n, 2.0), "std": np.ones(n)}
             for k, n in (("observation.state", 5), ("action", 2))}
    torch.manual_seed(0)
    return Policy(cfg, make_normalizer(cfg, stats)).eval()
