"""Feature descriptions shared by every dataset format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["state", "action", "image", "video", "language", "reward", "done", "index", "other"]

# Per-frame bookkeeping columns every LeRobot dataset carries.
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")

# Episodes-metadata column (LeRobot v3) holding robopolicy's per-episode success flag; LeRobot ignores it.
SUCCESS_COLUMN = "success"


@dataclass(frozen=True)
class Feature:
    """One per-frame feature.

    name: dataset key, e.g. "observation.state" or "action".
    dtype: numpy dtype name ("float32", "uint8", ...), or "image" / "video" / "string".
    shape: per-frame shape; images and videos are (H, W, C) as in LeRobot's info.json.
    kind: what the feature is for (state, action, image, video, language, reward, done, index, other).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: Kind
    names: Any = None
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_visual(self) -> bool:
        return self.kind in ("image", "video")

    @property
    def is_numeric(self) -> bool:
        return not self.is_visual and self.dtype not in ("string", "language")


PHASE_KEY = "phase"  # per-frame task-phase labels (scripted experts write them, moe_act trains on them)


def phase_label_feature(names: Sequence[str]) -> Feature:
    """The per-frame phase label feature: int64 (1,), value i means names[i] (the phase vocabulary)."""
    return Feature(PHASE_KEY, "int64", (1,), "other", names=list(names))


def infer_kind(name: str, dtype: str, shape: tuple[int, ...] = ()) -> Kind:
    """Guess a feature's kind from its LeRobot / diffusion-policy name and dtype."""
    lname = name.lower()
    if dtype == "video":
        return "video"
    if dtype == "image" or (len(shape) == 3 and shape[-1] in (1, 3, 4) and ("image" in lname or "img" in lname)):
        return "image"
    if dtype in ("string", "language") or "language" in lname or lname == "task":
        return "language"
    if name in INDEX_KEYS:
        return "index"
    if lname.startswith("action") or lname.endswith("action") or lname.endswith("actions"):
        return "action"
    if "reward" in lname:
        return "reward"
    if lname.endswith("done") or lname.endswith("success") or lname.endswith("terminated"):
        return "done"
    if "state" in lname or lname.startswith("observation") or "keypoint" in lname or "joint" in lname:
        return "state"
    return "other"
