"""The one switch for robopolicy's CPU kernels; every kernel site asks `enabled` (or `onednn`) before running.

The kernels (same parameters, state dicts and results as torch's modules, to float rounding):
  - prepacked.py: oneDNN-prepacked linear / conv weights for no-grad inference and oneDNN matmuls (forward and
    backward) for the large training GEMMs (private `torch.ops.mkldnn` ops);
  - unet1d.py: GemmConv1d / GemmConvTranspose1d, the UNet's convolutions as one GEMM each;
  - dropout.py: dropout by thresholded uniforms (same distribution as nn.Dropout, not the same mask);
  - ragged.py + ACT: training on the valid (unpadded) tokens only, the learned queries' self-attention once per batch;
  - ACT's eval path: prepacked transformer layers and the cached query constants.
With the switch off each site runs torch's own modules (nn.Linear, nn.Conv1d, F.dropout, nn.TransformerEncoder /
Decoder) on the same parameters.

Setting: the environment variable ROBOPOLICY_CPU_KERNELS (read at every call, so it can change at run time),
or `override` in code (takes precedence):
  auto (default)  on for CPU tensors when the private oneDNN ops exist and pass a probe; off everywhere else
                  (CUDA and other devices use torch's native kernels; a CPU without the ops, e.g. another torch
                  version or ARM, falls back to plain torch with a one-time warning)
  on              on for CPU tensors even without the oneDNN ops (those sites then use F.linear / F.conv2d)
  off             plain torch everywhere
Non-CPU devices always take plain torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F

ENV = "ROBOPOLICY_CPU_KERNELS"
MODES = ("auto", "on", "off")
ONEDNN_OPS = ("_reorder_linear_weight", "_linear_pointwise", "_reorder_convolution_weight", "_convolution_pointwise")
_override: list[str] = []  # innermost `override` last


def mode() -> str:
    """The current setting: the innermost `override`, else $ROBOPOLICY_CPU_KERNELS, else "auto"."""
    if _override:
        return _override[-1]
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: expected one of {MODES}")
    return value


@contextlib.contextmanager
def override(setting: bool | str) -> Iterator[None]:
    """Force the switch inside a `with` block: True = "on", False = "off", or a mode name."""
    value = ("on" if setting else "off") if isinstance(setting, bool) else setting
    if value not in MODES:
        raise ValueError(f"kernels.override({setting!r}): expected a bool or one of {MODES}")
    _override.append(value)
    try:
        yield
    finally:
        _override.pop()


def probe(ops=None) -> bool:
    """Whether the private oneDNN ops exist in `ops` (default torch.ops.mkldnn) and match F.linear / F.conv2d on
    a tiny input; warns and returns False when they are missing, raise or disagree."""
    try:
        if not torch.backends.mkldnn.is_available():
            raise RuntimeError("torch.backends.mkldnn is not available")
        ops = torch.ops.mkldnn if ops is None else ops
        missing = [name for name in ONEDNN_OPS if not hasattr(ops, name)]
        if missing:
            raise RuntimeError(f"torch.ops.mkldnn lacks {missing}")
        gen = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(3, 8, generator=gen), torch.randn(4, 8, generator=gen), torch.randn(4, generator=gen)
        y = ops._linear_pointwise(x, ops._reorder_linear_weight(w), b, "none", [], "")
        img, k = torch.randn(1, 2, 5, 5, generator=gen), torch.randn(3, 2, 3, 3, generator=gen)
        args = ([1, 1], [1, 1], [1, 1], 1)
        packed = ops._reorder_convolution_weight(k, *args, list(img.shape))
        z = ops._convolution_pointwise(img, packed, None, *args, "none", [], "")
        if not (torch.allclose(y, F.linear(x, w, b), atol=1e-4) and torch.allclose(z, F.conv2d(img, k, None, 1, 1),
                                                                                  atol=1e-4)):
            raise RuntimeError("they disagree with F.linear / F.conv2d")
    except Exception as err:  # any failure means: use plain torch
        warnings.warn(f"robopolicy CPU kernels: oneDNN ops unusable ({err}); using plain torch ops", stacklevel=2)
        return False
    return True


@functools.cache
def onednn_available() -> bool:
    """`probe()` of this process's torch, run once."""
    return probe()


def enabled(where: torch.Tensor | torch.device | str) -> bool:
    """Whether the CPU kernels run for a tensor (or device): the one place that decides."""
    device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    if device.type != "cpu":
        return False
    setting = mode()
    return setting == "on" or (setting == "auto" and onednn_available())


def onednn(where: torch.Tensor | torch.device | str) -> bool:
    """`enabled` and the private oneDNN ops usable: the prepacked layers' condition."""
    return enabled(where) and onednn_available()
