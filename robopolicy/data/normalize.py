"""Normalization of features with dataset stats; the stats travel with every checkpoint.

Modes (per feature): "min_max" -> [-1, 1] (diffusion_policy's "limits"), "mean_std" (z-score, std floored at
`eps_std`), "quantiles" (q01 -> -1, q99 -> +1, as pi0.5 / OpenVLA tokenizers), "identity". Visual features are
scaled to [0, 1] floats by the encoder, not here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

MODES = ("min_max", "mean_std", "quantiles", "identity")
REQUIRED = {"min_max": ("min", "max"), "mean_std": ("mean", "std"), "quantiles": ("q01", "q99"), "identity": ()}


class StatsMismatchError(KeyError):
    """Checkpoint stats and the data / config disagree on a key or a shape."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Normalizer(torch.nn.Module):
    """Normalize / unnormalize tensors (..., D) per feature key.

    stats: {key: {stat: array}} as produced by `robopolicy.data.stats.compute_stats` or LeRobot's stats.json.
    modes: {key: mode}; only these keys are normalized.
    """

    def __init__(self, stats: Mapping[str, Mapping[str, np.ndarray]], modes: Mapping[str, str], eps_std: float = 1e-2):
        super().__init__()
        self.modes = dict(modes)
        self.eps_std = eps_std
        self.stats: dict[str, dict[str, np.ndarray]] = {}
        for key, mode in self.modes.items():
            if mode not in MODES:
                raise ValueError(f"normalization mode {mode!r} for {key!r} must be one of {MODES}")
            if key not in stats:
                raise StatsMismatchError(f"no stats for feature {key!r}; stats have {sorted(stats)}")
            missing = [s for s in REQUIRED[mode] if s not in stats[key]]
            if missing:
                raise StatsMismatchError(f"stats for {key!r} lack {missing} needed by mode {mode!r}")
            self.stats[key] = {s: np.asarray(v, dtype=np.float64) for s, v in stats[key].items()}
            scale, offset = self._affine(key, mode)
            self.register_buffer(_buf(key, "scale"), torch.as_tensor(scale, dtype=torch.float32), persistent=False)
            self.register_buffer(_buf(key, "offset"), torch.as_tensor(offset, dtype=torch.float32), persistent=False)

    def _affine(self, key: str, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """x_norm = x * scale + offset."""
        st = self.stats[key]
        if mode == "identity":
            return np.ones(1), np.zeros(1)
        if mode == "mean_std":
            scale = 1.0 / np.maximum(st["std"], self.eps_std)
            return scale, -st["mean"] * scale
        lo, hi = (st["min"], st["max"]) if mode == "min_max" else (st["q01"], st["q99"])
        rng = hi - lo
        # a constant dimension maps to 0 instead of dividing by zero
        scale = np.where(rng > 1e-8, 2.0 / np.where(rng > 1e-8, rng, 1.0), 1.0)
        offset = np.where(rng > 1e-8, -1.0 - lo * scale, -lo)
        return scale, offset

    def _params(self, key: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.modes:
            raise StatsMismatchError(f"feature {key!r} has no normalizer; normalized keys: {sorted(self.modes)}")
        scale, offset = getattr(self, _buf(key, "scale")), getattr(self, _buf(key, "offset"))
        if scale.numel() > 1 and x.shape[-scale.dim() :] != scale.shape:
            raise StatsMismatchError(
                f"feature {key!r}: data has trailing shape {tuple(x.shape[-scale.dim():])} but stats have "
                f"{tuple(scale.shape)}; the checkpoint was trained on a different dataset layout"
            )
        return scale.to(x.device, x.dtype), offset.to(x.device, x.dtype)

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._params(key, x)
        return x * scale + offset

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._params(key, x)
        return (x - offset) / scale

    def normalize_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of `batch` with every key that has a mode normalized (others passed through)."""
        return {k: self.normalize(k, v) if k in self.modes else v for k, v in batch.items()}

    # ----- persistence (plain JSON next to the weights) ------------------------------------------
    def to_json(self) -> dict:
        return {
            "modes": self.modes,
            "eps_std": self.eps_std,
            "stats": {k: {s: np.asarray(v).tolist() for s, v in st.items()} for k, st in self.stats.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Normalizer:
        stats = {k: {s: np.asarray(v) for s, v in st.items()} for k, st in data["stats"].items()}
        return cls(stats, data["modes"], eps_std=data.get("eps_std", 1e-2))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path, expected_keys: Mapping[str, tuple[int, ...]] | None = None) -> Normalizer:
        """Load stats.json; with `expected_keys` {key: shape}, refuse stats that do not match them."""
        norm = cls.from_json(json.loads(Path(path).read_text()))
        if expected_keys is not None:
            norm.check_compatible(expected_keys, source=str(path))
        return norm

    def check_compatible(self, expected: Mapping[str, tuple[int, ...]], source: str = "checkpoint") -> None:
        for key, shape in expected.items():
            if key not in self.modes:
                raise StatsMismatchError(f"{source}: no stats for feature {key!r}; stats have {sorted(self.modes)}")
            ref = self.stats[key].get("mean", self.stats[key].get("min"))
            if ref is not None and ref.size > 1 and tuple(ref.shape) != tuple(shape):
                raise StatsMismatchError(
                    f"{source}: stats for {key!r} have shape {tuple(ref.shape)} but the data has {tuple(shape)}"
                )


def _buf(key: str, what: str) -> str:
    return f"_{what}__" + key.replace(".", "__")
