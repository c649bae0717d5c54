"""Streaming normalization stats: min, max, mean, std, count and quantiles q01, q10, q50, q90, q99.

Everything is computed in one streaming pass with a mergeable sketch (`RunningStats`), so stats of a whole
dataset, of one episode, and of "the dataset so far" (the LeRobot writer's stats.json after every episode)
all come from the same code:

- min, max, count: exact. mean, std (population, ddof=0, as LeRobot): exact up to float64 rounding
  (Chan et al.'s parallel update of mean and sum of squared deviations).
- quantiles (numpy's default "linear" definition): from a histogram of `bins` (default 5000) bins per
  dimension whose width w is a power of two; when new data falls outside the window the width doubles and
  adjacent bins merge (no redistribution, so merging sketches adds no error). Error bound per dimension:
  |q_est - q_true| <= w / 2 < (max - min) / (bins - 1)  (see `quantile_error_bound`).
  Integer data (incl. uint8 pixels, indices) uses w = 1 while max - min < bins: quantiles are then exact.

Visual features: stats per channel over all pixels of all frames, values scaled to [0, 1], shape (C, 1, 1),
`count` = number of frames (LeRobot samples <= 10k downscaled frames; here every pixel counts).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from robopolicy.data.dataset import Dataset

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES = ("min", "max", "mean", "std", "count", *QUANTILES)
DEFAULT_BINS = 5000
_INT_MIN_LOG2 = 0  # integer data never gets bins narrower than 1
_BLOCK_VALUES = 1 << 22  # values per bincount block for uint8 images (bounds temporary memory)


class RunningStats:
    """Mergeable stats of D-dimensional values (each update: N rows of D values).

    `frames` counts rows given to `update` (or frames for images); `n` counts values per dimension.
    """

    def __init__(self, dim: int, bins: int = DEFAULT_BINS):
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.dim = int(dim)
        self.bins = int(bins)
        self.frames = 0
        self.n = 0
        self.integer = True
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)
        self.log2w = np.zeros(dim, dtype=np.int64)  # bin width 2**log2w per dimension
        self.lo = np.zeros(dim, dtype=np.int64)  # histogram bin 0 covers [lo * w, (lo + 1) * w)
        self.counts = np.zeros((dim, bins), dtype=np.int64)

    # ----- building ----------------------------------------------------------------------------
    @classmethod
    def from_values(cls, values: np.ndarray, bins: int = DEFAULT_BINS) -> RunningStats:
        """Sketch of `values` (N, D) (any numeric or bool dtype, finite)."""
        x = np.asarray(values)
        if x.ndim != 2:
            raise ValueError(f"expected (N, D) values, got shape {x.shape}")
        out = cls(x.shape[1], bins)
        if x.shape[0] == 0:
            return out
        integer = x.dtype.kind in "biu"
        xf = x.astype(np.float64)
        if not integer and not np.isfinite(xf).all():
            bad = np.argwhere(~np.isfinite(xf))[0]
            raise ValueError(f"non-finite value {xf[tuple(bad)]} at row {bad[0]}, dimension {bad[1]}")
        out.frames = out.n = x.shape[0]
        out.integer = integer
        out.mean = xf.mean(axis=0)
        out.m2 = ((xf - out.mean) ** 2).sum(axis=0)
        out.min, out.max = xf.min(axis=0), xf.max(axis=0)
        out.log2w = out._smallest_fitting_log2w(out.min, out.max, start=None)
        width = np.exp2(out.log2w.astype(np.float64))
        out.lo = np.floor(out.min / width).astype(np.int64)
        rel = np.floor(xf / width).astype(np.int64) - out.lo
        flat = (rel + np.arange(out.dim) * bins).ravel()
        out.counts = np.bincount(flat, minlength=out.dim * bins).reshape(out.dim, bins)
        return out

    @classmethod
    def from_uint8_images(cls, frames: np.ndarray, channel_axis: int, bins: int = DEFAULT_BINS) -> RunningStats:
        """Per-channel sketch of uint8 frames, e.g. (N, C, H, W) with channel_axis=1 or (N, H, W, C) with -1.

        Exact (256-value histograms); no float copy of the frames is made.
        """
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        channels = np.moveaxis(frames, channel_axis, 0)
        c = channels.shape[0]
        hist = np.zeros((c, 256), dtype=np.int64)
        for ch in range(c):
            flat = channels[ch].reshape(-1)
            for start in range(0, flat.size, _BLOCK_VALUES):
                hist[ch] += np.bincount(flat[start : start + _BLOCK_VALUES], minlength=256)
        out = cls.from_histogram(hist, bins=bins)
        out.frames = frames.shape[0]
        return out

    @classmethod
    def from_histogram(cls, hist: np.ndarray, bins: int = DEFAULT_BINS) -> RunningStats:
        """Sketch of integer data given as counts hist[d, v] of value v in 0..V-1 (V <= bins)."""
        dim, nvals = hist.shape
        if nvals > bins:
            raise ValueError(f"histogram with {nvals} values does not fit {bins} bins")
        out = cls(dim, bins)
        n = hist.sum(axis=1)
        if n.min() != n.max():
            raise ValueError("every dimension must have the same number of values")
        out.n = out.frames = int(n[0])
        if out.n == 0:
            return out
        values = np.arange(nvals, dtype=np.float64)
        out.mean = hist @ values / out.n
        out.m2 = (hist * (values[None, :] - out.mean[:, None]) ** 2).sum(axis=1)
        present = hist > 0
        out.min = np.argmax(present, axis=1).astype(np.float64)
        out.max = (nvals - 1 - np.argmax(present[:, ::-1], axis=1)).astype(np.float64)
        out.counts[:, :nvals] = hist
        return out

    def update(self, values: np.ndarray) -> None:
        """Add rows (N, D)."""
        self.merge(RunningStats.from_values(values, self.bins))

    def merge(self, other: RunningStats) -> None:
        """Add another sketch of the same dimension (in place)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dimension {other.dim} into dimension {self.dim}")
        if other.n == 0:
            self.frames += other.frames
            return
        if self.n == 0:
            self.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in other.__dict__.items()})
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n, self.frames = n, self.frames + other.frames
        self.integer = self.integer and other.integer
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        start = np.maximum(self.log2w, other.log2w)
        log2w = self._smallest_fitting_log2w(self.min, self.max, start=start)
        width = np.exp2(log2w.astype(np.float64))
        lo = np.floor(self.min / width).astype(np.int64)
        counts = np.zeros_like(self.counts)
        for src in (self, other):
            shift = log2w - src.log2w
            d_idx, b_idx = np.nonzero(src.counts)
            new_bin = ((src.lo[d_idx] + b_idx) >> shift[d_idx]) - lo[d_idx]
            np.add.at(counts, (d_idx, new_bin), src.counts[d_idx, b_idx])
        self.log2w, self.lo, self.counts = log2w, lo, counts

    def _smallest_fitting_log2w(self, vmin: np.ndarray, vmax: np.ndarray, start: np.ndarray | None) -> np.ndarray:
        """Smallest power-of-two bin width (>= 2**start) whose `bins` bins cover [vmin, vmax], per dimension."""
        span = vmax - vmin
        with np.errstate(divide="ignore"):
            guess = np.floor(np.log2(span / (self.bins - 1)))
            scale = np.floor(np.log2(np.maximum(np.abs(vmax), np.abs(vmin)))) - 40
        guess = np.where(span > 0, guess, np.where(np.isfinite(scale), scale, 0))
        if self.integer:
            guess = np.maximum(guess, _INT_MIN_LOG2)
        k = guess.astype(np.int64)
        if start is not None:
            k = np.maximum(k, start)
        while True:
            width = np.exp2(k.astype(np.float64))
            fail = np.floor(vmax / width) - np.floor(vmin / width) >= self.bins
            if not fail.any():
                return k
            k = k + fail

    # ----- results -----------------------------------------------------------------------------
    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.m2 / max(self.n, 1), 0.0))

    def _order_statistic(self, cum: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Estimated value of the rank-th smallest value (0-based) per dimension."""
        j = np.array([np.searchsorted(cum[d], rank[d], side="right") for d in range(self.dim)])
        width = np.exp2(self.log2w.astype(np.float64))
        left = (self.lo + j) * width
        inside = np.where(self.integer, (width - 1) / 2, width / 2)
        return np.clip(left + inside, self.min, self.max)

    def quantiles(self, qs: Sequence[float]) -> np.ndarray:
        """(len(qs), D) quantiles with numpy's "linear" interpolation, from the histogram."""
        if self.n == 0:
            raise ValueError("no data")
        cum = np.cumsum(self.counts, axis=1)
        out = []
        for q in qs:
            r = q * (self.n - 1)
            r_lo = int(np.floor(r))
            frac = r - r_lo
            v_lo = self._order_statistic(cum, np.full(self.dim, r_lo))
            v_hi = self._order_statistic(cum, np.full(self.dim, min(r_lo + 1, self.n - 1)))
            out.append(v_lo + frac * (v_hi - v_lo))
        return np.stack(out)

    def quantile_error_bound(self) -> np.ndarray:
        """Max |estimated - exact| quantile per dimension (0 where exact)."""
        width = np.exp2(self.log2w.astype(np.float64))
        return np.where(self.integer, (width - 1) / 2, width / 2)

    def result(self, shape: tuple[int, ...], *, visual: bool = False) -> dict[str, np.ndarray]:
        """Stats as arrays of `shape` ((C, 1, 1) for visual, scaled by 1/255), count as (1,)."""
        if self.n == 0:
            raise ValueError("no data")
        scale = 1 / 255 if visual else 1.0
        out_shape = (self.dim, 1, 1) if visual else tuple(shape)
        int_minmax = self.integer and not visual
        q = self.quantiles(list(QUANTILES.values())) * scale
        res = {
            "min": (self.min.astype(np.int64) if int_minmax else self.min * scale).reshape(out_shape),
            "max": (self.max.astype(np.int64) if int_minmax else self.max * scale).reshape(out_shape),
            "mean": (self.mean * scale).reshape(out_shape),
            "std": (self.std * scale).reshape(out_shape),
            "count": np.array([self.frames], dtype=np.int64),
        }
        for i, name in enumerate(QUANTILES):
            res[name] = q[i].reshape(out_shape)
        return res


def array_stats(
    values: np.ndarray, *, visual: bool = False, channel_axis: int = -1, bins: int = DEFAULT_BINS
) -> RunningStats:
    """Sketch of one in-memory array: numeric (N, *shape) or uint8 frames with channels on `channel_axis`."""
    values = np.asarray(values)
    if visual:
        return RunningStats.from_uint8_images(values, channel_axis, bins)
    return RunningStats.from_values(values.reshape(len(values), -1), bins)


def _frame_ranges(ds: Dataset, episodes: Sequence[int] | None) -> list[tuple[int, int]]:
    if episodes is None:
        return [(0, ds.num_frames)]
    return [(ds.episodes[e].start, ds.episodes[e].stop) for e in episodes]


def iter_key_chunks(
    ds: Dataset, key: str, chunk_frames: int, episodes: Sequence[int] | None = None
) -> Iterator[np.ndarray]:
    """Chunks of `key` over all frames (ds.iter_chunks) or over the frames of `episodes`."""
    if episodes is None:
        yield from ds.iter_chunks(key, chunk_frames)
        return
    for start, stop in _frame_ranges(ds, episodes):
        for s in range(start, stop, chunk_frames):
            yield ds.read(key, np.arange(s, min(s + chunk_frames, stop)))


def stats_keys(ds: Dataset) -> list[str]:
    """Features stats apply to: numeric and visual ones (not strings)."""
    return [k for k, f in ds.features.items() if f.is_visual or f.is_numeric]


def compute_stats(
    ds: Dataset,
    keys: Sequence[str] | None = None,
    *,
    bins: int = DEFAULT_BINS,
    chunk_mb: float = 16.0,
    episodes: Sequence[int] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Stats of `keys` (default: every numeric and visual feature), streaming chunks of <= `chunk_mb` MB.

    Returns {key: {stat: array}}: numeric stats have the feature's shape, visual ones (C, 1, 1) in [0, 1],
    count is (1,) frames. `episodes` restricts to those episode positions.
    """
    keys = stats_keys(ds) if keys is None else list(keys)
    out = {}
    for key in keys:
        feat = ds.feature(key)
        if not (feat.is_visual or feat.is_numeric):
            raise ValueError(f"{ds.root}: cannot compute stats of {key!r} (dtype {feat.dtype})")
        value_bytes = 1 if feat.is_visual else 8  # numeric chunks are processed as float64
        frame_bytes = max(1, int(np.prod(feat.shape)) * value_bytes)
        chunk_frames = max(1, int(chunk_mb * 2**20) // frame_bytes)
        dim = feat.shape[-1] if feat.is_visual else int(np.prod(feat.shape))
        sketch = RunningStats(dim, bins)
        for chunk in iter_key_chunks(ds, key, chunk_frames, episodes):
            try:
                sketch.merge(array_stats(chunk, visual=feat.is_visual, channel_axis=1, bins=bins))
            except ValueError as e:
                raise ValueError(f"{ds.root}: stats of {key!r}: {e}") from e
        if sketch.n == 0:
            raise ValueError(f"{ds.root}: no frames to compute stats of {key!r}")
        out[key] = sketch.result(feat.shape, visual=feat.is_visual)
    return out


def stats_to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    """LeRobot meta/stats.json layout: {key: {stat: nested list}}."""
    return {k: {s: np.asarray(v).tolist() for s, v in kv.items()} for k, kv in stats.items()}


def stats_from_json(data: dict[str, dict[str, list]]) -> dict[str, dict[str, np.ndarray]]:
    return {k: {s: np.asarray(v) for s, v in kv.items()} for k, kv in data.items()}
