"""Make LeRobot 0.4.4 usable in the separate LeRobot venv (see `benchmarks/lerobot_compat.py` for the recipe).

Import this module (and call `prepare_lerobot`) BEFORE importing `lerobot`, `datasets` or `huggingface_hub`:

- it forces Hugging Face offline mode, so a local dataset that LeRobot finds incomplete fails at once with a
  clear error instead of trying the Hub (LeRobot 0.4.4 falls back to `snapshot_download` when a file under
  `root` is missing);
- it points the `datasets` cache (LeRobot converts the data parquet files to memory-mapped arrow files there)
  at a directory of our choice instead of ~/.cache;
- LeRobot 0.4.4's "pyav" video backend decodes through `torchvision.io.VideoReader`, which torchvision removed
  in 0.26; the LeRobot venv shares torch 2.14.1 / torchvision 0.29 with the project venv (LeRobot pins
  torch<2.11, a multi-GB download). `prepare_lerobot` installs `PyAVVideoReader` in its place: the same
  behaviour as torchvision 0.25's pyav backend (open with metadata errors ignored, seek backwards to the
  keyframe at or before the requested time, decode forward, frames as uint8 RGB (C, H, W) tensors with pts in
  seconds). An older torchvision cannot be used instead: its compiled ops do not load against torch 2.14.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "robopolicy_lerobot_hf_cache"


class PyAVVideoReader:
    """Stand-in for torchvision<=0.25 `io.VideoReader` with the "pyav" backend (video streams only).

    Iterating yields {"data": uint8 tensor (3, H, W) RGB, "pts": float seconds}.
    `container` is the open `av` container (LeRobot closes it after reading).
    """

    def __init__(self, src: str, stream: str = "video", num_threads: int = 0):
        import av

        kind, _, index = stream.partition(":")
        if kind != "video":
            raise ValueError(f"PyAVVideoReader reads video streams only, got stream={stream!r}")
        self.container = av.open(str(src), metadata_errors="ignore")
        self._stream = self.container.streams.video[int(index or 0)]
        self._frames = self.container.decode(self._stream)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import av
        import torch

        try:
            frame = next(self._frames)
        except av.error.EOFError:
            raise StopIteration from None
        pts = float(frame.pts * frame.time_base)
        data = torch.as_tensor(frame.to_rgb().to_ndarray()).permute(2, 0, 1)
        if data.numel() == 0:
            raise StopIteration
        return {"data": data, "pts": pts}

    def seek(self, time_s: float, keyframes_only: bool = False) -> PyAVVideoReader:
        """Position before the keyframe at or before `time_s` (pyav has no accurate seek; neither had torchvision)."""
        offset = round(max(time_s, 0.0) / self._stream.time_base)
        self.container.seek(offset, backward=True, any_frame=False, stream=self._stream)
        self._frames = self.container.decode(self._stream)
        return self


def prepare_lerobot(cache_dir: str | Path = DEFAULT_CACHE) -> None:
    """Offline Hugging Face, a private `datasets` cache, and `torchvision.io.VideoReader` for LeRobot's pyav path."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("HF_DATASETS_CACHE", str(cache_dir))
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import torchvision.io

    if not hasattr(torchvision.io, "VideoReader"):
        torchvision.io.VideoReader = PyAVVideoReader


def lerobot_versions() -> dict[str, str]:
    """Versions of the packages that decide LeRobot's behaviour, for reports."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("lerobot", "torch", "torchvision", "av", "datasets", "huggingface-hub", "pandas", "pyarrow", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    import torchvision.io

    out["videoreader"] = (
        "robopolicy shim" if getattr(torchvision.io, "VideoReader", None) is PyAVVideoReader else "torchvision"
    )
    return out
