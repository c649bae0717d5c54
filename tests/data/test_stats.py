"""Streaming stats against numpy on the real PushT data and on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robopolicy.cli.main import main
from robopolicy.data.dataset import open_dataset
from robopolicy.data.stats import DEFAULT_BINS, QUANTILES, RunningStats, compute_stats

NUMERIC = ["state", "action", "keypoint", "n_contacts"]


def _numpy_quantiles(x: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.quantile(x, q, axis=0) for name, q in QUANTILES.items()}


def test_numeric_stats_match_numpy_on_pusht(pusht_zarr):
    ds = open_dataset(pusht_zarr)
    stats = compute_stats(ds, NUMERIC)
    for key in NUMERIC:
        shape = ds.features[key].shape
        x = ds.read(key, np.arange(ds.num_frames)).astype(np.float64).reshape(ds.num_frames, -1)
        s = {k: np.asarray(v) for k, v in stats[key].items()}
        assert s["mean"].shape == shape and s["q50"].shape == shape
        assert s["count"].tolist() == [25650]
        np.testing.assert_array_equal(s["min"].reshape(-1), x.min(0))
        np.testing.assert_array_equal(s["max"].reshape(-1), x.max(0))
        np.testing.assert_allclose(s["mean"].reshape(-1), x.mean(0), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(s["std"].reshape(-1), x.std(0), rtol=1e-10, atol=1e-9)
        bound = (x.max(0) - x.min(0)) / (DEFAULT_BINS - 1)  # documented error bound
        for name, expected in _numpy_quantiles(x).items():
            err = np.abs(s[name].reshape(-1) - expected)
            assert np.all(err <= bound + 1e-9), (key, name, err.max(), bound.max())


def test_image_stats_are_exact_per_channel(pusht_zarr):
    ds = open_dataset(pusht_zarr)
    eps = list(range(12))
    stats = compute_stats(ds, ["img"], episodes=eps, chunk_mb=1.0)["img"]  # several chunks
    stop = ds.episodes[eps[-1]].stop
    frames = ds.read("img", np.arange(stop))  # uint8 (N, C, H, W)
    px = frames.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64) / 255
    assert stats["mean"].shape == (3, 1, 1) and stats["count"].tolist() == [stop]
    np.testing.assert_allclose(stats["mean"].ravel(), px.mean(1), rtol=1e-12)
    np.testing.assert_allclose(stats["std"].ravel(), px.std(1), rtol=1e-10)
    np.testing.assert_array_equal(stats["min"].ravel(), px.min(1))
    np.testing.assert_array_equal(stats["max"].ravel(), px.max(1))
    for name, q in QUANTILES.items():
        np.testing.assert_allclose(stats[name].ravel(), np.quantile(px, q, axis=1), rtol=0, atol=1e-12)


def test_merged_chunks_equal_whole_and_respect_bound():
    rng = np.random.default_rng(0)
    # drifting data: later chunks widen the range, forcing the histogram to coarsen while streaming
    x = np.concatenate([rng.normal(size=(3000, 3)) * s + o for s, o in [(1e-3, 0), (1, 5), (50, -100)]])
    x[:, 2] = x[:, 2] * 1e-6 + 1e6  # tiny spread around a large offset
    whole = RunningStats.from_values(x)
    streamed = RunningStats(3)
    for part in np.array_split(x, 41):
        streamed.merge(RunningStats.from_values(part))
    qs = list(QUANTILES.values())
    expected = np.quantile(x, qs, axis=0)
    for sketch in (whole, streamed):
        bound = sketch.quantile_error_bound()
        assert np.all(bound < (x.max(0) - x.min(0)) / (DEFAULT_BINS - 1))
        assert np.all(np.abs(sketch.quantiles(qs) - expected) <= bound)
        np.testing.assert_allclose(sketch.mean, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(sketch.std, x.std(0), rtol=1e-9, atol=1e-9)  # 1e6 offset: float64 eps


def test_integer_data_quantiles_are_exact():
    rng = np.random.default_rng(1)
    x = rng.integers(-300, 4000, size=(5000, 2))
    sketch = RunningStats(2)
    for part in np.array_split(x, 7):
        sketch.merge(RunningStats.from_values(part))
    qs = list(QUANTILES.values())
    np.testing.assert_array_equal(sketch.quantile_error_bound(), 0)
    np.testing.assert_allclose(sketch.quantiles(qs), np.quantile(x, qs, axis=0), atol=1e-9)
    res = sketch.result((2,))
    assert res["min"].dtype == np.int64 and res["max"].tolist() == x.max(0).tolist()


def test_constant_feature():
    res = RunningStats.from_values(np.full((10, 1), 3.25)).result((1,))
    assert res["std"].tolist() == [0.0]
    assert all(res[q].tolist() == [3.25] for q in QUANTILES)


def test_non_finite_values_are_named():
    x = np.ones((5, 2))
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"row 3, dimension 1"):
        RunningStats.from_values(x)


def test_stats_cli_writes_lerobot_layout(pusht_zarr, tmp_path, capsys):
    out = tmp_path / "stats.json"
    assert main(["stats", str(pusht_zarr), "--keys", "action", "n_contacts", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"action", "n_contacts"}
    assert set(data["action"]) == {"min", "max", "mean", "std", "count", *QUANTILES}
    assert data["action"]["count"] == [25650] and len(data["action"]["q99"]) == 2
    assert "action" in capsys.readouterr().out
