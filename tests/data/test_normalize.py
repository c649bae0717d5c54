"""Normalizer: exact affine maps per mode, JSON round trip, clear errors on mismatched stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robopolicy.data.normalize import Normalizer, StatsMismatchError

STATS = {
    "action": {"min": np.array([0.0, -2.0]), "max": np.array([10.0, 2.0]), "mean": np.array([5.0, 0.0]),
               "std": np.array([2.0, 0.001]), "q01": np.array([1.0, -1.0]), "q99": np.array([9.0, 1.0])},
    "observation.state": {"min": np.array([1.0, 1.0]), "max": np.array([1.0, 3.0]),
                          "mean": np.array([1.0, 2.0]), "std": np.array([0.0, 1.0])},
}


def test_min_max_maps_limits_to_plus_minus_one_and_back():
    n = Normalizer(STATS, {"action": "min_max"})
    x = torch.tensor([[0.0, -2.0], [10.0, 2.0], [5.0, 0.0]])
    torch.testing.assert_close(n.normalize("action", x), torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(n.unnormalize("action", n.normalize("action", x)), x)


def test_constant_dimension_does_not_divide_by_zero():
    n = Normalizer(STATS, {"observation.state": "min_max"})
    y = n.normalize("observation.state", torch.tensor([1.0, 2.0]))
    assert torch.isfinite(y).all() and y[0] == 0.0 and y[1] == 0.0


def test_mean_std_floors_std():
    n = Normalizer(STATS, {"action": "mean_std"})
    y = n.normalize("action", torch.tensor([7.0, 0.05]))
    torch.testing.assert_close(y, torch.tensor([1.0, 5.0]))  # std 0.001 floored to 0.01


def test_quantiles_mode():
    n = Normalizer(STATS, {"action": "quantiles"})
    torch.testing.assert_close(n.normalize("action", torch.tensor([9.0, -1.0])), torch.tensor([1.0, -1.0]))


def test_json_round_trip_and_batch(tmp_path):
    n = Normalizer(STATS, {"action": "min_max", "observation.state": "mean_std"})
    n.save(tmp_path / "stats.json")
    m = Normalizer.load(tmp_path / "stats.json", expected_keys={"action": (2,), "observation.state": (2,)})
    batch = {"action": torch.rand(4, 16, 2) * 10, "observation.state": torch.rand(4, 2, 2), "other": torch.ones(1)}
    a, b = n.normalize_batch(batch), m.normalize_batch(batch)
    for k in batch:
        torch.testing.assert_close(a[k], b[k])


def test_mismatches_name_the_key(tmp_path):
    with pytest.raises(StatsMismatchError, match="no stats for feature 'observation.image'"):
        Normalizer(STATS, {"observation.image": "mean_std"})
    with pytest.raises(StatsMismatchError, match="lack \\['q01', 'q99'\\]"):
        Normalizer(STATS, {"observation.state": "quantiles"})
    n = Normalizer(STATS, {"action": "min_max"})
    with pytest.raises(StatsMismatchError, match="'action': data has trailing shape \\(3,\\)"):
        n.normalize("action", torch.zeros(5, 3))
    n.save(tmp_path / "s.json")
    with pytest.raises(StatsMismatchError, match="stats for 'action' have shape \\(2,\\) but the data has \\(7,\\)"):
        Normalizer.load(tmp_path / "s.json", expected_keys={"action": (7,)})
