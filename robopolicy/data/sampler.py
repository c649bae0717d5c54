"""Windowed sampling: each item is a window of frames around an anchor frame, never crossing an episode.

The consumer (a policy head) declares delta indices per key, e.g. obs [-1, 0] and actions range(-1, 15).
Positions outside the anchor's episode are filled with the nearest in-episode frame (edge padding, as
LeRobot and diffusion_policy do) and flagged in `<key>_is_pad`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from robopolicy.data.dataset import Dataset


def delta_timestamps_to_indices(
    delta_timestamps: Mapping[str, Sequence[float]], fps: float, tolerance_s: float = 1e-4
) -> dict[str, list[int]]:
    """Convert second offsets to frame offsets; each must be a multiple of 1/fps within `tolerance_s`."""
    out = {}
    for key, deltas in delta_timestamps.items():
        idx = []
        for d in deltas:
            k = round(d * fps)
            if abs(k / fps - d) > tolerance_s:
                raise ValueError(
                    f"delta_timestamps[{key!r}] = {d} s is not a multiple of 1/fps = {1 / fps:.6g} s "
                    f"within tolerance_s={tolerance_s}"
                )
            idx.append(k)
        out[key] = idx
    return out


class WindowSampler(torch.utils.data.Dataset):
    """Map-style torch dataset of windows.

    Item i is anchored at global frame `anchors[i]` (all frames of the chosen episodes by default).
    Returns {key: Tensor (T, ...), key_is_pad: bool Tensor (T,), "episode_index", "frame_index", "task"}.
    Visual keys come out uint8 (T, C, H, W). Batched access (`__getitems__`) reads each key once per batch.

    aliases {name: dataset key}: load one dataset key under a second name at its own offsets, e.g. the observation
    now as "observation.state" (delta [0]) and H steps later as "next.observation.state" (delta [H]) for TD
    targets; each name has its own `<name>_is_pad` (True where the offset ran past the episode).
    """

    def __init__(
        self,
        dataset: Dataset,
        delta_indices: Mapping[str, Sequence[int]],
        episodes: Sequence[int] | None = None,
        aliases: Mapping[str, str] | None = None,
    ):
        self.dataset = dataset
        self.delta_indices = {k: np.asarray(list(v), dtype=np.int64) for k, v in delta_indices.items()}
        self.aliases = dict(aliases or {})
        unused = sorted(set(self.aliases) - set(self.delta_indices))
        if unused:
            raise KeyError(f"aliases {unused} have no delta indices; give each alias its offsets in delta_indices")
        clash = sorted(set(self.aliases) & set(dataset.features))
        if clash:
            raise KeyError(f"aliases {clash} are names of dataset features; choose names the dataset does not use")
        for key in self.delta_indices:
            dataset.feature(self.source_key(key))  # raises a clear KeyError for unknown keys
        eps = range(dataset.num_episodes) if episodes is None else episodes
        self.episode_ids = np.asarray(list(eps), dtype=np.int64)
        self.anchors = np.concatenate(
            [np.arange(dataset.episodes[e].start, dataset.episodes[e].stop) for e in self.episode_ids]
        ) if len(self.episode_ids) else np.zeros(0, dtype=np.int64)
        self._starts = np.array([ep.start for ep in dataset.episodes], dtype=np.int64)
        self._stops = np.array([ep.stop for ep in dataset.episodes], dtype=np.int64)

    def window_weights(self, balance: str = "frames") -> np.ndarray | None:
        """Sampling weight of every window (sum 1) so that each episode ("episodes") or each task ("tasks": the
        episode's first task string) is drawn equally often whatever its length; None for "frames" (uniform)."""
        if balance == "frames":
            return None
        if balance not in ("episodes", "tasks"):
            raise ValueError(f"balance must be 'frames', 'episodes' or 'tasks', got {balance!r}")
        episodes = self.dataset.episodes
        lengths = np.array([episodes[e].stop - episodes[e].start for e in self.episode_ids], dtype=np.float64)
        if balance == "episodes":
            groups = np.arange(len(self.episode_ids))
        else:
            names = [episodes[e].tasks[0] if episodes[e].tasks else "" for e in self.episode_ids]
            _, groups = np.unique(np.array(names, dtype=object).astype(str), return_inverse=True)
        frames_per_group = np.bincount(groups, weights=lengths)
        per_window = 1.0 / (frames_per_group[groups] * (groups.max() + 1))  # (episodes,)
        return np.repeat(per_window, lengths.astype(np.int64))

    def __len__(self) -> int:
        return len(self.anchors)

    def source_key(self, name: str) -> str:
        """The dataset key behind a window name (itself unless it is an alias)."""
        return self.aliases.get(name, name)

    def window_indices(self, anchors: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Clamped global indices (B, T) and pad mask (B, T) for `key` around global `anchors` (B,)."""
        ep = self.dataset.episode_of(anchors)
        query = anchors[:, None] + self.delta_indices[key][None, :]
        lo, hi = self._starts[ep][:, None], self._stops[ep][:, None] - 1
        return np.clip(query, lo, hi), (query < lo) | (query > hi)

    def get_batch(self, items: Sequence[int]) -> dict:
        anchors = self.anchors[np.asarray(items, dtype=np.int64)]
        ep = self.dataset.episode_of(anchors)
        batch: dict = {}
        for key in self.delta_indices:
            idx, pad = self.window_indices(anchors, key)
            values = self.dataset.read(self.source_key(key), idx.reshape(-1))
            batch[key] = torch.from_numpy(np.ascontiguousarray(values.reshape(*idx.shape, *values.shape[1:])))
            batch[f"{key}_is_pad"] = torch.from_numpy(pad)
        batch["episode_index"] = torch.from_numpy(np.array([self.dataset.episodes[e].index for e in ep]))
        batch["frame_index"] = torch.from_numpy(anchors - self._starts[ep])
        batch["index"] = torch.from_numpy(anchors)
        batch["task"] = self.dataset.frame_tasks(anchors)
        return batch

    def __getitems__(self, items: Sequence[int]) -> dict:
        return self.get_batch(items)

    def __getitem__(self, i: int) -> dict:
        batch = self.get_batch([i])
        return {k: (v[0] if isinstance(v, torch.Tensor | list) else v) for k, v in batch.items()}


def _keep_batch(batch):
    return batch


def make_dataloader(
    sampler: WindowSampler,
    batch_size: int,
    *,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = True,
    seed: int | None = None,
    **kwargs,
) -> torch.utils.data.DataLoader:
    """A DataLoader that fetches whole batches through `WindowSampler.__getitems__` (one read per key)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.utils.data.DataLoader(
        sampler,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=_keep_batch,
        generator=generator,
        persistent_workers=num_workers > 0,
        **kwargs,
    )


class EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled batches as a pure function of (seed, step): epoch e is a permutation seeded by (seed, e); with
    `weights` (one per window, e.g. WindowSampler.window_weights) every batch is drawn with replacement instead.

    Resuming at `start_step` yields exactly the batches the uninterrupted run would have seen from there.
    With `world_size` > 1 each rank takes every world_size-th item of the global batch.
    """

    def __init__(
        self, n: int, batch_size: int, *, seed: int = 0, start_step: int = 0, num_steps: int | None = None,
        rank: int = 0, world_size: int = 1, weights: np.ndarray | None = None,
    ):
        if n < batch_size:
            raise ValueError(f"dataset has {n} windows, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.num_steps = start_step, num_steps
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = n // batch_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.weights is not None and len(self.weights) != n:
            raise ValueError(f"{len(self.weights)} weights for {n} windows")

    def batch(self, step: int) -> list[int]:
        if self.weights is not None:  # weighted draws with replacement, a pure function of (seed, step)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * step + 1)
            items = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g)
            return items[self.rank :: self.world_size].tolist()
        epoch, pos = divmod(step, self.batches_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        items = perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        return items[self.rank :: self.world_size].tolist()

    def __iter__(self):
        step = self.start_step
        while self.num_steps is None or step < self.start_step + self.num_steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an endless EpochBatchSampler has no length")
        return self.num_steps
