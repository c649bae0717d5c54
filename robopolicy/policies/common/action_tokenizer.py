"""Discrete action tokens (Discrete Diffusion VLA, docs/algorithms.md section 5): uniform bins over [-1, 1].

The policy's Normalizer maps actions to [-1, 1] with mode "quantiles" (q01 -> -1, q99 -> +1), so the q01/q99
stats travel with the checkpoint like every head's; this module only bins. Each continuous dimension is clipped
to [-1, 1] and cut into `bins` equal bins (token = bin index, decoded to the bin centre, so the round-trip error
is at most 1/bins inside the range). A gripper dimension is binary: token `bins - 1` (open, value > 0) or 0
(closed), decoded to +1 / -1. One shared vocabulary of `bins` tokens serves every position, plus the [MASK]
token `bins` (vocab_size = bins + 1). There is no EOS: a chunk of H steps is always H * D tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ActionTokenizer:
    """Normalized actions (..., D) in [-1, 1] <-> long tokens (..., D) in [0, bins); tensors keep their device."""

    def __init__(self, action_dim: int, bins: int = 256, gripper_dims: Sequence[int] = ()):
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        if any(not -action_dim <= int(d) < action_dim for d in gripper_dims):
            raise ValueError(f"gripper_dims {list(gripper_dims)} must index an action of {action_dim} dimensions")
        gripper = sorted({int(d) % action_dim for d in gripper_dims})
        self.action_dim = action_dim
        self.bins = bins
        self.gripper_dims = tuple(gripper)
        self._gripper_mask = torch.zeros(action_dim, dtype=torch.bool)
        self._gripper_mask[list(self.gripper_dims)] = True

    @property
    def mask_token(self) -> int:
        return self.bins

    @property
    def vocab_size(self) -> int:
        return self.bins + 1

    @property
    def max_error(self) -> float:
        """Largest |decode(encode(x)) - x| for a continuous x in [-1, 1]: half a bin."""
        return 1.0 / self.bins

    def _gripper(self, like: torch.Tensor) -> torch.Tensor:
        return self._gripper_mask.to(like.device)

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., D) float in [-1, 1] (clipped) -> (..., D) long."""
        if actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions have {actions.shape[-1]} dimensions, the tokenizer {self.action_dim}")
        x = actions.float().clamp(-1.0, 1.0)
        tokens = ((x + 1.0) * (self.bins / 2.0)).floor().long().clamp(0, self.bins - 1)
        binary = torch.where(x > 0, self.bins - 1, 0)
        return torch.where(self._gripper(x), binary, tokens)

    def decode(self, tokens: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(..., D) long -> (..., D) `dtype` in [-1, 1]; a [MASK] left in `tokens` is an error."""
        if tokens.shape[-1] != self.action_dim:
            raise ValueError(f"tokens have {tokens.shape[-1]} dimensions, the tokenizer {self.action_dim}")
        if bool((tokens >= self.bins).any()) or bool((tokens < 0).any()):
            raise ValueError(f"tokens must be in [0, {self.bins}) ([MASK] = {self.bins} cannot be decoded)")
        centres = -1.0 + (tokens.to(dtype) + 0.5) * (2.0 / self.bins)
        binary = torch.where(tokens >= self.bins // 2, 1.0, -1.0).to(dtype)
        return torch.where(self._gripper(tokens), binary, centres)
