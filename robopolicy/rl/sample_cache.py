"""Base-policy samples per dataset frame, drawn once while the policy is frozen (a critic warm-up).

Cal-QL needs N policy chunks at s_t and at s_{t+k} in every critic update; sampling a diffusion or flow head
is what that update costs (PA-RL: ~5 s per update at batch 32 on a CPU against ~30 ms for the critic alone).
While the policy does not change, its samples at a frame are draws from the same distribution every time, so
they are drawn at the frame's first use and reused (PA-RL caches base-policy samples for OpenVLA the same way,
algorithms.md section 6): after one pass over the data a warm-up update costs what the critic costs.
Only the executed steps are kept: memory (and checkpoint size) is frames x N x k x D x 4 bytes (PushT:
25,650 x 8 x 8 x 2 = 13 MB).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


def take_rows(obs: Mapping[str, Any], rows: torch.Tensor, size: int) -> dict[str, Any]:
    """The samples `rows` of a prepared observation batch of `size` (tensors and per-sample lists indexed,
    anything else, e.g. a batch-wide setting, kept)."""
    out: dict[str, Any] = {}
    for key, value in obs.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size:
            out[key] = value[rows.to(value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == size:
            out[key] = [value[int(i)] for i in rows]
        else:
            out[key] = value
    return out


class SampleCache(nn.Module):
    """N chunks (executed steps only, normalized) per global frame index, drawn on first use. A module with
    buffers, so it is checkpointed with the run and a resumed warm-up reuses the same samples (resumes exactly).
    """

    def __init__(self, num_frames: int, num_samples: int, steps: int, action_dim: int):
        super().__init__()
        self.register_buffer("store", torch.zeros(num_frames, num_samples, steps, action_dim))
        self.register_buffer("filled", torch.zeros(num_frames, dtype=torch.bool))

    def get(self, index: torch.Tensor, draw: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Chunks (B, N, k, D) at frames `index` (B,); draw(rows) samples the batch rows `rows` (m,) whose frame
        has none yet and returns (m, N, k, D). A negative index (no frame: a chunk that runs past its episode,
        whose target is masked) gives zeros and is never drawn."""
        index = index.detach().to(self.filled.device).long()
        known = index >= 0
        safe = index.clamp(min=0)
        missing = known & ~self.filled[safe]
        if missing.any():
            frames, first = _first_occurrences(index, missing)
            new = draw(first)
            if new.shape[1:] != self.store.shape[1:]:
                raise ValueError(f"SampleCache: drew chunks {tuple(new.shape[1:])}, the cache holds "
                                 f"{tuple(self.store.shape[1:])} per frame")
            self.store[frames] = new.detach().to(self.store)
            self.filled[frames] = True
        return self.store[safe] * known.view(-1, 1, 1, 1).to(self.store.dtype)


def _first_occurrences(index: torch.Tensor, missing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct missing frames and, for each, the first batch row that holds it."""
    rows = torch.nonzero(missing).squeeze(1)
    frames, inverse = torch.unique(index[rows], return_inverse=True)
    first = torch.full((len(frames),), len(index), dtype=torch.long, device=index.device)
    first.scatter_reduce_(0, inverse, rows, reduce="amin")
    return frames, first
